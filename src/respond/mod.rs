//! The one place that decides what Feishu receives.
//!
//! Every way a callback can end is an [`Outcome`]; [`Translator::respond`] turns
//! it into the status and `{"message": ..., "without_prefix": "true"}` body that
//! Feishu shows the approver. Nothing else in the code picks a status code.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::outcome::{BadRequest, BodyError, JsonError, Outcome, Refusal, TryLater, UpstreamError};
use crate::util::text::{clip, fold, redact};

/// The shortest run of a secret's bytes that counts as giving it away. Shorter runs turn up
/// in ordinary text by chance; a token or key of 32 characters has 25 runs of this length.
pub const SECRET_FRAGMENT_BYTES: usize = 8;

/// Longest detail a callback's log line carries, in characters.
pub const MAX_LOG_DETAIL_CHARS: usize = 400;

impl Outcome {
    /// The status Feishu receives. It lives here, beside the messages, because this module
    /// alone decides what Feishu receives.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Delivered | Self::Duplicate => StatusCode::OK,
            Self::BadRequest(r) => match r {
                BadRequest::NotFound => StatusCode::NOT_FOUND,
                BadRequest::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
                BadRequest::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                BadRequest::SlowBody => StatusCode::REQUEST_TIMEOUT,
                BadRequest::Unreadable | BadRequest::Fragmented => StatusCode::BAD_REQUEST,
                BadRequest::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                BadRequest::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            },
            Self::TryLater(TryLater::RateLimited { .. }) => StatusCode::TOO_MANY_REQUESTS,
            Self::TryLater(TryLater::ShuttingDown | TryLater::MemoryUnavailable) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // Feishu treats any status above 400 as failure; below 401 there is
            // nothing faithful to pass on, so it becomes a gateway error.
            Self::UpstreamRefused(r) if (401..=599).contains(&r.upstream_status.as_u16()) => {
                r.upstream_status
            }
            Self::UpstreamRefused(_) | Self::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimedOut | Self::Uncertain => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

const SUCCESS_BODY: &[u8] = br#"{"code":0,"msg":"success"}"#;

/// Turns outcomes into Feishu's responses in the configured language.
#[derive(Clone)]
pub struct Translator {
    lang: Lang,
    /// Whether an exchange outlives a 504 (`LATE_VERDICT_MS`): the approver is then told
    /// the action is still being submitted, not that its fate is unknown.
    late_exchange: bool,
    /// Whether a late acceptance repairs the approver's card (`APP_ID`).
    card_repair: bool,
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
            late_exchange: false,
            card_repair: false,
            secrets,
            fragments: std::sync::Arc::new(fragments),
        }
    }

    /// The same, telling approvers answered 504 that the exchange goes on.
    pub fn with_late_exchange(mut self, late_exchange: bool) -> Self {
        self.late_exchange = late_exchange;
        self
    }

    /// The same, telling approvers answered 504 that their card will update by itself.
    pub fn with_card_repair(mut self, card_repair: bool) -> Self {
        self.card_repair = card_repair;
        self
    }

    /// The message Feishu shows for an outcome, `None` on success.
    pub fn message(&self, outcome: &Outcome) -> Option<String> {
        let zh = self.lang == Lang::Zh;
        let text = match outcome {
            Outcome::Delivered | Outcome::Duplicate => return None,
            Outcome::BadRequest(r) => match r {
                BadRequest::NotFound => pick(
                    zh,
                    "回调地址配置有误，请联系管理员",
                    "No callback is served at this path; contact the administrator.",
                ),
                BadRequest::MethodNotAllowed => {
                    pick(zh, "回调只接受 POST 请求", "Callbacks must use POST.")
                }
                BadRequest::Unauthorized(_) => pick(
                    zh,
                    "回调请求校验失败，请联系管理员检查回调配置",
                    "The callback could not be verified; contact the administrator to check the callback settings.",
                ),
                BadRequest::Invalid(e) => {
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
                BadRequest::TooLarge => pick(
                    zh,
                    "回调请求体过大，请联系管理员",
                    "The callback body is too large; contact the administrator.",
                ),
                BadRequest::SlowBody => pick(
                    zh,
                    "回调请求读取超时，请稍后重试",
                    "The callback body arrived too slowly, please try again.",
                ),
                BadRequest::Unreadable => pick(
                    zh,
                    "回调请求体读取失败，请稍后重试",
                    "The callback body could not be read, please try again.",
                ),
                BadRequest::Fragmented => pick(
                    zh,
                    "回调请求体分片过多",
                    "The callback body came in too many pieces.",
                ),
            },
            Outcome::TryLater(t) => match t {
                TryLater::RateLimited { .. } => pick(
                    zh,
                    "审批操作过于频繁，请稍后重试",
                    "Too many approval actions, please try again shortly.",
                ),
                TryLater::ShuttingDown => pick(
                    zh,
                    "审批网关正在重启，请稍后重试",
                    "The approval gateway is restarting, please try again shortly.",
                ),
                TryLater::MemoryUnavailable => pick(
                    zh,
                    "审批网关暂时无法确认此操作是否已提交，请稍后重试",
                    "The approval gateway cannot check whether this action was already submitted, please try again shortly.",
                ),
            },
            Outcome::Internal => pick(
                zh,
                "审批网关处理此操作时出错，请稍后刷新确认审批结果",
                "The approval gateway failed on this action; refresh to check whether it took effect.",
            ),
            Outcome::UpstreamRefused(r) => {
                let code = r.upstream_status.as_u16();
                // A redirect's body ("Found. Redirecting to /login…") speaks to a browser,
                // not to the approver: the gateway is pointed at the wrong place.
                let redirected = r.upstream_status.is_redirection();
                if let Some(own) = r
                    .message
                    .as_deref()
                    .filter(|m| !redirected && !self.leaks_secret(m))
                {
                    return Some(clip(own));
                }
                return Some(match (zh, r.business_rule) {
                    (true, true) => "审批系统未确认此操作，请稍后重试".to_owned(),
                    (false, true) => {
                        "The approval system did not confirm this action, please try again later."
                            .to_owned()
                    }
                    (true, false) if redirected => format!(
                        "审批网关配置有误：审批系统将请求重定向（HTTP {code}），请联系管理员"
                    ),
                    (false, false) if redirected => format!(
                        "The approval gateway is misconfigured: the approval system redirected \
                         the request (HTTP {code}); contact the administrator."
                    ),
                    (true, false) if code >= 500 => {
                        format!("审批系统出错（HTTP {code}），请稍后刷新确认审批结果")
                    }
                    (false, false) if code >= 500 => format!(
                        "The approval system had an error (HTTP {code}); refresh later to check \
                         whether the action took effect."
                    ),
                    (true, false) => format!("审批系统拒绝了此操作（HTTP {code}）"),
                    (false, false) => {
                        format!("The approval system refused this action (HTTP {code}).")
                    }
                });
            }
            Outcome::UpstreamUnreachable(UpstreamError::Connect) => pick(
                zh,
                "审批系统暂时无法访问，请稍后重试",
                "The approval system is unavailable, please try again later.",
            ),
            // The request may have been received: only a refresh tells whether it took effect.
            Outcome::UpstreamUnreachable(UpstreamError::Dropped) => pick(
                zh,
                "与审批系统的连接中断，请稍后刷新确认审批结果",
                "The connection to the approval system broke off; refresh to check whether the action took effect.",
            ),
            Outcome::UpstreamTimedOut if self.late_exchange && self.card_repair => pick(
                zh,
                "审批操作仍在提交中，审批系统确认后卡片会自动更新",
                "The action is still being submitted to the approval system; the card will update by itself once it answers.",
            ),
            // The exchange goes on (`LATE_VERDICT_MS`): a tap meanwhile joins it.
            Outcome::UpstreamTimedOut if self.late_exchange => pick(
                zh,
                "审批操作仍在提交中，请稍后刷新查看审批结果",
                "The action is still being submitted to the approval system; refresh shortly to see the result.",
            ),
            Outcome::UpstreamTimedOut => pick(
                zh,
                "审批系统响应超时，请稍后刷新确认审批结果",
                "The approval system did not answer in time; refresh to check whether the action took effect.",
            ),
            Outcome::Uncertain => pick(
                zh,
                "此操作已提交但审批系统未确认，请刷新确认是否已生效，再决定是否重试",
                "This action was submitted but the approval system never confirmed it; refresh to check whether it took effect before trying again.",
            ),
        };
        Some(text.to_owned())
    }

    /// The whole response for an outcome.
    pub fn respond(&self, outcome: &Outcome) -> Response<Full<Bytes>> {
        self.respond_in(outcome, http::HeaderMap::new())
    }

    /// The same, its headers written into `headers` once cleared: the request's map,
    /// whose room then serves the answer.
    pub fn respond_in(
        &self,
        outcome: &Outcome,
        mut headers: http::HeaderMap,
    ) -> Response<Full<Bytes>> {
        let status = outcome.status();
        let body = match self.message(outcome) {
            None => Bytes::from_static(SUCCESS_BODY),
            Some(message) => Bytes::from(error_body(&message)),
        };
        headers.clear();
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match outcome {
            Outcome::TryLater(TryLater::RateLimited { retry_after_secs }) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from((*retry_after_secs).max(1)),
                );
            }
            Outcome::BadRequest(BadRequest::MethodNotAllowed) => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            Outcome::TryLater(TryLater::ShuttingDown) => {
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
            Outcome::UpstreamRefused(Refusal {
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
        redact(&mut text, &self.secrets);
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
        BodyError::Json(JsonError::NotJson) => "回调内容不是有效的 JSON".to_owned(),
        BodyError::Json(JsonError::NotObject) => "回调内容不是 JSON 对象".to_owned(),
        BodyError::Json(JsonError::TooDeep) => "回调内容嵌套层级过深".to_owned(),
        BodyError::Json(JsonError::TooManyFields) => {
            format!("回调字段超过 {} 个", crate::outcome::MAX_FIELDS)
        }
        BodyError::Json(JsonError::DuplicateField) => "回调字段重复出现".to_owned(),
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

/// Language of the gateway's own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::AuthFailure;
    use crate::upstream::answer;
    use crate::util::text::MAX_MESSAGE_CHARS;

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
            Outcome::UpstreamRefused(Refusal {
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
        assert_eq!(
            Outcome::UpstreamUnreachable(UpstreamError::Connect).status(),
            502
        );
        assert_eq!(Outcome::UpstreamTimedOut.status(), 504);
        assert_eq!(Outcome::Uncertain.status(), 504);
        assert_eq!(
            Outcome::BadRequest(BadRequest::Invalid(BodyError::Json(JsonError::NotJson))).status(),
            422
        );
    }

    #[test]
    fn every_error_body_is_feishu_shaped() {
        let outcomes = [
            Outcome::BadRequest(BadRequest::Unauthorized(AuthFailure::WrongToken)),
            Outcome::BadRequest(BadRequest::Invalid(BodyError::Missing("user_id"))),
            Outcome::BadRequest(BadRequest::TooLarge),
            Outcome::TryLater(TryLater::RateLimited {
                retry_after_secs: 0,
            }),
            Outcome::BadRequest(BadRequest::NotFound),
            Outcome::BadRequest(BadRequest::MethodNotAllowed),
            Outcome::TryLater(TryLater::ShuttingDown),
            Outcome::Internal,
            Outcome::UpstreamUnreachable(UpstreamError::Dropped),
            Outcome::UpstreamTimedOut,
            Outcome::Uncertain,
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
                if matches!(o, Outcome::TryLater(TryLater::RateLimited { .. })) {
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
    fn part_of_a_secret_is_not_passed_on_either() {
        let t = t(Lang::En);
        let refused = |message: &str| {
            Outcome::UpstreamRefused(Refusal {
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
    fn a_wrong_type_is_named_in_both_languages() {
        use crate::outcome::Expected;
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
            let o = Outcome::BadRequest(BadRequest::Invalid(BodyError::WrongType {
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
        let o = Outcome::BadRequest(BadRequest::Invalid(BodyError::Json(
            JsonError::DuplicateField,
        )));
        assert_eq!(
            t(Lang::En).message(&o).unwrap(),
            "Invalid callback: a field appears more than once."
        );
        assert_eq!(t(Lang::Zh).message(&o).unwrap(), "回调字段重复出现");
    }

    #[test]
    fn an_upstream_message_echoing_a_secret_is_replaced() {
        let o = Outcome::UpstreamRefused(Refusal {
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
        let o = Outcome::UpstreamRefused(Refusal {
            upstream_status: StatusCode::FORBIDDEN,
            message: answer::message(None, body.as_bytes()),
            business_rule: false,
        });
        let m = t(Lang::En).message(&o).unwrap();
        assert_eq!(m, "The approval system refused this action (HTTP 403).");
        let long = Outcome::UpstreamRefused(Refusal {
            upstream_status: StatusCode::FORBIDDEN,
            message: answer::message(
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
