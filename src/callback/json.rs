//! A JSON object read without re-encoding: each value stays the raw text it arrived as,
//! so a number above 2^53 or an unknown field is passed on byte for byte. Refuses what a
//! strict parser downstream would refuse, and bounds what refusing costs. Pure, no I/O.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use smallvec::SmallVec;

use crate::outcome::{JsonError, MAX_DEPTH, MAX_FIELDS};

/// A parsed JSON object whose values are still the raw text they arrived as.
pub struct Fields<'a> {
    entries: Entries<'a>,
}

/// The fields of a callback, in place up to the number Feishu sends (a dozen) and a few
/// more: reading one costs no allocation for them.
type Entries<'a> = SmallVec<[(Cow<'a, str>, &'a RawValue); 16]>;

impl fmt::Debug for Fields<'_> {
    /// Lists field names only: values can hold the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(k, _)| k))
            .finish()
    }
}

impl<'a> Fields<'a> {
    /// Parses a JSON object, refusing duplicate keys: with two `token` fields,
    /// the gateway and the legacy system could disagree on which one counts.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, JsonError> {
        if depth_exceeds(bytes, MAX_DEPTH) {
            return Err(JsonError::TooDeep);
        }
        // Valid UTF-8 is checked once here instead of once per value; only
        // a body that fails goes through the byte-level parser, which then
        // reports exactly what it always did.
        let entries = match std::str::from_utf8(bytes) {
            Ok(text) => entries(serde_json::Deserializer::from_str(text)),
            Err(_) => entries(serde_json::Deserializer::from_slice(bytes)),
        }?;
        if has_lone_surrogate(bytes) {
            return Err(JsonError::NotJson);
        }
        Ok(Self { entries })
    }

    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.entries
            .iter()
            .find_map(|(k, v)| (k.as_ref() == name).then_some(*v))
    }

    /// Every field in the order it arrived: the key decoded, the value raw.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A field's value when it is a JSON string; `Ok(None)` when absent or null, `Err` with
    /// the raw value when it is something else.
    pub fn string(&self, name: &str) -> Result<Option<Cow<'a, str>>, &'a RawValue> {
        match self.get(name) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" => Ok(None),
            Some(raw) => {
                if let Some(plain) = unescaped_string(raw) {
                    return Ok(Some(Cow::Borrowed(plain)));
                }
                serde_json::from_str::<Cow<'a, str>>(raw.get())
                    .map(Some)
                    .map_err(|_| raw)
            }
        }
    }
}

/// Calls `f` with the contents of a JSON string value (a `RawValue` that starts with `"`),
/// unescaped. One with escapes is unescaped into a buffer this thread keeps, so reading it
/// allocates nothing once the buffer has grown to the longest seen. `None` when the value
/// is not a string or holds a lone surrogate.
pub fn with_unescaped<R>(raw: &RawValue, f: impl FnOnce(&str) -> R) -> Option<R> {
    /// What the buffer may keep between callbacks.
    const KEEP: usize = 16 * 1024;
    std::thread_local! {
        static UNESCAPED: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    if let Some(plain) = unescaped_string(raw) {
        return Some(f(plain));
    }
    let inner = raw.get().strip_prefix('"')?.strip_suffix('"')?;
    UNESCAPED.with_borrow_mut(|buffer| {
        buffer.clear();
        let result = unescape(inner, buffer).map(|()| f(buffer));
        if buffer.capacity() > KEEP {
            *buffer = String::new();
        }
        result
    })
}

/// Appends the contents of a well-formed JSON string (without its quotes) to `out`,
/// unescaped; `None` on a lone surrogate, which no Rust string can hold.
fn unescape(mut rest: &str, out: &mut String) -> Option<()> {
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let escape = rest.as_bytes().get(at + 1)?;
        rest = &rest[at + 2..];
        let c = match escape {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = hex4(rest)?;
                rest = &rest[4..];
                let code = match unit {
                    0xD800..=0xDBFF => {
                        let low = rest.strip_prefix("\\u").and_then(hex4)?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        rest = &rest[6..];
                        0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return None,
                    unit => unit,
                };
                char::from_u32(code)?
            }
            _ => return None,
        };
        out.push(c);
    }
    out.push_str(rest);
    Some(())
}

/// The four hex digits `text` starts with, as a number.
fn hex4(text: &str) -> Option<u32> {
    let digits = text.get(..4)?;
    if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(digits, 16).ok()
}

/// The object's entries, or why it is not one.
fn entries<'a, R: serde_json::de::Read<'a>>(
    mut de: serde_json::Deserializer<R>,
) -> Result<Entries<'a>, JsonError> {
    let mut duplicate = false;
    let mut too_many = false;
    let entries = match de.deserialize_map(ObjectVisitor {
        duplicate: &mut duplicate,
        too_many: &mut too_many,
    }) {
        Ok(entries) => entries,
        Err(_) if too_many => return Err(JsonError::TooManyFields),
        Err(_) if duplicate => return Err(JsonError::DuplicateField),
        Err(e) if e.is_data() => return Err(JsonError::NotObject),
        Err(_) => return Err(JsonError::NotJson),
    };
    de.end().map_err(|_| JsonError::NotJson)?;
    Ok(entries)
}

/// A JSON string's contents when it has no escapes, borrowed as they are:
/// the raw value was already checked to be a well-formed string.
fn unescaped_string(raw: &RawValue) -> Option<&str> {
    let inner = raw.get().strip_prefix('"')?.strip_suffix('"')?;
    memchr::memchr(b'\\', inner.as_bytes())
        .is_none()
        .then_some(inner)
}

struct ObjectVisitor<'d> {
    /// Set when a key repeats; which one is never reported, since the caller chose it.
    duplicate: &'d mut bool,
    /// Set when the object has more than [`MAX_FIELDS`] fields.
    too_many: &'d mut bool,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = Entries<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Self::Value::new();
        while let Some(Key(key)) = map.next_key()? {
            if entries.len() == MAX_FIELDS {
                *self.too_many = true;
                return Err(de::Error::custom("too many fields"));
            }
            if entries.iter().any(|(k, _)| *k == key) {
                // At most MAX_FIELDS earlier keys, so the scan is bounded.
                *self.duplicate = true;
                return Err(de::Error::custom("duplicate field"));
            }
            let value: &'de RawValue = map.next_value()?;
            entries.push((key, value));
        }
        Ok(entries)
    }
}

/// A key borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The deepest nesting of arrays and objects in `bytes`, counting past strings.
/// Stops counting once `limit` is exceeded.
///
/// Inside a string only `"` and `\\` matter, so the scan jumps between them:
/// most of a callback's bytes (the whole `encrypt` value, comments, URLs) are
/// string contents.
fn depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[i.min(bytes.len())..]) {
                        None => return false,
                        Some(at) if bytes[i + at] == b'"' => {
                            i += at + 1;
                            break;
                        }
                        // An escape takes the next byte with it, whatever it is.
                        Some(at) => i += at + 2,
                    }
                }
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// Whether a string in `bytes` holds a `\u` escape of half a surrogate pair.
/// JSON's grammar allows one, but it encodes no Unicode text, and strict
/// parsers (serde_json among them) refuse the whole document: passed on, it
/// would turn a callback the gateway accepted into one the legacy system
/// cannot read. Only meaningful for text that already parsed as JSON.
fn has_lone_surrogate(bytes: &[u8]) -> bool {
    // In text that parsed as JSON a backslash only ever starts an escape
    // inside a string, so the scan jumps from one escape to the next instead
    // of reading every byte.
    // The previous escape was a high surrogate, so a low one must follow at once.
    let mut want_low = false;
    let mut i = 0;
    while let Some(at) = memchr::memchr(b'\\', bytes.get(i..).unwrap_or_default()) {
        let at = i + at;
        // Anything between a high surrogate and the next escape ends the pair.
        if want_low && at != i {
            return true;
        }
        let unit = if bytes.get(at + 1) == Some(&b'u') {
            i = at + 6;
            bytes
                .get(at + 2..at + 6)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u16::from_str_radix(h, 16).ok())
        } else {
            i = at + 2;
            None
        };
        match unit {
            Some(0xD800..=0xDBFF) if !want_low => want_low = true,
            Some(0xDC00..=0xDFFF) if want_low => want_low = false,
            Some(0xD800..=0xDFFF) => return true,
            _ if want_low => return true,
            _ => {}
        }
    }
    // A high surrogate with nothing after it: at the very least the string's
    // closing quote followed.
    want_low
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unescaped(json: &str) -> Option<String> {
        let raw: &RawValue = serde_json::from_str(json).unwrap();
        with_unescaped(raw, str::to_owned)
    }

    #[test]
    fn strings_unescape_as_serde_json_reads_them() {
        for text in [
            "",
            "plain",
            "{\"source\":\"card\",\"version\":3}",
            "tab\tline\nfeed\r back\\slash /slash \u{8}\u{c}",
            "审批通过 ✓ 😀 \u{1}\u{1f}",
        ] {
            let json = serde_json::to_string(text).unwrap();
            assert_eq!(unescaped(&json).as_deref(), Some(text), "{json}");
        }
        // Every character escaped, surrogate pairs included.
        let text = "a\"é😀";
        let every: String = text
            .encode_utf16()
            .map(|unit| format!("\\u{unit:04X}"))
            .collect();
        assert_eq!(unescaped(&format!("\"{every}\"")).as_deref(), Some(text));
        assert_eq!(unescaped(r#""\/""#).as_deref(), Some("/"));
    }

    #[test]
    fn lone_surrogates_and_non_strings_are_refused() {
        assert_eq!(unescaped(r#""\ud800""#), None);
        assert_eq!(unescaped(r#""\udc00x""#), None);
        assert_eq!(unescaped(r#""\ud800\u0041""#), None);
        assert_eq!(unescaped("17"), None);
        assert_eq!(unescaped("{}"), None);
    }
}
