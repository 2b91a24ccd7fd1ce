//! The configuration parser over arbitrary variable maps: it never panics,
//! reports every problem on a line of its own naming a variable, and never
//! shows a secret. Every secret value is marked with a sentinel the gateway
//! never writes itself, so any of it that is shown can be found.
#![no_main]

use feishu_gate::testing::config::{Config, PREFIX, SECRET_VARIABLES, VARIABLES};
use libfuzzer_sys::fuzz_target;

/// One variable per input line: the first byte picks a known name (or its
/// `_FILE` form) counting from `' '`, or says the name follows up to `=`.
fn variables(data: &[u8]) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    for line in data.split(|b| *b == b'\n') {
        let Some((&pick, rest)) = line.split_first() else {
            continue;
        };
        let rest = String::from_utf8_lossy(rest).into_owned();
        // Printable picks name known variables, so the line break never does.
        let known = usize::from(pick.wrapping_sub(b' ')) / 2;
        let (name, value) = if let Some(name) = VARIABLES.get(known) {
            let file = pick % 2 == 1 && SECRET_VARIABLES.contains(name);
            let name = if file {
                format!("{name}_FILE")
            } else {
                (*name).to_owned()
            };
            (name, rest)
        } else {
            match rest.split_once('=') {
                Some((n, v)) => (format!("{PREFIX}{n}"), v.to_owned()),
                None => (format!("{PREFIX}{rest}"), String::new()),
            }
        };
        vars.push((name, value));
    }
    vars
}

/// Marks the start of every secret value; removed from everything else.
const SENTINEL: &str = "\u{27e6}s\u{27e7}";
/// The sentinel percent-encoded, for header values (which are decoded).
const SENTINEL_ENCODED: &str = "%E2%9F%A6s%E2%9F%A7";

/// Marks each secret in `vars`: token and key list entries, header values,
/// and whole header entries that are not `name=value` (any of them may be a
/// pasted credential).
fn mark_secrets(vars: &mut [(String, String)]) {
    for (name, value) in vars.iter_mut() {
        let clean = value.replace('\u{27e6}', "");
        let marked = match name.strip_prefix(PREFIX) {
            Some("TOKEN" | "KEY") => clean
                .split(',')
                .map(|e| {
                    if e.trim().is_empty() {
                        e.to_owned()
                    } else {
                        format!("{SENTINEL}{}", e.trim())
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
            Some("UPSTREAM_HEADERS") => clean
                .split(',')
                .map(|e| match e.split_once('=') {
                    // Only a well-formed `name=value` has a part that is not secret.
                    Some((n, v)) if http::HeaderName::from_bytes(n.trim().as_bytes()).is_ok() => {
                        format!("{n}={SENTINEL_ENCODED}{v}")
                    }
                    _ if e.trim().is_empty() => e.to_owned(),
                    _ => format!("{SENTINEL}{}", e.trim()),
                })
                .collect::<Vec<_>>()
                .join(","),
            _ => clean,
        };
        *value = marked;
        *name = name.replace('\u{27e6}', "");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut vars = variables(data);
    mark_secrets(&mut vars);
    let shown = match Config::from_vars(vars) {
        Ok(loaded) => {
            let mut shown: String = loaded
                .config
                .describe()
                .into_iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect();
            shown.push_str(&format!("{:?}\n", loaded.config));
            shown.push_str(&loaded.warnings.join("\n"));
            shown
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            let mut shown = String::new();
            for e in &errors.0 {
                let line = e.to_string();
                assert!(e.variable.starts_with(PREFIX), "{line}");
                assert!(!line.contains(['\n', '\r']), "{line:?}");
                shown.push_str(&line);
                shown.push('\n');
            }
            shown
        }
    };
    assert!(!shown.contains('\u{27e6}'), "a secret is shown: {shown}");
});
