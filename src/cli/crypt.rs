//! `encrypt` and `decrypt`: Feishu's envelope by hand, for debugging.

use std::io::{Read, Write};
use std::process::ExitCode;

use super::{DecryptArgs, EncryptArgs, KeyArgs};
use crate::callback::envelope::CallbackKey;

fn read_stdin() -> Result<Vec<u8>, ExitCode> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).map_err(|e| {
        eprintln!("feishu-gate: cannot read stdin: {e}");
        ExitCode::FAILURE
    })?;
    Ok(input)
}

pub(super) fn first_key(list: &str) -> &str {
    list.split(',')
        .map(str::trim)
        .find(|k| !k.is_empty())
        .unwrap_or(list)
}

/// The key the command needs, then its input: every command here reads both.
fn key_and_input(key: &KeyArgs) -> Result<(String, Vec<u8>), ExitCode> {
    Ok((key.required()?, read_stdin()?))
}

pub(super) fn encrypt(args: &EncryptArgs) -> ExitCode {
    let (key, input) = match key_and_input(&args.key) {
        Ok(both) => both,
        Err(code) => return code,
    };
    // A shell's trailing newline is no part of the callback.
    let plaintext = input.strip_suffix(b"\n").unwrap_or(&input);
    if !args.any_input {
        let problem = if plaintext.iter().all(u8::is_ascii_whitespace) {
            Some("stdin is empty")
        } else if !serde_json::from_slice::<serde_json::Value>(plaintext)
            .is_ok_and(|v| v.is_object())
        {
            Some("stdin is not a JSON object, as a callback is")
        } else {
            None
        };
        if let Some(problem) = problem {
            eprintln!("feishu-gate: {problem}; --any-input seals it anyway");
            return ExitCode::FAILURE;
        }
    }
    let sealed = match CallbackKey::new(first_key(&key)).encrypt(plaintext) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("feishu-gate: no randomness for the IV: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = if args.raw {
        sealed
    } else {
        serde_json::json!({ "encrypt": sealed }).to_string()
    };
    println!("{out}");
    ExitCode::SUCCESS
}

pub(super) fn decrypt(args: &DecryptArgs) -> ExitCode {
    let (keys, input) = match key_and_input(&args.key) {
        Ok(both) => both,
        Err(code) => return code,
    };
    let text = String::from_utf8_lossy(&input);
    let text = text.trim();
    let encrypt = if text.starts_with('{') {
        match serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("encrypt").and_then(|e| e.as_str()).map(str::to_owned))
        {
            Some(e) => e,
            None => {
                eprintln!("feishu-gate: the input is JSON without a string \"encrypt\" field");
                return ExitCode::FAILURE;
            }
        }
    } else {
        text.to_owned()
    };
    let mut last_error = None;
    for key in keys.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        match CallbackKey::new(key).decrypt(&encrypt) {
            Ok(plain)
                if args.any_output
                    || serde_json::from_slice::<serde_json::Value>(&plain).is_ok() =>
            {
                let shown = if args.show_token {
                    plain
                } else {
                    without_token(plain)
                };
                let mut out = std::io::stdout();
                let _ = out.write_all(&shown);
                let _ = out.write_all(b"\n");
                return ExitCode::SUCCESS;
            }
            Ok(_) => {
                last_error = Some(
                    "decrypts to something that is not JSON (wrong key? --any-output prints it)"
                        .to_owned(),
                )
            }
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    eprintln!(
        "feishu-gate: cannot decrypt: {}",
        last_error.unwrap_or_else(|| "no key given".to_owned())
    );
    ExitCode::FAILURE
}

/// The opened callback with its token's value replaced by `<redacted>`, byte for byte
/// otherwise: what is pasted into a ticket or a chat should not carry the secret.
fn without_token(plain: Vec<u8>) -> Vec<u8> {
    let token = serde_json::from_slice::<serde_json::Value>(&plain)
        .ok()
        .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_owned));
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return plain;
    };
    let Ok(text) = String::from_utf8(plain) else {
        return Vec::new();
    };
    // The token appears written as JSON writes it (Feishu's are plain letters and digits);
    // any other spelling of it is caught by writing the object out again.
    let quoted = serde_json::Value::String(token.clone()).to_string();
    if text.matches(quoted.as_str()).count() == 1 {
        return text.replacen(&quoted, r#""<redacted>""#, 1).into_bytes();
    }
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if let Some(t) = v.get_mut("token") {
        *t = serde_json::Value::String("<redacted>".to_owned());
    }
    v.to_string().into_bytes()
}
