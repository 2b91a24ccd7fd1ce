//! `REDIS_*`: off by default, checked without echoing the URL, and from a file.

use super::*;

#[test]
fn redis_is_off_by_default_and_its_url_never_shown() {
    let c = with(&[]).unwrap().config;
    assert!(c.dedup.redis.is_none());
    let loaded = with(&[
        (REDIS_URL, "redis://gate:p%40ss-w0rd@redis.internal:6380/2"),
        (REDIS_FAILURE, "closed"),
    ])
    .unwrap();
    let r = loaded.config.dedup.redis.clone().unwrap();
    assert_eq!(r.prefix, "feishu-gate:");
    assert_eq!(r.failure, FailureMode::Closed);
    assert_eq!(r.url.shown(), "redis://<redacted>@redis.internal:6380/2");
    let shown = format!("{:?}{:?}", loaded.config, loaded.config.describe());
    for secret in ["p%40ss-w0rd", "p@ss-w0rd", "gate:p"] {
        assert!(!shown.contains(secret), "{shown}");
    }
    assert_eq!(
        r.url.scrub("NOAUTH for gate with p@ss-w0rd"),
        "NOAUTH for <redacted> with <redacted>"
    );
    let r = with(&[
        (REDIS_URL, "rediss://redis.internal"),
        (REDIS_PREFIX, "approvals:"),
    ])
    .unwrap()
    .config
    .dedup
    .redis
    .unwrap();
    assert_eq!(r.url.shown(), "rediss://redis.internal");
    assert_eq!(r.prefix, "approvals:");
    assert!(r.ca_file.is_none());
    let described = with(&[(REDIS_URL, "rediss://r")])
        .unwrap()
        .config
        .describe();
    assert!(described.contains(&(REDIS_CA_FILE, "system roots".to_owned())));
    let e = errors(&[(REDIS_URL, "rediss://r"), (REDIS_CA_FILE, "/no/ca.pem")]);
    assert_eq!(
        e,
        vec![format!(
            "{REDIS_CA_FILE}: cannot read /no/ca.pem: No such file or directory (os error 2)"
        )]
    );
}

#[test]
fn redis_settings_are_checked_without_echoing_the_url() {
    for bad in [
        "http://:hunter2@redis/",
        "hunter2",
        "redis://:hunter2@/",
        "redis://:hunter2@redis/notadb",
    ] {
        let e = errors(&[(REDIS_URL, bad)]);
        assert_eq!(e.len(), 1, "{bad}: {e:?}");
        assert!(e[0].starts_with(REDIS_URL), "{e:?}");
        assert!(!e[0].contains("hunter2"), "{e:?}");
    }
    assert!(
        errors(&[(REDIS_URL, "redis://r"), (REDIS_FAILURE, "maybe")])[0].starts_with(REDIS_FAILURE)
    );
    let redis_only =
        |w: Vec<String>| -> Vec<String> { w.into_iter().filter(|w| w.contains("REDIS")).collect() };
    let w = redis_only(with(&[(REDIS_FAILURE, "closed")]).unwrap().warnings);
    assert_eq!(
        w,
        vec![format!("{REDIS_FAILURE} has no effect without {REDIS_URL}")]
    );
    let w = redis_only(
        with(&[(REDIS_URL, "redis://r"), (DEDUP_TTL_SECS, "0")])
            .unwrap()
            .warnings,
    );
    assert_eq!(w.len(), 1, "{w:?}");
}

#[test]
fn redis_url_from_a_file() {
    let (_dir, f) = secret_file("redis://:s3cret@10.0.0.9:6379\n");
    let c = with(&[("FEISHU_GATE_REDIS_URL_FILE", &f)]).unwrap().config;
    let r = c.dedup.redis.unwrap();
    assert_eq!(r.url.expose(), "redis://:s3cret@10.0.0.9:6379");
    assert_eq!(r.url.shown(), "redis://<redacted>@10.0.0.9:6379");
    let e = errors(&[("FEISHU_GATE_REDIS_URL_FILE", &f), (REDIS_URL, "redis://x")]);
    assert_eq!(
        e,
        vec![format!(
            "{REDIS_URL}: set either {REDIS_URL} or {REDIS_URL}_FILE, not both"
        )]
    );
}

#[test]
fn a_password_sent_in_the_clear_across_machines_is_warned_about() {
    let warned = |url: &str| {
        with(&[(REDIS_URL, url)])
            .unwrap()
            .warnings
            .iter()
            .any(|w| w.contains("redis:// with a password"))
    };
    assert!(warned("redis://:s3cret@redis.internal:6379"));
    assert!(warned("redis://gate:s3cret@10.0.0.9"));
    assert!(!warned("redis://:s3cret@127.0.0.1:6379"));
    assert!(!warned("redis://:s3cret@localhost"));
    assert!(!warned("rediss://:s3cret@redis.internal"));
    assert!(!warned("redis://redis.internal"));
}
