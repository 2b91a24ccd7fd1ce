//! Feishu's OpenAPI, for the one thing the gateway asks of it: repairing an approver's
//! card after a late verdict (`approval/v1/message/update`).
//!
//! The app's `tenant_access_token` is fetched when first needed, shared by every worker,
//! reused until a few minutes before it expires, and fetched by one caller at a time, so
//! a burst of repairs fetches one token. An answer saying the token is invalid or expired
//! refreshes it once and repeats the call once. Feishu's `code` is read from the body
//! whatever the HTTP status: anything but 0 is a failure, even with 200.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::observe::metrics::{CardRepair, Metrics};
use crate::util::https::{self, Proxy, Route};
use crate::util::text::redact;
use crate::vars::{ConfigError, ConfigErrors, OPENAPI_CA_FILE, OPENAPI_URL};

/// What Feishu answers when the token itself is the problem (invalid, expired, missing).
const TOKEN_ERRORS: &[i64] = &[
    99_991_661, 99_991_663, 99_991_664, 99_991_665, 99_991_668, 99_991_677,
];

/// A token is fetched again this long before Feishu says it expires.
const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// The most one OpenAPI call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Feishu allows this API 50 calls a second per app; the gateway stays under it.
pub const CALLS_PER_SECOND: u32 = 40;

/// How long a repair is retried before it is given up.
pub const REPAIR_FOR: Duration = Duration::from_secs(180);

/// The longest pause between two tries of a repair.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Answers are a few hundred bytes; more is not Feishu.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The Feishu app the gateway speaks for (`APP_ID`, `APP_SECRET`, `OPENAPI_*`).
#[derive(Clone)]
pub struct Settings {
    pub base: Uri,
    pub app_id: String,
    pub app_secret: String,
    /// Trust anchors added to the system's, for a proxy that inspects TLS.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("base", &self.base)
            .field("app_id", &self.app_id)
            .field("app_secret", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The status a card is set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardStatus {
    Approved,
    Rejected,
}

impl CardStatus {
    /// The status for a callback's `action_type`: only approval and rejection say what
    /// the card should show; a custom action's key does not.
    pub fn for_action(action_type: &str) -> Option<Self> {
        match action_type {
            "APPROVE" => Some(Self::Approved),
            "REJECT" => Some(Self::Rejected),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "APPROVED",
            Self::Rejected => "REJECTED",
        }
    }
}

/// Why a call did not succeed. Never carries the token or the secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unreachable(String),
    #[error("no answer within {} s", CALL_TIMEOUT.as_secs())]
    Timeout,
    #[error("Feishu answered HTTP {status}, code {code}: {msg}")]
    Refused { status: u16, code: i64, msg: String },
    #[error("Feishu answered HTTP {status} with a body that is not its JSON")]
    Garbled { status: u16 },
}

impl ApiError {
    /// Whether Feishu answered at all (as opposed to not being reached in time).
    pub fn is_answer(&self) -> bool {
        matches!(self, Self::Refused { .. } | Self::Garbled { .. })
    }

    fn is_token_error(&self) -> bool {
        matches!(self, Self::Refused { code, .. } if TOKEN_ERRORS.contains(code))
    }

    /// Whether trying again later can help: not for a refusal of the request itself.
    fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) | Self::Timeout | Self::Garbled { .. } => true,
            Self::Refused { status, code, .. } => {
                *status == 429 || *status >= 500 || TOKEN_ERRORS.contains(code)
            }
        }
    }
}

struct Token {
    value: String,
    refresh_at: Instant,
}

/// The client. One per gateway, shared by every worker.
pub struct OpenApi {
    client: Client<hyper_rustls::HttpsConnector<Route>, Full<Bytes>>,
    base: String,
    app_id: String,
    app_secret: String,
    token: Mutex<Option<Token>>,
    limiter: governor::DefaultDirectRateLimiter,
}

impl std::fmt::Debug for OpenApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenApi")
            .field("base", &self.base)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl OpenApi {
    /// The client for `settings`: the system's trust roots (plus `OPENAPI_CA_FILE`), and
    /// the proxy the standard variables name for the OpenAPI's host.
    pub fn new(settings: &Settings) -> Result<Self, ConfigErrors> {
        let tls = https::client_config(true, settings.ca_file.as_deref(), None)
            .map_err(|(_, e)| ConfigError::new(OPENAPI_CA_FILE, e.to_string()))?;
        let proxy = Proxy::from_env(&settings.base)
            .map_err(|e| ConfigError::new(OPENAPI_URL, format!("cannot be reached: {e}")))?;
        let connector = https::routed_connector(tls, proxy.as_ref(), CALL_TIMEOUT);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let base = settings.base.to_string().trim_end_matches('/').to_owned();
        let per_second =
            std::num::NonZeroU32::new(CALLS_PER_SECOND).unwrap_or(std::num::NonZeroU32::MIN);
        Ok(Self {
            client,
            base,
            app_id: settings.app_id.clone(),
            app_secret: settings.app_secret.clone(),
            token: Mutex::new(None),
            limiter: governor::RateLimiter::direct(governor::Quota::per_second(per_second)),
        })
    }

    /// The OpenAPI's base URL, as configured.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A token valid for a while yet; a new one when there is none, when it is due, or
    /// when `rejected` is the one held (Feishu said it is no good).
    async fn token(&self, rejected: Option<&str>) -> Result<String, ApiError> {
        let mut held = self.token.lock().await;
        if let Some(token) = held.as_ref()
            && Instant::now() < token.refresh_at
            && rejected != Some(token.value.as_str())
        {
            return Ok(token.value.clone());
        }
        let (value, expires_in) = self.fetch_token().await?;
        let lead = REFRESH_BEFORE.min(expires_in / 2);
        *held = Some(Token {
            value: value.clone(),
            refresh_at: Instant::now() + expires_in - lead,
        });
        Ok(value)
    }

    /// Fetches a new token: the token and how long it lives.
    pub async fn fetch_token(&self) -> Result<(String, Duration), ApiError> {
        let body = serde_json::json!({"app_id": self.app_id, "app_secret": self.app_secret})
            .to_string()
            .into_bytes();
        let answer = self
            .call(
                "/open-apis/auth/v3/tenant_access_token/internal",
                None,
                body,
            )
            .await?;
        let token = answer
            .get("tenant_access_token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Garbled { status: 200 })?;
        let expire = answer
            .get("expire")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(7200);
        Ok((token.to_owned(), Duration::from_secs(expire.max(60))))
    }

    /// Sets the card of `message_id` to `status`, refreshing the token once if Feishu
    /// says it is no good.
    pub async fn update_card(&self, message_id: &str, status: CardStatus) -> Result<(), ApiError> {
        let body = serde_json::json!({"message_id": message_id, "status": status.as_str()})
            .to_string()
            .into_bytes();
        let token = self.token(None).await?;
        let path = "/open-apis/approval/v1/message/update";
        match self.call(path, Some(&token), body.clone()).await {
            Err(e) if e.is_token_error() => {
                let fresh = self.token(Some(&token)).await?;
                self.call(path, Some(&fresh), body).await.map(|_| ())
            }
            other => other.map(|_| ()),
        }
    }

    /// One POST of a JSON body, within Feishu's rate and [`CALL_TIMEOUT`]; its JSON
    /// answer when `code` is 0.
    async fn call(
        &self,
        path: &str,
        bearer: Option<&str>,
        body: Vec<u8>,
    ) -> Result<serde_json::Value, ApiError> {
        self.limiter.until_ready().await;
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .map_err(|e: http::uri::InvalidUri| ApiError::Unreachable(e.to_string()))?;
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(crate::upstream::USER_AGENT),
        );
        if let Some(token) = bearer {
            let mut value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| ApiError::Garbled { status: 200 })?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                ApiError::Unreachable(self.scrub(&crate::upstream::error_chain(&e)))
            })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| ApiError::Unreachable(self.scrub(&e.to_string())))?
                .to_bytes();
            Ok::<_, ApiError>((status, body))
        };
        let (status, body) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| ApiError::Timeout)??;
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| ApiError::Garbled { status })?;
        let code = answer.get("code").and_then(serde_json::Value::as_i64);
        match code {
            Some(0) if (200..300).contains(&status) => Ok(answer),
            Some(code) => {
                let msg = answer
                    .get("msg")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default();
                Err(ApiError::Refused {
                    status,
                    code,
                    msg: self.scrub(&crate::util::text::clip(msg)),
                })
            }
            None => Err(ApiError::Garbled { status }),
        }
    }

    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        redact(&mut text, std::slice::from_ref(&self.app_secret));
        text
    }

    /// Repairs a card in the background: retried with backoff for [`REPAIR_FOR`], logged
    /// and counted. Never waited for by a callback.
    pub fn repair(self: &Arc<Self>, card: Card, metrics: &Arc<Metrics>) {
        let (api, metrics) = (Arc::clone(self), Arc::clone(metrics));
        tokio::spawn(async move {
            let started = Instant::now();
            let mut pause = Duration::from_secs(1);
            let mut tries = 0u32;
            loop {
                tries += 1;
                match api.update_card(&card.message_id, card.status).await {
                    Ok(()) => {
                        metrics.count_card_repair(CardRepair::Repaired);
                        tracing::info!(
                            idempotency_key = card.key,
                            message_id = card.message_id,
                            status = card.status.as_str(),
                            tries,
                            "card repaired after a late acceptance"
                        );
                        return;
                    }
                    Err(e) if e.is_transient() && started.elapsed() + pause < REPAIR_FOR => {
                        tracing::debug!(idempotency_key = card.key, error = %e, "card repair will be tried again");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_PAUSE);
                    }
                    Err(e) => {
                        metrics.count_card_repair(CardRepair::Failed);
                        tracing::warn!(
                            idempotency_key = card.key,
                            message_id = card.message_id,
                            status = card.status.as_str(),
                            tries,
                            error = %e,
                            "card repair failed: the approver's card still shows the 504"
                        );
                        return;
                    }
                }
            }
        });
    }
}

/// A card to repair: which, to what, and the decision's key for the log.
#[derive(Debug, Clone)]
pub struct Card {
    pub message_id: String,
    pub status: CardStatus,
    pub key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_approval_and_rejection_set_a_card_status() {
        assert_eq!(
            CardStatus::for_action("APPROVE"),
            Some(CardStatus::Approved)
        );
        assert_eq!(CardStatus::for_action("REJECT"), Some(CardStatus::Rejected));
        assert_eq!(CardStatus::for_action("TRANSFER"), None);
        assert_eq!(CardStatus::for_action("approve"), None);
    }

    #[test]
    fn token_errors_are_worth_a_refresh_and_refusals_are_final() {
        let refused = |status, code| ApiError::Refused {
            status,
            code,
            msg: String::new(),
        };
        assert!(refused(400, 99_991_663).is_token_error());
        assert!(refused(200, 99_991_668).is_token_error());
        assert!(!refused(200, 0).is_token_error());
        assert!(refused(429, 99_991_400).is_transient());
        assert!(refused(502, 1).is_transient());
        assert!(
            !refused(400, 1_390_001).is_transient(),
            "a bad request stays bad"
        );
        assert!(ApiError::Timeout.is_transient());
    }
}
