//! Proving a callback came from Feishu and turning it into what is forwarded:
//! open the envelope, check the token, validate. Pure: no I/O, no clock.

use crate::callback::json::Fields;
use crate::callback::secrets::{KeySet, TokenSet};
use crate::callback::{self, Callback, ForwardOptions, field};
use crate::outcome::{AuthFailure, BadRequest, EnvelopeError};

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
    /// Accepts a callback body or says why not.
    ///
    /// The token is checked before any field is validated, so an unauthenticated
    /// caller learns nothing about what a valid callback looks like.
    pub fn verify(&self, body: &[u8]) -> Result<Callback, BadRequest> {
        /// What the buffer may keep between callbacks.
        const KEEP: usize = 64 * 1024;
        std::thread_local! {
            /// Where envelopes are opened: its room is reused, callback after callback.
            static PLAINTEXT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        PLAINTEXT.with_borrow_mut(|plaintext| {
            let verified = self.verify_with(body, plaintext);
            // The token it holds is not left in memory until the next callback.
            plaintext.fill(0);
            if plaintext.capacity() > KEEP {
                *plaintext = Vec::new();
            }
            verified
        })
    }

    fn verify_with(&self, body: &[u8], plaintext: &mut Vec<u8>) -> Result<Callback, BadRequest> {
        let outer = Fields::parse(body).map_err(|e| BadRequest::Invalid(e.into()))?;
        let fields = match callback::string(&outer, field::ENCRYPT).map_err(BadRequest::Invalid)? {
            Some(encrypt) => {
                self.open(&encrypt, plaintext)?;
                // Only what was sealed counts: fields beside `encrypt` are ignored.
                Fields::parse(plaintext).map_err(|_| unauthorized(AuthFailure::NotJsonInside))?
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
        callback::validate(&fields, self.forward).map_err(BadRequest::Invalid)
    }

    /// Tries each key in order. A wrong key passes the padding check about
    /// once in 256, so a key only counts when the result is a JSON object.
    ///
    /// A bad padding is refused after the same work as a good one whose plaintext is not
    /// JSON (decrypting every block, then parsing what came out), so the time a refusal
    /// takes does not tell which it was.
    fn open(&self, encrypt: &str, plain: &mut Vec<u8>) -> Result<(), BadRequest> {
        let mut failure = AuthFailure::NoKeyConfigured;
        let keys = self.keys.keys();
        for (i, key) in keys.iter().enumerate() {
            let last = i + 1 == keys.len();
            let padded = match key.open_into(encrypt, plain) {
                Ok(opened) => opened,
                Err(e) => {
                    failure = AuthFailure::Undecryptable(e);
                    continue;
                }
            };
            // The caller parses the result anyway, so the last key with good padding is
            // handed over unparsed; every other case parses here.
            if padded && last {
                return Ok(());
            }
            let parsed = std::hint::black_box(Fields::parse(plain).is_ok());
            match (padded, parsed) {
                (true, true) => return Ok(()),
                (true, false) => failure = AuthFailure::NotJsonInside,
                (false, _) => failure = AuthFailure::Undecryptable(EnvelopeError::BadPadding),
            }
        }
        Err(unauthorized(failure))
    }
}

fn unauthorized(why: AuthFailure) -> BadRequest {
    BadRequest::Unauthorized(why)
}
