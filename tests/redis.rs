//! The duplicate memory shared on Redis: two real gateway processes, one real
//! `redis-server` and one upstream, all on loopback. A decision is delivered
//! once whichever replica its copies reach, after restarts too; Redis failing
//! costs what `REDIS_FAILURE` says and no more, and suppression resumes by
//! itself when Redis returns.

mod support;

use std::time::{Duration, Instant};

use support::binary::command;
use support::certs::{Ca, write_file};
use support::redis_server::Redis;
use support::*;

const PREFIX: &str = "feishu-gate:";

/// A distinct decision per `n`.
fn decision(n: u32) -> String {
    seal(
        KEY,
        &callback_with(TOKEN, "instance_id", &format!("\"inst-{n}\"")),
    )
}

async fn replica(up: &Upstream, redis: &Redis, extra: &[(&str, &str)]) -> Binary {
    let url = redis.url();
    let mut vars = vec![("FEISHU_GATE_REDIS_URL", url.as_str())];
    vars.extend_from_slice(extra);
    Binary::start(&up.url(), &vars).await
}

/// The keys of decisions, without the fencing counter and the leases beside them.
fn decision_keys(redis: &Redis) -> Vec<String> {
    let mut keys = redis.keys(PREFIX);
    keys.retain(|k| k != &format!("{PREFIX}fence") && !k.ends_with(":lease"));
    keys
}

async fn send(gate: &Binary, body: &str) -> Answer {
    post(gate.addr, "/", body.to_owned(), &[]).await
}

#[tokio::test]
async fn copies_spread_over_replicas_are_delivered_once() {
    let redis = Redis::start();
    let up = Upstream::start(Reply::ok()).await;
    let a = replica(&up, &redis, &[]).await;
    let b = replica(&up, &redis, &[]).await;

    let body = decision(1);
    assert_eq!(send(&a, &body).await.status, 200);
    assert_eq!(up.count(), 1);
    let copy = send(&b, &body).await;
    assert_eq!(copy.status, 200, "{}", copy.text);
    assert_eq!(copy.json()["code"], 0, "{}", copy.text);
    assert_eq!(send(&b, &body).await.status, 200);
    assert_eq!(send(&a, &body).await.status, 200);
    assert_eq!(up.count(), 1, "delivered once across both replicas");

    let keys = decision_keys(&redis);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(redis.get(&keys[0]).as_deref(), Some("delivered"));
    let ttl = redis.ttl(&keys[0]);
    assert!(
        (590..=600).contains(&ttl),
        "remembered for DEDUP_TTL_SECS: {ttl}"
    );
    // The key is the Idempotency-Key the legacy system saw.
    let idempotency = up.received()[0].header("idempotency-key").unwrap();
    assert_eq!(keys[0], format!("{PREFIX}{idempotency}"));

    let m = b.metrics().await;
    // B's first copy was found in Redis, its second in its own memory.
    assert_eq!(duplicates(&m, "remembered", "shared"), 1.0, "{m}");
    assert_eq!(duplicates(&m, "remembered", "local"), 1.0);
    assert_eq!(
        metric(
            &m,
            r#"feishu_gate_redis_operations_total{op="claim",result="ok"}"#
        ),
        1.0
    );
    assert_eq!(metric(&m, "feishu_gate_redis_fallback"), 0.0);

    // A different decision is its own.
    assert_eq!(send(&b, &decision(2)).await.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn concurrent_copies_on_both_replicas_are_delivered_once_and_answered_alike() {
    let redis = Redis::start();
    let up = Upstream::start(Reply::ok().slow(Duration::from_millis(500))).await;
    let a = replica(&up, &redis, &[]).await;
    let b = replica(&up, &redis, &[]).await;

    let body = decision(1);
    let mut copies = Vec::new();
    for i in 0..6 {
        let gate = if i % 2 == 0 { a.addr } else { b.addr };
        let body = body.clone();
        copies.push(tokio::spawn(
            async move { post(gate, "/", body, &[]).await },
        ));
    }
    for copy in copies {
        let answer = copy.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert_eq!(answer.text, r#"{"code":0,"msg":"success"}"#);
    }
    assert_eq!(up.count(), 1);

    // The replica that did not deliver saw the other's claim and waited for it.
    let waited: f64 = [a.metrics().await, b.metrics().await]
        .iter()
        .map(|m| duplicates(m, "in_flight", "shared"))
        .sum();
    assert_eq!(waited, 1.0);

    // Concurrent copies of a refused decision are all answered as refused.
    up.set(Reply::json(409, r#"{"message":"already closed"}"#).slow(Duration::from_millis(500)));
    let body = decision(2);
    let (x, y) = tokio::join!(send(&a, &body), send(&b, &body));
    for answer in [&x, &y] {
        assert_eq!(answer.feishu_error(409), "already closed");
    }
}

#[tokio::test]
async fn a_refused_decision_is_not_remembered_and_its_retry_is_delivered() {
    let redis = Redis::start();
    let up = Upstream::start(Reply::json(503, r#"{"message":"maintenance"}"#)).await;
    let a = replica(&up, &redis, &[]).await;
    let b = replica(&up, &redis, &[]).await;

    let body = decision(1);
    assert_eq!(send(&a, &body).await.feishu_error(503), "maintenance");
    assert!(decision_keys(&redis).is_empty(), "the claim was released");
    up.set(Reply::ok());
    assert_eq!(send(&b, &body).await.status, 200);
    assert_eq!(up.count(), 2);
    assert_eq!(send(&a, &body).await.status, 200);
    assert_eq!(up.count(), 2);

    // A decision the legacy system had not answered in time is neither free nor
    // delivered: its copies wait for the exchange still under way, and are answered by
    // its verdict once it comes.
    up.set(Reply::ok().slow(Duration::from_secs(3)));
    let slow = replica(&up, &redis, &[("FEISHU_GATE_UPSTREAM_TIMEOUT_MS", "300")]).await;
    let body = decision(2);
    let started = Instant::now();
    assert_eq!(send(&slow, &body).await.status, 504);
    up.set(Reply::ok());
    assert_eq!(send(&b, &body).await.status, 200, "joined, then told");
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(up.count(), 3, "delivered once");
}

#[tokio::test]
async fn a_restarted_gateway_does_not_forget() {
    let redis = Redis::start();
    let up = Upstream::start(Reply::ok()).await;
    let body = decision(1);
    {
        let a = replica(&up, &redis, &[]).await;
        assert_eq!(send(&a, &body).await.status, 200);
    }
    // Every replica replaced, as in a rollout.
    let a = replica(&up, &redis, &[]).await;
    assert_eq!(send(&a, &body).await.status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn redis_killed_open_keeps_answering_and_recovers_by_itself() {
    let mut redis = Redis::start();
    let up = Upstream::start(Reply::ok()).await;
    let a = replica(&up, &redis, &[("RUST_LOG", "info")]).await;
    let b = replica(&up, &redis, &[]).await;
    assert_eq!(send(&a, &decision(1)).await.status, 200);

    redis.kill();
    let started = Instant::now();
    for n in 2..6 {
        let answer = send(&a, &decision(n)).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(up.count(), 5);
    // A's own memory still suppresses its own copies.
    assert_eq!(send(&a, &decision(2)).await.status, 200);
    assert_eq!(up.count(), 5);
    // A copy on the other replica is delivered again: the Idempotency-Key is
    // what tells the legacy system, and the metric what tells the operator.
    assert_eq!(send(&b, &decision(2)).await.status, 200);
    assert_eq!(up.count(), 6);
    let m = a.metrics().await;
    assert!(
        metric(
            &m,
            r#"feishu_gate_redis_operations_total{op="claim",result="error"}"#
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "feishu_gate_redis_fallback"), 1.0);

    redis.restart();
    // Each replica finds out on its next probe, which a callback triggers.
    for gate in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert_eq!(send(gate, &decision(fresh())).await.status, 200);
            if metric(&gate.metrics().await, "feishu_gate_redis_fallback") == 0.0 {
                break;
            }
            assert!(Instant::now() < deadline, "no recovery");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Suppression across replicas works again.
    let body = decision(50);
    assert_eq!(send(&a, &body).await.status, 200);
    let before = up.count();
    assert_eq!(send(&b, &body).await.status, 200);
    assert_eq!(up.count(), before, "suppressed across replicas again");

    // One warning when the episode began, one note when it ended. Lines reach the log
    // through the gateway's writer thread, a moment after the answer.
    a.line("the recovery note", |l| {
        l.contains("shared duplicate memory reachable again")
    })
    .await;
    let log = a.log_tail().join("\n");
    assert_eq!(
        log.matches("shared duplicate memory unreachable").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("shared duplicate memory reachable again")
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test]
async fn redis_stopped_closed_answers_503_in_time_and_recovers() {
    let redis = Redis::start();
    let up = Upstream::start(Reply::ok()).await;
    let a = replica(&up, &redis, &[("FEISHU_GATE_REDIS_FAILURE", "closed")]).await;
    assert_eq!(send(&a, &decision(1)).await.status, 200);

    // A stopped server keeps its connections open and answers nothing: the
    // budget, not a refused connection, is what ends each call.
    redis.signal("STOP");
    for n in 2..5 {
        let started = Instant::now();
        let answer = send(&a, &decision(n)).await;
        let message = answer.feishu_error(503);
        assert!(message.contains("already submitted"), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(up.count(), 1, "nothing delivered while closed");
    let m = a.metrics().await;
    assert!(
        metric(
            &m,
            r#"feishu_gate_redis_operations_total{op="claim",result="timeout"}"#
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "feishu_gate_redis_fallback"), 1.0);
    assert_eq!(
        metric(
            &m,
            r#"feishu_gate_callbacks_total{outcome="memory_unavailable"}"#
        ),
        3.0
    );
    // Readiness does not depend on Redis.
    assert_eq!(a.readiness().await, Some(200));

    redis.signal("CONT");
    let deadline = Instant::now() + Duration::from_secs(10);
    while send(&a, &decision(2)).await.status != 200 {
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(send(&a, &decision(1)).await.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn redis_stopped_open_answers_in_time() {
    let redis = Redis::start();
    let up = Upstream::start(Reply::ok()).await;
    let a = replica(&up, &redis, &[]).await;
    assert_eq!(send(&a, &decision(1)).await.status, 200);
    redis.signal("STOP");
    for n in 2..6 {
        let started = Instant::now();
        assert_eq!(send(&a, &decision(n)).await.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(up.count(), 5);
    redis.signal("CONT");
}

/// Copies of fresh decisions sent to both replicas at once, without pause, while
/// Redis is stopped for 1.5 s, resumed, killed for 2 s and started again (empty). Every answer
/// with its time; the replicas, the upstream and Redis for a look afterwards.
async fn load_through_an_outage(failure: &str) -> (Vec<(u16, Duration)>, Upstream, [Binary; 2]) {
    let mut redis = Redis::start();
    let up = Upstream::start(Reply::ok().slow(Duration::from_millis(20))).await;
    let extra = [
        ("FEISHU_GATE_REDIS_FAILURE", failure),
        ("FEISHU_GATE_UPSTREAM_TIMEOUT_MS", "1500"),
        // The load is faster than approvers; the limit is not what is tested.
        ("FEISHU_GATE_RATE_LIMIT_RPS", "0"),
    ];
    let a = replica(&up, &redis, &extra).await;
    let b = replica(&up, &redis, &extra).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (a, b, stop) = (a.addr, b.addr, stop.clone());
        workers.spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = decision(fresh());
                let timed = |addr| {
                    let body = body.clone();
                    async move {
                        let started = Instant::now();
                        let answer = post(addr, "/", body, &[]).await;
                        (answer.status, started.elapsed())
                    }
                };
                let (x, y) = tokio::join!(timed(a), timed(b));
                seen.extend([x, y]);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        });
    }
    let pause = |ms| tokio::time::sleep(Duration::from_millis(ms));
    pause(500).await;
    redis.signal("STOP");
    pause(1500).await;
    redis.signal("CONT");
    pause(500).await;
    // Down for longer than a new decision waits for it (1 s): the mode answers.
    redis.kill();
    pause(2000).await;
    redis.restart();
    pause(1500).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = Vec::new();
    while let Some(w) = workers.join_next().await {
        seen.extend(w.unwrap());
    }
    // Redis is dropped (killed) here only after the replicas have been looked at.
    let after = [a, b];
    for gate in &after {
        let m = gate.metrics().await;
        let failed: f64 = ["claim", "wait", "send", "renew", "remember", "release"]
            .iter()
            .flat_map(|op| {
                ["error", "timeout"].map(|result| {
                    metric(
                        &m,
                        &format!(
                            r#"feishu_gate_redis_operations_total{{op="{op}",result="{result}"}}"#
                        ),
                    )
                })
            })
            .sum();
        assert!(failed >= 1.0, "the outage was noticed: {m}");
    }
    // Suppression resumes: each replica finds out on its next probe.
    for gate in &after {
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(&gate.metrics().await, "feishu_gate_redis_fallback") != 0.0 {
            assert!(Instant::now() < deadline, "no recovery");
            let _ = send(gate, &decision(fresh())).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let body = decision(fresh());
    assert_eq!(send(&after[0], &body).await.status, 200);
    let before = up.count();
    assert_eq!(send(&after[1], &body).await.status, 200);
    assert_eq!(up.count(), before, "suppressed across replicas again");
    drop(redis);
    (seen, up, after)
}

/// Deliveries per Idempotency-Key, more than one.
fn delivered_twice(up: &Upstream) -> Vec<(String, usize)> {
    let mut by_key = std::collections::HashMap::<String, usize>::new();
    for r in up.received() {
        *by_key
            .entry(r.header("idempotency-key").unwrap())
            .or_default() += 1;
    }
    by_key.into_iter().filter(|(_, n)| *n > 1).collect()
}

/// Answers by status, and the longest wait.
fn summary(seen: &[(u16, Duration)]) -> (std::collections::BTreeMap<u16, usize>, Duration) {
    let mut by_status = std::collections::BTreeMap::new();
    for (status, _) in seen {
        *by_status.entry(*status).or_default() += 1;
    }
    let longest = seen.iter().map(|(_, t)| *t).max().unwrap_or_default();
    (by_status, longest)
}

#[tokio::test]
async fn redis_stopped_and_killed_mid_load_open_keeps_answering_in_time() {
    let (seen, _, _) = load_through_an_outage("open").await;
    let (by_status, longest) = summary(&seen);
    assert!(seen.len() > 50, "{by_status:?}");
    // A copy that saw the other replica's claim never delivers on a failed poll: when
    // Redis stops under it, it waits, and is answered 504 if its deadline comes first.
    assert!(
        by_status.keys().all(|s| [200, 504].contains(s)),
        "{by_status:?}"
    );
    assert!(by_status[&200] > by_status.get(&504).copied().unwrap_or(0));
    // The deadline is 1.5 s (UPSTREAM_TIMEOUT_MS); Feishu's is 10 s.
    assert!(longest < Duration::from_millis(2500), "{longest:?}");
}

#[tokio::test]
async fn redis_stopped_and_killed_mid_load_closed_never_delivers_twice() {
    let (seen, up, _) = load_through_an_outage("closed").await;
    let (by_status, longest) = summary(&seen);
    assert!(seen.len() > 50, "{by_status:?}");
    // 503 for a new decision Redis cannot be asked about; 504 for a copy still waiting
    // on the other replica's claim at its deadline.
    assert!(
        by_status.keys().all(|s| [200, 503, 504].contains(s)),
        "{by_status:?}"
    );
    assert!(
        by_status.contains_key(&503) && by_status.contains_key(&200),
        "{by_status:?}"
    );
    assert!(longest < Duration::from_millis(2500), "{longest:?}");
    assert_eq!(delivered_twice(&up), vec![]);
}

#[tokio::test]
async fn the_redis_password_never_shows() {
    const PASSWORD: &str = "r3dis-Pa55word";
    let redis = Redis::with_password(PASSWORD);
    let up = Upstream::start(Reply::ok()).await;

    let (upstream_url, redis_url) = (up.url(), redis.url());
    let out = command(
        &["check-config"],
        &[
            ("FEISHU_GATE_UPSTREAM_URL", &upstream_url),
            ("FEISHU_GATE_TOKEN", TOKEN),
            ("FEISHU_GATE_REDIS_URL", &redis_url),
        ],
    )
    .output()
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "FEISHU_GATE_REDIS_URL=redis://<redacted>@127.0.0.1:{}/",
            redis.port
        )),
        "{text}"
    );
    assert!(!text.contains(PASSWORD), "{text}");

    // With the password the replicas share their memory.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-url");
    std::fs::write(&file, format!("{}\n", redis.url())).unwrap();
    let file = file.to_str().unwrap();
    let a = Binary::start(
        &up.url(),
        &[("FEISHU_GATE_REDIS_URL_FILE", file), ("RUST_LOG", "debug")],
    )
    .await;
    let b = Binary::start(&up.url(), &[("FEISHU_GATE_REDIS_URL_FILE", file)]).await;
    assert_eq!(send(&a, &decision(1)).await.status, 200);
    assert_eq!(send(&b, &decision(1)).await.status, 200);
    assert_eq!(up.count(), 1);

    // A wrong one is refused by Redis, and neither it nor the right one shows.
    const WRONG: &str = "wr0ng-Pa55word";
    let wrong = format!("redis://:{WRONG}@127.0.0.1:{}/", redis.port);
    let c = Binary::start(
        &up.url(),
        &[
            ("FEISHU_GATE_REDIS_URL", wrong.as_str()),
            ("RUST_LOG", "debug"),
        ],
    )
    .await;
    assert_eq!(send(&c, &decision(2)).await.status, 200);
    let m = c.metrics().await;
    assert_eq!(metric(&m, "feishu_gate_redis_fallback"), 1.0, "{m}");
    c.line("the unreachable warning", |l| {
        l.contains("shared duplicate memory unreachable")
    })
    .await;
    let log = format!("{}\n{}", a.log_tail().join("\n"), c.log_tail().join("\n"));
    for secret in [PASSWORD, WRONG] {
        assert!(!log.contains(secret), "{log}");
        assert!(!m.contains(secret));
        assert!(!a.metrics().await.contains(secret));
    }
}

/// A number not used before in this process, for fresh decisions.
fn fresh() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(1000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A private CA and a certificate it signed for `localhost`, as PEM files in `dir`:
/// (CA file, certificate chain file, key file).
fn private_ca(dir: &std::path::Path) -> (String, String, String) {
    let ca = Ca::root("redis test CA");
    let leaf = ca.server_leaf("redis");
    (
        write_file(dir, "ca.pem", &ca.pem()),
        write_file(dir, "redis.pem", &leaf.chain_pem),
        write_file(dir, "redis.key", &leaf.key_pem),
    )
}

#[tokio::test]
async fn rediss_with_a_private_ca_shares_the_memory_and_refuses_other_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(dir.path());
    let redis = Redis::with_tls(&cert, &key);
    let up = Upstream::start(Reply::ok()).await;
    let trusted = [("FEISHU_GATE_REDIS_CA_FILE", ca.as_str())];
    let a = replica(&up, &redis, &trusted).await;
    let b = replica(&up, &redis, &trusted).await;
    let body = decision(1);
    assert_eq!(send(&a, &body).await.status, 200);
    assert_eq!(send(&b, &body).await.status, 200);
    assert_eq!(up.count(), 1, "shared over TLS");
    assert_eq!(duplicates(&b.metrics().await, "remembered", "shared"), 1.0);

    // Trusting another CA, or only the system's roots, the server's certificate is
    // refused: no memory is shared, and REDIS_FAILURE=closed says so.
    let elsewhere = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = private_ca(elsewhere.path());
    for extra in [
        vec![("FEISHU_GATE_REDIS_CA_FILE", other_ca.as_str())],
        vec![],
    ] {
        let mut extra = extra;
        extra.push(("FEISHU_GATE_REDIS_FAILURE", "closed"));
        let untrusted = replica(&up, &redis, &extra).await;
        untrusted_answer(&untrusted).await;
        untrusted
            .line("the unreachable warning", |l| {
                l.contains("shared duplicate memory unreachable")
            })
            .await;
    }
    assert_eq!(up.count(), 1);
}

async fn untrusted_answer(gate: &Binary) {
    let answer = send(gate, &decision(2)).await;
    answer.feishu_error(503);
}

#[test]
fn a_ca_file_needs_rediss_and_must_be_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let junk = junk.to_str().unwrap();
    let check = |url: &str| {
        command(
            &["check-config"],
            &[
                ("FEISHU_GATE_UPSTREAM_URL", "http://127.0.0.1:1/"),
                ("FEISHU_GATE_TOKEN", TOKEN),
                ("FEISHU_GATE_REDIS_URL", url),
                ("FEISHU_GATE_REDIS_CA_FILE", junk),
            ],
        )
        .output()
        .unwrap()
    };
    let out = check("redis://:pw-123@127.0.0.1:1/");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FEISHU_GATE_REDIS_CA_FILE: needs a rediss:// FEISHU_GATE_REDIS_URL"),
        "{err}"
    );
    let out = check("rediss://:pw-123@127.0.0.1:1/");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.starts_with("FEISHU_GATE_REDIS_CA_FILE: "), "{err}");
    assert!(!err.contains("pw-123"), "{err}");
}
