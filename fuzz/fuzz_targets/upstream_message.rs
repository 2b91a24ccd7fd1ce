//! Whatever the legacy system answers, the message shown to the approver is
//! one clean line of at most 200 characters, without markup.
#![no_main]

use feishu_gate::testing::respond::Lang;
use feishu_gate::testing::outcome::Outcome;
use feishu_gate::testing::respond::Translator;
use feishu_gate::testing::util::text::{self, MAX_MESSAGE_CHARS};
use feishu_gate::testing::outcome::Refusal;
use feishu_gate::testing::upstream::answer;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;

fn check(message: &str) {
    assert!(message.chars().count() <= MAX_MESSAGE_CHARS, "{message:?}");
    check_folded(message);
}

/// The legacy system's message as extracted: clean, and bounded, but not yet cut to
/// length, since secrets are looked for in the whole of it.
fn check_folded(message: &str) {
    assert!(!message.is_empty());
    assert!(message.len() <= 8 * MAX_MESSAGE_CHARS + 5, "{message:?}");
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert!(!message.contains(['<', '>']), "{message:?}");
    assert_eq!(message.trim(), message);
}

/// The `Content-Type`s legacy systems answer with; the first byte picks one.
const CONTENT_TYPES: [Option<&str>; 6] = [
    None,
    Some("application/json"),
    Some("text/plain"),
    Some("application/json; charset=GBK"),
    Some("text/plain;charset=big5"),
    Some("text/plain; charset=utf-16le"),
];

fuzz_target!(|data: &[u8]| {
    let content_type = data
        .first()
        .and_then(|b| CONTENT_TYPES[usize::from(*b) % CONTENT_TYPES.len()])
        .map(http::HeaderValue::from_static);
    let extracted = answer::message(content_type.as_ref(), data);
    if let Some(m) = &extracted {
        check_folded(m);
    }
    if let Some(m) = text::clean(&String::from_utf8_lossy(data)) {
        check(&m);
    }
    let outcome = Outcome::UpstreamRefused(Refusal {
        upstream_status: StatusCode::CONFLICT,
        message: extracted,
        business_rule: data.first().is_some_and(|b| b & 1 != 0),
    });
    let t = Translator::new(Lang::En, vec!["s3cret".into()]);
    check(&t.message(&outcome).expect("a refusal has a message"));
});
