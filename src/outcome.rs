//! How a callback ended: the one type every step of the path returns into.
//!
//! Each variant says who said no. The gateway itself turns a request away
//! ([`Outcome::BadRequest`]) or asks for it again later ([`Outcome::TryLater`]);
//! the legacy system refuses it, cannot be reached, or stays silent (the
//! `Upstream*` variants); or the gateway has a bug ([`Outcome::Internal`]).
//! Each step owns the details of its own failures ([`AuthFailure`] in
//! [`crate::verify`], [`BodyError`] in [`crate::callback`], [`Refusal`] and
//! [`UpstreamError`] in [`crate::upstream`]); [`crate::respond`] turns an
//! outcome into what Feishu receives.

use crate::callback::BodyError;
use crate::upstream::{Refusal, UpstreamError};
use crate::verify::AuthFailure;

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
    /// The legacy system did not answer within the time Feishu allows.
    UpstreamTimedOut,
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
            Self::Internal => "internal",
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
