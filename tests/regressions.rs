//! Bugs the reliability suite found (docs/reliability.md), each pinned end to
//! end through the real gateway or the real binary. The idle-connection and
//! broken-answer regressions live with their kind in abuse.rs and faults.rs.

mod support;

use std::time::Duration;

use feishu_gate::testing::config;
use support::binary::{run, run_within};
use support::*;

/// Caught by the `callback_fields` fuzz target: a negative `message_id` number
/// was accepted, while its string form is refused; with `MESSAGE_ID_AS_STRING`
/// the gateway forwarded `"-25002019"`, an id it would itself refuse. Feishu's
/// ids are positive, so both forms now accept exactly the non-negative ids.
#[tokio::test]
async fn a_negative_message_id_is_refused_in_either_form() {
    let up = Upstream::start(Reply::ok()).await;
    for extra in [&[][..], &[(config::MESSAGE_ID_AS_STRING, "true")][..]] {
        let gate = Gate::start(&up.url(), extra).await;
        for value in ["-25002019", r#""-25002019""#] {
            let m = gate
                .post(callback_with(TOKEN, "message_id", value))
                .await
                .feishu_error(422);
            assert!(m.contains("message_id"), "{m}");
        }
    }
    assert_eq!(up.count(), 0);
}

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
    assert_eq!(message, "Invalid callback: a field appears more than once.");
    assert!(!message.contains("img"), "{message}");
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

/// Caught by the `config_from_vars` fuzz target: a path with a line break in
/// it made a problem span two lines, breaking "one line per problem". Found
/// beside it: a secret file that never ends (`/dev/zero`) made start-up read
/// forever.
#[test]
fn check_config_reports_bad_secret_files_on_one_line_each_and_promptly() {
    let (code, _, err) = run_within(
        &["check-config"],
        &[
            ("FEISHU_GATE_UPSTREAM_URL", "http://127.0.0.1:9/"),
            ("FEISHU_GATE_TOKEN_FILE", "/dev/zero"),
            ("FEISHU_GATE_KEY_FILE", "/no\nsuch\r/key"),
        ],
        Duration::from_secs(20),
    )
    .expect("check-config finishes within 20 s");
    assert_eq!(code, 64);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        vec![
            "FEISHU_GATE_TOKEN_FILE: cannot read /dev/zero: not a regular file",
            "FEISHU_GATE_KEY_FILE: cannot read /no\\nsuch\\r/key: No such file or directory (os error 2)",
        ],
        "{err}"
    );
}

/// Caught by the `config_from_vars` fuzz target: an `UPSTREAM_HEADERS` entry that was
/// not `name=value` was quoted in the problem (up to its first `:`), so a
/// credential pasted on its own, or with its scheme and base64 `=` padding,
/// went to the operator's terminal and logs.
#[test]
fn check_config_never_echoes_a_header_entry_that_may_be_a_credential() {
    let (code, _, err) = run(
        &["check-config"],
        &[
            ("FEISHU_GATE_UPSTREAM_URL", "http://127.0.0.1:9/"),
            ("FEISHU_GATE_TOKEN", "t"),
            (
                "FEISHU_GATE_UPSTREAM_HEADERS",
                "s3cr3t-t0ken,Bearer c2VjcmV0==",
            ),
        ],
    );
    assert_eq!(code, 64);
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        vec![
            "FEISHU_GATE_UPSTREAM_HEADERS: entry 1 is not name=value (or Name: value)",
            "FEISHU_GATE_UPSTREAM_HEADERS: entry 2 does not start with a header name",
        ]
    );
    assert!(
        !err.contains("s3cr3t") && !err.contains("c2VjcmV0"),
        "{err}"
    );
}

/// A legacy system that echoes its own credential in a refusal, past the length Feishu
/// shows: the operator's `UPSTREAM_HEADERS` value is a secret like the token, and is looked
/// for before the message is cut, so not even its first characters reach the approver.
#[tokio::test]
async fn an_upstream_header_value_echoed_in_a_refusal_is_not_passed_on() {
    let credential = "Bearer legacy-credential-0123456789";
    let padding = "x".repeat(190);
    let up = Upstream::start(Reply::json(
        403,
        &format!(r#"{{"message":"{padding} bad credential {credential}"}}"#),
    ))
    .await;
    let gate = Gate::start(
        &up.url(),
        &[(
            config::UPSTREAM_HEADERS,
            "Authorization=Bearer%20legacy-credential-0123456789",
        )],
    )
    .await;
    let m = gate.post(callback(TOKEN)).await.feishu_error(403);
    assert_eq!(up.count(), 1);
    assert!(!m.contains("legacy-credential"), "{m}");
    assert!(
        !m.contains(&padding[..50]),
        "the refusal's own text was passed on: {m}"
    );
}
