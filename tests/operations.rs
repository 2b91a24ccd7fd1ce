//! Operations: admin endpoints, metrics, rate limits, duplicate suppression,
//! secret rotation, draining. Real gateway, real upstream, real sockets.

mod support;

use std::time::Duration;

use feishu_gate::testing::config;
use support::*;

#[tokio::test]
async fn admin_endpoints_and_metrics_move_with_real_callbacks() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[]).await;
    assert_eq!(get(gate.admin, "/livez").await.status, 200);
    assert_eq!(get(gate.admin, "/readyz").await.status, 200);
    assert_eq!(get(gate.admin, "/nope").await.status, 404);
    // The callback port serves callbacks only.
    assert_eq!(get(gate.addr, "/metrics").await.status, 404);

    assert_eq!(gate.post(callback(TOKEN)).await.status, 200);
    gate.post(callback("wrong")).await.feishu_error(401);
    up.set(Reply::json(500, "{}"));
    gate.post(callback(TOKEN)).await.feishu_error(500);

    let m = gate.metrics().await;
    assert_eq!(
        metric(&m, r#"feishu_gate_callbacks_total{outcome="delivered"}"#),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, r#"feishu_gate_callbacks_total{outcome="unauthorized"}"#),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            r#"feishu_gate_callbacks_total{outcome="upstream_refused"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&m, r#"feishu_gate_upstream_errors_total{kind="status"}"#),
        1.0
    );
    // The kinds the alerts watch are there at 0 before their first failure.
    for kind in ["connect", "dropped", "timeout", "not_ok"] {
        let series = format!(r#"feishu_gate_upstream_errors_total{{kind="{kind}"}}"#);
        assert_eq!(metric(&m, &series), 0.0, "{series}");
    }
    assert_eq!(
        metric(&m, r#"feishu_gate_callbacks_total{outcome="not_found"}"#),
        1.0
    );
    assert_eq!(
        metric(&m, "feishu_gate_callback_duration_seconds_count"),
        4.0
    );
    assert_eq!(
        metric(&m, "feishu_gate_upstream_duration_seconds_count"),
        2.0
    );
    assert_eq!(metric(&m, "feishu_gate_callbacks_in_flight"), 0.0);
    assert_eq!(metric(&m, "feishu_gate_ready"), 1.0);
    for deadline in ["3.0", "5.0", "10.0"] {
        let series = format!(r#"feishu_gate_callback_duration_seconds_bucket{{le="{deadline}"}}"#);
        assert_eq!(metric(&m, &series), 4.0, "{series} in {m}");
    }
    assert!(m.contains(&format!(
        r#"feishu_gate_build_info{{version="{}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    )));
    assert_eq!(
        metric(&m, "feishu_gate_tls_certificate_expiry_timestamp_seconds"),
        0.0,
        "0 without TLS"
    );
    assert!(!m.contains(TOKEN) && !m.contains("inst-1") && !m.contains("CODE-1"));
}

#[tokio::test]
async fn a_burst_over_the_global_limit_gets_429_and_only_the_allowed_reach_upstream() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(
        &up.url(),
        &[
            (config::RATE_LIMIT_RPS, "1"),
            (config::RATE_LIMIT_BURST, "3"),
        ],
    )
    .await;
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..10 {
        let answer = gate
            .post(callback_with(TOKEN, "task_id", &format!("\"t{i}\"")))
            .await;
        match answer.status {
            200 => ok += 1,
            429 => {
                answer.feishu_error(429);
                let retry: u64 = answer.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // The bucket refills at 1/s, so a slow test run may let one more through.
    assert!((3..=4).contains(&ok), "{ok} allowed");
    assert_eq!(ok + limited, 10);
    assert_eq!(up.count(), ok);
    let m = gate.metrics().await;
    assert_eq!(
        metric(&m, r#"feishu_gate_rate_limited_total{scope="global"}"#),
        limited as f64
    );
}

#[tokio::test]
async fn a_flood_of_bad_tokens_spends_none_of_the_global_limit() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(
        &up.url(),
        &[
            (config::RATE_LIMIT_RPS, "1"),
            (config::RATE_LIMIT_BURST, "2"),
        ],
    )
    .await;
    let mut junk = tokio::task::JoinSet::new();
    for i in 0..60 {
        let addr = gate.addr;
        junk.spawn(async move {
            let body = callback_with("not-the-token", "task_id", &format!("\"j{i}\""));
            post(addr, "/", body, &[]).await.status
        });
    }
    while let Some(status) = junk.join_next().await {
        assert_eq!(
            status.unwrap(),
            401,
            "junk is refused for its token, not its rate"
        );
    }
    for i in 0..2 {
        let answer = gate
            .post(callback_with(TOKEN, "task_id", &format!("\"real{i}\"")))
            .await;
        assert_eq!(answer.status, 200, "real callback {i} after the flood");
    }
    assert_eq!(up.count(), 2);
    let m = gate.metrics().await;
    assert_eq!(
        metric(&m, r#"feishu_gate_rate_limited_total{scope="global"}"#),
        0.0
    );
}

#[tokio::test]
async fn one_approver_is_limited_while_another_is_not() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(
        &up.url(),
        &[
            (config::USER_RATE_LIMIT_RPS, "1"),
            (config::USER_RATE_LIMIT_BURST, "1"),
        ],
    )
    .await;
    assert_eq!(
        gate.post(callback_with(TOKEN, "user_id", "\"alice\""))
            .await
            .status,
        200
    );
    let again = gate
        .post(callback_with(TOKEN, "user_id", "\"alice\""))
        .await;
    again.feishu_error(429);
    assert!(again.headers.contains_key("retry-after"));
    assert_eq!(
        gate.post(callback_with(TOKEN, "user_id", "\"bob\""))
            .await
            .status,
        200
    );
    assert_eq!(up.count(), 2);
    // A bad token never touches the per-approver state.
    gate.post(callback_with("wrong", "user_id", "\"carol\""))
        .await
        .feishu_error(401);
    assert_eq!(
        gate.post(callback_with(TOKEN, "user_id", "\"carol\""))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn concurrent_copies_of_one_decision_reach_the_upstream_once() {
    let up = Upstream::start(Reply::ok().slow(Duration::from_millis(600))).await;
    let gate = Gate::start(
        &up.url(),
        &[(config::KEY, KEY), (config::DEDUP_TTL_SECS, "600")],
    )
    .await;
    let copies: Vec<String> = (0..8).map(|_| seal(KEY, &callback(TOKEN))).collect();
    assert!(
        copies.windows(2).all(|w| w[0] != w[1]),
        "fresh IV for every copy"
    );
    let answers = futures_join(copies.into_iter().map(|body| {
        let addr = gate.addr;
        tokio::spawn(async move { post(addr, "/", body, &[]).await })
    }))
    .await;
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.text);
    }
    assert_eq!(up.count(), 1);

    // Later copy: answered from memory.
    assert_eq!(gate.post(seal(KEY, &callback(TOKEN))).await.status, 200);
    assert_eq!(up.count(), 1);
    let m = gate.metrics().await;
    assert_eq!(duplicates(&m, "in_flight", "local"), 7.0, "{m}");
    assert_eq!(duplicates(&m, "remembered", "local"), 1.0);

    // A different decision on the same task is delivered.
    let reject = callback(TOKEN).replace("APPROVE", "REJECT");
    assert_eq!(gate.post(seal(KEY, &reject)).await.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn a_failed_delivery_is_not_remembered_and_waiters_share_its_failure() {
    let up =
        Upstream::start(Reply::json(503, r#"{"message":"busy"}"#).slow(Duration::from_millis(400)))
            .await;
    let gate = Gate::start(&up.url(), &[(config::DEDUP_TTL_SECS, "600")]).await;
    let answers = futures_join((0..3).map(|_| {
        let addr = gate.addr;
        tokio::spawn(async move { post(addr, "/", callback(TOKEN), &[]).await })
    }))
    .await;
    for a in &answers {
        assert_eq!(a.feishu_error(503), "busy");
    }
    assert_eq!(up.count(), 1);
    up.set(Reply::ok());
    assert_eq!(gate.post(callback(TOKEN)).await.status, 200);
    assert_eq!(up.count(), 2);
    assert_eq!(gate.post(callback(TOKEN)).await.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn rotated_tokens_and_keys_are_accepted_and_others_are_not() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(
        &up.url(),
        &[
            (config::TOKEN, "new-token,old-token"),
            (config::KEY, "new-key, old-key"),
        ],
    )
    .await;
    for (token, key) in [
        ("new-token", "new-key"),
        ("old-token", "old-key"),
        ("old-token", "new-key"),
    ] {
        let body = callback_with(token, "task_id", &format!("\"{token}-{key}\""));
        assert_eq!(
            gate.post(seal(key, &body)).await.status,
            200,
            "{token} {key}"
        );
    }
    gate.post(seal("other-key", &callback("new-token")))
        .await
        .feishu_error(401);
    gate.post(seal("new-key", &callback("other-token")))
        .await
        .feishu_error(401);
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn draining_finishes_in_flight_callbacks_and_refuses_new_connections() {
    let up = Upstream::start(Reply::ok().slow(Duration::from_millis(800))).await;
    let mut gate = Gate::start(&up.url(), &[]).await;
    let addr = gate.addr;
    let in_flight = tokio::spawn(async move { post(addr, "/", callback(TOKEN), &[]).await });
    // Wait until the callback is with the upstream's handler, not just connecting.
    for _ in 0..100 {
        if up.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(up.count(), 1);
    let drained = gate.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(gate.admin, "/readyz").await.status, 503);
    assert_eq!(get(gate.admin, "/livez").await.status, 200);
    assert!(
        tokio::net::TcpStream::connect(gate.addr).await.is_err(),
        "listener closed"
    );
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn draining_closes_idle_connections_on_every_worker_without_waiting_out_the_grace() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let up = Upstream::start(Reply::ok()).await;
    let mut gate = Gate::start(
        &up.url(),
        &[(config::WORKERS, "2"), (config::SHUTDOWN_GRACE_MS, "30000")],
    )
    .await;
    // Connections go to the worker serving the fewest, so two land on each.
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
        stream
            .write_all(b"GET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 404"), "{:?}", &buf[..n]);
        idle.push(stream);
    }
    let drained = gate.shutdown();
    // Well inside both the grace and the 5 s an idle connection is kept.
    let soon = Duration::from_secs(2);
    for (i, mut stream) in idle.into_iter().enumerate() {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(soon, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("idle connection {i} still open while draining"));
        assert!(matches!(read, Ok(0) | Err(_)), "connection {i}: {read:?}");
    }
    tokio::time::timeout(soon, drained)
        .await
        .expect("drained long before the 30 s grace")
        .unwrap();
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles.collect::<Vec<_>>() {
        out.push(h.await.unwrap());
    }
    out
}
