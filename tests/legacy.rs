//! What legacy systems really answer, through the real binary: string codes, plain
//! text and GBK refusals, redirects to a login page; and what the approver and the
//! operator's log then see.

mod support;

use std::time::Duration;

use feishu_gate::testing::config;
use support::Binary;
use support::metrics::metric;
use support::{
    Act, Answer, KEY, RawLegacy, Reply, TOKEN, Upstream, callback, callback_with, post, seal,
};

/// A legacy system that answers every request with the same bytes, written as given:
/// whatever charset, whatever headers; then it closes the connection.
async fn answering(status_line: &str, headers: &[&str], body: &[u8]) -> RawLegacy {
    let mut response = format!("HTTP/1.1 {status_line}\r\n").into_bytes();
    for h in headers {
        response.extend_from_slice(format!("{h}\r\n").as_bytes());
    }
    response.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    response.extend_from_slice(body);
    RawLegacy::answering(Act::answer(response).then_close()).await
}

async fn gateway(legacy: &RawLegacy, extra: &[(&str, &str)]) -> Binary {
    Binary::start(&legacy.url(), extra).await
}

async fn send(gate: &Binary) -> Answer {
    post(gate.addr, "/", seal(KEY, &callback(TOKEN)), &[]).await
}

/// The `detail` of the callback log lines written so far, waiting briefly for the line.
async fn details(gate: &Binary) -> Vec<String> {
    for _ in 0..100 {
        let found: Vec<String> = gate
            .log_tail()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "callback")
            .filter_map(|v| v["detail"].as_str().map(str::to_owned))
            .collect();
        if !found.is_empty() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no callback line with a detail in {:?}", gate.log_tail());
}

#[tokio::test]
async fn a_numeric_ok_rule_holds_for_the_same_number_as_a_string() {
    let ok = answering(
        "200 OK",
        &["Content-Type: application/json"],
        br#"{"code":"0","msg":"ok"}"#,
    )
    .await;
    let gate = gateway(&ok, &[("FEISHU_GATE_UPSTREAM_OK", "/code==0")]).await;
    let answer = send(&gate).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(answer.json()["code"], 0);
    assert_eq!(ok.count(), 1);

    let refused = answering(
        "200 OK",
        &["Content-Type: application/json"],
        r#"{"code":"1","msg":"审批单已锁定"}"#.as_bytes(),
    )
    .await;
    let gate = gateway(&refused, &[("FEISHU_GATE_UPSTREAM_OK", "/code==0")]).await;
    let answer = send(&gate).await;
    assert_eq!(answer.feishu_error(502), "审批单已锁定");
    let details = details(&gate).await;
    assert!(
        details.iter().any(|d| d.starts_with(
            r#"FEISHU_GATE_UPSTREAM_OK /code==0 does not hold: /code is the string "1""#
        ) && d.contains(r#"message "审批单已锁定""#)),
        "{details:?}"
    );
}

#[tokio::test]
async fn a_plain_text_refusal_reaches_feishu_as_written() {
    let refusal = "参数错误：缺少审批意见";
    let legacy = answering(
        "400 Bad Request",
        &["Content-Type: text/plain; charset=utf-8"],
        refusal.as_bytes(),
    )
    .await;
    let gate = gateway(&legacy, &[]).await;
    // Feishu shows a message only for statuses above 400, so a 400 goes on as 502.
    assert_eq!(send(&gate).await.feishu_error(502), refusal);
    let details = details(&gate).await;
    assert!(
        details.iter().any(|d| d == &format!("message {refusal:?}")),
        "{details:?}"
    );
}

#[tokio::test]
async fn a_gbk_json_refusal_reaches_feishu_as_written() {
    let (gbk, _, _) =
        encoding_rs::GBK.encode(r#"{"code":40901,"message":"该审批任务已被他人处理"}"#);
    assert!(std::str::from_utf8(&gbk).is_err(), "the body is not UTF-8");
    let legacy = answering(
        "409 Conflict",
        &["Content-Type: application/json;charset=GBK"],
        &gbk,
    )
    .await;
    let gate = gateway(&legacy, &[]).await;
    assert_eq!(
        send(&gate).await.feishu_error(409),
        "该审批任务已被他人处理"
    );
}

#[tokio::test]
async fn a_redirect_is_logged_with_where_it_pointed() {
    let legacy = answering(
        "302 Found",
        &["Location: https://sso.example.com/login?next=%2Fapprove"],
        b"",
    )
    .await;
    let gate = gateway(&legacy, &[]).await;
    let message = send(&gate).await.feishu_error(502);
    assert!(message.contains("HTTP 302"), "{message}");
    assert_eq!(legacy.count(), 1);
    let details = details(&gate).await;
    assert!(
        details
            .iter()
            .any(|d| d == "redirected to https://sso.example.com/login?next=%2Fapprove"),
        "{details:?}"
    );
}

#[tokio::test]
async fn a_refusal_echoing_a_credential_is_logged_redacted() {
    let credential = "Bearer hush-hush-4711";
    let legacy = answering(
        "403 Forbidden",
        &["Content-Type: application/json"],
        format!(r#"{{"message":"token {credential} is not allowed here"}}"#).as_bytes(),
    )
    .await;
    let gate = gateway(
        &legacy,
        &[(
            "FEISHU_GATE_UPSTREAM_HEADERS",
            "Authorization: Bearer hush-hush-4711",
        )],
    )
    .await;
    let message = send(&gate).await.feishu_error(403);
    assert!(!message.contains("hush-hush"), "{message}");
    let details = details(&gate).await;
    assert!(
        details
            .iter()
            .any(|d| d == r#"message "token <redacted> is not allowed here""#),
        "{details:?}"
    );
    assert!(
        gate.log_tail().iter().all(|l| !l.contains("hush-hush")),
        "{:?}",
        gate.log_tail()
    );
}

/// A credential echoed in base64 or hex, or a `Basic` credential echoed decoded, is as
/// secret as the credential itself.
#[tokio::test]
async fn a_refusal_echoing_a_credential_encoded_is_logged_redacted() {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode("hush-hush-4711");
    let hex: String = "hush-hush-4711"
        .bytes()
        .map(|b| format!("{b:02X}"))
        .collect();
    let basic = base64::engine::general_purpose::STANDARD.encode("gate:s3cret-pass");
    for echoed in [
        token.as_str(),
        hex.as_str(),
        "gate:s3cret-pass",
        "s3cret-pass",
    ] {
        let legacy = answering(
            "403 Forbidden",
            &["Content-Type: application/json"],
            format!(r#"{{"message":"credential {echoed} is not allowed here"}}"#).as_bytes(),
        )
        .await;
        let headers = format!("Authorization=Bearer%20hush-hush-4711,X-Basic=Basic%20{basic}");
        let gate = gateway(&legacy, &[("FEISHU_GATE_UPSTREAM_HEADERS", &headers)]).await;
        let message = send(&gate).await.feishu_error(403);
        // As for the credential itself: the approver gets the gateway's own words.
        assert_eq!(
            message, "The approval system refused this action (HTTP 403).",
            "{echoed}"
        );
        assert!(
            gate.log_tail().iter().all(|l| !l.contains(echoed)),
            "{echoed}: {:?}",
            gate.log_tail()
        );
    }
}

/// Header names arrive byte for byte: the operator's as written (`X-API-Key`, `SOAPAction`,
/// `authorization` lower-case if so written), the gateway's own in their registered
/// spelling, `traceparent` and `tracestate` lower-case as W3C writes them; and the
/// bytes of the body are untouched, over several requests on one connection.
#[tokio::test]
async fn header_names_arrive_as_written() {
    let legacy = RawLegacy::start(|_| {
        Act::answer("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"code\":0}")
    })
    .await;
    let gate = gateway(
        &legacy,
        &[(
            "FEISHU_GATE_UPSTREAM_HEADERS",
            "X-API-Key: k1, SOAPAction=urn%3Aapprove, authorization=Basic%20dTpw, x-tenant=acme",
        )],
    )
    .await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for task in ["names-1", "names-2"] {
        let body = seal(
            KEY,
            &callback_with(TOKEN, "task_id", &format!("\"{task}\"")),
        );
        let answer = post(
            gate.addr,
            "/",
            body,
            &[("traceparent", trace), ("tracestate", "congo=t61rcWkgMzE")],
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    let (check, out, _) = support::binary::run(
        &["check-config"],
        &[
            ("FEISHU_GATE_UPSTREAM_URL", "http://127.0.0.1:9/"),
            ("FEISHU_GATE_TOKEN", "t"),
            (
                "FEISHU_GATE_UPSTREAM_HEADERS",
                "X-API-Key: k1, SOAPAction=urn%3Aapprove",
            ),
        ],
    );
    assert_eq!(check, 0);
    assert!(
        out.contains("FEISHU_GATE_UPSTREAM_HEADERS=X-API-Key=<redacted>,SOAPAction=<redacted>"),
        "{out}"
    );
    let requests = legacy.requests();
    assert_eq!(requests.len(), 2);
    for (request, task) in requests.iter().zip(["names-1", "names-2"]) {
        let head = request.head_text();
        for line in [
            "\r\nContent-Type: application/json\r\n",
            "\r\nX-Request-Id: ",
            "\r\nIdempotency-Key: ",
            "\r\nFencing-Token: ",
            "\r\nUser-Agent: feishu-gate/",
            "\r\nX-API-Key: k1\r\n",
            "\r\nSOAPAction: urn:approve\r\n",
            "\r\nauthorization: Basic dTpw\r\n",
            "\r\nx-tenant: acme\r\n",
            "\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-",
            "\r\ntracestate: congo=t61rcWkgMzE\r\n",
            "\r\nHost: ",
            "\r\nContent-Length: ",
        ] {
            assert!(head.contains(line), "{line:?} not in {head:?}");
        }
        assert!(request.text().contains(task), "{}", request.text());
    }
}

/// A success in GBK (labelled GBK, or UTF-8 as PHP labels everything) or behind a UTF-8
/// byte-order mark is a success under `UPSTREAM_OK`: answered 200, and the approver's
/// second tap is the duplicate it is, not a second delivery.
#[tokio::test]
async fn a_success_in_gbk_or_behind_a_bom_is_recorded_once() {
    let success = r#"{"code":0,"msg":"审批成功"}"#;
    let (gbk, _, _) = encoding_rs::GBK.encode(success);
    let bom = [&b"\xEF\xBB\xBF"[..], success.as_bytes()].concat();
    for (content_type, body) in [
        ("Content-Type: application/json; charset=GBK", gbk.to_vec()),
        (
            "Content-Type: application/json;charset=gb2312",
            gbk.to_vec(),
        ),
        ("Content-Type: text/html; charset=UTF-8", gbk.to_vec()),
        ("Content-Type: application/json", bom),
    ] {
        let legacy = answering("200 OK", &[content_type], &body).await;
        let gate = gateway(&legacy, &[("FEISHU_GATE_UPSTREAM_OK", "/code==0")]).await;
        assert_eq!(send(&gate).await.status, 200, "{content_type}");
        assert_eq!(send(&gate).await.status, 200, "{content_type}");
        assert_eq!(legacy.count(), 1, "{content_type}: delivered again");
    }
}

/// A redirect is the gateway pointed at the wrong place, never the legacy system's word:
/// the approver is told so, the log keeps where it went. A crash page is an error, not a
/// refusal, and the log keeps the start of it.
#[tokio::test]
async fn redirects_and_crash_pages_are_called_what_they_are() {
    let legacy = answering(
        "302 Found",
        &[
            "Location: /login?returnTo=%2Fapprove",
            "Content-Type: text/plain; charset=utf-8",
        ],
        b"Found. Redirecting to /login?returnTo=%2Fapprove",
    )
    .await;
    let gate = gateway(&legacy, &[]).await;
    let message = send(&gate).await.feishu_error(502);
    assert_eq!(
        message,
        "The approval gateway is misconfigured: the approval system redirected the request (HTTP 302); contact the administrator."
    );
    let redirect = details(&gate).await;
    assert!(
        redirect
            .iter()
            .any(|d| d.starts_with("redirected to /login?returnTo=%2Fapprove")),
        "{redirect:?}"
    );

    let legacy = answering(
        "500 Internal Server Error",
        &["Content-Type: text/html"],
        b"<html><head><title>Error</title></head><body>NullPointerException at ApprovalService.java:42</body></html>",
    )
    .await;
    let gate = gateway(&legacy, &[]).await;
    let message = send(&gate).await.feishu_error(500);
    assert_eq!(
        message,
        "The approval system had an error (HTTP 500); refresh later to check whether the action took effect."
    );
    let details = details(&gate).await;
    assert!(
        details.iter().any(
            |d| d.starts_with("answer: \"<html><head><title>Error</title>")
                && d.contains("NullPointer")
        ),
        "{details:?}"
    );
}

/// Copies of one slow decision join its exchange: the log and the metrics count one
/// upstream timeout, the copies as duplicates naming the request that delivered.
#[tokio::test(flavor = "multi_thread")]
async fn copies_of_a_slow_decision_count_one_upstream_timeout() {
    let up = Upstream::start(Reply::ok().slow(Duration::from_secs(3))).await;
    let gate = Binary::start(
        &up.url(),
        &[
            (config::ANSWER_WITHIN_MS, "1000"),
            (config::UPSTREAM_TIMEOUT_MS, "1000"),
            ("RUST_LOG", "info"),
        ],
    )
    .await;
    let body = seal(KEY, &callback_with(TOKEN, "task_id", "\"slow-copies\""));
    let first = tokio::spawn({
        let (addr, body) = (gate.addr, body.clone());
        async move { post(addr, "/", body, &[("x-request-id", "the-first")]).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut copies = Vec::new();
    for i in 0..3 {
        let (addr, body) = (gate.addr, body.clone());
        copies.push(tokio::spawn(async move {
            post(addr, "/", body, &[("x-request-id", &format!("copy-{i}"))]).await
        }));
    }
    assert_eq!(first.await.unwrap().status, 504);
    for copy in copies {
        assert_eq!(copy.await.unwrap().status, 504);
    }
    let metrics = gate.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"feishu_gate_upstream_errors_total{kind="timeout"}"#
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"feishu_gate_callbacks_total{outcome="upstream_timeout"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"feishu_gate_callbacks_total{outcome="duplicate"}"#
        ),
        3.0
    );
    for i in 0..3 {
        let id = format!("copy-{i}");
        let line = gate
            .json_line(&id, |l| l["request_id"] == id.as_str())
            .await;
        assert_eq!(line["outcome"], "duplicate", "{line}");
        assert_eq!(line["joined"], "upstream_timeout", "{line}");
        assert_eq!(line["delivered_by"], "the-first", "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
    }
    assert_eq!(up.count(), 1);
}

/// A refusal in GBK under PHP's default `text/html; charset=UTF-8` reaches the approver
/// readable, and a PHP warning printed before a success does not turn it into a failure.
#[tokio::test]
async fn mislabelled_gbk_and_a_php_warning_before_the_json_are_read_as_meant() {
    let (gbk, _, _) = encoding_rs::GBK.encode(r#"{"code":7,"msg":"该单据已被撤回"}"#);
    let legacy = answering("200 OK", &["Content-Type: text/html; charset=UTF-8"], &gbk).await;
    let gate = gateway(&legacy, &[("FEISHU_GATE_UPSTREAM_OK", "/code==0")]).await;
    assert_eq!(send(&gate).await.feishu_error(502), "该单据已被撤回");

    let warned = b"<br />\n<b>Warning</b>:  Undefined variable $x in <b>/var/www/approve.php</b> on line <b>12</b><br />\n{\"code\":0}";
    let legacy = answering(
        "200 OK",
        &["Content-Type: text/html; charset=UTF-8"],
        warned,
    )
    .await;
    // A success is logged at info level.
    let gate = gateway(
        &legacy,
        &[
            ("FEISHU_GATE_UPSTREAM_OK", "/code==0"),
            ("RUST_LOG", "info"),
        ],
    )
    .await;
    assert_eq!(send(&gate).await.status, 200);
    let details = details(&gate).await;
    assert!(
        details
            .iter()
            .any(|d| d.contains("bytes before the answer's JSON, ignored") && d.contains("Warning")),
        "{details:?}"
    );
}
