//! Where values come from: the process environment (or a map, in tests), and the files
//! a secret's `<NAME>_FILE` names.

use std::collections::HashMap;

use crate::vars::{OTEL_PREFIX, PREFIX, SECRET_VARIABLES, VARIABLES};

/// A variable's value as the environment holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Text(String),
    /// Not UTF-8: reported as such, never read.
    NotUtf8,
}

/// The variables the gateway reads: ours and OpenTelemetry's, nothing else.
#[derive(Debug, Default)]
pub(super) struct Source {
    vars: HashMap<String, Value>,
}

impl Source {
    pub(super) fn from_env() -> Self {
        Self::collect(std::env::vars_os().filter_map(|(k, v)| {
            // Another program's variable with a name that is not UTF-8 is not ours either.
            let k = k.into_string().ok()?;
            Some((k, v.into_string().map_or(Value::NotUtf8, Value::Text)))
        }))
    }

    pub(super) fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::collect(
            vars.into_iter()
                .map(|(k, v)| (k.into(), Value::Text(v.into()))),
        )
    }

    fn collect(vars: impl Iterator<Item = (String, Value)>) -> Self {
        Self {
            vars: vars
                .filter(|(k, _)| k.starts_with(PREFIX) || k.starts_with(OTEL_PREFIX))
                .collect(),
        }
    }

    pub(super) fn get(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }

    /// `FEISHU_GATE_*` names that are not ours: likely typos, worth a warning.
    /// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT` and
    /// `<SERVICE>_PORT_<n>_TCP*` for every Service in the namespace; a Service
    /// named `feishu-gate` or `feishu-gate-<anything>` produces names under our
    /// prefix, and those are expected.
    pub(super) fn unknown_variables(&self) -> Vec<String> {
        let mut unknown: Vec<String> = self
            .vars
            .keys()
            .filter(|k| k.starts_with(PREFIX))
            .filter(|k| {
                let known = VARIABLES.contains(&k.as_str())
                    || k.strip_suffix("_FILE")
                        .is_some_and(|name| SECRET_VARIABLES.contains(&name));
                !known && !is_service_link(k)
            })
            .map(|k| match k.strip_suffix("_FILE").filter(|v| VARIABLES.contains(v)) {
                Some(name) => format!(
                    "{k} is not a feishu-gate setting and is ignored ({name} is not a secret, \
                     so it is not read from a file)"
                ),
                None => match closest(k) {
                Some(known) => {
                    format!(
                        "{k} is not a feishu-gate setting and is ignored (did you mean {known}?)"
                    )
                }
                    None => format!("{k} is not a feishu-gate setting and is ignored"),
                },
            })
            .collect();
        unknown.sort();
        unknown
    }
}

/// The variable of ours `name` most likely misspells, if one is within two edits
/// (after the common prefix, which would make every name look alike).
fn closest(name: &str) -> Option<String> {
    let tail = name.strip_prefix(PREFIX)?;
    let secret_files = SECRET_VARIABLES.iter().map(|v| format!("{v}_FILE"));
    VARIABLES
        .iter()
        .map(|v| (*v).to_owned())
        .chain(secret_files)
        .filter_map(|known| {
            let distance = strsim::damerau_levenshtein(tail, known.strip_prefix(PREFIX)?);
            (distance <= 2).then_some((distance, known))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

fn is_service_link(name: &str) -> bool {
    name.contains("_SERVICE_HOST")
        || name.contains("_SERVICE_PORT")
        || name.ends_with("_PORT")
        || name
            .split_once("_PORT_")
            .is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Secrets are a few dozen bytes; a file much larger is the wrong file.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Why a secret file could not be used.
#[derive(Debug)]
pub enum SecretFileError {
    Unreadable(String),
    NotUtf8,
}

/// Reads a secret file, refusing anything but a regular file of sane size:
/// `/dev/stdin` would block start-up and `/dev/zero` would never end. Secrets
/// written with `echo` or an editor end in a newline that is no part of them.
pub fn read_secret_file(path: &str) -> Result<String, SecretFileError> {
    use std::io::Read as _;
    let unreadable = |e: std::io::Error| SecretFileError::Unreadable(e.to_string());
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(SecretFileError::Unreadable("not a regular file".to_owned()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretFileError::Unreadable(format!(
            "larger than {MAX_SECRET_FILE_BYTES} bytes"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| SecretFileError::NotUtf8)?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// A path as shown in a problem: control characters escaped, so every
/// problem stays on one line.
pub(super) fn shown(path: &str) -> String {
    path.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
