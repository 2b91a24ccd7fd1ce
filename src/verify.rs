//! Proving a callback came from Feishu and turning it into what is forwarded:
//! open the envelope, check the token, validate. Pure: no I/O, no clock.

use crate::callback::{self, Callback, Fields, ForwardOptions, field};
use crate::config::Config;
use crate::respond::{AuthFailure, Rejection};
use crate::secret::{KeySet, TokenSet};

/// Everything needed to accept or refuse a callback body.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub tokens: TokenSet,
    pub keys: KeySet,
    /// With keys configured, also accept unencrypted bodies.
    pub allow_plaintext: bool,
    pub forward: ForwardOptions,
}

impl Verifier {
    pub fn from_config(config: &Config) -> Self {
        Self {
            tokens: config.tokens.clone(),
            keys: config.keys.clone(),
            allow_plaintext: config.allow_plaintext,
            forward: ForwardOptions {
                message_id_as_string: config.message_id_as_string,
            },
        }
    }

    /// Accepts a callback body or says why not.
    ///
    /// The token is checked before any field is validated, so an unauthenticated
    /// caller learns nothing about what a valid callback looks like.
    pub fn verify(&self, body: &[u8]) -> Result<Callback, Rejection> {
        let outer = Fields::parse(body).map_err(Rejection::Invalid)?;
        let plaintext;
        let fields = match outer.string(field::ENCRYPT).map_err(Rejection::Invalid)? {
            Some(encrypt) => {
                plaintext = self.open(&encrypt)?;
                // Only what was sealed counts: fields beside `encrypt` are ignored.
                Fields::parse(&plaintext).map_err(|_| unauthorized(AuthFailure::NotJsonInside))?
            }
            None if !self.keys.is_empty() && !self.allow_plaintext => {
                return Err(unauthorized(AuthFailure::PlaintextRefused));
            }
            None => outer,
        };
        let token = fields
            .string(field::TOKEN)
            .map_err(|_| unauthorized(AuthFailure::MissingToken))?
            .ok_or(unauthorized(AuthFailure::MissingToken))?;
        if !self.tokens.accepts(&token) {
            return Err(unauthorized(AuthFailure::WrongToken));
        }
        callback::validate(&fields, self.forward).map_err(Rejection::Invalid)
    }

    /// Tries each key in order. A wrong key passes the padding check about
    /// once in 256, so a key only counts when the result is a JSON object.
    fn open(&self, encrypt: &str) -> Result<Vec<u8>, Rejection> {
        let mut failure = AuthFailure::NoKeyConfigured;
        let keys = self.keys.keys();
        for (i, key) in keys.iter().enumerate() {
            let last = i + 1 == keys.len();
            match key.decrypt(encrypt) {
                // The caller parses the result anyway; only a key with others after it
                // needs the check here.
                Ok(plain) if last || Fields::parse(&plain).is_ok() => return Ok(plain),
                Ok(_) => failure = AuthFailure::NotJsonInside,
                Err(e) => failure = AuthFailure::Undecryptable(e),
            }
        }
        Err(unauthorized(failure))
    }
}

fn unauthorized(why: AuthFailure) -> Rejection {
    Rejection::Unauthorized(why)
}
