//! The request path end to end: real gateway, real upstream, real sockets.

mod support;

use std::time::{Duration, Instant};

use feishu_gate::testing::callback::ForwardOptions;
use feishu_gate::testing::callback::secrets::{KeySet, TokenSet};
use feishu_gate::testing::callback::verify::Verifier;
use feishu_gate::testing::config;
use support::*;

fn vectors() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/crypto-vectors.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn plaintext_callback_reaches_the_upstream_exactly_as_sent() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(
        &up.url(),
        &[(
            config::UPSTREAM_HEADERS,
            "Authorization=Bearer%20legacy-secret,X-Tenant=acme",
        )],
    )
    .await;
    let answer = gate.post(callback(TOKEN)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json(), serde_json::json!({"code":0,"msg":"success"}));

    let got = up.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/legacy/approve");
    // Byte-exact: order kept, token gone, message_id above 2^53 untouched.
    assert_eq!(
        r.text(),
        r#"{"action_type":"APPROVE","action_context":"ctx-1","user_id":"u-1","approval_code":"CODE-1","instance_id":"inst-1","task_id":"task-1","message_id":7250020197497765889,"reason":"好的 ok"}"#
    );
    assert_eq!(r.header("content-type").unwrap(), "application/json");
    assert_eq!(
        r.header("user-agent").unwrap(),
        format!("feishu-gate/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(r.header("authorization").unwrap(), "Bearer legacy-secret");
    assert_eq!(r.header("x-tenant").unwrap(), "acme");
    let key = r.header("idempotency-key").unwrap();
    assert_eq!(key.len(), 64);
    // The key names the decision exactly as `verify` computes it.
    let verifier = Verifier {
        tokens: TokenSet::new([TOKEN.to_owned()]),
        keys: KeySet::default(),
        allow_plaintext: false,
        forward: ForwardOptions::default(),
    };
    let verified = verifier.verify(callback(TOKEN).as_bytes()).unwrap();
    assert_eq!(
        key.as_bytes(),
        feishu_gate::testing::callback::idempotency_key(&verified.decision)
    );
    // HTTP/1.1 needs `Host`: the upstream URL's authority.
    let authority = up.url().parse::<http::Uri>().unwrap();
    assert_eq!(
        r.header("host").unwrap(),
        authority.authority().unwrap().as_str()
    );
    let id = r.header("x-request-id").unwrap();
    assert!(!id.is_empty());
    assert_eq!(answer.headers["x-request-id"], id.as_str());
}

#[tokio::test]
async fn callers_request_id_is_kept() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[]).await;
    let answer = post(
        gate.addr,
        "/",
        callback(TOKEN),
        &[("x-request-id", "feishu-abc-123")],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        up.received()[0].header("x-request-id").unwrap(),
        "feishu-abc-123"
    );
    // A header that is not a sane token is replaced, not forwarded.
    post(gate.addr, "/", callback(TOKEN), &[("x-request-id", "a b")]).await;
    assert_ne!(up.received()[1].header("x-request-id").unwrap(), "a b");
}

#[tokio::test]
async fn encrypted_vectors_arrive_decrypted_without_the_token() {
    for v in vectors().into_iter().filter(|v| {
        v["plaintext"]
            .as_str()
            .unwrap()
            .starts_with("{\"action_type\":\"APPROVE\"")
    }) {
        let up = Upstream::start(Reply::ok()).await;
        let plaintext: serde_json::Value =
            serde_json::from_str(v["plaintext"].as_str().unwrap()).unwrap();
        let token = plaintext["token"].as_str().unwrap();
        let key = v["key"].as_str().unwrap();
        let gate = Gate::start(&up.url(), &[(config::TOKEN, token), (config::KEY, key)]).await;
        let body = serde_json::json!({ "encrypt": v["encrypt"] }).to_string();
        let answer = gate.post(body).await;
        assert_eq!(answer.status, 200, "{}: {}", v["name"], answer.text);
        let expected = v["plaintext"]
            .as_str()
            .unwrap()
            .replace(&format!(",\"token\":\"{token}\""), "");
        assert_eq!(up.received()[0].text(), expected, "{}", v["name"]);
        assert!(expected.contains("7250020197497765889"));
    }
}

#[tokio::test]
async fn message_id_as_string_for_javascript_upstreams() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[(config::MESSAGE_ID_AS_STRING, "true")]).await;
    assert_eq!(gate.post(callback(TOKEN)).await.status, 200);
    assert!(
        up.received()[0]
            .text()
            .contains(r#""message_id":"7250020197497765889""#)
    );
}

#[tokio::test]
async fn wrong_missing_and_near_miss_tokens_are_refused_before_the_upstream() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[]).await;
    let near_misses = [
        "",
        "test-token-4f9",
        "test-token-4f9ab",
        "Test-token-4f9a",
        "test-token-4f9a ",
        " test-token-4f9a",
    ];
    let mut messages = Vec::new();
    for token in near_misses {
        messages.push(gate.post(callback(token)).await.feishu_error(401));
    }
    let no_token = callback(TOKEN).replace(&format!(r#","token":"{TOKEN}""#), "");
    messages.push(gate.post(no_token).await.feishu_error(401));
    messages.push(
        gate.post(callback_with(TOKEN, "token", "123"))
            .await
            .feishu_error(401),
    );
    messages.push(
        gate.post(callback_with(TOKEN, "token", "null"))
            .await
            .feishu_error(401),
    );
    // Nothing helps a guesser: every refusal reads the same.
    messages.dedup();
    assert_eq!(
        messages,
        vec!["The callback could not be verified; contact the administrator to check the callback settings.".to_owned()]
    );
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn token_is_checked_before_fields_are_validated() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[]).await;
    gate.post(r#"{"token":"wrong"}"#).await.feishu_error(401);
    let m = gate
        .post(format!(r#"{{"token":"{TOKEN}"}}"#))
        .await
        .feishu_error(422);
    assert!(m.contains("action_type"), "{m}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn encryption_failures_are_unauthorized_and_reach_nothing() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[(config::KEY, KEY)]).await;
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let sealed_with = |key: &str| seal(key, &callback(TOKEN));
    let valid: serde_json::Value = serde_json::from_str(&sealed_with(KEY)).unwrap();
    let mut bad_padding = base64::engine::general_purpose::STANDARD
        .decode(valid["encrypt"].as_str().unwrap())
        .unwrap();
    let n = bad_padding.len();
    bad_padding[n - 17] ^= 0x5a;
    let not_json_inside = feishu_gate::testing::callback::envelope::CallbackKey::new(KEY)
        .encrypt(b"not json at all")
        .unwrap();
    let array_inside = feishu_gate::testing::callback::envelope::CallbackKey::new(KEY)
        .encrypt(b"[1,2,3]")
        .unwrap();
    let cases = [
        ("wrong key", sealed_with("another-key")),
        ("bad base64", r#"{"encrypt":"%%%not-base64%%%"}"#.to_owned()),
        (
            "unpadded base64",
            r#"{"encrypt":"AAECAwQFBgcICQoLDA0ODw"}"#.to_owned(),
        ),
        (
            "short ciphertext",
            format!(r#"{{"encrypt":"{}"}}"#, b64(&[7u8; 16])),
        ),
        (
            "not block aligned",
            format!(r#"{{"encrypt":"{}"}}"#, b64(&[7u8; 40])),
        ),
        (
            "bad padding",
            format!(r#"{{"encrypt":"{}"}}"#, b64(&bad_padding)),
        ),
        (
            "decrypts to non-JSON",
            format!(r#"{{"encrypt":"{not_json_inside}"}}"#),
        ),
        (
            "decrypts to a non-object",
            format!(r#"{{"encrypt":"{array_inside}"}}"#),
        ),
        ("plaintext while a key is required", callback(TOKEN)),
    ];
    for (name, body) in cases {
        let m = gate.post(body).await.feishu_error(401);
        assert_eq!(
            m,
            "The callback could not be verified; contact the administrator to check the callback settings.",
            "{name}"
        );
    }
    assert_eq!(up.count(), 0);
    // `encrypt` of the wrong type is a malformed body, named as such.
    let m = gate.post(r#"{"encrypt":42}"#).await.feishu_error(422);
    assert!(m.contains("encrypt"), "{m}");
    assert_eq!(gate.post(sealed_with(KEY)).await.status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn fields_beside_encrypt_are_ignored() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[(config::KEY, KEY)]).await;
    let sealed: serde_json::Value = serde_json::from_str(&seal(KEY, &callback(TOKEN))).unwrap();
    let body = format!(
        r#"{{"action_type":"REJECT","evil":1,"encrypt":{}}}"#,
        sealed["encrypt"]
    );
    assert_eq!(gate.post(body).await.status, 200);
    let text = up.received()[0].text();
    assert!(text.contains("APPROVE") && !text.contains("evil"), "{text}");
}

#[tokio::test]
async fn plaintext_allowed_beside_a_key_when_asked() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(
        &up.url(),
        &[(config::KEY, KEY), (config::ALLOW_PLAINTEXT, "true")],
    )
    .await;
    assert_eq!(gate.post(callback(TOKEN)).await.status, 200);
    assert_eq!(gate.post(seal(KEY, &callback(TOKEN))).await.status, 200);
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn encrypted_callback_without_a_configured_key_is_refused() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[]).await;
    gate.post(seal(KEY, &callback(TOKEN)))
        .await
        .feishu_error(401);
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn malformed_bodies_are_422_and_reach_nothing() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[]).await;
    let full = callback(TOKEN);
    let deep = format!(r#"{{"x":{}1{}}}"#, "[".repeat(100), "]".repeat(100));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"hello".to_vec()),
        ("empty", Vec::new()),
        ("not an object", b"[1,2,3]".to_vec()),
        ("a string", b"\"x\"".to_vec()),
        ("truncated", full.as_bytes()[..full.len() - 10].to_vec()),
        ("trailing garbage", format!("{full}xyz").into_bytes()),
        ("invalid UTF-8", b"{\"action_type\":\"\xff\xfe\"}".to_vec()),
        ("deep nesting", deep.into_bytes()),
        (
            "duplicate token",
            format!(r#"{{"token":"{TOKEN}","token":"other"}}"#).into_bytes(),
        ),
    ];
    for (name, body) in cases {
        gate.post(body).await.feishu_error(422);
        assert_eq!(up.count(), 0, "{name} reached the upstream");
    }
}

#[tokio::test]
async fn each_missing_or_mistyped_field_is_named() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[]).await;
    for field in ["action_type", "user_id", "approval_code"] {
        let mut v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&callback(TOKEN)).unwrap();
        v.remove(field);
        let m = gate
            .post(serde_json::to_string(&v).unwrap())
            .await
            .feishu_error(422);
        assert_eq!(m, format!("Invalid callback: field {field} is missing."));
        for bad in ["\"\"", "7", "[\"x\"]", "{}"] {
            let m = gate
                .post(callback_with(TOKEN, field, bad))
                .await
                .feishu_error(422);
            assert!(m.contains(field), "{field}={bad}: {m}");
        }
    }
    for (field, bad) in [
        ("instance_id", "12"),
        ("task_id", "true"),
        ("id", "[]"),
        ("reason", "{}"),
        ("action_context", "1"),
        ("message_id", "1.5"),
        ("message_id", "\"12ab\""),
        ("message_id", "1e5"),
        ("message_id", "99999999999999999999"),
        ("attachments", "{}"),
        ("attachments", "[\"x\"]"),
    ] {
        let m = gate
            .post(callback_with(TOKEN, field, bad))
            .await
            .feishu_error(422);
        assert!(m.contains(field), "{field}={bad}: {m}");
    }
    assert_eq!(up.count(), 0);
    // Accepted shapes: message_id as a digit string, attachments as objects, unknown fields.
    let ok = callback_with(TOKEN, "message_id", "\"7250020197497765889\"");
    assert_eq!(gate.post(ok).await.status, 200);
    let ok = callback_with(
        TOKEN,
        "attachments",
        r#"[{"file_type":"IMAGE","file_size":1024,"file_name":"a.png","url":"https://x/a.png"}]"#,
    );
    assert_eq!(gate.post(ok).await.status, 200);
    assert_eq!(
        gate.post(callback_with(TOKEN, "future_field", r#"{"a":[1,2]}"#))
            .await
            .status,
        200
    );
    assert!(
        up.received()[2]
            .text()
            .ends_with(r#""future_field":{"a":[1,2]}}"#)
    );
}

#[tokio::test]
async fn oversize_bodies_are_refused_before_reading() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[(config::MAX_BODY_BYTES, "2048")]).await;
    let big = callback_with(TOKEN, "reason", &format!("\"{}\"", "x".repeat(4000)));
    gate.post(big).await.feishu_error(413);

    // Declared too large: answered without the body ever being sent.
    let head = "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\n\r\n";
    let answer = raw(gate.addr, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Chunked: cut off at the limit.
    let mut chunked =
        String::from("POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n");
    for _ in 0..10 {
        chunked.push_str(&format!("400\r\n{}\r\n", "a".repeat(1024)));
    }
    chunked.push_str("0\r\n\r\n");
    let answer = raw(gate.addr, chunked.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn wrong_path_and_method() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[(config::CALLBACK_PATH, "/feishu/approval")]).await;
    post(gate.addr, "/", callback(TOKEN), &[])
        .await
        .feishu_error(404);
    post(gate.addr, "/feishu/approval/x", callback(TOKEN), &[])
        .await
        .feishu_error(404);
    let answer = request(gate.addr, "GET", "/feishu/approval").await;
    answer.feishu_error(405);
    assert_eq!(answer.headers["allow"], "POST");
    assert_eq!(
        request(gate.addr, "PUT", "/feishu/approval").await.status,
        405
    );
    assert_eq!(up.count(), 0);
    assert_eq!(
        post(gate.addr, "/feishu/approval", callback(TOKEN), &[])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn upstream_refusals_are_translated() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[]).await;
    let cases: Vec<(Reply, u16, &str)> = vec![
        (
            Reply::json(409, r#"{"message":"Task already approved"}"#),
            409,
            "Task already approved",
        ),
        (
            Reply::json(500, r#"{"code":5,"msg":"db down"}"#),
            500,
            "db down",
        ),
        (
            Reply::json(403, r#"{"error":{"message":"not your task"}}"#),
            403,
            "not your task",
        ),
        (
            Reply::json(401, r#"{"error":"expired session"}"#),
            401,
            "expired session",
        ),
        (
            Reply::json(503, r#"{"errmsg":"maintenance"}"#),
            503,
            "maintenance",
        ),
        (
            Reply::json(500, ""),
            500,
            "The approval system had an error (HTTP 500); refresh later to check whether the action took effect.",
        ),
        (
            Reply::json(404, r#"{"detail":"nope"}"#),
            404,
            "The approval system refused this action (HTTP 404).",
        ),
        // Below 401 there is nothing faithful to pass on.
        (
            Reply::json(400, r#"{"message":"bad input"}"#),
            502,
            "bad input",
        ),
        (
            Reply::json(502, "<html><body><h1>502 Bad Gateway</h1></body></html>")
                .with_header("content-type", "text/html"),
            502,
            "The approval system had an error (HTTP 502); refresh later to check whether the action took effect.",
        ),
        (
            Reply::json(422, r#"{"message":"<b>Reason</b>\n\trequired"}"#),
            422,
            "Reason required",
        ),
    ];
    for (reply, status, message) in cases {
        up.set(reply.clone());
        let m = gate.post(callback(TOKEN)).await.feishu_error(status);
        assert_eq!(m, message, "{reply:?}");
    }
    // A huge message is cut to 200 characters.
    up.set(Reply::json(
        500,
        &format!(r#"{{"message":"{}"}}"#, "很长".repeat(2000)),
    ));
    let m = gate.post(callback(TOKEN)).await.feishu_error(500);
    assert_eq!(m.chars().count(), 200);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let target = Upstream::start(Reply::ok()).await;
    let up = Upstream::start(Reply::json(302, "").with_header("location", &target.url())).await;
    let gate = Gate::start(&up.url(), &[]).await;
    gate.post(callback(TOKEN)).await.feishu_error(502);
    assert_eq!(up.count(), 1);
    assert_eq!(target.count(), 0);
}

#[tokio::test]
async fn upstream_ok_rule_decides_business_success() {
    let up = Upstream::start(Reply::json(200, r#"{"code":0,"msg":"ok"}"#)).await;
    let gate = Gate::start(&up.url(), &[(config::UPSTREAM_OK, "/code==0")]).await;
    assert_eq!(gate.post(callback(TOKEN)).await.status, 200);
    up.set(Reply::json(
        200,
        r#"{"code":40001,"msg":"instance is closed"}"#,
    ));
    assert_eq!(
        gate.post(callback(TOKEN)).await.feishu_error(502),
        "instance is closed"
    );
    up.set(Reply::json(200, "OK"));
    assert_eq!(
        gate.post(callback(TOKEN)).await.feishu_error(502),
        "The approval system did not confirm this action, please try again later."
    );
    // Without a rule, any 2xx is acceptance.
    let plain = Gate::start(&up.url(), &[]).await;
    up.set(Reply::json(204, ""));
    assert_eq!(plain.post(callback(TOKEN)).await.status, 200);
}

#[tokio::test]
async fn unreachable_and_dropping_upstreams_are_502() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let gate = Gate::start(&dead, &[]).await;
    let m = gate.post(callback(TOKEN)).await.feishu_error(502);
    assert_eq!(
        m,
        "The approval system is unavailable, please try again later."
    );

    let up = Upstream::start(Reply::Drop).await;
    let gate = Gate::start(&up.url(), &[]).await;
    gate.post(callback(TOKEN)).await.feishu_error(502);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn slow_upstream_is_answered_504_in_time_and_the_exchange_goes_on() {
    let up = Upstream::start(Reply::ok().slow(Duration::from_secs(2))).await;
    let gate = Gate::start(
        &up.url(),
        &[
            (config::UPSTREAM_TIMEOUT_MS, "300"),
            (config::DEDUP_TTL_SECS, "600"),
        ],
    )
    .await;
    let started = Instant::now();
    let m = gate.post(callback(TOKEN)).await.feishu_error(504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered only after the upstream"
    );
    assert!(m.contains("still being submitted"), "{m}");
    // Feishu's retry joins the exchange under way instead of delivering again.
    let m = gate.post(callback(TOKEN)).await.feishu_error(504);
    assert!(m.contains("still being submitted"), "{m}");
    assert_eq!(up.count(), 1);
    // The legacy system accepts after all: the next copy is told so.
    tokio::time::sleep_until((started + Duration::from_millis(2300)).into()).await;
    let copy = gate.post(callback(TOKEN)).await;
    assert_eq!(copy.status, 200, "{}", copy.text);
    assert_eq!(up.count(), 1);
    let m = gate.metrics().await;
    assert_eq!(
        metric(&m, r#"feishu_gate_late_verdicts_total{verdict="accepted"}"#),
        1.0,
        "{m}"
    );

    // LATE_VERDICT_MS=0 cuts the exchange at the upstream timeout, as before: the
    // approver is told to check, and a retry is delivered again.
    let cut = Gate::start(
        &up.url(),
        &[
            (config::UPSTREAM_TIMEOUT_MS, "300"),
            (config::DEDUP_TTL_SECS, "600"),
            (config::LATE_VERDICT_MS, "0"),
        ],
    )
    .await;
    let m = cut.post(callback(TOKEN)).await.feishu_error(504);
    assert!(m.contains("did not answer in time"), "{m}");
    cut.post(callback(TOKEN)).await.feishu_error(504);
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn chinese_messages_by_default() {
    let up = Upstream::start(Reply::json(500, "")).await;
    let gate = Gate::start(&up.url(), &[(config::LANG, "zh")]).await;
    assert_eq!(
        gate.post(callback(TOKEN)).await.feishu_error(500),
        "审批系统出错（HTTP 500），请稍后刷新确认审批结果"
    );
    assert_eq!(
        gate.post(callback("x")).await.feishu_error(401),
        "回调请求校验失败，请联系管理员检查回调配置"
    );
}

#[tokio::test]
async fn a_connection_that_carried_a_refusal_says_it_will_close() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[(config::MAX_BODY_BYTES, "2048")]).await;
    let head = "POST / HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 5000\r\n\r\n";
    let answer = raw(gate.addr, head.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );

    // A verified callback keeps its connection for the next; any refusal before one
    // closes it, so a client without the token cannot hold a connection with
    // requests that are refused.
    let mut conn = Conn::http1(gate.addr).await;
    for token in [TOKEN, TOKEN, "wrong"] {
        let answer = conn.post(callback(token)).await.unwrap();
        if token == TOKEN {
            assert!(!answer.headers.contains_key("connection"), "{token}");
            conn.ready().await.unwrap();
        } else {
            assert_eq!(answer.status, 401);
            assert_eq!(answer.headers["connection"], "close");
        }
    }
    conn.ended(Duration::from_secs(2))
        .await
        .expect("the connection closes after the refusal")
        .unwrap();
    for path in ["/anything", "/favicon.ico"] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        let answer = raw(gate.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn an_http2_connection_that_carried_a_refusal_is_sent_goaway() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[]).await;
    let mut conn = Conn::http2(gate.addr).await;
    // Verified callbacks keep it; the first refusal ends it, cleanly and at once.
    for _ in 0..2 {
        assert_eq!(conn.post(callback(TOKEN)).await.unwrap().status, 200);
    }
    assert_eq!(conn.post(callback("wrong")).await.unwrap().status, 401);
    let started = std::time::Instant::now();
    let ended = conn
        .ended(Duration::from_secs(2))
        .await
        .expect("GOAWAY well before the idle limit");
    assert!(ended.is_ok(), "ended cleanly, not broken: {ended:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn header_names_reach_an_http1_upstream_as_written() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let raw = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the gateway closed before its headers ended");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = br#"{"code":0}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        sock.write_all(head.as_bytes()).await.unwrap();
        sock.write_all(body).await.unwrap();
        String::from_utf8_lossy(&buf).into_owned()
    });
    let gate = Gate::start(
        &format!("http://{addr}/legacy/approve"),
        &[(config::UPSTREAM_HEADERS, "x-tenant=acme")],
    )
    .await;
    let answer = gate.post(callback(TOKEN)).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let head = raw.await.unwrap();
    for name in [
        "\r\nContent-Type: ",
        "\r\nX-Request-Id: ",
        "\r\nIdempotency-Key: ",
        "\r\nUser-Agent: ",
        // The operator's name as written, lower-case here.
        "\r\nx-tenant: acme",
    ] {
        assert!(head.contains(name), "{name:?} not in {head:?}");
    }
}
