//! Card repair: a late acceptance updates the approver's card through Feishu's OpenAPI.
//! The real binary against a fake OpenAPI served over real HTTP, a slow upstream, and a
//! real `redis-server` for the two-replica case.

mod support;

use std::time::{Duration, Instant};

use support::binary::run;
use support::openapi::{APP_ID, APP_SECRET, FakeOpenApi};
use support::redis_server::Redis;
use support::*;

/// A 19-digit id above 2^53: it must reach Feishu bit-exact, as a string.
const MESSAGE_ID: &str = "7250020197497765889";

fn decision(n: u32, action: &str) -> String {
    let body = callback_with(TOKEN, "instance_id", &format!("\"card-{n}\""));
    let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&body).unwrap();
    v.insert(
        "action_type".into(),
        serde_json::Value::String(action.into()),
    );
    seal(KEY, &serde_json::to_string(&v).unwrap())
}

async fn gateway(up: &Upstream, api: &str, extra: &[(&str, &str)]) -> Binary {
    let mut vars = vec![
        ("RUST_LOG", "info"),
        ("FEISHU_GATE_ANSWER_WITHIN_MS", "1000"),
        ("FEISHU_GATE_APP_ID", APP_ID),
        ("FEISHU_GATE_APP_SECRET", APP_SECRET),
        ("FEISHU_GATE_OPENAPI_URL", api),
    ];
    vars.extend_from_slice(extra);
    Binary::start(&up.url(), &vars).await
}

async fn send(gate: &Binary, body: &str) -> Answer {
    post(gate.addr, "/", body.to_owned(), &[]).await
}

#[tokio::test]
async fn a_late_acceptance_repairs_the_card_and_a_prompt_one_leaves_it() {
    let api = FakeOpenApi::start().await;
    let up = Upstream::start(Reply::ok().slow(Duration::from_millis(1500))).await;
    let gate = gateway(&up, &api.url(), &[]).await;

    // Answered 504 in time, with the promise that the card will follow.
    let answer = send(&gate, &decision(1, "APPROVE")).await;
    let message = answer.feishu_error(504);
    assert!(
        message.contains("the card will update by itself"),
        "{message}"
    );
    let repaired = eventually(Duration::from_secs(5), || async {
        api.updates().len() == 1
    })
    .await;
    assert!(repaired, "{:?}", api.calls());
    let update = &api.updates()[0];
    assert_eq!(update.body["message_id"], MESSAGE_ID);
    assert_eq!(update.body["status"], "APPROVED");
    assert_eq!(
        update.authorization.as_deref(),
        Some("Bearer t-fake-token-1")
    );

    // A rejection sets REJECTED; the token is reused.
    assert_eq!(send(&gate, &decision(2, "REJECT")).await.status, 504);
    let repaired = eventually(Duration::from_secs(5), || async {
        api.updates().len() == 2
    })
    .await;
    assert!(repaired);
    assert_eq!(api.updates()[1].body["status"], "REJECTED");
    assert_eq!(api.tokens_issued(), 1, "one token for several repairs");

    // An answer in time leaves the card to Feishu.
    up.set(Reply::ok());
    assert_eq!(send(&gate, &decision(3, "APPROVE")).await.status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.updates().len(), 2);

    let m = gate.metrics().await;
    assert_eq!(
        metric(&m, r#"feishu_gate_card_repairs_total{result="repaired"}"#),
        2.0,
        "{m}"
    );
    gate.line("the repair", |l| {
        l.contains("card repaired after a late acceptance")
    })
    .await;
    // Neither the app secret nor a token ever reaches the log.
    let log = gate.log_tail().join("\n");
    assert!(
        !log.contains(APP_SECRET) && !log.contains("t-fake-token"),
        "{log}"
    );
}

#[tokio::test]
async fn an_expired_token_is_refreshed_once_and_the_call_repeated() {
    let api = FakeOpenApi::start().await;
    let up = Upstream::start(Reply::ok().slow(Duration::from_millis(1500))).await;
    let gate = gateway(&up, &api.url(), &[]).await;
    assert_eq!(send(&gate, &decision(1, "APPROVE")).await.status, 504);
    assert!(
        eventually(Duration::from_secs(5), || async {
            api.updates().len() == 1
        })
        .await
    );
    api.expire_next_token();
    assert_eq!(send(&gate, &decision(2, "APPROVE")).await.status, 504);
    let repaired = eventually(Duration::from_secs(5), || async {
        metric(
            &gate.metrics().await,
            r#"feishu_gate_card_repairs_total{result="repaired"}"#,
        ) == 2.0
    })
    .await;
    assert!(repaired, "{:?}", api.calls());
    let updates = api.updates();
    assert_eq!(updates.len(), 3, "refused once, repeated once");
    assert_eq!(
        updates[2].authorization.as_deref(),
        Some("Bearer t-fake-token-2")
    );
    assert_eq!(api.tokens_issued(), 2);
}

#[tokio::test]
async fn nothing_to_repair_makes_no_call() {
    let api = FakeOpenApi::start().await;
    let up = Upstream::start(
        Reply::json(409, r#"{"message":"closed"}"#).slow(Duration::from_millis(1500)),
    )
    .await;
    let gate = gateway(&up, &api.url(), &[]).await;
    // A late refusal never marks the card approved.
    assert_eq!(send(&gate, &decision(1, "APPROVE")).await.status, 504);
    // A late acceptance without a message_id (not a card action), and one of a custom action.
    up.set(Reply::ok().slow(Duration::from_millis(1500)));
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&callback_with(TOKEN, "instance_id", "\"card-2\"")).unwrap();
    v.remove("message_id");
    assert_eq!(
        send(&gate, &seal(KEY, &serde_json::to_string(&v).unwrap()))
            .await
            .status,
        504
    );
    assert_eq!(
        send(&gate, &decision(3, "TRANSFER_TO_ME")).await.status,
        504
    );
    let counted = eventually(Duration::from_secs(5), || async {
        let m = gate.metrics().await;
        [
            "skipped_not_accepted",
            "skipped_no_message_id",
            "skipped_action",
        ]
        .iter()
        .all(|r| {
            metric(
                &m,
                &format!(r#"feishu_gate_card_repairs_total{{result="{r}"}}"#),
            ) == 1.0
        })
    })
    .await;
    assert!(counted, "{}", gate.metrics().await);
    assert!(api.calls().is_empty(), "{:?}", api.calls());
}

#[tokio::test]
async fn an_unreachable_or_slow_openapi_costs_callbacks_nothing() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let up = Upstream::start(Reply::ok().slow(Duration::from_millis(1200))).await;
    let gate = gateway(&up, &dead, &[]).await;
    assert_eq!(send(&gate, &decision(1, "APPROVE")).await.status, 504);
    // The repair is being retried in the background; callbacks go on as before.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    up.set(Reply::ok());
    for n in 2..6 {
        let started = Instant::now();
        assert_eq!(send(&gate, &decision(n, "APPROVE")).await.status, 200);
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }
    // The same with an OpenAPI that takes 5 s to answer.
    let api = FakeOpenApi::start().await;
    api.slow(Duration::from_secs(5));
    up.set(Reply::ok().slow(Duration::from_millis(1200)));
    let gate = gateway(&up, &api.url(), &[]).await;
    assert_eq!(send(&gate, &decision(10, "APPROVE")).await.status, 504);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    up.set(Reply::ok());
    let started = Instant::now();
    assert_eq!(send(&gate, &decision(11, "APPROVE")).await.status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn two_replicas_repair_a_late_acceptance_once() {
    let redis = Redis::start();
    let api = FakeOpenApi::start().await;
    let up = Upstream::start(Reply::ok().slow(Duration::from_millis(2000))).await;
    let url = redis.url();
    let shared = [("FEISHU_GATE_REDIS_URL", url.as_str())];
    let a = gateway(&up, &api.url(), &shared).await;
    let b = gateway(&up, &api.url(), &shared).await;
    let body = decision(1, "APPROVE");
    let (x, y) = tokio::join!(send(&a, &body), send(&b, &body));
    assert_eq!((x.status, y.status), (504, 504));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(send(&b, &body).await.status, 200);
    assert_eq!(send(&a, &body).await.status, 200);
    assert!(
        eventually(Duration::from_secs(5), || async {
            !api.updates().is_empty()
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(up.count(), 1);
    assert_eq!(api.updates().len(), 1, "repaired once");
}

#[tokio::test]
async fn openapi_check_says_whether_the_credentials_work_without_showing_the_token() {
    let api = FakeOpenApi::start().await;
    let url: &'static str = Box::leak(api.url().into_boxed_str());
    let base: [(&'static str, &'static str); 4] = [
        ("FEISHU_GATE_UPSTREAM_URL", "http://127.0.0.1:9/"),
        ("FEISHU_GATE_TOKEN", TOKEN),
        ("FEISHU_GATE_APP_ID", APP_ID),
        ("FEISHU_GATE_OPENAPI_URL", url),
    ];
    let with = |secret: &'static str| {
        let mut vars = base.to_vec();
        vars.push(("FEISHU_GATE_APP_SECRET", secret));
        vars
    };
    let check = |vars: Vec<(&'static str, &'static str)>, args: &'static [&'static str]| {
        tokio::task::spawn_blocking(move || run(args, &vars))
    };
    let (code, out, err) = check(with(APP_SECRET), &["openapi-check"]).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("tenant_access_token") && out.contains(APP_ID),
        "{out}"
    );
    assert!(!out.contains("t-fake-token") && !err.contains("t-fake-token"));
    let (code, out, err) = check(with("not-the-secret"), &["openapi-check"])
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("10014"), "{err}");
    assert!(!err.contains("not-the-secret") && !out.contains("not-the-secret"));
    // An OpenAPI that cannot be reached is told apart from one that refuses.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead: &'static str =
        Box::leak(format!("http://{}", closed.local_addr().unwrap()).into_boxed_str());
    drop(closed);
    let mut vars = with(APP_SECRET);
    vars.retain(|(k, _)| *k != "FEISHU_GATE_OPENAPI_URL");
    vars.push(("FEISHU_GATE_OPENAPI_URL", dead));
    let (code, _, err) = check(vars, &["openapi-check"]).await.unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("could not be asked for a token"), "{err}");
    // check-config shows the settings, the secret redacted.
    let (_, out, _) = check(with(APP_SECRET), &["check-config"]).await.unwrap();
    assert!(out.contains("FEISHU_GATE_APP_SECRET=<redacted>"), "{out}");
    assert!(!out.contains(APP_SECRET));
    // One without the other is a configuration error; neither, nothing to check.
    let (code, _, err) = check(base.to_vec(), &["check-config"]).await.unwrap();
    assert_eq!(code, 64);
    assert!(
        err.contains("FEISHU_GATE_APP_SECRET: is required with FEISHU_GATE_APP_ID"),
        "{err}"
    );
    let (code, _, err) = check(base[..2].to_vec(), &["openapi-check"]).await.unwrap();
    assert_eq!(code, 64, "{err}");
}

/// A forward proxy that only tunnels: it reads a `CONNECT` head, records it, connects to
/// the target and copies bytes both ways.
async fn connect_proxy() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(head);
                let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn repairs_go_through_the_proxy_the_standard_variables_name() {
    let api = FakeOpenApi::start().await;
    let (proxy, heads) = connect_proxy().await;
    let up = Upstream::start(Reply::ok().slow(Duration::from_millis(1500))).await;
    let proxy_url = format!("http://squid:s3cret@{proxy}");
    let gate = gateway(
        &up,
        &api.url(),
        &[
            ("HTTP_PROXY", proxy_url.as_str()),
            ("HTTPS_PROXY", proxy_url.as_str()),
        ],
    )
    .await;
    assert_eq!(send(&gate, &decision(1, "APPROVE")).await.status, 504);
    assert!(
        eventually(Duration::from_secs(5), || async {
            api.updates().len() == 1
        })
        .await
    );
    let heads = heads.lock().unwrap().clone();
    assert!(!heads.is_empty());
    let api_host = api.addr.unwrap().to_string();
    for head in &heads {
        assert!(head.starts_with(&format!("CONNECT {api_host} ")), "{head}");
        // squid:s3cret
        assert!(head.contains("Basic c3F1aWQ6czNjcmV0"), "{head}");
    }
    // The legacy system is not reached through the proxy.
    assert_eq!(up.count(), 1);
}
