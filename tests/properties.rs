//! Properties over generated inputs: the envelope round-trips for any key and
//! size, and what reaches the legacy system is the callback minus `token`,
//! value for value and in order, for any JSON a callback may carry.

mod support;

use std::fmt::Write as _;

use base64::Engine as _;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};

use feishu_gate::testing::callback::envelope::CallbackKey;
use feishu_gate::testing::callback::json::Fields;
use feishu_gate::testing::callback::{self, ForwardOptions};
use feishu_gate::testing::config;
use feishu_gate::testing::outcome::{JsonError, MAX_DEPTH};
use support::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sealing_then_opening_gives_back_any_bytes_under_any_key(
        key in any::<String>(),
        plaintext in prop_oneof![
            8 => prop::collection::vec(any::<u8>(), 0..600),
            1 => prop::collection::vec(any::<u8>(), 60_000..70_000),
        ],
    ) {
        let k = CallbackKey::new(&key);
        let sealed = k.encrypt(&plaintext).unwrap();
        prop_assert_eq!(k.decrypt(&sealed).unwrap(), plaintext.clone());
        let decoded = base64::engine::general_purpose::STANDARD.decode(&sealed).unwrap();
        prop_assert_eq!(decoded.len(), 16 + (plaintext.len() / 16 + 1) * 16);
    }

    #[test]
    fn a_damaged_envelope_never_opens_to_the_plaintext(
        key in any::<String>(),
        plaintext in prop::collection::vec(any::<u8>(), 1..200),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let k = CallbackKey::new(&key);
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(k.encrypt(&plaintext).unwrap())
            .unwrap();
        let i = flip.index(raw.len());
        raw[i] ^= 1 << bit;
        // CBC without a MAC: a flipped bit either breaks the padding or changes
        // what comes out. Either way it is never silently the same plaintext.
        if let Ok(opened) = k.decrypt_raw(&raw) {
            prop_assert_ne!(opened, plaintext);
        }
    }

    #[test]
    fn the_forwarded_body_is_the_callback_minus_its_token(cb in callback_text(0..=12)) {
        let fields = Fields::parse(cb.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {cb}")))?;
        let validated = callback::validate(&fields, ForwardOptions::default())
            .map_err(|e| TestCaseError::fail(format!("{e}: {cb}")))?;
        same_minus_token(&cb, &validated.upstream_body)?;
    }

    #[test]
    fn nesting_is_accepted_up_to_the_limit_and_refused_beyond(depth in 0usize..=40, leaf in leaf()) {
        let mut value = leaf;
        for i in 0..depth {
            value = if i % 2 == 0 { format!("[{value}]") } else { format!("{{\"n\":{value}}}") };
        }
        let body = format!(
            r#"{{"action_type":"APPROVE","user_id":"u","approval_code":"c","deep":{value},"token":"t"}}"#
        );
        match Fields::parse(body.as_bytes()) {
            Ok(f) => {
                prop_assert!(depth < MAX_DEPTH, "depth {} accepted", depth + 1);
                let cb = callback::validate(&f, ForwardOptions::default()).unwrap();
                same_minus_token(&body, &cb.upstream_body)?;
            }
            Err(e) => {
                prop_assert!(depth >= MAX_DEPTH, "depth {} refused: {e}", depth + 1);
                prop_assert_eq!(e, JsonError::TooDeep);
            }
        }
    }
}

/// End to end: generated callbacks, half of them sealed, through the gateway
/// on real sockets to a real upstream, compared with what it received.
#[test]
fn what_reaches_the_upstream_is_the_callback_minus_its_token() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (up, gate) = rt.block_on(async {
        let up = Upstream::start(Reply::ok()).await;
        let gate = Gate::start(
            &up.url(),
            &[
                (config::KEY, KEY),
                (config::ALLOW_PLAINTEXT, "true"),
                (config::RATE_LIMIT_RPS, "0"),
            ],
        )
        .await;
        (up, gate)
    });
    let mut runner = TestRunner::new(RunnerConfig::with_cases(96));
    runner
        .run(&(callback_text(0..=8), any::<bool>()), |(cb, sealed)| {
            let body = if sealed { seal(KEY, &cb) } else { cb.clone() };
            let before = up.count();
            let answer = rt.block_on(gate.post(body));
            prop_assert_eq!(answer.status, 200, "{} for {}", answer.text, cb);
            let received = up.received();
            prop_assert_eq!(received.len(), before + 1);
            same_minus_token(&cb, &received[before].body)
        })
        .unwrap();
}

/// Compares raw values text for text, in order: every field of `sent` but
/// `token` arrives in `forwarded`, and nothing else does.
fn same_minus_token(sent: &str, forwarded: &[u8]) -> Result<(), TestCaseError> {
    let forwarded_text = String::from_utf8(forwarded.to_vec())
        .map_err(|_| TestCaseError::fail("forwarded body is not UTF-8"))?;
    prop_assert!(
        is_strict_json(forwarded),
        "forwarded body is not JSON: {}",
        forwarded_text
    );
    let sent = Fields::parse(sent.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let got = Fields::parse(forwarded).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let expected: Vec<(&str, &str)> = sent
        .iter()
        .filter(|(k, _)| *k != "token")
        .map(|(k, v)| (k, v.get()))
        .collect();
    let actual: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k, v.get())).collect();
    prop_assert_eq!(expected, actual);
    Ok(())
}

/// A callback object with the required fields, a token, optional typed fields
/// and `extra` generated ones, in a random order, spaced at random.
fn callback_text(extra: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    let required = (nonempty_string(), nonempty_string(), nonempty_string());
    let typed = (
        prop::option::of(json_string()),
        prop::option::of(json_string()),
        prop::option::of(message_id()),
        prop::option::of(json_string()),
    );
    let extras = prop::collection::vec((key(), value()), extra);
    (required, typed, extras, whitespace()).prop_flat_map(
        |((action, user, code), (task, reason, message_id, context), extras, ws)| {
            let mut entries = vec![
                ("\"action_type\"".to_owned(), action),
                ("\"user_id\"".to_owned(), user),
                ("\"approval_code\"".to_owned(), code),
                ("\"token\"".to_owned(), format!("\"{TOKEN}\"")),
            ];
            let optional = [
                ("\"task_id\"", task),
                ("\"reason\"", reason),
                ("\"message_id\"", message_id),
                ("\"action_context\"", context),
            ];
            for (name, v) in optional {
                if let Some(v) = v {
                    entries.push((name.to_owned(), v));
                }
            }
            let mut seen = std::collections::HashSet::new();
            for (k, v) in extras {
                // Keys are unique once decoded; a repeat is a different (refused) case.
                let decoded: String = serde_json::from_str(&k).unwrap();
                if seen.insert(decoded) {
                    entries.push((k, v));
                }
            }
            Just(entries).prop_shuffle().prop_map(move |entries| {
                let mut out = String::from("{");
                out.push_str(&ws);
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                        out.push_str(&ws);
                    }
                    let _ = write!(out, "{k}{ws}:{ws}{v}");
                }
                out.push_str(&ws);
                out.push('}');
                out
            })
        },
    )
}

fn whitespace() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just(String::new()),
        1 => Just(" ".to_owned()),
        1 => Just("\n\t ".to_owned()),
    ]
}

/// Numbers of every shape JSON allows, most of which a float would change:
/// integers past u64, negative zero, long fractions, large exponents.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "-?[1-9][0-9]{19,60}",
        Just("-0".to_owned()),
        Just("-0.0".to_owned()),
        Just("-0e0".to_owned()),
        Just("0.10".to_owned()),
        "-?(0|[1-9][0-9]{0,20})\\.[0-9]{1,30}([eE][+-]?[0-9]{1,4})?",
        "-?(0|[1-9][0-9]{0,5})[eE][+-]?[0-9]{1,5}",
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
    ]
}

/// A `message_id` in every form Feishu may send: a bare non-negative int64
/// (often above 2^53), a string of digits, or null.
fn message_id() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..=i64::MAX).prop_map(|n| n.to_string()),
        (1u64 << 53..i64::MAX as u64).prop_map(|n| n.to_string()),
        (0u64..i64::MAX as u64).prop_map(|n| format!("\"{n}\"")),
        Just("null".to_owned()),
    ]
}

/// Any text, written either as serde_json writes it or with every
/// non-ASCII character as `\u` escapes (surrogate pairs included).
fn encode(s: &str, escape_all: bool) -> String {
    if !escape_all {
        return serde_json::to_string(s).unwrap();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            c if (c as u32) < 0x20 || !c.is_ascii() => {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_string() -> impl Strategy<Value = String> {
    (any::<String>(), any::<bool>()).prop_map(|(s, all)| encode(&s, all))
}

fn nonempty_string() -> impl Strategy<Value = String> {
    (".+", any::<bool>()).prop_map(|(s, all)| encode(&s, all))
}

/// Unknown field names, including ones that need escapes; prefixed so they
/// never name a field the gateway types.
fn key() -> impl Strategy<Value = String> {
    (any::<String>(), any::<bool>()).prop_map(|(s, all)| encode(&format!("x_{s}"), all))
}

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        number(),
        json_string(),
        Just("true".to_owned()),
        Just("false".to_owned()),
        Just("null".to_owned()),
    ]
}

/// Any JSON value, nested a few levels.
fn value() -> impl Strategy<Value = String> {
    leaf().prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..6), whitespace())
                .prop_map(|(items, ws)| format!("[{ws}{}{ws}]", items.join(&format!(",{ws}")))),
            prop::collection::vec((key(), inner), 0..6).prop_map(|entries| {
                let body: Vec<String> = entries.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", body.join(","))
            }),
        ]
    })
}
