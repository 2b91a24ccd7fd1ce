//! Feishu's `encrypt` envelope: AES-256-CBC under SHA-256 of the callback key.
//!
//! Pure functions with no I/O, so they can be unit tested against the vectors
//! checked with Feishu's SDKs and fuzzed.

use aes::cipher::block_padding::{NoPadding, Pkcs7};
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq, ConstantTimeGreater, ConstantTimeLess};

use crate::outcome::EnvelopeError;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

const BLOCK: usize = 16;

/// An AES-256 key derived from Feishu's `action_callback_key`.
///
/// Only the derived key is kept; `Debug` never shows it.
#[derive(Clone)]
pub struct CallbackKey {
    aes: [u8; 32],
}

impl std::fmt::Debug for CallbackKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackKey(<redacted>)")
    }
}

impl CallbackKey {
    /// Derives the AES key exactly as Feishu does: SHA-256 of the UTF-8 key string.
    pub fn new(secret: &str) -> Self {
        Self {
            aes: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    /// Opens an `encrypt` value, returning the plaintext bytes.
    ///
    /// The first 16 decoded bytes are the IV. That also opens envelopes made by
    /// Feishu's Java sample (zero IV with a zero block prepended): its first
    /// ciphertext block then plays the IV's part, so no special case is needed.
    pub fn decrypt(&self, encrypt: &str) -> Result<Vec<u8>, EnvelopeError> {
        let decoded = STANDARD
            .decode(encrypt)
            .map_err(|_| EnvelopeError::NotBase64)?;
        self.decrypt_in_place(decoded)
    }

    /// Opens already base64-decoded bytes (`IV || ciphertext`).
    pub fn decrypt_raw(&self, decoded: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
        self.decrypt_in_place(decoded.to_vec())
    }

    /// Decrypts in the buffer the decoded bytes arrived in.
    fn decrypt_in_place(&self, mut decoded: Vec<u8>) -> Result<Vec<u8>, EnvelopeError> {
        if self.open_in_place(&mut decoded)? {
            Ok(decoded)
        } else {
            Err(EnvelopeError::BadPadding)
        }
    }

    /// Opens an `encrypt` value as [`Self::decrypt`] does, but on bad padding returns the
    /// whole decrypted buffer with `false` instead of an error, having spent the same work
    /// as on good padding: a caller can then treat both alike, so that the time a refusal
    /// takes does not tell a guesser whether its padding was right (the padding oracle of
    /// unauthenticated CBC). Refusals of the encoding or the length depend on no secret.
    pub fn open(&self, encrypt: &str) -> Result<(Vec<u8>, bool), EnvelopeError> {
        let mut plain = Vec::new();
        let padded = self.open_into(encrypt, &mut plain)?;
        Ok((plain, padded))
    }

    /// The same, into `buffer` (emptied first), whose room is reused.
    pub fn open_into(&self, encrypt: &str, buffer: &mut Vec<u8>) -> Result<bool, EnvelopeError> {
        buffer.clear();
        STANDARD
            .decode_vec(encrypt, buffer)
            .map_err(|_| EnvelopeError::NotBase64)?;
        self.open_in_place(buffer)
    }

    fn open_in_place(&self, decoded: &mut Vec<u8>) -> Result<bool, EnvelopeError> {
        if decoded.len() < 2 * BLOCK {
            return Err(EnvelopeError::TooShort);
        }
        if !decoded.len().is_multiple_of(BLOCK) {
            return Err(EnvelopeError::NotBlockAligned);
        }
        let (iv, ciphertext) = decoded.split_at_mut(BLOCK);
        let total = Aes256CbcDec::new_from_slices(&self.aes, iv)
            .map_err(|_| EnvelopeError::BadPadding)?
            .decrypt_padded::<NoPadding>(ciphertext)
            .map_err(|_| EnvelopeError::BadPadding)?
            .len();
        let (pad, valid) = pkcs7_padding(&ciphertext[total - BLOCK..total]);
        // Both ways the same copy: only its length differs, by at most a block.
        let len = total - (pad & usize::from(valid.unwrap_u8()).wrapping_neg());
        decoded.copy_within(BLOCK..BLOCK + len, 0);
        decoded.truncate(len);
        Ok(valid.into())
    }

    /// Seals `plaintext` under the given IV, in Feishu's format.
    pub fn encrypt_with_iv(&self, plaintext: &[u8], iv: [u8; BLOCK]) -> String {
        let mut out = Vec::with_capacity(BLOCK + plaintext.len() + BLOCK);
        out.extend_from_slice(&iv);
        // The key and IV lengths are fixed by the types above, so this cannot fail.
        let cipher = Aes256CbcEnc::new(&self.aes.into(), &iv.into());
        out.extend_from_slice(&cipher.encrypt_padded_vec::<Pkcs7>(plaintext));
        STANDARD.encode(out)
    }

    /// Seals `plaintext` under a fresh random IV, as Feishu does on every send.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<String, getrandom::Error> {
        let mut iv = [0u8; BLOCK];
        getrandom::fill(&mut iv)?;
        Ok(self.encrypt_with_iv(plaintext, iv))
    }
}

/// The PKCS#7 padding length of a final block, and whether the padding is valid, found
/// in time that does not depend on the block's bytes.
fn pkcs7_padding(last: &[u8]) -> (usize, Choice) {
    let n = last[BLOCK - 1];
    let mut valid = n.ct_gt(&0) & n.ct_lt(&(BLOCK as u8 + 1));
    for (i, byte) in last.iter().enumerate() {
        // The byte `BLOCK - i` from the end is padding when that distance is at most `n`.
        let is_padding = !((BLOCK - i) as u8).ct_gt(&n);
        valid &= !is_padding | byte.ct_eq(&n);
    }
    (
        usize::from(n) & usize::from(valid.unwrap_u8()).wrapping_neg(),
        valid,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Vector {
        name: String,
        key: String,
        iv_hex: Option<String>,
        plaintext: String,
        encrypt: String,
        sha256_key_hex: Option<String>,
    }

    fn vectors() -> Vec<Vector> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/crypto-vectors.json"
        );
        let text = std::fs::read_to_string(path).expect("crypto vectors are checked in");
        serde_json::from_str(&text).expect("crypto vectors parse")
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(s: &str) -> Option<[u8; 16]> {
        if s.len() != 32 {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        }
        Some(out)
    }

    #[test]
    fn every_vector_decrypts_to_its_plaintext() {
        let vectors = vectors();
        assert!(vectors.len() >= 4, "all four published vectors are present");
        for v in vectors {
            let key = CallbackKey::new(&v.key);
            if let Some(expected) = &v.sha256_key_hex {
                assert_eq!(&hex(&key.aes), expected, "key derivation for {}", v.name);
            }
            let plain = key.decrypt(&v.encrypt).expect(&v.name);
            assert_eq!(String::from_utf8(plain).unwrap(), v.plaintext, "{}", v.name);
        }
    }

    #[test]
    fn vectors_with_an_explicit_iv_reencrypt_byte_for_byte() {
        let mut checked = 0;
        for v in vectors() {
            let Some(iv) = v.iv_hex.as_deref().and_then(unhex) else {
                continue;
            };
            let key = CallbackKey::new(&v.key);
            assert_eq!(
                key.encrypt_with_iv(v.plaintext.as_bytes(), iv),
                v.encrypt,
                "{}",
                v.name
            );
            checked += 1;
        }
        assert_eq!(checked, 2, "V1 and V2 carry explicit IVs");
    }

    #[test]
    fn round_trips_every_length_and_random_keys() {
        let mut seed = [0u8; 64];
        getrandom::fill(&mut seed).unwrap();
        for len in 0..200usize {
            let key_text: String = seed[..(len % 40) + 1]
                .iter()
                .map(|b| char::from(b'!' + b % 90))
                .collect();
            let key = CallbackKey::new(&key_text);
            let plaintext: Vec<u8> = (0..len).map(|i| seed[i % seed.len()] ^ i as u8).collect();
            let sealed = key.encrypt(&plaintext).unwrap();
            assert_eq!(key.decrypt(&sealed).unwrap(), plaintext, "length {len}");
            let decoded = STANDARD.decode(&sealed).unwrap();
            assert_eq!(decoded.len(), BLOCK + (len / BLOCK + 1) * BLOCK);
        }
    }

    #[test]
    fn fresh_iv_on_every_seal() {
        let key = CallbackKey::new("k");
        assert_ne!(key.encrypt(b"same").unwrap(), key.encrypt(b"same").unwrap());
    }

    #[test]
    fn rejects_malformed_envelopes() {
        let key = CallbackKey::new("gfdqedvsadfgfsd");
        assert_eq!(key.decrypt("not base64!"), Err(EnvelopeError::NotBase64));
        // Missing `=` padding and non-canonical trailing bits are refused.
        assert_eq!(key.decrypt("AAECAwQ"), Err(EnvelopeError::NotBase64));
        assert_eq!(key.decrypt("AB=="), Err(EnvelopeError::NotBase64));
        assert_eq!(key.decrypt(" AAAA"), Err(EnvelopeError::NotBase64));
        assert_eq!(
            key.decrypt(&STANDARD.encode([0u8; 16])),
            Err(EnvelopeError::TooShort)
        );
        assert_eq!(
            key.decrypt(&STANDARD.encode([0u8; 40])),
            Err(EnvelopeError::NotBlockAligned)
        );
    }

    #[test]
    fn strict_padding_and_wrong_keys_fail() {
        let key = CallbackKey::new("right");
        let sealed = key.encrypt(b"{\"token\":\"t\"}").unwrap();
        // Flipping the last byte of the IV-adjusted final block breaks the padding.
        let mut raw = STANDARD.decode(&sealed).unwrap();
        let n = raw.len();
        raw[n - 17] ^= 0x01;
        assert_eq!(key.decrypt_raw(&raw), Err(EnvelopeError::BadPadding));
        // A wrong key yields either bad padding or bytes that are not the plaintext.
        let wrong = CallbackKey::new("wrong");
        match wrong.decrypt(&sealed) {
            Err(EnvelopeError::BadPadding) => {}
            Ok(p) => assert_ne!(p, b"{\"token\":\"t\"}"),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn the_padding_check_agrees_with_pkcs7_on_every_last_byte() {
        for n in 0..=255u8 {
            for filled in [0usize, 1, 8, 15, 16] {
                let mut block = [0xA5u8; BLOCK];
                // The last `filled` bytes hold `n`; with `filled < n` the padding is short.
                for b in &mut block[BLOCK - filled..] {
                    *b = n;
                }
                let expected = (1..=16).contains(&n) && filled >= usize::from(n);
                let (len, valid) = pkcs7_padding(&block);
                assert_eq!(bool::from(valid), expected, "n={n} filled={filled}");
                assert_eq!(len, if expected { usize::from(n) } else { 0 });
            }
        }
    }

    #[test]
    fn open_returns_what_decrypt_does_and_the_whole_buffer_on_bad_padding() {
        let key = CallbackKey::new("right");
        for len in [0usize, 1, 15, 16, 17, 100] {
            let plaintext = vec![b'x'; len];
            let sealed = key.encrypt(&plaintext).unwrap();
            assert_eq!(key.open(&sealed).unwrap(), (plaintext, true));
        }
        let sealed = key.encrypt(b"{\"token\":\"t\"}").unwrap();
        let mut raw = STANDARD.decode(&sealed).unwrap();
        let n = raw.len();
        raw[n - 17] ^= 0x01;
        let (plain, padded) = key.open(&STANDARD.encode(&raw)).unwrap();
        assert!(!padded);
        assert_eq!(plain.len(), n - BLOCK);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = CallbackKey::new("super-secret");
        let shown = format!("{key:?}");
        assert!(!shown.contains("super"));
        assert!(!shown.contains(&hex(&key.aes)));
    }
}
