//! The whole verification of a callback body, as the gateway runs it: with and
//! without keys, plaintext and sealed. Accepted bodies must forward exactly the
//! object minus `token`/`encrypt`; refused ones must produce a message fit for
//! Feishu's card.
#![no_main]

use feishu_gate::testing::callback::ForwardOptions;
use feishu_gate::testing::callback::json::Fields;
use feishu_gate::testing::respond::Lang;
use feishu_gate::testing::callback::envelope::CallbackKey;
use feishu_gate::testing::outcome::Outcome;
use feishu_gate::testing::respond::Translator;
use feishu_gate::testing::util::text::MAX_MESSAGE_CHARS;
use feishu_gate::testing::callback::secrets::{KeySet, TokenSet};
use feishu_gate::testing::callback::verify::Verifier;
use libfuzzer_sys::fuzz_target;

#[path = "strict.rs"]
mod strict;

/// The token and key of the V1 vector, so the checked-in vectors are live seeds.
const TOKEN: &str = "sdjkljkx9lsadf110";
const KEY: &str = "gfdqedvsadfgfsd";

fn verifier(keys: &[&str], allow_plaintext: bool, message_id_as_string: bool) -> Verifier {
    Verifier {
        tokens: TokenSet::new([TOKEN.to_owned(), "rotated-token".to_owned()]),
        keys: KeySet::new(keys.iter().map(|k| (*k).to_owned())),
        allow_plaintext,
        forward: ForwardOptions {
            message_id_as_string,
        },
    }
}

fuzz_target!(|data: &[u8]| {
    // First byte: bit 0 seals the rest first (so the fuzzer explores inside the
    // envelope), bit 1 forwards message_id as a string.
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let as_string = mode & 2 != 0;
    let sealed;
    let input: &[u8] = if mode & 1 != 0 {
        let envelope = CallbackKey::new(KEY).encrypt_with_iv(body, [mode; 16]);
        sealed = serde_json::json!({ "encrypt": envelope }).to_string();
        sealed.as_bytes()
    } else {
        body
    };
    let verifiers = [
        verifier(&[], false, as_string),
        verifier(&[KEY], false, as_string),
        verifier(&["rotated-key", KEY], true, as_string),
    ];
    let translators = [
        Translator::new(Lang::En, vec![TOKEN.into(), KEY.into()]),
        Translator::new(Lang::Zh, vec![TOKEN.into(), KEY.into()]),
    ];
    for v in &verifiers {
        match v.verify(input) {
            Ok(callback) => {
                let object = opened(input);
                check_forwarded(&object, &callback.upstream_body, as_string);
                let key = feishu_gate::testing::callback::idempotency_key(&callback.decision);
                assert!(key.iter().all(u8::is_ascii_hexdigit));
            }
            Err(why) => {
                let outcome = Outcome::BadRequest(why);
                assert!(outcome.status().as_u16() > 400);
                for t in &translators {
                    check_message(&t.message(&outcome).expect("a refusal has a message"));
                }
            }
        }
    }
});

/// The object the verifier validated: the body itself, or what its envelope holds.
fn opened(input: &[u8]) -> Vec<u8> {
    let outer = Fields::parse(input).expect("an accepted body is an object");
    match outer.string("encrypt").expect("encrypt was a string") {
        Some(encrypt) => CallbackKey::new(KEY)
            .decrypt(&encrypt)
            .expect("an accepted envelope opens with the key"),
        None => input.to_vec(),
    }
}

fn check_forwarded(object: &[u8], forwarded: &[u8], as_string: bool) {
    assert!(strict::is_json(forwarded), "the forwarded body is JSON");
    let sent = Fields::parse(object).expect("the validated object parses");
    let got = Fields::parse(forwarded).expect("the forwarded body is an object");
    let expected: Vec<(&str, &str)> = sent
        .iter()
        .filter(|(k, _)| *k != "token" && *k != "encrypt")
        .map(|(k, v)| (k, v.get()))
        .collect();
    let actual: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k, v.get())).collect();
    assert_eq!(expected.len(), actual.len());
    for ((ek, ev), (ak, av)) in expected.iter().zip(&actual) {
        assert_eq!(ek, ak);
        if *ek == "message_id" && as_string && !ev.starts_with('"') && *ev != "null" {
            let digits: i64 = ev.parse().expect("an accepted message_id is an int64");
            assert_eq!(*av, format!("\"{digits}\""));
        } else {
            assert_eq!(ev, av, "value of {ek:?}");
        }
    }
}

fn check_message(message: &str) {
    assert!(!message.is_empty());
    assert!(message.chars().count() <= MAX_MESSAGE_CHARS, "{message:?}");
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert!(!message.contains(['<', '>']), "{message:?}");
    assert!(
        !message.contains(TOKEN) && !message.contains(KEY),
        "{message:?}"
    );
}
