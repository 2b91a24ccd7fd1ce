//! Secrets: the callback tokens and keys, compared in constant time and never
//! shown by `Debug`.

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::callback::envelope::CallbackKey;

/// The accepted `action_callback_token`s (more than one during rotation).
///
/// Only SHA-256 digests are kept: comparing fixed-length digests in constant
/// time leaks neither the token's bytes nor its length.
#[derive(Clone)]
pub struct TokenSet {
    digests: Vec<[u8; 32]>,
    /// Kept to scrub upstream messages that would echo a secret back to Feishu.
    plain: Vec<String>,
}

impl TokenSet {
    pub fn new<I: IntoIterator<Item = String>>(tokens: I) -> Self {
        let plain: Vec<String> = tokens.into_iter().collect();
        let digests = plain.iter().map(|t| digest(t.as_bytes())).collect();
        Self { digests, plain }
    }

    /// Whether `presented` equals any accepted token. Every configured token is
    /// compared, whatever matched first, so timing does not tell which one it was.
    pub fn accepts(&self, presented: &str) -> bool {
        let presented = digest(presented.as_bytes());
        let mut any = Choice::from(0);
        for d in &self.digests {
            any |= d.ct_eq(&presented);
        }
        any.into()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub(crate) fn plain(&self) -> &[String] {
        &self.plain
    }
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet(<{} redacted>)", self.digests.len())
    }
}

/// The `action_callback_key`s, tried in order when opening an envelope.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<CallbackKey>,
    plain: Vec<String>,
}

impl KeySet {
    pub fn new<I: IntoIterator<Item = String>>(keys: I) -> Self {
        let plain: Vec<String> = keys.into_iter().collect();
        let keys = plain.iter().map(|k| CallbackKey::new(k)).collect();
        Self { keys, plain }
    }

    pub fn keys(&self) -> &[CallbackKey] {
        &self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn plain(&self) -> &[String] {
        &self.plain
    }
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet(<{} redacted>)", self.keys.len())
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_listed_token_and_nothing_else() {
        let set = TokenSet::new(["old-token".to_owned(), "new-token".to_owned()]);
        assert!(set.accepts("old-token"));
        assert!(set.accepts("new-token"));
        for near in [
            "",
            "old-toke",
            "old-tokenn",
            "Old-token",
            "old-token ",
            "new-token\0",
        ] {
            assert!(!set.accepts(near), "{near:?}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let t = TokenSet::new(["hunter2".to_owned()]);
        let k = KeySet::new(["k3y".to_owned()]);
        assert_eq!(format!("{t:?}"), "TokenSet(<1 redacted>)");
        assert_eq!(format!("{k:?}"), "KeySet(<1 redacted>)");
    }
}
