//! The facts of one callback, gathered for its one log line.

use std::time::Duration;

use http::{HeaderValue, StatusCode};

use crate::callback::Summary;
use crate::observe::trace::Trace;
use crate::outcome::Outcome;
use crate::util::text::bounded;

/// The facts of one callback, gathered for its log line.
#[derive(Default)]
pub(super) struct Record {
    pub(super) summary: Option<Summary>,
    pub(super) upstream_status: Option<StatusCode>,
    pub(super) upstream_elapsed: Option<Duration>,
    /// Requests sent or tried to the legacy system, when one was.
    pub(super) attempts: Option<u32>,
    pub(super) detail: Option<String>,
    /// The request's body was read to its end, so its connection can carry another.
    pub(super) body_read: bool,
    /// A copy answered with what another request's exchange came to: that request's id,
    /// or [`ANOTHER_REPLICA`].
    pub(super) delivered_by: Option<String>,
}

/// Who delivered a copy's decision when it was not a request of this replica.
pub(super) const ANOTHER_REPLICA: &str = "another replica";

impl Record {
    /// Notes a copy answered from the shared memory while another replica's exchange
    /// went on (`duplicate` already says the rest).
    pub(super) fn joined_elsewhere(&mut self, outcome: &Outcome) {
        if matches!(outcome, Outcome::UpstreamTimedOut) {
            self.delivered_by = Some(ANOTHER_REPLICA.to_owned());
        }
    }

    /// The outcome as logged and counted: a copy that joined another request's exchange
    /// is a `duplicate` whatever that exchange came to, never an upstream error of its own.
    pub(super) fn label(&self, outcome: &Outcome) -> &'static str {
        if self.delivered_by.is_some() {
            Outcome::Duplicate.label()
        } else {
            outcome.label()
        }
    }
}

/// Milliseconds to the microsecond: `2.226`, not the `2.2260079999999998` that
/// `as_secs_f64() * 1000.0` prints.
pub(super) fn millis(d: Duration) -> f64 {
    // Microseconds fit an f64 exactly for 285 years; the division rounds once.
    d.as_micros() as f64 / 1000.0
}

macro_rules! callback_line {
    ($level:ident, $outcome:expr, $status:expr, $id:expr, $trace_id:expr, $elapsed:expr, $r:expr) => {{
        // A copy says what the exchange it joined came to, and whose it was.
        let joined = $r.delivered_by.as_ref().map(|_| $outcome.label());
        let s = $r.summary.as_ref();
        tracing::$level!(
            target: crate::observe::logging::CALLBACK_TARGET,
            request_id = $id,
            trace_id = $trace_id,
            approval_code = s.map(|s| bounded(s.approval_code())),
            instance_id = s.and_then(|s| s.instance_id()).map(bounded),
            task_id = s.and_then(|s| s.task_id()).map(bounded),
            message_id = s.and_then(|s| s.message_id()).map(bounded),
            action = s.map(|s| bounded(s.action_type())),
            outcome = $r.label($outcome),
            joined,
            delivered_by = $r.delivered_by.as_deref(),
            status = $status.as_u16(),
            upstream_status = $r.upstream_status.map(|s| s.as_u16()),
            duration_ms = millis($elapsed),
            upstream_ms = $r.upstream_elapsed.map(millis),
            attempts = $r.attempts,
            detail = $r.detail.as_deref(),
            "callback"
        )
    }};
}

pub(super) fn log(
    outcome: &Outcome,
    status: StatusCode,
    request_id: &HeaderValue,
    trace: &Trace,
    elapsed: Duration,
    record: &Record,
) {
    let id = request_id.to_str().unwrap_or("-");
    let trace_id = trace.trace_id_hex();
    let trace_id = trace_id.as_str();
    if outcome.is_upstream_failure() && record.delivered_by.is_none() {
        callback_line!(warn, outcome, status, id, trace_id, elapsed, record)
    } else {
        callback_line!(info, outcome, status, id, trace_id, elapsed, record)
    }
}
