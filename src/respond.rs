//! The one place that decides what Feishu receives.
//!
//! Every way a callback can end is an [`Outcome`]; [`Translator::respond`] turns
//! it into the status and `{"message": ..., "without_prefix": "true"}` body that
//! Feishu shows the approver. Nothing else in the code picks a status code.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::callback::BodyError;
use crate::config::Lang;
use crate::envelope::EnvelopeError;

/// Longest message Feishu is given, in characters.
pub const MAX_MESSAGE_CHARS: usize = 200;

/// The shortest run of a secret's bytes that counts as giving it away. Shorter runs turn up
/// in ordinary text by chance; a token or key of 32 characters has 25 runs of this length.
pub const SECRET_FRAGMENT_BYTES: usize = 8;

/// Longest detail a callback's log line carries, in characters.
pub const MAX_LOG_DETAIL_CHARS: usize = 400;

/// How one callback ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The legacy system accepted the decision.
    Delivered,
    /// The same decision was already delivered; answered without calling upstream.
    Duplicate,
    /// The gateway refused the request itself; nothing reached the upstream.
    Rejected(Rejection),
    /// The legacy system answered, but not with acceptance.
    Refused(Refusal),
    /// The legacy system could not be reached, or dropped the exchange.
    Unreachable(UpstreamError),
    /// The legacy system did not answer within the time Feishu allows.
    TimedOut,
}

/// Why the gateway refused a request before forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Unauthorized(AuthFailure),
    Invalid(BodyError),
    TooLarge,
    /// The client took too long to send its body.
    SlowBody,
    /// The body could not be read (the client went away mid-body).
    Unreadable,
    RateLimited {
        retry_after_secs: u64,
    },
    NotFound,
    MethodNotAllowed,
    ShuttingDown,
    /// The shared duplicate memory cannot be reached and `REDIS_FAILURE=closed`:
    /// delivering could repeat a decision another replica already delivered.
    MemoryUnavailable,
    /// A bug: the gateway panicked while handling the request. A delivery already
    /// started runs on and settles its duplicate memory, so whether it took effect is
    /// what the approver is asked to check.
    Internal,
}

/// Why a callback could not be authenticated. Logged, never shown to Feishu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("token missing")]
    MissingToken,
    #[error("token does not match")]
    WrongToken,
    #[error("{0}")]
    Undecryptable(EnvelopeError),
    #[error("decrypted payload is not a JSON object (wrong key?)")]
    NotJsonInside,
    #[error("plaintext callback while a key is configured")]
    PlaintextRefused,
    #[error("encrypted callback but no key is configured")]
    NoKeyConfigured,
}

/// The legacy system's answer when it did not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status it answered with.
    pub upstream_status: StatusCode,
    /// Its own message, markup and control characters already removed but not yet cut to
    /// length, so that a secret is looked for in the whole text before any of it is cut.
    pub message: Option<String>,
    /// A 2xx whose body failed `UPSTREAM_OK`.
    pub business_rule: bool,
}

/// How an upstream exchange failed before an answer arrived. A bounded set,
/// so it can label metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Nothing was delivered: the connection could not be made.
    Connect,
    /// The request may have been delivered, but no complete answer came back.
    Dropped,
}

impl UpstreamError {
    pub fn label(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Dropped => "dropped",
        }
    }
}

impl Outcome {
    /// A short, bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Duplicate => "duplicate",
            Self::Rejected(r) => match r {
                Rejection::Unauthorized(_) => "unauthorized",
                Rejection::Invalid(_) => "invalid",
                Rejection::TooLarge => "too_large",
                Rejection::SlowBody => "slow_body",
                Rejection::Unreadable => "unreadable",
                Rejection::RateLimited { .. } => "rate_limited",
                Rejection::NotFound => "not_found",
                Rejection::MethodNotAllowed => "method_not_allowed",
                Rejection::ShuttingDown => "shutting_down",
                Rejection::MemoryUnavailable => "memory_unavailable",
                Rejection::Internal => "internal",
            },
            Self::Refused(r) if r.business_rule => "upstream_not_ok",
            Self::Refused(_) => "upstream_refused",
            Self::Unreachable(_) => "upstream_unreachable",
            Self::TimedOut => "upstream_timeout",
        }
    }

    /// Whether the connection is closed after this answer: the gateway refused the request
    /// itself, and no verified callback was rate limited (Feishu retries those, on the
    /// connection it has).
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::Rejected(r) if !matches!(
                r,
                Rejection::RateLimited { .. } | Rejection::MemoryUnavailable | Rejection::Internal
            )
        )
    }

    /// The status Feishu receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Delivered | Self::Duplicate => StatusCode::OK,
            Self::Rejected(r) => match r {
                Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                Rejection::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                Rejection::SlowBody => StatusCode::REQUEST_TIMEOUT,
                Rejection::Unreadable => StatusCode::BAD_REQUEST,
                Rejection::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
                Rejection::NotFound => StatusCode::NOT_FOUND,
                Rejection::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
                Rejection::ShuttingDown | Rejection::MemoryUnavailable => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                Rejection::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
            // Feishu treats any status above 400 as failure; below 401 there is
            // nothing faithful to pass on, so it becomes a gateway error.
            Self::Refused(r) if (401..=599).contains(&r.upstream_status.as_u16()) => {
                r.upstream_status
            }
            Self::Refused(_) | Self::Unreachable(_) => StatusCode::BAD_GATEWAY,
            Self::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

const SUCCESS_BODY: &[u8] = br#"{"code":0,"msg":"success"}"#;

/// Turns outcomes into Feishu's responses in the configured language.
#[derive(Clone)]
pub struct Translator {
    lang: Lang,
    /// Tokens, keys and `UPSTREAM_HEADERS` values: a message that contains one is not
    /// passed on.
    secrets: Vec<String>,
    /// Every run of [`SECRET_FRAGMENT_BYTES`] in a longer secret, so that looking for any
    /// of them costs one pass over a message, whatever the secrets' number and length.
    fragments: std::sync::Arc<std::collections::HashSet<[u8; SECRET_FRAGMENT_BYTES]>>,
}

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator")
            .field("lang", &self.lang)
            .finish_non_exhaustive()
    }
}

impl Translator {
    pub fn new(lang: Lang, secrets: Vec<String>) -> Self {
        let fragments = secrets
            .iter()
            .filter(|s| s.len() > SECRET_FRAGMENT_BYTES)
            .flat_map(|s| s.as_bytes().windows(SECRET_FRAGMENT_BYTES))
            .filter_map(|w| w.try_into().ok())
            .collect();
        Self {
            lang,
            secrets,
            fragments: std::sync::Arc::new(fragments),
        }
    }

    /// The message Feishu shows for an outcome, `None` on success.
    pub fn message(&self, outcome: &Outcome) -> Option<String> {
        let zh = self.lang == Lang::Zh;
        let text = match outcome {
            Outcome::Delivered | Outcome::Duplicate => return None,
            Outcome::Rejected(r) => match r {
                Rejection::Unauthorized(_) => pick(
                    zh,
                    "回调请求校验失败",
                    "The callback could not be verified.",
                ),
                Rejection::Invalid(e) => {
                    let text = if zh {
                        invalid_zh(e)
                    } else {
                        format!("Invalid callback: {e}.")
                    };
                    // A repeated field's name comes from the caller and may hold markup or
                    // line breaks.
                    // A field name may also repeat a token or key back; the gateway's
                    // answers never contain one, whoever sent it.
                    return Some(
                        fold(&text)
                            .filter(|m| !self.leaks_secret(m))
                            .map(|m| clip(&m))
                            .unwrap_or_else(|| {
                                pick(zh, "回调内容无效", "Invalid callback.").to_owned()
                            }),
                    );
                }
                Rejection::TooLarge => {
                    pick(zh, "回调请求体过大", "The callback body is too large.")
                }
                Rejection::SlowBody => pick(
                    zh,
                    "回调请求读取超时",
                    "The callback body arrived too slowly.",
                ),
                Rejection::Unreadable => pick(
                    zh,
                    "回调请求体读取失败",
                    "The callback body could not be read.",
                ),
                Rejection::RateLimited { .. } => pick(
                    zh,
                    "审批操作过于频繁，请稍后重试",
                    "Too many approval actions, please try again shortly.",
                ),
                Rejection::NotFound => {
                    pick(zh, "回调地址不存在", "No callback is served at this path.")
                }
                Rejection::MethodNotAllowed => {
                    pick(zh, "回调只接受 POST 请求", "Callbacks must use POST.")
                }
                Rejection::ShuttingDown => pick(
                    zh,
                    "审批网关正在重启，请稍后重试",
                    "The approval gateway is restarting, please try again shortly.",
                ),
                Rejection::MemoryUnavailable => pick(
                    zh,
                    "审批网关暂时无法确认此操作是否已提交，请稍后重试",
                    "The approval gateway cannot check whether this action was already submitted, please try again shortly.",
                ),
                Rejection::Internal => pick(
                    zh,
                    "审批网关处理此操作时出错，请稍后刷新确认审批结果",
                    "The approval gateway failed on this action; refresh to check whether it took effect.",
                ),
            },
            Outcome::Refused(r) => {
                if let Some(own) = r.message.as_deref().filter(|m| !self.leaks_secret(m)) {
                    return Some(clip(own));
                }
                let code = r.upstream_status.as_u16();
                return Some(match (zh, r.business_rule) {
                    (true, true) => "审批系统未确认此操作，请稍后重试".to_owned(),
                    (false, true) => {
                        "The approval system did not confirm this action, please try again later."
                            .to_owned()
                    }
                    (true, false) => format!("审批系统拒绝了此操作（HTTP {code}）"),
                    (false, false) => {
                        format!("The approval system refused this action (HTTP {code}).")
                    }
                });
            }
            Outcome::Unreachable(UpstreamError::Connect) => pick(
                zh,
                "审批系统暂时无法访问，请稍后重试",
                "The approval system is unavailable, please try again later.",
            ),
            // The request may have been received: only a refresh tells whether it took effect.
            Outcome::Unreachable(UpstreamError::Dropped) => pick(
                zh,
                "与审批系统的连接中断，请稍后刷新确认审批结果",
                "The connection to the approval system broke off; refresh to check whether the action took effect.",
            ),
            Outcome::TimedOut => pick(
                zh,
                "审批系统响应超时，请稍后刷新确认审批结果",
                "The approval system did not answer in time; refresh to check whether the action took effect.",
            ),
        };
        Some(text.to_owned())
    }

    /// The whole response for an outcome.
    pub fn respond(&self, outcome: &Outcome) -> Response<Full<Bytes>> {
        let status = outcome.status();
        let body = match self.message(outcome) {
            None => Bytes::from_static(SUCCESS_BODY),
            Some(message) => Bytes::from(error_body(&message)),
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match outcome {
            Outcome::Rejected(Rejection::RateLimited { retry_after_secs }) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from((*retry_after_secs).max(1)),
                );
            }
            Outcome::Rejected(Rejection::MethodNotAllowed) => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            Outcome::Rejected(Rejection::ShuttingDown) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }

    /// The detail of an exchange for the operator's log, with the legacy system's own message
    /// when it refused: every secret replaced by `<redacted>` before it is cut to length, so
    /// no part of one is left at the cut.
    pub fn log_detail(&self, detail: Option<String>, outcome: &Outcome) -> Option<String> {
        let message = match outcome {
            Outcome::Refused(Refusal {
                message: Some(m), ..
            }) => Some(format!("message {m:?}")),
            _ => None,
        };
        let mut text = match (detail, message) {
            (None, None) => return None,
            (Some(d), None) => d,
            (None, Some(m)) => m,
            (Some(d), Some(m)) => format!("{d}; {m}"),
        };
        for secret in self.secrets.iter().filter(|s| !s.is_empty()) {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), "<redacted>");
            }
        }
        if self.holds_part_of_a_secret(&text) {
            // Where a fragment sits cannot be told from ordinary text around it: the whole
            // detail goes, and the operator learns why.
            text = "<withheld: it holds part of a configured secret>".to_owned();
        }
        if text.chars().count() > MAX_LOG_DETAIL_CHARS {
            text = text.chars().take(MAX_LOG_DETAIL_CHARS - 1).collect();
            text.push('…');
        }
        Some(text)
    }

    fn leaks_secret(&self, message: &str) -> bool {
        self.secrets
            .iter()
            .any(|s| !s.is_empty() && message.contains(s.as_str()))
            || self.holds_part_of_a_secret(message)
    }

    /// Whether `text` holds [`SECRET_FRAGMENT_BYTES`] consecutive bytes of a secret: a legacy
    /// system that echoes the first half of its credential gives away as much as half.
    fn holds_part_of_a_secret(&self, text: &str) -> bool {
        !self.fragments.is_empty()
            && text
                .as_bytes()
                .windows(SECRET_FRAGMENT_BYTES)
                .filter_map(|w| <[u8; SECRET_FRAGMENT_BYTES]>::try_from(w).ok())
                .any(|w| self.fragments.contains(&w))
    }
}

fn pick(zh: bool, zh_text: &'static str, en_text: &'static str) -> &'static str {
    if zh { zh_text } else { en_text }
}

fn invalid_zh(e: &BodyError) -> String {
    match e {
        BodyError::NotJson => "回调内容不是有效的 JSON".to_owned(),
        BodyError::NotObject => "回调内容不是 JSON 对象".to_owned(),
        BodyError::TooDeep => "回调内容嵌套层级过深".to_owned(),
        BodyError::TooManyFields => format!("回调字段超过 {} 个", crate::callback::MAX_FIELDS),
        BodyError::DuplicateField => "回调字段重复出现".to_owned(),
        BodyError::Missing(f) => format!("回调缺少字段 {f}"),
        BodyError::WrongType { field, expected } => {
            format!("回调字段 {field} 应为{}", expected.zh())
        }
    }
}

/// `{"message": ..., "without_prefix": "true"}`.
pub fn error_body(message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "message": message, "without_prefix": "true" });
    // Serializing a map of strings cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Finds the legacy system's own message in its answer. In a JSON object (whatever the
/// `Content-Type` says: PHP sends JSON as `text/html` by default) it is `message`, `msg`,
/// `error` (a string), `errmsg`, or `error.message`, in that order; a `text/plain` answer
/// is the message itself. The text is decoded from the charset the `Content-Type` names
/// (GBK, GB18030, Big5, ...; UTF-8 when it names none), and a byte-order mark wins.
pub fn upstream_message(content_type: Option<&HeaderValue>, body: &[u8]) -> Option<String> {
    let (plain_text, encoding) = media_type(content_type);
    let (text, _, _) = encoding.decode(body);
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(obj)) => {
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
                .find_map(fold)
        }
        _ if plain_text => fold(&text),
        _ => None,
    }
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

/// Makes text fit for Feishu's card: markup removed, control characters and
/// runs of white space folded to one space, at most 200 characters.
pub fn clean(text: &str) -> Option<String> {
    fold(text).map(|m| clip(&m))
}

/// [`clean`] without the cut to 200 characters (the work stays bounded): secrets are looked
/// for in what this returns, since a cut first could leave part of one behind.
fn fold(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len().min(4 * MAX_MESSAGE_CHARS));
    let mut in_tag = false;
    let mut pending_space = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                pending_space = true;
            }
            _ if in_tag => {}
            // A stray `>` is markup too (a tag cut in half, an arrow Feishu would render).
            '>' => pending_space = true,
            c if c.is_whitespace() || c.is_control() => pending_space = true,
            c => {
                if pending_space && !out.is_empty() {
                    out.push(' ');
                }
                pending_space = false;
                out.push(c);
            }
        }
        if out.len() > 8 * MAX_MESSAGE_CHARS {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MAX_MESSAGE_CHARS - 1).collect();
    out.truncate(out.trim_end().len());
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_message(r: Response<Full<Bytes>>) -> (StatusCode, serde_json::Value) {
        use http_body_util::BodyExt;
        let status = r.status();
        let bytes = block_on(r.into_body().collect()).unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn t(lang: Lang) -> Translator {
        Translator::new(lang, vec!["s3cret-token".into()])
    }

    #[test]
    fn statuses_follow_the_product_table() {
        let refused = |s: u16| {
            Outcome::Refused(Refusal {
                upstream_status: StatusCode::from_u16(s).unwrap(),
                message: None,
                business_rule: false,
            })
        };
        assert_eq!(Outcome::Delivered.status(), 200);
        assert_eq!(refused(400).status(), 502);
        assert_eq!(refused(401).status(), 401);
        assert_eq!(refused(409).status(), 409);
        assert_eq!(refused(503).status(), 503);
        assert_eq!(refused(302).status(), 502);
        assert_eq!(refused(200).status(), 502);
        assert_eq!(Outcome::Unreachable(UpstreamError::Connect).status(), 502);
        assert_eq!(Outcome::TimedOut.status(), 504);
        assert_eq!(
            Outcome::Rejected(Rejection::Invalid(BodyError::NotJson)).status(),
            422
        );
    }

    #[test]
    fn every_error_body_is_feishu_shaped() {
        let outcomes = [
            Outcome::Rejected(Rejection::Unauthorized(AuthFailure::WrongToken)),
            Outcome::Rejected(Rejection::Invalid(BodyError::Missing("user_id"))),
            Outcome::Rejected(Rejection::TooLarge),
            Outcome::Rejected(Rejection::RateLimited {
                retry_after_secs: 0,
            }),
            Outcome::Rejected(Rejection::NotFound),
            Outcome::Rejected(Rejection::MethodNotAllowed),
            Outcome::Rejected(Rejection::ShuttingDown),
            Outcome::Rejected(Rejection::Internal),
            Outcome::Unreachable(UpstreamError::Dropped),
            Outcome::TimedOut,
        ];
        for lang in [Lang::Zh, Lang::En] {
            for o in &outcomes {
                let response = t(lang).respond(o);
                let retry = response.headers().get(header::RETRY_AFTER).cloned();
                let (status, body) = body_message(response);
                assert!(status.as_u16() > 400, "{o:?}");
                assert_eq!(body["without_prefix"], "true");
                let m = body["message"].as_str().unwrap();
                assert!(!m.is_empty() && m.chars().count() <= MAX_MESSAGE_CHARS);
                assert!(!m.chars().any(char::is_control) && !m.contains('<'));
                if matches!(o, Outcome::Rejected(Rejection::RateLimited { .. })) {
                    assert_eq!(retry.unwrap(), "1");
                }
            }
        }
        let (_, body) = body_message(t(Lang::En).respond(&outcomes[1]));
        assert_eq!(
            body["message"],
            "Invalid callback: field user_id is missing."
        );
        let (_, body) = body_message(t(Lang::Zh).respond(&outcomes[1]));
        assert_eq!(body["message"], "回调缺少字段 user_id");
    }

    #[test]
    fn upstream_messages_are_found_and_cleaned() {
        assert_eq!(
            upstream_message(None, br#"{"message":"no such task"}"#).as_deref(),
            Some("no such task")
        );
        assert_eq!(
            upstream_message(None, br#"{"code":7,"msg":"already approved"}"#).as_deref(),
            Some("already approved")
        );
        assert_eq!(
            upstream_message(None, br#"{"error":{"message":"nested"}}"#).as_deref(),
            Some("nested")
        );
        assert_eq!(
            upstream_message(None, br#"{"error":"flat","errmsg":"x"}"#).as_deref(),
            Some("flat")
        );
        assert_eq!(
            upstream_message(None, br#"{"errmsg":"wx style"}"#).as_deref(),
            Some("wx style")
        );
        assert_eq!(
            upstream_message(None, br#"{"message":"  ","msg":"second"}"#).as_deref(),
            Some("second")
        );
        assert_eq!(upstream_message(None, br#"{"message":5}"#), None);
        assert_eq!(
            upstream_message(None, b"<html><body>500</body></html>"),
            None
        );
        assert_eq!(
            clean("<b>Task</b>\n\tlocked\u{7}  by <i>admin</i>").as_deref(),
            Some("Task locked by admin")
        );
        let long = clean(&"审".repeat(1000)).unwrap();
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn plain_text_and_legacy_charsets_are_read() {
        let ct = |v: &'static str| Some(HeaderValue::from_static(v));
        let refusal = "参数错误：缺少审批意见";
        assert_eq!(
            upstream_message(ct("text/plain; charset=utf-8").as_ref(), refusal.as_bytes())
                .as_deref(),
            Some(refusal)
        );
        // Without a text/plain type, text that is not JSON is no message: an HTML page is
        // not one.
        assert_eq!(upstream_message(None, refusal.as_bytes()), None);
        assert_eq!(
            upstream_message(ct("text/html").as_ref(), b"<h1>Bad Gateway</h1>"),
            None
        );
        let (gbk, _, _) = encoding_rs::GBK.encode(r#"{"code":1,"msg":"审批单已被撤回"}"#);
        for label in [
            "application/json;charset=GBK",
            "application/json; charset=\"gb2312\"",
        ] {
            assert_eq!(
                upstream_message(ct(label).as_ref(), &gbk).as_deref(),
                Some("审批单已被撤回"),
                "{label}"
            );
        }
        let (gb18030, _, _) = encoding_rs::GB18030.encode("任务不存在");
        assert_eq!(
            upstream_message(ct("TEXT/PLAIN; Charset=GB18030").as_ref(), &gb18030).as_deref(),
            Some("任务不存在")
        );
        let (big5, _, _) = encoding_rs::BIG5.encode(r#"{"message":"審批已完成"}"#);
        assert_eq!(
            upstream_message(ct("application/json; charset=big5").as_ref(), &big5).as_deref(),
            Some("審批已完成")
        );
        // A byte-order mark, as .NET writes one, says UTF-8 whatever the header claims.
        let bom = [&b"\xEF\xBB\xBF"[..], br#"{"message":"locked"}"#].concat();
        assert_eq!(
            upstream_message(ct("application/json; charset=gbk").as_ref(), &bom).as_deref(),
            Some("locked")
        );
        // An unknown charset is read as UTF-8.
        assert_eq!(
            upstream_message(ct("text/plain; charset=x-klingon").as_ref(), b"nope").as_deref(),
            Some("nope")
        );
    }

    #[test]
    fn part_of_a_secret_is_not_passed_on_either() {
        let t = t(Lang::En);
        let refused = |message: &str| {
            Outcome::Refused(Refusal {
                upstream_status: StatusCode::FORBIDDEN,
                message: Some(message.to_owned()),
                business_rule: false,
            })
        };
        // The first 8 bytes of "s3cret-token", echoed as a legacy system cut it.
        for echoed in ["token s3cret-t… is not valid", "bad: cret-tok"] {
            let o = refused(echoed);
            assert_eq!(
                t.message(&o).unwrap(),
                "The approval system refused this action (HTTP 403).",
                "{echoed}"
            );
            assert_eq!(
                t.log_detail(None, &o).unwrap(),
                "<withheld: it holds part of a configured secret>"
            );
        }
        // Seven bytes in a row are ordinary text.
        let o = refused("s3cret- is fine");
        assert_eq!(t.message(&o).unwrap(), "s3cret- is fine");
    }

    #[test]
    fn a_stray_closing_bracket_is_not_passed_on() {
        assert_eq!(
            upstream_message(None, br#"{"message":"amount > 1000"}"#).as_deref(),
            Some("amount 1000")
        );
        assert_eq!(clean(">>").as_deref(), None);
    }

    #[test]
    fn a_wrong_type_is_named_in_both_languages() {
        use crate::callback::Expected;
        for (expected, en, zh) in [
            (Expected::String, "a string", "字符串"),
            (Expected::NonEmptyString, "a non-empty string", "非空字符串"),
            (Expected::ListOfObjects, "a list of objects", "对象列表"),
            (
                Expected::MessageId,
                "a non-negative int64 number or a string of digits",
                "非负 int64 数字或数字字符串",
            ),
        ] {
            let o = Outcome::Rejected(Rejection::Invalid(BodyError::WrongType {
                field: "task_id",
                expected,
            }));
            assert_eq!(
                t(Lang::En).message(&o).unwrap(),
                format!("Invalid callback: field task_id must be {en}.")
            );
            assert_eq!(
                t(Lang::Zh).message(&o).unwrap(),
                format!("回调字段 task_id 应为{zh}")
            );
        }
    }

    #[test]
    fn a_repeated_field_is_refused_in_fixed_words() {
        let o = Outcome::Rejected(Rejection::Invalid(BodyError::DuplicateField));
        assert_eq!(
            t(Lang::En).message(&o).unwrap(),
            "Invalid callback: a field appears more than once."
        );
        assert_eq!(t(Lang::Zh).message(&o).unwrap(), "回调字段重复出现");
    }

    #[test]
    fn an_upstream_message_echoing_a_secret_is_replaced() {
        let o = Outcome::Refused(Refusal {
            upstream_status: StatusCode::FORBIDDEN,
            message: Some("bad token s3cret-token".into()),
            business_rule: false,
        });
        let m = t(Lang::En).message(&o).unwrap();
        assert_eq!(m, "The approval system refused this action (HTTP 403).");
    }

    #[test]
    fn a_secret_across_the_cut_is_not_passed_on_in_part() {
        let body = format!(
            r#"{{"message":"{} s3cret-token"}}"#,
            "x".repeat(MAX_MESSAGE_CHARS - 5)
        );
        let o = Outcome::Refused(Refusal {
            upstream_status: StatusCode::FORBIDDEN,
            message: upstream_message(None, body.as_bytes()),
            business_rule: false,
        });
        let m = t(Lang::En).message(&o).unwrap();
        assert_eq!(m, "The approval system refused this action (HTTP 403).");
        let long = Outcome::Refused(Refusal {
            upstream_status: StatusCode::FORBIDDEN,
            message: upstream_message(
                None,
                format!(r#"{{"msg":"{}"}}"#, "审".repeat(500)).as_bytes(),
            ),
            business_rule: false,
        });
        assert_eq!(
            t(Lang::En).message(&long).unwrap().chars().count(),
            MAX_MESSAGE_CHARS
        );
    }
}
