use std::time::Duration;

use super::rules::*;
use super::*;
use crate::dedup::shared::FailureMode;
use crate::observe::logging::LogFormat;
use crate::pipeline::limit::RateLimit;
use crate::respond::Lang;

mod redis;
mod upstream;

pub(super) fn minimal() -> Vec<(String, String)> {
    vec![
        (UPSTREAM_URL.into(), "http://127.0.0.1:8080/approve".into()),
        (TOKEN.into(), "tok".into()),
    ]
}

pub(super) fn with(extra: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
    let mut vars = minimal();
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push(((*k).into(), (*v).into()));
    }
    Config::from_vars(vars)
}

/// A file holding `contents`, as a mounted Secret does, and its path; the file goes with
/// the directory.
pub(super) fn secret_file(contents: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, contents).unwrap();
    let path = path.to_str().unwrap().to_owned();
    (dir, path)
}

pub(super) fn errors(extra: &[(&str, &str)]) -> Vec<String> {
    with(extra)
        .unwrap_err()
        .0
        .into_iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn check_config_shows_every_variable_but_those_shown_beside_another() {
    let described: Vec<&str> = with(&[])
        .unwrap()
        .config
        .describe()
        .iter()
        .map(|(n, _)| *n)
        .collect();
    // A burst is shown beside its rate; the OTLP base URL and protocols only steer the
    // traces endpoint, which is shown; disabling the SDK shows as `off`.
    let beside = [
        RATE_LIMIT_BURST,
        USER_RATE_LIMIT_BURST,
        OTEL_EXPORTER_OTLP_ENDPOINT,
        OTEL_EXPORTER_OTLP_PROTOCOL,
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
        OTEL_SDK_DISABLED,
    ];
    // Each list in its own order, as `check-config` prints it; OpenTelemetry's lines sit
    // between WORKERS and the Redis settings.
    let shown = |list: &[&'static str]| -> Vec<&'static str> {
        list.iter()
            .copied()
            .filter(|v| !beside.contains(v))
            .collect()
    };
    let ours = shown(VARIABLES);
    let workers = ours.iter().position(|v| *v == WORKERS).unwrap() + 1;
    let expected = [&ours[..workers], &shown(OTEL_VARIABLES), &ours[workers..]].concat();
    assert_eq!(described, expected);
}

#[test]
fn every_secret_and_only_a_secret_is_read_from_its_file() {
    for &name in VARIABLES {
        let secret = SECRET_VARIABLES.contains(&name);
        let file = format!("{name}_FILE");
        let mut vars = minimal();
        // Set both ways, a secret is refused before its file is read.
        vars.retain(|(n, _)| !(secret && n == name));
        vars.push((file.clone(), "/no/such/secret".to_owned()));
        let loaded = Config::from_vars(vars);
        if secret {
            let e = loaded.unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "{file}: cannot read /no/such/secret: No such file or directory (os error 2)"
                )
            );
        } else {
            let w = loaded.unwrap().warnings;
            let unknown = format!(
                "{file} is not a feishu-gate setting and is ignored ({name} is not a secret, \
                 so it is not read from a file)"
            );
            assert!(w.contains(&unknown), "{w:?}");
        }
    }
}

/// The documented range of every number (README's table).
const RANGES: &[(&str, u64, u64)] = &[
    (UPSTREAM_TIMEOUT_MS, 1, 9_000),
    (ANSWER_WITHIN_MS, 500, 9_500),
    (LATE_VERDICT_MS, 0, 600_000),
    (CONNECT_RETRY_MS, 0, 9_000),
    (MAX_BODY_BYTES, 1_024, 16 * 1024 * 1024),
    (RATE_LIMIT_RPS, 0, 1_000_000),
    (RATE_LIMIT_BURST, 1, 10_000_000),
    (USER_RATE_LIMIT_RPS, 0, 1_000_000),
    (USER_RATE_LIMIT_BURST, 1, 10_000_000),
    (DEDUP_TTL_SECS, 0, 7 * 24 * 3600),
    (SHUTDOWN_GRACE_MS, 0, 3_600_000),
    (MAX_CONNECTIONS, 1, 1_000_000),
    (WORKERS, 1, 1_024),
];

#[test]
fn every_number_is_read_within_its_range() {
    for &(name, min, max) in RANGES {
        let outside = [min.checked_sub(1), max.checked_add(1)];
        for n in outside.into_iter().flatten() {
            let e = errors(&[(name, &n.to_string())]);
            assert_eq!(
                e,
                vec![format!(
                    "{name}: {n} is out of range: must be a whole number from {min} to {max}"
                )]
            );
        }
        assert!(with(&[(name, &max.to_string())]).is_ok(), "{name}={max}");
    }
}

#[test]
fn a_late_verdict_window_counts_from_arrival_so_it_cannot_end_before_the_answer() {
    let e = errors(&[(LATE_VERDICT_MS, "3000")]);
    assert_eq!(
        e,
        vec![format!(
            "{LATE_VERDICT_MS}: 3000 is below {ANSWER_WITHIN_MS} (9500): it counts from the \
             callback's arrival too; use 0 to cut the exchange at the upstream timeout"
        )]
    );
    let lark = with(&[(ANSWER_WITHIN_MS, "4500"), (LATE_VERDICT_MS, "4500")]).unwrap();
    assert_eq!(
        lark.config.pipeline.late_verdict,
        Duration::from_millis(4_500)
    );
    let off = with(&[(LATE_VERDICT_MS, "0")]).unwrap();
    assert!(off.config.pipeline.late_verdict.is_zero());
    let default = with(&[]).unwrap();
    assert_eq!(
        default.config.pipeline.late_verdict,
        Duration::from_secs(60)
    );
}

/// [`RANGES`] lists every variable read as a number, so none is left unchecked above.
#[test]
fn every_number_has_its_range_listed() {
    for &name in VARIABLES {
        let problems = with(&[(name, "ten")]).err().map(|e| e.to_string());
        let numeric = problems.is_some_and(|p| {
            p.lines()
                .any(|l| l.starts_with(&format!("{name}: \"ten\" is not a whole number from")))
        });
        let listed = RANGES.iter().any(|&(n, _, _)| n == name);
        assert_eq!(numeric, listed, "{name}");
    }
}

#[test]
fn defaults_follow_the_product_table() {
    let c = with(&[]).unwrap().config;
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8443");
    assert_eq!(c.server.admin_listen.to_string(), "0.0.0.0:9901");
    assert_eq!(c.pipeline.path, "/");
    assert_eq!(c.upstream.timeout, Duration::from_millis(8000));
    assert_eq!(c.pipeline.answer_within, Duration::from_millis(9500));
    assert_eq!(c.pipeline.max_body, 65536);
    assert_eq!(
        c.pipeline.rate_limit,
        Some(RateLimit {
            per_second: 200,
            burst: 400
        })
    );
    assert_eq!(c.pipeline.user_rate_limit, None);
    assert_eq!(c.dedup.ttl, Some(Duration::from_secs(600)));
    assert_eq!(c.lang, Lang::Zh);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.server.shutdown_grace, Duration::from_millis(8000));
    assert_eq!(c.server.max_connections, 1024);
    assert!(c.callback.keys.is_empty() && !c.callback.allow_plaintext && c.server.tls.is_none());
}

#[test]
fn every_problem_is_reported_at_once_naming_the_variable() {
    let errs = Config::from_vars([
        (LISTEN, "nowhere"),
        (UPSTREAM_TIMEOUT_MS, "9500"),
        (LANG, "fr"),
        (TLS_CERT, "/x.pem"),
        (UPSTREAM_OK, "code=0"),
        (RATE_LIMIT_RPS, "-1"),
    ])
    .unwrap_err()
    .0;
    let vars: Vec<&str> = errs.iter().map(|e| e.variable.as_str()).collect();
    for expected in [
        LISTEN,
        UPSTREAM_URL,
        UPSTREAM_TIMEOUT_MS,
        TOKEN,
        LANG,
        TLS_KEY,
        UPSTREAM_OK,
        RATE_LIMIT_RPS,
    ] {
        assert!(vars.contains(&expected), "{expected} missing from {vars:?}");
    }
    let shown = ConfigErrors(errs).to_string();
    assert!(shown.lines().all(|l| l.starts_with(PREFIX)), "{shown}");
}

#[test]
fn upstream_timeout_must_leave_time_to_answer_feishu() {
    assert!(with(&[(UPSTREAM_TIMEOUT_MS, "9000")]).is_ok());
    assert!(errors(&[(UPSTREAM_TIMEOUT_MS, "9001")])[0].starts_with(UPSTREAM_TIMEOUT_MS));
    assert!(errors(&[(UPSTREAM_TIMEOUT_MS, "0")])[0].starts_with(UPSTREAM_TIMEOUT_MS));
}

#[test]
fn the_answer_bound_alone_is_enough_for_lark() {
    let c = with(&[(ANSWER_WITHIN_MS, "4500")]).unwrap().config;
    assert_eq!(c.pipeline.answer_within, Duration::from_millis(4500));
    assert_eq!(c.upstream.timeout, Duration::from_millis(3000));
    let c = with(&[(ANSWER_WITHIN_MS, "4500"), (UPSTREAM_TIMEOUT_MS, "4500")])
        .unwrap()
        .config;
    assert_eq!(c.upstream.timeout, Duration::from_millis(4500));
    let e = errors(&[(ANSWER_WITHIN_MS, "4500"), (UPSTREAM_TIMEOUT_MS, "4501")]);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with(UPSTREAM_TIMEOUT_MS), "{e:?}");
    assert!(e[0].contains(ANSWER_WITHIN_MS), "{e:?}");
    assert!(errors(&[(ANSWER_WITHIN_MS, "9501")])[0].starts_with(ANSWER_WITHIN_MS));
    assert!(errors(&[(ANSWER_WITHIN_MS, "499")])[0].starts_with(ANSWER_WITHIN_MS));
    let c = with(&[(ANSWER_WITHIN_MS, "500")]).unwrap().config;
    assert_eq!(c.upstream.timeout, Duration::from_millis(250));
    assert_eq!(default_upstream_timeout_ms(MAX_ANSWER_WITHIN_MS), 8000);
    let shown = c.describe();
    assert!(
        shown.contains(&(ANSWER_WITHIN_MS, "500".to_owned())),
        "{shown:?}"
    );
}

#[test]
fn spans_are_exported_only_when_an_otlp_endpoint_is_set() {
    assert_eq!(with(&[]).unwrap().config.traces, None);
    let c = with(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318/")])
        .unwrap()
        .config;
    let t = c.traces.unwrap();
    assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
    assert_eq!(t.service_name, "feishu-gate");
    let c = with(&[
        (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318"),
        (
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
            "https://traces.example/otlp",
        ),
        (OTEL_SERVICE_NAME, "approvals-gate"),
    ])
    .unwrap()
    .config;
    let t = c.traces.as_ref().unwrap();
    assert_eq!(t.endpoint, "https://traces.example/otlp");
    assert_eq!(t.service_name, "approvals-gate");
    let shown = c.describe();
    assert!(shown.contains(&(OTEL_SERVICE_NAME, "approvals-gate".to_owned())));
    let disabled = with(&[
        (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318"),
        (OTEL_SDK_DISABLED, "true"),
    ]);
    assert_eq!(disabled.unwrap().config.traces, None);
    let e = errors(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "collector:4318")]);
    assert!(e[0].starts_with(OTEL_EXPORTER_OTLP_ENDPOINT), "{e:?}");
    let e = errors(&[
        (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4317"),
        (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
    ]);
    assert!(e[0].starts_with(OTEL_EXPORTER_OTLP_PROTOCOL), "{e:?}");
    // Not our prefix: never reported as an unknown setting.
    let w = with(&[(OTEL_EXPORTER_OTLP_HEADERS_FOR_TEST, "x=1")])
        .unwrap()
        .warnings;
    assert!(w.iter().all(|w| !w.contains("OTEL_")), "{w:?}");
    let c = with(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://user:pw@collector:4318")])
        .unwrap()
        .config;
    let shown = format!("{:?}", c.describe());
    assert!(!shown.contains("pw"), "{shown}");
}

const OTEL_EXPORTER_OTLP_HEADERS_FOR_TEST: &str = "OTEL_EXPORTER_OTLP_HEADERS";

#[test]
fn secrets_from_files_and_rotation_lists() {
    let (_dir, tf) = secret_file("new-token,old-token\n");
    let tf = tf.as_str();
    let c = Config::from_vars([
        (UPSTREAM_URL, "http://u/"),
        ("FEISHU_GATE_TOKEN_FILE", tf),
        (KEY, " k1 , k2 "),
    ])
    .unwrap()
    .config;
    assert!(c.callback.tokens.accepts("new-token") && c.callback.tokens.accepts("old-token"));
    assert!(!c.callback.tokens.accepts("new-token\n"));
    assert_eq!(c.callback.keys.len(), 2);

    let e = errors(&[("FEISHU_GATE_TOKEN_FILE", tf)]);
    assert_eq!(
        e,
        vec![format!(
            "{TOKEN}: set either {TOKEN} or {TOKEN}_FILE, not both"
        )]
    );
    let e = Config::from_vars([
        (UPSTREAM_URL, "http://u/"),
        ("FEISHU_GATE_TOKEN_FILE", "/nonexistent/t"),
    ])
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "FEISHU_GATE_TOKEN_FILE: cannot read /nonexistent/t: No such file or directory (os error 2)"
    );
}

#[test]
fn every_problem_stays_on_one_line_whatever_the_path() {
    let e = errors(&[
        ("FEISHU_GATE_KEY_FILE", "/no\nsuch\r/key"),
        (UPSTREAM_CA_FILE, "/etc\u{7}/ca.pem"),
    ]);
    assert_eq!(e.len(), 2, "{e:?}");
    for line in &e {
        assert!(!line.contains(['\n', '\r', '\u{7}']), "{line:?}");
    }
    assert_eq!(
        e[1],
        "FEISHU_GATE_KEY_FILE: cannot read /no\\nsuch\\r/key: No such file or directory (os error 2)"
    );
}

#[test]
fn both_files_of_a_pair_are_checked() {
    let e = errors(&[(TLS_CERT, "/no/cert.pem"), (TLS_KEY, "/no/key.pem")]);
    assert_eq!(
        e,
        vec![
            format!("{TLS_CERT}: cannot read /no/cert.pem: No such file or directory (os error 2)"),
            format!("{TLS_KEY}: cannot read /no/key.pem: No such file or directory (os error 2)"),
        ]
    );
}

#[test]
fn secret_files_must_be_regular_files_of_sane_size() {
    for (path, problem) in [
        ("/dev/zero", "not a regular file"),
        ("/", "not a regular file"),
    ] {
        let e = errors(&[("FEISHU_GATE_KEY_FILE", path)]);
        assert_eq!(
            e,
            vec![format!(
                "FEISHU_GATE_KEY_FILE: cannot read {path}: {problem}"
            )]
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'k'; 64 * 1024 + 1]).unwrap();
    let e = errors(&[("FEISHU_GATE_KEY_FILE", big.to_str().unwrap())]);
    assert!(e[0].ends_with("larger than 65536 bytes"), "{e:?}");
    let fits = dir.path().join("fits");
    std::fs::write(&fits, vec![b'k'; 64 * 1024]).unwrap();
    assert!(with(&[("FEISHU_GATE_KEY_FILE", fits.to_str().unwrap())]).is_ok());
}

#[test]
fn enumerations_ignore_case_and_take_locale_names() {
    for (value, lang) in [
        ("ZH", Lang::Zh),
        ("zh_CN", Lang::Zh),
        ("zh-Hans", Lang::Zh),
        ("zh_CN.UTF-8", Lang::Zh),
        ("En", Lang::En),
        ("en_US.UTF-8", Lang::En),
        ("en-GB", Lang::En),
    ] {
        assert_eq!(with(&[(LANG, value)]).unwrap().config.lang, lang, "{value}");
    }
    assert_eq!(
        errors(&[(LANG, "fr_FR")]),
        vec![format!(
            "{LANG}: \"fr_FR\" is not zh or en (zh_CN and en_US also do)"
        )]
    );
    assert_eq!(
        with(&[(LOG_FORMAT, "TEXT")]).unwrap().config.log_format,
        LogFormat::Text
    );
    assert_eq!(
        with(&[(LOG_FORMAT, "Json")]).unwrap().config.log_format,
        LogFormat::Json
    );
}

#[test]
fn settings_that_work_but_mislead_are_warned_about() {
    let warned = |extra: &[(&str, &str)], about: &str| {
        with(extra)
            .unwrap()
            .warnings
            .iter()
            .any(|w| w.starts_with(about))
    };
    let secure = [
        (UPSTREAM_OK, "/code==0"),
        (KEY, "k"),
        (UPSTREAM_URL, "http://127.0.0.1:8080/"),
    ];
    assert!(with(&secure).unwrap().warnings.is_empty());
    assert!(warned(&[(ALLOW_PLAINTEXT, "true")], ALLOW_PLAINTEXT));
    assert!(!warned(
        &[(ALLOW_PLAINTEXT, "true"), (KEY, "k")],
        ALLOW_PLAINTEXT
    ));
    assert!(warned(&[], UPSTREAM_OK));
    assert!(warned(
        &[(UPSTREAM_TIMEOUT_MS, "9000"), (SHUTDOWN_GRACE_MS, "5000")],
        UPSTREAM_TIMEOUT_MS
    ));
    assert!(!warned(
        &[(UPSTREAM_TIMEOUT_MS, "5000")],
        UPSTREAM_TIMEOUT_MS
    ));
    assert!(warned(&[], "neither"));
    assert!(!warned(&[(KEY, "k")], "neither"));
    for (url, warns) in [
        ("http://legacy.internal/", true),
        ("http://10.0.0.5:8080/", true),
        ("https://legacy.internal/", false),
        ("http://localhost:8080/", false),
        ("http://[::1]:8080/", false),
    ] {
        assert_eq!(warned(&[(UPSTREAM_URL, url)], UPSTREAM_URL), warns, "{url}");
    }
}

#[test]
fn unknown_variables_warn_but_kubernetes_service_links_do_not() {
    let mut vars = minimal();
    vars.push(("FEISHU_GATE_UPSTREM_URL".into(), "x".into()));
    vars.push(("FEISHU_GATE_PORT".into(), "tcp://10.0.0.1:8443".into()));
    vars.push(("FEISHU_GATE_SERVICE_HOST".into(), "10.0.0.1".into()));
    vars.push((
        "FEISHU_GATE_METRICS_SERVICE_PORT_ADMIN".into(),
        "9901".into(),
    ));
    vars.push((
        "FEISHU_GATE_METRICS_PORT".into(),
        "tcp://10.0.0.2:9901".into(),
    ));
    vars.push((
        "FEISHU_GATE_METRICS_PORT_9901_TCP_ADDR".into(),
        "10.0.0.2".into(),
    ));
    let mut w = Config::from_vars(vars).unwrap().warnings;
    w.retain(|w| w.contains("is not a feishu-gate setting"));
    assert_eq!(
        w,
        vec![
            "FEISHU_GATE_UPSTREM_URL is not a feishu-gate setting and is ignored \
             (did you mean FEISHU_GATE_UPSTREAM_URL?)"
        ]
    );
}

#[test]
fn misc_validation() {
    assert!(errors(&[(CALLBACK_PATH, "feishu")])[0].starts_with(CALLBACK_PATH));
    assert!(errors(&[(ADMIN_LISTEN, "0.0.0.0:8443")])[0].starts_with(ADMIN_LISTEN));
    assert!(with(&[(LISTEN, "127.0.0.1:0"), (ADMIN_LISTEN, "127.0.0.1:0")]).is_ok());
    assert!(errors(&[(ALLOW_PLAINTEXT, "maybe")])[0].starts_with(ALLOW_PLAINTEXT));
    assert!(errors(&[(MAX_BODY_BYTES, "10")])[0].starts_with(MAX_BODY_BYTES));
    assert!(errors(&[(MAX_CONNECTIONS, "0")])[0].starts_with(MAX_CONNECTIONS));
    assert_eq!(
        with(&[(MAX_CONNECTIONS, "8")])
            .unwrap()
            .config
            .server
            .max_connections,
        8
    );
    assert!(errors(&[(WORKERS, "0")])[0].starts_with(WORKERS));
    assert!(errors(&[(WORKERS, "1025")])[0].starts_with(WORKERS));
    assert_eq!(
        with(&[(WORKERS, "3")]).unwrap().config.server.workers,
        Some(3)
    );
    assert_eq!(with(&[]).unwrap().config.server.workers, None);
    let c = with(&[
        (RATE_LIMIT_RPS, "0"),
        (USER_RATE_LIMIT_RPS, "2"),
        (DEDUP_TTL_SECS, "0"),
        (LANG, "en"),
    ])
    .unwrap()
    .config;
    assert_eq!(c.pipeline.rate_limit, None);
    assert_eq!(
        c.pipeline.user_rate_limit,
        Some(RateLimit {
            per_second: 2,
            burst: 4
        })
    );
    assert_eq!(c.dedup.ttl, None);
    assert_eq!(c.lang, Lang::En);
}

#[test]
fn the_openapi_credentials_come_in_pairs_and_the_secret_never_shows() {
    assert!(with(&[]).unwrap().config.openapi.is_none());
    let both = with(&[(APP_ID, "cli_a1"), (APP_SECRET, "s3cret-app-secret")]).unwrap();
    let openapi = both.config.openapi.as_ref().unwrap();
    assert_eq!(openapi.base.to_string(), "https://open.feishu.cn/");
    assert!(!format!("{openapi:?}").contains("s3cret-app-secret"));
    let shown: Vec<_> = both.config.describe();
    assert!(shown.contains(&(APP_SECRET, "<redacted>".to_owned())));
    assert!(shown.iter().all(|(_, v)| !v.contains("s3cret-app-secret")));
    assert_eq!(
        errors(&[(APP_ID, "cli_a1")]),
        vec![format!("{APP_SECRET}: is required with {APP_ID}")]
    );
    assert_eq!(
        errors(&[(APP_SECRET, "x")]),
        vec![format!("{APP_ID}: is required with {APP_SECRET}")]
    );
    let lark = with(&[
        (APP_ID, "cli_a1"),
        (APP_SECRET, "x"),
        (OPENAPI_URL, "https://open.larksuite.com"),
    ])
    .unwrap();
    let base = &lark.config.openapi.unwrap().base;
    assert_eq!(base.host(), Some("open.larksuite.com"));
    let bad = errors(&[
        (APP_ID, "a"),
        (APP_SECRET, "x"),
        (OPENAPI_URL, "open.feishu.cn"),
    ]);
    assert_eq!(bad.len(), 1);
    assert!(bad[0].starts_with(OPENAPI_URL), "{bad:?}");
    let alone = with(&[(OPENAPI_URL, "https://open.larksuite.com")]).unwrap();
    assert!(
        alone.warnings.iter().any(|w| w.starts_with(OPENAPI_URL)),
        "{:?}",
        alone.warnings
    );
}

#[test]
fn listeners_on_one_port_are_refused_when_one_takes_every_address() {
    let clash = errors(&[(LISTEN, "0.0.0.0:9000"), (ADMIN_LISTEN, "127.0.0.1:9000")]);
    assert_eq!(
        clash,
        vec![format!(
            "{ADMIN_LISTEN}: must not share a port with {LISTEN} (0.0.0.0:9000)"
        )]
    );
    assert!(with(&[(LISTEN, "127.0.0.1:9000"), (ADMIN_LISTEN, "127.0.0.2:9000")]).is_ok());
    assert!(with(&[(LISTEN, "0.0.0.0:0"), (ADMIN_LISTEN, "0.0.0.0:0")]).is_ok());
    let maybe = errors(&[(ALLOW_PLAINTEXT, "maybe")]);
    assert_eq!(
        maybe,
        vec![format!(
            "{ALLOW_PLAINTEXT}: \"maybe\" is not true or false (yes/no, on/off and 1/0 also do)"
        )]
    );
}
