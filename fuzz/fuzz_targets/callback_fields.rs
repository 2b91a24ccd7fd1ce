//! The callback object on its own: parsing and validation. What is forwarded
//! is valid JSON, equals the input object minus `token`/`encrypt` value for
//! value and in order, and forwarding it again changes nothing.
#![no_main]

use feishu_gate::testing::callback::{self, ForwardOptions};
use feishu_gate::testing::callback::json::Fields;
use feishu_gate::testing::outcome::MAX_DEPTH;
use libfuzzer_sys::fuzz_target;

#[path = "strict.rs"]
mod strict;

fuzz_target!(|data: &[u8]| {
    let Ok(fields) = Fields::parse(data) else {
        return;
    };
    assert!(strict::is_json(data), "what Fields accepts is JSON");
    for message_id_as_string in [false, true] {
        let opts = ForwardOptions {
            message_id_as_string,
        };
        let Ok(cb) = callback::validate(&fields, opts) else {
            continue;
        };
        let body = &cb.upstream_body;
        assert!(strict::is_json(body), "the forwarded body is JSON");
        let forwarded = Fields::parse(body).expect("the forwarded body is an object");
        let expected: Vec<(&str, &str)> = fields
            .iter()
            .filter(|(k, _)| *k != "token" && *k != "encrypt")
            .map(|(k, v)| (k, v.get()))
            .collect();
        let actual: Vec<(&str, &str)> = forwarded.iter().map(|(k, v)| (k, v.get())).collect();
        assert_eq!(expected.len(), actual.len());
        for ((ek, ev), (ak, av)) in expected.iter().zip(&actual) {
            assert_eq!(ek, ak);
            let rewritten = *ek == "message_id"
                && message_id_as_string
                && ev.starts_with(|c: char| c == '-' || c.is_ascii_digit());
            if !rewritten {
                assert_eq!(ev, av, "value of {ek:?}");
            }
        }
        assert!(body.len() <= data.len() + 2 * MAX_DEPTH + 64 + 6 * data.len());

        // Forwarding the forwarded body again is a fixed point with the same key.
        let again = callback::validate(&forwarded, opts).expect("the forwarded body validates");
        assert_eq!(&again.upstream_body, body);
        if !message_id_as_string {
            assert_eq!(again.decision, cb.decision);
        }
        assert_eq!(again.summary, cb.summary);
    }
});
