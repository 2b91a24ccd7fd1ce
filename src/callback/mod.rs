//! Feishu's rules for the callback object, read by [`crate::callback::json`]: which fields it must
//! have and of what type, the decision it names, and the body the legacy system receives.
//!
//! Values are forwarded as the raw JSON text Feishu sent, never re-encoded, so a
//! `message_id` above 2^53 or any unknown field reaches the upstream exactly as
//! it arrived, in the same order. Pure functions, no I/O.

pub mod envelope;
pub mod json;
pub mod secrets;
pub mod verify;

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use json::Fields;

use crate::outcome::{BodyError, Expected};

/// Field names Feishu defines.
pub mod field {
    pub const ACTION_TYPE: &str = "action_type";
    pub const ACTION_CONTEXT: &str = "action_context";
    pub const USER_ID: &str = "user_id";
    pub const APPROVAL_CODE: &str = "approval_code";
    pub const INSTANCE_ID: &str = "instance_id";
    pub const TASK_ID: &str = "task_id";
    pub const MESSAGE_ID: &str = "message_id";
    pub const ID: &str = "id";
    pub const REASON: &str = "reason";
    pub const ATTACHMENTS: &str = "attachments";
    pub const TOKEN: &str = "token";
    pub const ENCRYPT: &str = "encrypt";
}

/// A field's value when it is a JSON string; `Ok(None)` when absent or null.
pub fn string<'a>(
    fields: &Fields<'a>,
    name: &'static str,
) -> Result<Option<Cow<'a, str>>, BodyError> {
    fields.string(name).map_err(|_| BodyError::WrongType {
        field: name,
        expected: Expected::String,
    })
}

/// A field's raw value when it is a JSON string, not yet unescaped; `Ok(None)` when absent
/// or null.
fn string_value<'a>(
    fields: &Fields<'a>,
    name: &'static str,
) -> Result<Option<&'a RawValue>, BodyError> {
    match fields.get(name) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) if raw.get().starts_with('"') => Ok(Some(raw)),
        Some(_) => Err(BodyError::WrongType {
            field: name,
            expected: Expected::String,
        }),
    }
}

fn required_string<'a>(fields: &Fields<'a>, name: &'static str) -> Result<Cow<'a, str>, BodyError> {
    match string(fields, name)? {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(BodyError::WrongType {
            field: name,
            expected: Expected::NonEmptyString,
        }),
        None => Err(BodyError::Missing(name)),
    }
}

/// The facts about a validated callback that logs, metrics and duplicate
/// detection need. Values are decoded strings; none of them is secret. They are held in
/// one string, one after another: one allocation for all of them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Summary {
    text: String,
    /// Where each field is in `text`, in the order of [`Summary::new`]'s parts.
    spans: [Option<(u32, u32)>; 6],
}

impl Summary {
    /// From the fields in this order: action type, user id, approval code, instance id,
    /// task id, message id.
    fn new(parts: [Option<&str>; 6]) -> Self {
        let mut text = String::with_capacity(parts.iter().flatten().map(|p| p.len()).sum());
        let spans = parts.map(|part| {
            part.map(|part| {
                let start = text.len();
                text.push_str(part);
                // A body is far below 4 GiB (MAX_BODY_BYTES).
                (start as u32, text.len() as u32)
            })
        });
        Self { text, spans }
    }

    fn part(&self, index: usize) -> Option<&str> {
        let (start, end) = self.spans[index]?;
        self.text.get(start as usize..end as usize)
    }

    pub fn action_type(&self) -> &str {
        self.part(0).unwrap_or_default()
    }

    pub fn user_id(&self) -> &str {
        self.part(1).unwrap_or_default()
    }

    pub fn approval_code(&self) -> &str {
        self.part(2).unwrap_or_default()
    }

    pub fn instance_id(&self) -> Option<&str> {
        self.part(3)
    }

    pub fn task_id(&self) -> Option<&str> {
        self.part(4)
    }

    /// Canonical decimal digits, whether it arrived as a number or a string.
    pub fn message_id(&self) -> Option<&str> {
        self.part(5)
    }
}

impl fmt::Debug for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Summary")
            .field("action_type", &self.action_type())
            .field("user_id", &self.user_id())
            .field("approval_code", &self.approval_code())
            .field("instance_id", &self.instance_id())
            .field("task_id", &self.task_id())
            .field("message_id", &self.message_id())
            .finish()
    }
}

/// A callback that passed validation, ready to forward.
#[derive(Debug)]
pub struct Callback {
    pub summary: Summary,
    /// What the legacy system receives: the object minus `token` and `encrypt`.
    pub upstream_body: Vec<u8>,
    /// Names the approval decision: stable for the same decision, different for a
    /// different one. Duplicate suppression keys on it, and the
    /// `Idempotency-Key` header carries it (see [`idempotency_key`]).
    pub decision: Decision,
}

/// Room the forwarded body's buffer keeps after it: the upstream request writes the values
/// of its own headers there (`Content-Length`, `Idempotency-Key`, `traceparent`,
/// `Fencing-Token`), in the body's allocation rather than one each.
pub const UPSTREAM_BODY_SPARE: usize = 20 + 64 + 55 + 20;

/// SHA-256 over the fields that identify an approval decision.
pub type Decision = [u8; 32];

/// Options that change the forwarded body.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Forward `message_id` as a decimal string (JavaScript legacy systems round
    /// large JSON numbers).
    pub message_id_as_string: bool,
}

/// Validates an authenticated callback object and builds what is forwarded.
pub fn validate(fields: &Fields<'_>, opts: ForwardOptions) -> Result<Callback, BodyError> {
    let action_type = required_string(fields, field::ACTION_TYPE)?;
    let user_id = required_string(fields, field::USER_ID)?;
    let approval_code = required_string(fields, field::APPROVAL_CODE)?;
    let instance_id = string(fields, field::INSTANCE_ID)?;
    let task_id = string(fields, field::TASK_ID)?;
    let id = string(fields, field::ID)?;
    // Often JSON itself, so full of escapes: unescaped only where it is hashed.
    let action_context = string_value(fields, field::ACTION_CONTEXT)?;
    string(fields, field::REASON)?;
    let message_id = message_id(fields)?;
    check_attachments(fields)?;

    let upstream_body = upstream_body(fields, message_id.as_ref(), opts);

    let mut hash = Sha256::new();
    hash.update(b"feishu-gate/decision/v1");
    for part in [
        Some(approval_code.as_ref()),
        instance_id.as_deref(),
        task_id.as_deref(),
        id.as_deref(),
        message_id.as_ref().map(|m| m.digits.as_str()),
        Some(user_id.as_ref()),
        Some(action_type.as_ref()),
    ] {
        hash_part(&mut hash, part.map(str::as_bytes));
    }
    match action_context {
        None => hash_part(&mut hash, None),
        Some(raw) => json::with_unescaped(raw, |text| {
            hash_part(&mut hash, Some(text.as_bytes()));
        })
        .ok_or(BodyError::WrongType {
            field: field::ACTION_CONTEXT,
            expected: Expected::String,
        })?,
    }
    let targets_nothing =
        instance_id.is_none() && task_id.is_none() && id.is_none() && message_id.is_none();
    if targets_nothing {
        // Without an id naming the task, only the whole content tells decisions apart.
        hash_part(&mut hash, Some(&upstream_body));
    }
    let decision: Decision = hash.finalize().into();

    Ok(Callback {
        summary: Summary::new([
            Some(&action_type),
            Some(&user_id),
            Some(&approval_code),
            instance_id.as_deref(),
            task_id.as_deref(),
            message_id.as_ref().map(|m| m.digits.as_str()),
        ]),
        upstream_body,
        decision,
    })
}

fn hash_part(hash: &mut Sha256, part: Option<&[u8]>) {
    match part {
        None => hash.update([0u8]),
        Some(bytes) => {
            hash.update([1u8]);
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        }
    }
}

/// A decision as the `Idempotency-Key` header carries it: lowercase hex,
/// built on the stack because it is written into every upstream request.
pub fn idempotency_key(decision: &Decision) -> [u8; 64] {
    let mut out = [0u8; 64];
    crate::util::hex::encode_into(decision, &mut out);
    out
}

struct MessageId {
    /// Canonical decimal digits, identical for the number and string forms.
    digits: Digits,
    /// Whether it arrived as a bare JSON number.
    is_number: bool,
}

const MESSAGE_ID_TYPE: BodyError = BodyError::WrongType {
    field: field::MESSAGE_ID,
    expected: Expected::MessageId,
};

fn message_id(fields: &Fields<'_>) -> Result<Option<MessageId>, BodyError> {
    let Some(raw) = fields.get(field::MESSAGE_ID) else {
        return Ok(None);
    };
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    let (digits, is_number) = if text.starts_with('"') {
        let s: Cow<'_, str> = serde_json::from_str(text).map_err(|_| MESSAGE_ID_TYPE)?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MESSAGE_ID_TYPE);
        }
        (s, false)
    } else {
        // Only integer syntax: `1.0` or `1e3` would already have lost the exact id.
        // No sign either: Feishu's ids are positive, and the number and string
        // forms must accept the same ids, or a number forwarded as a string
        // (`MESSAGE_ID_AS_STRING`) would not validate again.
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(MESSAGE_ID_TYPE);
        }
        (Cow::Borrowed(text), true)
    };
    let value: i64 = digits.parse().map_err(|_| MESSAGE_ID_TYPE)?;
    Ok(Some(MessageId {
        digits: Digits::of(value),
        is_number,
    }))
}

/// A number's decimal digits, on the stack.
struct Digits {
    bytes: [u8; 20],
    len: usize,
}

impl Digits {
    fn of(value: i64) -> Self {
        let mut buffer = itoa::Buffer::new();
        let text = buffer.format(value).as_bytes();
        let mut bytes = [0u8; 20];
        bytes[..text.len()].copy_from_slice(text);
        Self {
            bytes,
            len: text.len(),
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or_default()
    }
}

fn check_attachments(fields: &Fields<'_>) -> Result<(), BodyError> {
    let Some(raw) = fields.get(field::ATTACHMENTS) else {
        return Ok(());
    };
    if raw.get() == "null" {
        return Ok(());
    }
    let wrong = BodyError::WrongType {
        field: field::ATTACHMENTS,
        expected: Expected::ListOfObjects,
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    match de
        .deserialize_seq(ObjectsOnly)
        .and_then(|all| de.end().map(|()| all))
    {
        Ok(true) => Ok(()),
        _ => Err(wrong),
    }
}

/// Whether every item of a JSON array is an object, read without
/// collecting the items.
struct ObjectsOnly;

impl<'de> Visitor<'de> for ObjectsOnly {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut all = true;
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            all &= item.get().starts_with('{');
        }
        Ok(all)
    }
}

fn upstream_body(
    fields: &Fields<'_>,
    message_id: Option<&MessageId>,
    opts: ForwardOptions,
) -> Vec<u8> {
    let size: usize = fields
        .iter()
        .map(|(k, v)| k.len() + v.get().len() + 4)
        .sum();
    let mut out = Vec::with_capacity(size + 2 + UPSTREAM_BODY_SPARE);
    out.push(b'{');
    let mut first = true;
    for (key, value) in fields.iter() {
        if key == field::TOKEN || key == field::ENCRYPT {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        crate::util::json::write_string(&mut out, key);
        out.push(b':');
        match message_id {
            Some(id) if key == field::MESSAGE_ID && id.is_number && opts.message_id_as_string => {
                out.push(b'"');
                out.extend_from_slice(id.digits.as_str().as_bytes());
                out.push(b'"');
            }
            _ => out.extend_from_slice(value.get().as_bytes()),
        }
    }
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::JsonError;
    use crate::outcome::{MAX_DEPTH, MAX_FIELDS};

    const V1: &str = r#"{"action_type":"APPROVE","action_context":"ctx-42","user_id":"b85s39b","approval_code":"A3895051-9B16-4ABA-B785-AD2986177BB1","instance_id":"people_1234","task_id":"step1","message_id":7250020197497765889,"reason":"ok","token":"sdjkljkx9lsadf110"}"#;

    fn ok(body: &str) -> Callback {
        validate(
            &Fields::parse(body.as_bytes()).unwrap(),
            ForwardOptions::default(),
        )
        .unwrap()
    }

    fn err(body: &str) -> BodyError {
        match Fields::parse(body.as_bytes()) {
            Err(e) => e.into(),
            Ok(f) => validate(&f, ForwardOptions::default()).unwrap_err(),
        }
    }

    #[test]
    fn forwards_everything_but_the_token_byte_exact_and_in_order() {
        let cb = ok(V1);
        assert_eq!(
            String::from_utf8(cb.upstream_body).unwrap(),
            r#"{"action_type":"APPROVE","action_context":"ctx-42","user_id":"b85s39b","approval_code":"A3895051-9B16-4ABA-B785-AD2986177BB1","instance_id":"people_1234","task_id":"step1","message_id":7250020197497765889,"reason":"ok"}"#
        );
        assert_eq!(cb.summary.message_id(), Some("7250020197497765889"));
    }

    #[test]
    fn unknown_fields_escapes_and_nesting_pass_through_untouched() {
        let body = r#"{"z":1.50,"token":"t","a\"b":"\u00e9\n","user_id":"u","nested":{"x":[1,2e3, null]},"approval_code":"c","action_type":"X_CUSTOM","big":123456789012345678901234567890}"#;
        let cb = ok(body);
        assert_eq!(
            String::from_utf8(cb.upstream_body).unwrap(),
            r#"{"z":1.50,"a\"b":"\u00e9\n","user_id":"u","nested":{"x":[1,2e3, null]},"approval_code":"c","action_type":"X_CUSTOM","big":123456789012345678901234567890}"#
        );
    }

    #[test]
    fn message_id_as_string_when_asked() {
        let f = Fields::parse(V1.as_bytes()).unwrap();
        let cb = validate(
            &f,
            ForwardOptions {
                message_id_as_string: true,
            },
        )
        .unwrap();
        let body = String::from_utf8(cb.upstream_body).unwrap();
        assert!(
            body.contains(r#""message_id":"7250020197497765889""#),
            "{body}"
        );
    }

    #[test]
    fn message_id_string_and_number_are_the_same_decision() {
        let as_string = V1.replace("7250020197497765889", "\"7250020197497765889\"");
        let a = ok(V1);
        let b = ok(&as_string);
        assert_eq!(idempotency_key(&a.decision), idempotency_key(&b.decision));
        assert!(
            String::from_utf8(b.upstream_body)
                .unwrap()
                .contains("\"7250020197497765889\"")
        );
    }

    #[test]
    fn action_context_counts_by_its_text_however_it_is_escaped() {
        let key = |context: &str| {
            let body = V1.replace(r#""ctx-42""#, context);
            idempotency_key(&ok(&body).decision)
        };
        let plain = key(r#""{\"source\":\"card\"}""#);
        assert_eq!(plain, key(r#""{\u0022source\u0022:\"card\"}""#));
        assert_eq!(plain, key(r#""\u007b\"source\":\"card\"\u007D""#));
        assert_ne!(plain, key(r#""{\"source\":\"cards\"}""#));
        assert_ne!(key(r#""""#), key("null"));
        assert_eq!(
            err(&V1.replace(r#""ctx-42""#, "42")),
            BodyError::WrongType {
                field: field::ACTION_CONTEXT,
                expected: Expected::String
            }
        );
    }

    #[test]
    fn idempotency_key_tracks_the_decision_not_the_comment() {
        let key = |body: &str| idempotency_key(&ok(body).decision);
        let base = key(V1);
        assert_eq!(base.len(), 64);
        assert_eq!(base, key(&V1.replace("\"ok\"", "\"fine\"")));
        assert_ne!(base, key(&V1.replace("APPROVE", "REJECT")));
        assert_ne!(base, key(&V1.replace("step1", "step2")));
        assert_ne!(base, key(&V1.replace("b85s39b", "other")));
        // Without any task id the content decides.
        let a = ok(r#"{"action_type":"APPROVE","user_id":"u","approval_code":"c","reason":"a"}"#);
        let b = ok(r#"{"action_type":"APPROVE","user_id":"u","approval_code":"c","reason":"b"}"#);
        assert_ne!(idempotency_key(&a.decision), idempotency_key(&b.decision));
    }

    #[test]
    fn malformed_bodies() {
        assert_eq!(err("not json"), BodyError::Json(JsonError::NotJson));
        assert_eq!(err(""), BodyError::Json(JsonError::NotJson));
        assert_eq!(err("[1,2]"), BodyError::Json(JsonError::NotObject));
        assert_eq!(err("\"s\""), BodyError::Json(JsonError::NotObject));
        assert_eq!(err("{\"a\":1"), BodyError::Json(JsonError::NotJson));
        assert_eq!(err("{\"a\":1} x"), BodyError::Json(JsonError::NotJson));
        assert_eq!(
            err(&format!(
                "{{\"a\":{}1{}}}",
                "[".repeat(200),
                "]".repeat(200)
            )),
            BodyError::Json(JsonError::TooDeep)
        );
        assert_eq!(
            err(r#"{"token":"a","token":"b"}"#),
            BodyError::Json(JsonError::DuplicateField)
        );
        let fields = |n: usize| {
            let body: Vec<String> = (0..n).map(|i| format!("\"k{i}\":1")).collect();
            format!("{{{}}}", body.join(","))
        };
        assert!(Fields::parse(fields(MAX_FIELDS).as_bytes()).is_ok());
        assert_eq!(
            err(&fields(MAX_FIELDS + 1)),
            BodyError::Json(JsonError::TooManyFields)
        );
        assert!(matches!(
            Fields::parse(b"{\"a\":\"\xff\"}"),
            Err(JsonError::NotJson)
        ));
    }

    #[test]
    fn required_fields_and_types() {
        let full = r#"{"action_type":"APPROVE","user_id":"u","approval_code":"c"}"#;
        ok(full);
        for name in ["action_type", "user_id", "approval_code"] {
            let mut v: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(full).unwrap();
            v.remove(name);
            let missing = serde_json::to_string(&v).unwrap();
            assert!(matches!(err(&missing), BodyError::Missing(n) if n == name));
            for bad in [
                serde_json::json!(1),
                serde_json::json!(""),
                serde_json::json!(["x"]),
            ] {
                v.insert(name.to_owned(), bad);
                let body = serde_json::to_string(&v).unwrap();
                assert!(
                    matches!(err(&body), BodyError::WrongType { field, .. } if field == name),
                    "{body}"
                );
            }
        }
        for (name, bad) in [
            ("instance_id", "1"),
            ("task_id", "{}"),
            ("id", "true"),
            ("reason", "[]"),
            ("action_context", "2"),
            ("message_id", "1.5"),
            ("message_id", "1e19"),
            ("message_id", "-25002019"),
            ("message_id", "\"12a\""),
            ("message_id", "\"\""),
            ("message_id", "99999999999999999999"),
            ("message_id", "true"),
            ("attachments", "{}"),
            ("attachments", "[1]"),
            ("attachments", "\"x\""),
        ] {
            let body = format!(
                r#"{{"action_type":"A","user_id":"u","approval_code":"c","{name}":{bad}}}"#
            );
            assert!(
                matches!(err(&body), BodyError::WrongType { field, .. } if field == name),
                "{body}"
            );
        }
        ok(
            r#"{"action_type":"A","user_id":"u","approval_code":"c","attachments":[{"file_type":"IMAGE","file_size":3,"file_name":"a.png","url":"https://x"}],"instance_id":null}"#,
        );
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let at_limit = format!(
            r#"{{"action_type":"A","user_id":"u","approval_code":"c","x":{}1{}}}"#,
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        ok(&at_limit);
        let over = at_limit.replacen("[", "[[", 1).replacen("]", "]]", 1);
        assert_eq!(err(&over), BodyError::Json(JsonError::TooDeep));
        let brackets_in_text = format!(
            r#"{{"action_type":"A","user_id":"u","approval_code":"c","reason":"{}\"{}"}}"#,
            "[{".repeat(100),
            r"\\"
        );
        ok(&brackets_in_text);
    }

    #[test]
    fn half_a_surrogate_pair_is_not_json_but_a_whole_one_is() {
        for bad in [
            r#"{"reason":"\ude00"}"#,
            r#"{"reason":"\ud83d"}"#,
            r#"{"reason":"\ud83dx"}"#,
            r#"{"reason":"\ud83d\ud83d\ude00"}"#,
            r#"{"reason":"\ud83d\n"}"#,
            r#"{"x":["ok","\uDFFF"]}"#,
        ] {
            assert_eq!(err(bad), BodyError::Json(JsonError::NotJson), "{bad}");
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad}"
            );
        }
        for good in [
            r#"{"reason":"\ud83d\ude00 \u00e9 \\ud83d"}"#,
            r#"{"reason":"😀","k\"\\":"\uD83D\uDE00"}"#,
        ] {
            assert!(Fields::parse(good.as_bytes()).is_ok(), "{good}");
            assert!(
                serde_json::from_str::<serde_json::Value>(good).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn debug_lists_names_not_values() {
        let f = Fields::parse(V1.as_bytes()).unwrap();
        let shown = format!("{f:?}");
        assert!(shown.contains("token"));
        assert!(!shown.contains("sdjkljkx9lsadf110"));
    }
}
