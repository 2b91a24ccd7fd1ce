//! What the legacy system's answer comes to: the one place that judges it.
//!
//! A 2xx is acceptance only when its whole body arrived and, with `UPSTREAM_OK`, the
//! body says so; anything else is a refusal, whose own message is found here, or, when
//! the body broke off or came too late, a decision whose fate is unknown.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::outcome::Outcome;
use crate::outcome::{Refusal, UpstreamError};
use crate::util::text;
use crate::vars::UPSTREAM_OK;

/// The most of an upstream answer the gateway reads: enough for any error
/// message, small enough that a runaway answer costs nothing.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The most of a value from the answer (a `Location`) a log detail holds.
const MAX_DETAIL_CHARS: usize = 512;

/// Why an answer's body could not be used.
#[derive(Debug)]
pub enum Unread {
    /// Longer than [`MAX_ANSWER_BYTES`].
    TooLong,
    /// The connection failed part-way.
    Broken(String),
    /// Still arriving at the deadline.
    Late,
}

impl Unread {
    fn detail(self) -> String {
        match self {
            Self::TooLong => format!("the answer is longer than {MAX_ANSWER_BYTES} bytes"),
            Self::Broken(detail) => detail,
            Self::Late => "the answer's body did not arrive before the deadline".into(),
        }
    }
}

/// What an answer with `status` and `headers` comes to, given its body or why the body
/// could not be read, under the operator's `rule`; with a detail for the operator's log.
pub fn judge(
    status: StatusCode,
    headers: &HeaderMap,
    body: Result<Bytes, Unread>,
    rule: Option<&OkRule>,
) -> (Outcome, Option<String>) {
    let (outcome, detail) = judge_body(status, headers.get(header::CONTENT_TYPE), body, rule);
    let location = status
        .is_redirection()
        .then(|| headers.get(header::LOCATION))
        .flatten();
    let Some(location) = location else {
        return (outcome, detail);
    };
    // Where a login or maintenance page sent us: the quickest clue to why.
    let location = String::from_utf8_lossy(location.as_bytes());
    let location: String = location.chars().take(MAX_DETAIL_CHARS).collect();
    let redirect = format!("redirected to {location}");
    let detail = match detail {
        Some(d) => format!("{redirect}; {d}"),
        None => redirect,
    };
    (outcome, Some(detail))
}

fn judge_body(
    status: StatusCode,
    content_type: Option<&HeaderValue>,
    body: Result<Bytes, Unread>,
    rule: Option<&OkRule>,
) -> (Outcome, Option<String>) {
    let refused = |message, business_rule| {
        Outcome::UpstreamRefused(Refusal {
            upstream_status: status,
            message,
            business_rule,
        })
    };
    if !status.is_success() {
        return match body {
            Ok(body) => {
                let found = message(content_type, &body);
                // Without a message of its own (an HTML error page), the start of what came
                // back is the operator's clue; a redirect's is its `Location`.
                let detail = (found.is_none() && !body.is_empty() && !status.is_redirection())
                    .then(|| format!("answer: {}", excerpt(&decoded(content_type, &body))));
                (refused(found, false), detail)
            }
            Err(unread) => (refused(None, false), Some(unread.detail())),
        };
    }
    match (body, rule) {
        // The status is the acceptance, but only of an answer that arrived whole: a server
        // that stalls or breaks off after its status line may have failed after writing it
        // (RFC 9112 §8). Without the body nobody knows whether a rule held either: the
        // decision's fate is as unknown as when no answer came at all.
        (Err(Unread::Late), _) => (Outcome::UpstreamTimedOut, Some(Unread::Late.detail())),
        (Err(Unread::Broken(detail)), _) => (
            Outcome::UpstreamUnreachable(UpstreamError::Dropped),
            Some(detail),
        ),
        (Ok(_), None) => (Outcome::Delivered, None),
        // One too long to read was sent whole as far as anyone can tell, and without a rule
        // its body does not matter; with one, an answer too long to judge is no confirmation.
        (Err(Unread::TooLong), None) => (Outcome::Delivered, Some(Unread::TooLong.detail())),
        (Err(Unread::TooLong), Some(_)) => (refused(None, true), Some(Unread::TooLong.detail())),
        (Ok(body), Some(rule)) => {
            let text = decoded(content_type, &body);
            let (doc, before) = json_in(&text);
            let noted = (before > 0).then(|| {
                format!(
                    "{before} bytes before the answer's JSON, ignored: {}",
                    excerpt(&text[..before])
                )
            });
            match rule.check_doc(doc.as_ref(), &text) {
                Ok(()) => (Outcome::Delivered, noted),
                Err(found) => (
                    refused(message(content_type, &body), true),
                    Some(format!("{UPSTREAM_OK} {rule} does not hold: {found}")),
                ),
            }
        }
    }
}

/// `UPSTREAM_OK`: the JSON value at `pointer` in a 2xx body must equal `expected`.
#[derive(Debug, Clone, PartialEq)]
pub struct OkRule {
    pub pointer: String,
    pub expected: serde_json::Value,
}

impl OkRule {
    /// Parses `POINTER==VALUE`. `VALUE` is JSON when it parses as JSON
    /// (`0`, `true`, `"0"`), otherwise a plain string (`ok`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (pointer, value) = text
            .split_once("==")
            .ok_or_else(|| "must be POINTER==VALUE, e.g. /code==0".to_owned())?;
        let pointer = pointer.trim();
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err("the JSON pointer must start with /, e.g. /code==0".to_owned());
        }
        let value = value.trim();
        let expected = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        Ok(Self {
            pointer: pointer.to_owned(),
            expected,
        })
    }

    /// Whether an upstream body satisfies the rule; if not, what was found instead, for the
    /// operator's log. Numbers compare by value, so `0`, `0.0` and `-0` are all zero, and a
    /// numeric rule also holds for a string that is that number written out (`"0"`), as
    /// PHP and Java systems often answer.
    #[cfg(test)]
    fn check(&self, body: &[u8]) -> Result<(), String> {
        let text = decoded(None, body);
        let (doc, _) = json_in(&text);
        self.check_doc(doc.as_ref(), &text)
    }

    /// [`Self::check`] on the answer's JSON, `doc`, found in its decoded `text`.
    fn check_doc(&self, doc: Option<&serde_json::Value>, text: &str) -> Result<(), String> {
        let Some(doc) = doc else {
            return Err(format!("the answer is not JSON: {}", excerpt(text)));
        };
        let Some(found) = doc.pointer(&self.pointer) else {
            return Err(format!("{} is absent", self.pointer_shown()));
        };
        let holds = match (found, &self.expected) {
            (serde_json::Value::Number(a), serde_json::Value::Number(b)) => same_number(a, b),
            (serde_json::Value::String(a), serde_json::Value::Number(b)) => a
                .parse::<serde_json::Number>()
                .is_ok_and(|a| same_number(&a, b)),
            (found, expected) => found == expected,
        };
        if holds {
            return Ok(());
        }
        let what = match found {
            serde_json::Value::Null => "null".to_owned(),
            serde_json::Value::Bool(b) => format!("the boolean {b}"),
            serde_json::Value::Number(n) => format!("the number {n}"),
            serde_json::Value::String(s) => {
                let shown: String = s.chars().take(64).collect();
                let more = if shown.len() < s.len() { "…" } else { "" };
                format!("the string {shown:?}{more}")
            }
            serde_json::Value::Array(_) => "an array".to_owned(),
            serde_json::Value::Object(_) => "an object".to_owned(),
        };
        Err(format!("{} is {what}", self.pointer_shown()))
    }

    fn pointer_shown(&self) -> &str {
        if self.pointer.is_empty() {
            "the whole answer"
        } else {
            &self.pointer
        }
    }
}

fn same_number(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

impl fmt::Display for OkRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}=={}", self.pointer, self.expected)
    }
}

/// Finds the legacy system's own message in its answer. In a JSON object (whatever the
/// `Content-Type` says: PHP sends JSON as `text/html` by default) it is `message`, `msg`,
/// `error` (a string), `errmsg`, or `error.message`, in that order; a `text/plain` answer
/// is the message itself. The text is decoded from the charset the `Content-Type` names
/// (GBK, GB18030, Big5, ...; UTF-8 when it names none), and a byte-order mark wins.
pub fn message(content_type: Option<&HeaderValue>, body: &[u8]) -> Option<String> {
    let (plain_text, _) = media_type(content_type);
    let text = decoded(content_type, body);
    match json_in(&text).0 {
        Some(serde_json::Value::Object(obj)) => {
            let candidates = [
                obj.get("message"),
                obj.get("msg"),
                obj.get("error"),
                obj.get("errmsg"),
                obj.get("error").and_then(|e| e.get("message")),
            ];
            candidates
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .find_map(text::fold)
        }
        _ if plain_text => text::fold(&text),
        _ => None,
    }
}

/// The answer as text: decoded from the charset its `Content-Type` names, a byte-order
/// mark winning; an answer labelled UTF-8 (or unlabelled) that is not UTF-8 but reads as
/// GB18030 (GBK's and GB2312's superset) is read so, since PHP labels everything UTF-8.
fn decoded<'a>(content_type: Option<&HeaderValue>, body: &'a [u8]) -> Cow<'a, str> {
    let (_, encoding) = media_type(content_type);
    if encoding == encoding_rs::UTF_8
        && std::str::from_utf8(body).is_err()
        && encoding_rs::Encoding::for_bom(body).is_none()
        && let Some(text) =
            encoding_rs::GB18030.decode_without_bom_handling_and_without_replacement(body)
    {
        return text;
    }
    encoding.decode(body).0
}

/// How many places a JSON document is looked for after something printed before it.
const JSON_STARTS_TRIED: usize = 8;

/// The JSON document `text` holds, and how many bytes came before it: a PHP warning or
/// notice printed ahead of the real answer (`<br />\n<b>Warning</b>: …\n{"code":0}`) is
/// passed over when the JSON starts a line of its own. Bounded: a few starts tried, from
/// the last.
fn json_in(text: &str) -> (Option<serde_json::Value>, usize) {
    if let Ok(doc) = serde_json::from_str(text) {
        return (Some(doc), 0);
    }
    let starts = text
        .match_indices("\n{")
        .map(|(i, _)| i + 1)
        .collect::<Vec<_>>();
    for &start in starts.iter().rev().take(JSON_STARTS_TRIED) {
        if let Ok(doc @ serde_json::Value::Object(_)) = serde_json::from_str(&text[start..]) {
            return (Some(doc), start);
        }
    }
    (None, 0)
}

/// The start of what came back, for the operator's log: folded to one line, bounded.
fn excerpt(text: &str) -> String {
    let folded: String = text
        .chars()
        .take(80)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let more = if text.chars().nth(80).is_some() {
        "…"
    } else {
        ""
    };
    format!("{:?}{more}", folded.trim())
}

/// Whether a `Content-Type` is `text/plain`, and the encoding its `charset` names.
fn media_type(content_type: Option<&HeaderValue>) -> (bool, &'static encoding_rs::Encoding) {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return (false, encoding_rs::UTF_8);
    };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    let charset = parts.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"'))
    });
    let encoding = charset
        .and_then(|label| encoding_rs::Encoding::for_label(label.as_bytes()))
        .unwrap_or(encoding_rs::UTF_8);
    (essence.eq_ignore_ascii_case("text/plain"), encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(
        status: u16,
        headers: &[(&'static str, &'static str)],
        body: Result<&'static [u8], Unread>,
        rule: Option<&str>,
    ) -> (Outcome, Option<String>) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        let rule = rule.map(|r| OkRule::parse(r).unwrap());
        judge(
            StatusCode::from_u16(status).unwrap(),
            &map,
            body.map(Bytes::from_static),
            rule.as_ref(),
        )
    }

    #[test]
    fn a_2xx_is_acceptance_only_once_its_whole_answer_arrived() {
        assert_eq!(
            judged(200, &[], Ok(b"anything"), None),
            (Outcome::Delivered, None)
        );
        assert_eq!(judged(204, &[], Ok(b""), None).0, Outcome::Delivered);
        assert_eq!(
            judged(200, &[], Err(Unread::TooLong), None).0,
            Outcome::Delivered
        );
        assert_eq!(
            judged(200, &[], Err(Unread::Late), None).0,
            Outcome::UpstreamTimedOut
        );
        assert_eq!(
            judged(200, &[], Err(Unread::Broken("reset".into())), None),
            (
                Outcome::UpstreamUnreachable(UpstreamError::Dropped),
                Some("reset".into())
            )
        );
        for rule in [None, Some("/code==0")] {
            assert_eq!(
                judged(200, &[], Err(Unread::Late), rule).0,
                Outcome::UpstreamTimedOut
            );
        }
    }

    #[test]
    fn a_2xx_that_breaks_the_rule_is_a_refusal_with_its_own_message() {
        let (outcome, detail) = judged(
            200,
            &[],
            Ok(br#"{"code":7,"msg":"locked"}"#),
            Some("/code==0"),
        );
        assert_eq!(
            outcome,
            Outcome::UpstreamRefused(Refusal {
                upstream_status: StatusCode::OK,
                message: Some("locked".into()),
                business_rule: true,
            })
        );
        assert_eq!(
            detail.as_deref(),
            Some("FEISHU_GATE_UPSTREAM_OK /code==0 does not hold: /code is the number 7")
        );
        assert_eq!(
            judged(200, &[], Ok(br#"{"code":"0"}"#), Some("/code==0")).0,
            Outcome::Delivered
        );
        let (outcome, _) = judged(200, &[], Err(Unread::TooLong), Some("/code==0"));
        assert_eq!(outcome.label(), "upstream_not_ok");
    }

    #[test]
    fn any_other_status_is_a_refusal_and_a_redirect_says_where_it_went() {
        let (outcome, detail) = judged(
            302,
            &[("location", "https://sso.example/login")],
            Ok(b"<html>moved</html>"),
            None,
        );
        assert_eq!(outcome.label(), "upstream_refused");
        assert_eq!(
            detail.as_deref(),
            Some("redirected to https://sso.example/login")
        );
        let (outcome, detail) = judged(
            500,
            &[("content-type", "text/plain; charset=utf-8")],
            Ok("数据库不可用".as_bytes()),
            Some("/code==0"),
        );
        assert_eq!(
            outcome,
            Outcome::UpstreamRefused(Refusal {
                upstream_status: StatusCode::INTERNAL_SERVER_ERROR,
                message: Some("数据库不可用".into()),
                business_rule: false,
            })
        );
        assert_eq!(detail, None);
        let (_, detail) = judged(503, &[], Err(Unread::Late), None);
        assert_eq!(
            detail.as_deref(),
            Some("the answer's body did not arrive before the deadline")
        );
    }

    fn holds(rule: &OkRule, body: &[u8]) -> bool {
        rule.check(body).is_ok()
    }

    #[test]
    fn ok_rules_compare_by_value_and_say_what_they_found() {
        let r = OkRule::parse("/code==0").unwrap();
        assert!(holds(&r, br#"{"code":0}"#));
        assert!(holds(&r, br#"{"code":0.0}"#));
        assert!(holds(&r, br#"{"code":"0"}"#));
        assert!(!holds(&r, br#"{"code":"1"}"#));
        assert!(!holds(&r, br#"{"code":" 0"}"#));
        assert!(!holds(&r, br#"{"code":1}"#));
        assert!(!holds(&r, br#"{}"#));
        assert!(!holds(&r, b"<html>"));
        assert_eq!(
            r.check(br#"{"code":"1","msg":"no"}"#),
            Err(r#"/code is the string "1""#.to_owned())
        );
        assert_eq!(
            r.check(br#"{"code":2}"#),
            Err("/code is the number 2".to_owned())
        );
        assert_eq!(
            r.check(br#"{"ok":true}"#),
            Err("/code is absent".to_owned())
        );
        assert_eq!(
            r.check(b"<html>"),
            Err(r#"the answer is not JSON: "<html>""#.to_owned())
        );
        assert_eq!(
            r.check(format!(r#"{{"code":"{}"}}"#, "x".repeat(100)).as_bytes()),
            Err(format!("/code is the string {:?}…", "x".repeat(64)))
        );
        let r = OkRule::parse("/data/status==ok").unwrap();
        assert!(holds(&r, br#"{"data":{"status":"ok"}}"#));
        assert_eq!(
            r.check(br#"{"data":{"status":null}}"#),
            Err("/data/status is null".to_owned())
        );
        // A string rule stays a string rule.
        let r = OkRule::parse(r#"/code=="0""#).unwrap();
        assert!(holds(&r, br#"{"code":"0"}"#));
        assert!(!holds(&r, br#"{"code":0}"#));
        let r = OkRule::parse("/success==true").unwrap();
        assert!(holds(&r, br#"{"success":true}"#));
        assert!(OkRule::parse("code==0").is_err());
        assert!(OkRule::parse("/code=0").is_err());
    }

    #[test]
    fn upstream_messages_are_found_and_cleaned() {
        assert_eq!(
            message(None, br#"{"message":"no such task"}"#).as_deref(),
            Some("no such task")
        );
        assert_eq!(
            message(None, br#"{"code":7,"msg":"already approved"}"#).as_deref(),
            Some("already approved")
        );
        assert_eq!(
            message(None, br#"{"error":{"message":"nested"}}"#).as_deref(),
            Some("nested")
        );
        assert_eq!(
            message(None, br#"{"error":"flat","errmsg":"x"}"#).as_deref(),
            Some("flat")
        );
        assert_eq!(
            message(None, br#"{"errmsg":"wx style"}"#).as_deref(),
            Some("wx style")
        );
        assert_eq!(
            message(None, br#"{"message":"  ","msg":"second"}"#).as_deref(),
            Some("second")
        );
        assert_eq!(message(None, br#"{"message":5}"#), None);
        assert_eq!(message(None, b"<html><body>500</body></html>"), None);
    }

    #[test]
    fn plain_text_and_legacy_charsets_are_read() {
        let ct = |v: &'static str| Some(HeaderValue::from_static(v));
        let refusal = "参数错误：缺少审批意见";
        assert_eq!(
            message(ct("text/plain; charset=utf-8").as_ref(), refusal.as_bytes()).as_deref(),
            Some(refusal)
        );
        // Without a text/plain type, text that is not JSON is no message: an HTML page is
        // not one.
        assert_eq!(message(None, refusal.as_bytes()), None);
        assert_eq!(
            message(ct("text/html").as_ref(), b"<h1>Bad Gateway</h1>"),
            None
        );
        let (gbk, _, _) = encoding_rs::GBK.encode(r#"{"code":1,"msg":"审批单已被撤回"}"#);
        for label in [
            "application/json;charset=GBK",
            "application/json; charset=\"gb2312\"",
        ] {
            assert_eq!(
                message(ct(label).as_ref(), &gbk).as_deref(),
                Some("审批单已被撤回"),
                "{label}"
            );
        }
        let (gb18030, _, _) = encoding_rs::GB18030.encode("任务不存在");
        assert_eq!(
            message(ct("TEXT/PLAIN; Charset=GB18030").as_ref(), &gb18030).as_deref(),
            Some("任务不存在")
        );
        let (big5, _, _) = encoding_rs::BIG5.encode(r#"{"message":"審批已完成"}"#);
        assert_eq!(
            message(ct("application/json; charset=big5").as_ref(), &big5).as_deref(),
            Some("審批已完成")
        );
        // A byte-order mark, as .NET writes one, says UTF-8 whatever the header claims.
        let bom = [&b"\xEF\xBB\xBF"[..], br#"{"message":"locked"}"#].concat();
        assert_eq!(
            message(ct("application/json; charset=gbk").as_ref(), &bom).as_deref(),
            Some("locked")
        );
        // An unknown charset is read as UTF-8.
        assert_eq!(
            message(ct("text/plain; charset=x-klingon").as_ref(), b"nope").as_deref(),
            Some("nope")
        );
    }

    #[test]
    fn a_stray_closing_bracket_is_folded_away() {
        assert_eq!(
            message(None, br#"{"message":"amount > 1000"}"#).as_deref(),
            Some("amount 1000")
        );
    }

    /// `judge` of a 200 whose body is `body`, under `/code==0`.
    fn judged_ok(content_type: &str, body: Vec<u8>) -> (Outcome, Option<String>) {
        let mut map = HeaderMap::new();
        map.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        let rule = OkRule::parse("/code==0").unwrap();
        judge(StatusCode::OK, &map, Ok(Bytes::from(body)), Some(&rule))
    }

    #[test]
    fn a_success_in_a_legacy_charset_or_behind_a_bom_is_a_success() {
        let success = r#"{"code":0,"msg":"审批成功"}"#;
        let (gbk, _, _) = encoding_rs::GBK.encode(success);
        for content_type in [
            "application/json; charset=GBK",
            "application/json;charset=gb2312",
            // PHP's default label, over GBK bytes.
            "text/html; charset=UTF-8",
            "application/json",
        ] {
            let (outcome, detail) = judged_ok(content_type, gbk.to_vec());
            assert_eq!(outcome, Outcome::Delivered, "{content_type}: {detail:?}");
        }
        let bom = [&b"\xEF\xBB\xBF"[..], success.as_bytes()].concat();
        assert_eq!(judged_ok("application/json", bom).0, Outcome::Delivered);
        // A refusal in GBK under a UTF-8 label is read in GBK, not as mojibake.
        let (refusal, _, _) = encoding_rs::GBK.encode(r#"{"code":7,"msg":"该单据已被撤回"}"#);
        let (outcome, _) = judged_ok("text/html; charset=UTF-8", refusal.to_vec());
        let Outcome::UpstreamRefused(Refusal { message, .. }) = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(message.as_deref(), Some("该单据已被撤回"));
    }

    #[test]
    fn a_php_warning_before_the_json_is_passed_over_and_logged() {
        let body = "<br />\n<b>Warning</b>:  Undefined variable $x in <b>/app/approve.php</b> on line <b>12</b><br />\n{\"code\":0}";
        let (outcome, detail) = judged_ok("text/html; charset=UTF-8", body.as_bytes().to_vec());
        assert_eq!(outcome, Outcome::Delivered);
        let detail = detail.unwrap();
        assert!(
            detail.contains("bytes before the answer's JSON, ignored"),
            "{detail}"
        );
        assert!(detail.contains("Warning"), "{detail}");
        // Not JSON at all: refused, with an excerpt of what came back.
        let (outcome, detail) = judged_ok("text/html", b"<html><body>Login</body></html>".to_vec());
        assert!(
            matches!(outcome, Outcome::UpstreamRefused(_)),
            "{outcome:?}"
        );
        let detail = detail.unwrap();
        assert!(
            detail.contains(r#"not JSON: "<html><body>Login</body></html>""#),
            "{detail}"
        );
    }
}
