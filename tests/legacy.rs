//! What legacy systems really answer, through the real binary: string codes, plain
//! text and GBK refusals, redirects to a login page; and what the approver and the
//! operator's log then see.

mod support;

use std::time::Duration;

use support::Binary;
use support::{Act, Answer, KEY, RawLegacy, TOKEN, callback, post, seal};

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

#[tokio::test]
async fn header_names_arrive_in_their_conventional_case() {
    let legacy = answering(
        "200 OK",
        &["Content-Type: application/json"],
        br#"{"code":0}"#,
    )
    .await;
    let gate = gateway(
        &legacy,
        &[(
            "FEISHU_GATE_UPSTREAM_HEADERS",
            "X-Tenant: acme, authorization=Basic%20dTpw",
        )],
    )
    .await;
    assert_eq!(send(&gate).await.status, 200);
    let head = legacy.requests()[0].head_text();
    for line in [
        "\r\nContent-Type: application/json",
        "\r\nX-Request-Id: ",
        "\r\nIdempotency-Key: ",
        "\r\nUser-Agent: feishu-gate/",
        "\r\nX-Tenant: acme",
        "\r\nAuthorization: Basic dTpw",
        "\r\nHost: ",
        "\r\nContent-Length: ",
    ] {
        assert!(head.contains(line), "{line:?} not in {head:?}");
    }
}
