//! How a callback ended: the one type every step of the path returns into, and every
//! failure it can carry. A leaf: it uses nothing else of the crate, so every step can
//! use it.
//!
//! Each variant says who said no. The gateway itself turns a request away
//! ([`Outcome::BadRequest`]) or asks for it again later ([`Outcome::TryLater`]);
//! the legacy system refuses it ([`Refusal`]), cannot be reached ([`UpstreamError`]), or
//! stays silent; or the gateway has a bug ([`Outcome::Internal`]). The failures a request
//! can be turned away for ([`AuthFailure`], [`EnvelopeError`], [`BodyError`],
//! [`JsonError`]) are found by `callback`; `respond` turns an outcome into what Feishu
//! receives.

use http::StatusCode;

/// How one callback ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The legacy system accepted the decision.
    Delivered,
    /// The same decision was already delivered; answered without calling upstream.
    Duplicate,
    /// The gateway turned the request away as not a callback it can take. Nothing reached
    /// the legacy system, and the connection ends after the answer: a client without the
    /// token must not be able to hold one with requests refused one by one.
    BadRequest(BadRequest),
    /// The gateway cannot take the callback now; Feishu or the approver tries again.
    TryLater(TryLater),
    /// The legacy system answered, but not with acceptance.
    UpstreamRefused(Refusal),
    /// The legacy system could not be reached, or dropped the exchange.
    UpstreamUnreachable(UpstreamError),
    /// The legacy system had not answered by the time Feishu had to be; with a late
    /// exchange (`LATE_VERDICT_MS`) it is still being waited for.
    UpstreamTimedOut,
    /// The decision was sent to the legacy system and its answer never came: it may have
    /// taken effect. Not delivered again while its exchange may still be running.
    Uncertain,
    /// A bug: the gateway panicked while handling the callback. A delivery already started
    /// runs on and settles its duplicate memory, so whether it took effect is what the
    /// approver is asked to check.
    Internal,
}

/// Why the gateway turned a request away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadRequest {
    NotFound,
    MethodNotAllowed,
    /// Longer than `MAX_BODY_BYTES`.
    TooLarge,
    /// The client took too long to send its body.
    SlowBody,
    /// The body could not be read (the client went away mid-body).
    Unreadable,
    /// The body came in more pieces than any client but an attacker sends.
    Fragmented,
    /// Not proved to come from Feishu.
    Unauthorized(AuthFailure),
    /// From Feishu, but not a callback the legacy system could use.
    Invalid(BodyError),
}

/// Why the gateway cannot take a callback now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryLater {
    /// The gateway is draining before it exits.
    ShuttingDown,
    /// A verified callback over the global or the approver's rate.
    RateLimited { retry_after_secs: u64 },
    /// The shared duplicate memory cannot be reached and `REDIS_FAILURE=closed`:
    /// delivering could repeat a decision another replica already delivered.
    MemoryUnavailable,
}

impl Outcome {
    /// A short, bounded label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Duplicate => "duplicate",
            Self::BadRequest(r) => match r {
                BadRequest::NotFound => "not_found",
                BadRequest::MethodNotAllowed => "method_not_allowed",
                BadRequest::TooLarge => "too_large",
                BadRequest::SlowBody => "slow_body",
                BadRequest::Unreadable => "unreadable",
                BadRequest::Fragmented => "fragmented",
                BadRequest::Unauthorized(_) => "unauthorized",
                BadRequest::Invalid(_) => "invalid",
            },
            Self::TryLater(t) => match t {
                TryLater::ShuttingDown => "shutting_down",
                TryLater::RateLimited { .. } => "rate_limited",
                TryLater::MemoryUnavailable => "memory_unavailable",
            },
            Self::UpstreamRefused(r) if r.business_rule => "upstream_not_ok",
            Self::UpstreamRefused(_) => "upstream_refused",
            Self::UpstreamUnreachable(_) => "upstream_unreachable",
            Self::UpstreamTimedOut => "upstream_timeout",
            Self::Uncertain => "uncertain",
            Self::Internal => "internal",
        }
    }

    /// What an exchange that ended with this outcome leaves of its decision, `sent` saying
    /// whether any request of it may have reached the legacy system.
    pub fn fate(&self, sent: bool) -> Fate {
        match self {
            Self::Delivered | Self::Duplicate => Fate::Delivered,
            _ if !sent => Fate::Free,
            // An answer, even a refusal, is a verdict: a retry may go through.
            Self::UpstreamRefused(_) => Fate::Free,
            Self::UpstreamUnreachable(UpstreamError::Connect) => Fate::Free,
            _ => Fate::Uncertain,
        }
    }

    /// Whether the connection ends after this answer: the request was turned away, or the
    /// gateway is draining. A verified callback asked to try later keeps its connection,
    /// which Feishu retries on.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Self::BadRequest(_) | Self::TryLater(TryLater::ShuttingDown)
        )
    }

    /// Whether the legacy system is why the callback failed: the operator's log line is a
    /// warning, and the upstream error metric counts it.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            Self::UpstreamRefused(_) | Self::UpstreamUnreachable(_) | Self::UpstreamTimedOut
        )
    }
}

/// What the duplicate memory keeps of a decision once its exchange is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Accepted: copies are answered 200 for `DEDUP_TTL_SECS`.
    Delivered,
    /// Sent, never answered: copies are answered 504 until `LATE_VERDICT_MS` after the
    /// decision arrived, and not delivered again.
    Uncertain,
    /// Never sent, or refused: the next copy is delivered.
    Free,
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

/// Why an `encrypt` value could not be opened.
///
/// The variants exist for logs and tests; Feishu is told the same generic
/// thing for all of them so that a guesser learns nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("encrypt is not canonical standard base64")]
    NotBase64,
    #[error("encrypt decodes to fewer than 32 bytes")]
    TooShort,
    #[error("encrypt decodes to a length that is not a multiple of 16")]
    NotBlockAligned,
    #[error("encrypt does not decrypt to valid PKCS#7 padding (wrong key?)")]
    BadPadding,
}

/// Why a body is not an acceptable callback object. Each variant names what is wrong
/// so the approver (and the operator reading logs) can tell which field it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("field {0} is missing")]
    Missing(&'static str),
    #[error("field {field} must be {expected}")]
    WrongType {
        field: &'static str,
        expected: Expected,
    },
}

/// What a field's value must be, said in either language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    String,
    NonEmptyString,
    ListOfObjects,
    MessageId,
}

impl Expected {
    pub fn zh(self) -> &'static str {
        match self {
            Self::String => "字符串",
            Self::NonEmptyString => "非空字符串",
            Self::ListOfObjects => "对象列表",
            Self::MessageId => "非负 int64 数字或数字字符串",
        }
    }
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::String => "a string",
            Self::NonEmptyString => "a non-empty string",
            Self::ListOfObjects => "a list of objects",
            Self::MessageId => "a non-negative int64 number or a string of digits",
        })
    }
}

/// The deepest nesting accepted. Feishu's callbacks are three levels deep at
/// most; a deeper body could only be meant to exhaust a parser's stack,
/// the gateway's or the legacy system's.
pub const MAX_DEPTH: usize = 32;

/// The most fields the callback object may have. Feishu's has about a dozen;
/// the cap keeps the duplicate check (each key against the earlier ones)
/// bounded per field, so refusing a body of many keys costs time linear in
/// its size.
pub const MAX_FIELDS: usize = 64;

/// Why bytes are not a JSON object the gateway reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("body is not valid JSON")]
    NotJson,
    #[error("body is not a JSON object")]
    NotObject,
    #[error("body is nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
    #[error("body has more than {MAX_FIELDS} fields")]
    TooManyFields,
    /// Which field is not said: its name is the caller's text, and nothing the
    /// caller chose is echoed before authentication.
    #[error("a field appears more than once")]
    DuplicateField,
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
