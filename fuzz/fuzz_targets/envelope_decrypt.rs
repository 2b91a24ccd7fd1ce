//! Feishu's `encrypt` envelope: any key string, any text. Opening must never
//! panic, and it must be the exact inverse of sealing.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use feishu_gate::testing::callback::envelope::CallbackKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: how much of the rest is the key string; the remainder is the envelope.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (key_text, payload) = rest.split_at(usize::from(split).min(rest.len()));
    let key = CallbackKey::new(&String::from_utf8_lossy(key_text));
    let encrypt = String::from_utf8_lossy(payload);

    if let Ok(plain) = key.decrypt(&encrypt) {
        // Only canonical base64 opens, so re-sealing under the same IV gives back the same text:
        // no two envelopes mean the same thing.
        let decoded = STANDARD
            .decode(encrypt.as_bytes())
            .expect("an envelope that opened is base64");
        let iv: [u8; 16] = decoded[..16]
            .try_into()
            .expect("an envelope that opened has an IV");
        assert_eq!(key.encrypt_with_iv(&plain, iv), encrypt);
    }
    let _ = key.decrypt_raw(payload);

    let sealed = key.encrypt_with_iv(payload, [0x5a; 16]);
    assert_eq!(key.decrypt(&sealed).as_deref(), Ok(payload));
});
