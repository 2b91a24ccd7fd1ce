//! Bugs the reliability suite found (docs/reliability.md), each pinned end to
//! end through the real gateway or the real binary. The idle-connection and
//! broken-answer regressions live with their kind in abuse.rs and faults.rs.

mod common;

use common::*;
use feishu_gate::config;

/// Caught by the `verify` and `callback_fields` fuzz targets: a string holding half a
/// surrogate pair (`"\ud83d"`) passed the gateway's parser, which only checks
/// escape syntax, and was forwarded to a legacy system whose strict JSON
/// parser would then refuse the whole body.
#[tokio::test]
async fn half_a_surrogate_pair_is_refused_not_forwarded() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[(config::KEY, KEY)]).await;
    for reason in [r#""\ud83d""#, r#""\ude00 tail""#, r#""\ud83d\ud83d\ude00""#] {
        let body =
            callback_with(TOKEN, "reason", r#""placeholder""#).replace(r#""placeholder""#, reason);
        let answer = gate.post(seal(KEY, &body)).await;
        // Inside the envelope a body that is not JSON is indistinguishable
        // from a wrong key, so it is refused as unverifiable.
        answer.feishu_error(401);
        let answer = post(gate.addr, "/", body, &[]).await;
        assert!(
            answer.status == 422 || answer.status == 401,
            "{}",
            answer.text
        );
    }
    // With plaintext allowed, the refusal says what is wrong.
    let plain = Gate::start(
        &up.url(),
        &[(config::KEY, KEY), (config::ALLOW_PLAINTEXT, "true")],
    )
    .await;
    let body = callback_with(TOKEN, "reason", r#""x""#).replace(r#""x""#, r#""\ud83d""#);
    let message = plain.post(body).await.feishu_error(422);
    assert_eq!(message, "Invalid callback: body is not valid JSON.");
    // A whole pair is text, and arrives exactly as sent.
    let body = callback_with(TOKEN, "reason", r#""x""#).replace(r#""x""#, r#""\ud83d\ude00""#);
    assert_eq!(plain.post(body).await.status, 200);
    let got = up.received();
    assert_eq!(got.len(), 1, "only the valid callback was forwarded");
    assert!(
        got[0].text().contains(r#""reason":"\ud83d\ude00""#),
        "{}",
        got[0].text()
    );
}

/// Caught by the `verify` fuzz target: the name of a repeated field is the caller's
/// text, and went into the message Feishu shows the approver unfiltered,
/// markup and line breaks included.
#[tokio::test]
async fn a_repeated_field_name_reaches_the_approver_cleaned() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Gate::start(&up.url(), &[]).await;
    let body = format!(r#"{{"token":"{TOKEN}","<img src=x>\n\u0007":1,"<img src=x>\n\u0007":2}}"#);
    let message = gate.post(body).await.feishu_error(422);
    assert_eq!(message, "Invalid callback: field appears more than once.");
    assert_eq!(up.count(), 0);
}

/// Caught by the `upstream_message` fuzz target: a `>` outside any tag
/// survived the cleaning and reached Feishu's card.
#[tokio::test]
async fn an_upstream_message_with_a_stray_bracket_is_cleaned() {
    let up = Upstream::start(Reply::json(
        409,
        r#"{"message":"amount > 1000 -> refused"}"#,
    ))
    .await;
    let gate = Gate::start(&up.url(), &[]).await;
    let message = gate.post(callback(TOKEN)).await.feishu_error(409);
    assert_eq!(message, "amount 1000 - refused");
}
