//! The path of one callback, top to bottom: route, limit, read, verify,
//! deduplicate, forward, translate, answer, log.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version, header,
};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use tokio::time::{Instant, timeout_at};
use tokio_util::task::TaskTracker;

use crate::callback::{Callback, Decision, Summary};
use crate::config::Config;
use crate::dedup::{Admission, Dedup, Ticket};
use crate::limit::Limits;
use crate::metrics::Metrics;
use crate::outcome::{BadRequest, Outcome, TryLater};
use crate::redis_dedup::{self, SharedMemory};
use crate::respond::Translator;
use crate::telemetry::{CallbackSpan, Telemetry};
use crate::text::bounded;
use crate::trace::Trace;
use crate::upstream::{Exchange, REQUEST_ID, Upstream};
use crate::verify::Verifier;

/// `UPSTREAM_HEADERS` values shorter than this (`X-Tenant=42`) are not looked for in the
/// legacy system's messages: no credential is that short, and ordinary text holds them.
const MIN_HEADER_SECRET_LEN: usize = 6;

/// Bytes of request bodies held at once, every connection together. Each request reserves
/// its declared length (or `MAX_BODY_BYTES` when it declares none) before its body is
/// read, and keeps it until answered; one that cannot within its read deadline is refused
/// as too slow. So the memory bodies take does not grow with the connections open.
pub const BODY_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// A callback body is a few KiB; a client slower than this is not Feishu.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Marks an answer after which its connection is closed (HTTP/1) or sent GOAWAY
/// (HTTP/2): the request was refused before a verified callback, or its body was not read.
#[derive(Debug, Clone, Copy)]
pub struct CloseConnection;

/// Readiness and shutdown, shared with the admin listener and the server.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    shutting_down: AtomicBool,
}

impl Health {
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.is_shutting_down()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// Everything one callback needs, built once from the configuration.
#[derive(Debug)]
pub struct Gateway {
    path: String,
    max_body: usize,
    upstream_timeout: Duration,
    /// `ANSWER_WITHIN_MS`: the upstream's answer must come by then for
    /// Feishu's (or Lark's) to be in time.
    answer_within: Duration,
    verifier: Verifier,
    /// Each worker thread delivers through its own copy (see [`Upstream::for_worker`]).
    upstream: Upstream,
    translator: Translator,
    limits: Limits,
    dedup: Option<Dedup>,
    /// The memory shared with the other replicas, consulted after `dedup`;
    /// shared with the detached deliveries, which settle their claims.
    shared: Option<Arc<SharedMemory>>,
    request_ids: RequestIds,
    /// [`BODY_BUDGET_BYTES`], in KiB.
    body_budget: Arc<tokio::sync::Semaphore>,
    /// Callback connections served at once (`FEISHU_GATE_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// Worker threads (`FEISHU_GATE_WORKERS`); `None` is one per available CPU.
    pub workers: Option<usize>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Deliveries run as their own tasks so a client hanging up cannot cancel
    /// one half-way; shutdown waits for them here.
    pub deliveries: TaskTracker,
    /// The span exporter, when OpenTelemetry's variables configure one.
    telemetry: Option<Arc<Telemetry>>,
}

/// Who a callback is: its request id, its trace, and its span when spans are exported.
type Ids<'a> = (&'a HeaderValue, &'a Trace, Option<&'a CallbackSpan>);

/// What a verified callback sends to the legacy system, and when.
struct Outbound {
    body: Vec<u8>,
    decision: Decision,
    /// When it was ready to send: the upstream's share of the time counts from here.
    verified_at: Instant,
    /// When the upstream's answer must have come, for Feishu's to be in time.
    deadline: Instant,
}

/// The facts of one callback, gathered for its log line.
#[derive(Default)]
struct Record {
    summary: Option<Summary>,
    upstream_status: Option<StatusCode>,
    upstream_elapsed: Option<Duration>,
    /// Requests sent or tried to the legacy system, when one was.
    attempts: Option<u32>,
    detail: Option<String>,
    /// The request's body was read to its end, so its connection can carry another.
    body_read: bool,
}

impl Gateway {
    pub fn new(config: &Config) -> Result<Self, crate::config::ConfigErrors> {
        let mut secrets: Vec<String> = config.tokens.plain().to_vec();
        secrets.extend_from_slice(config.keys.plain());
        secrets.extend(config.upstream_headers.0.iter().flat_map(|(_, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            // `Bearer abc…`: an echo of the credentials alone gives away as much.
            let credentials = value
                .split_once(' ')
                .map(|(_, c)| c.trim().to_owned())
                .filter(|c| c.len() >= MIN_HEADER_SECRET_LEN);
            [Some(value), credentials]
                .into_iter()
                .flatten()
                .filter(|s| s.len() >= MIN_HEADER_SECRET_LEN)
        }));
        let mut shared = None;
        if let (Some(redis), Some(ttl)) = (&config.redis, config.dedup_ttl) {
            secrets.extend_from_slice(redis.url.secrets());
            match SharedMemory::new(redis, ttl) {
                Ok(memory) => shared = Some(Arc::new(memory)),
                Err((variable, problem)) => {
                    return Err(crate::config::ConfigErrors(vec![
                        crate::config::ConfigError {
                            variable: variable.to_owned(),
                            problem,
                        },
                    ]));
                }
            }
        }
        Ok(Self {
            path: config.callback_path.clone(),
            max_body: config.max_body_bytes,
            upstream_timeout: config.upstream_timeout,
            answer_within: config.answer_within,
            verifier: Verifier::from_config(config),
            upstream: Upstream::new(config)?,
            translator: Translator::new(config.lang, secrets),
            limits: Limits::new(config.rate_limit, config.user_rate_limit),
            dedup: config.dedup_ttl.map(Dedup::new),
            shared,
            request_ids: RequestIds::default(),
            body_budget: Arc::new(tokio::sync::Semaphore::new(BODY_BUDGET_BYTES / 1024)),
            max_connections: config.max_connections,
            workers: config.workers,
            health: Arc::default(),
            metrics: Arc::default(),
            deliveries: TaskTracker::new(),
            telemetry: None,
        })
    }

    /// Exports a span for every callback through `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(Arc::new(telemetry));
        self
    }

    /// The span exporter, to flush at shutdown.
    pub fn telemetry(&self) -> Option<&Arc<Telemetry>> {
        self.telemetry.as_ref()
    }

    /// Ready to serve: `/readyz` and `feishu_gate_ready` say so together.
    pub fn set_ready(&self) {
        self.health.set_ready();
        self.metrics.ready.set(1);
    }

    /// Shutdown has begun: new callbacks are refused, and readiness fails at once.
    pub fn begin_shutdown(&self) {
        self.health.begin_shutdown();
        self.metrics.ready.set(0);
    }

    /// Periodic upkeep: forget idle approvers' rate-limit state.
    pub fn housekeeping(&self) {
        self.limits.forget_idle();
    }

    /// The upstream for one worker thread, with its own connection pool.
    pub fn upstream_for_worker(&self) -> Arc<Upstream> {
        Arc::new(self.upstream.for_worker())
    }

    /// Answers one request on the callback port, delivering through `upstream`
    /// (the calling worker's, from [`Self::upstream_for_worker`]).
    pub async fn handle<B>(
        &self,
        upstream: &Arc<Upstream>,
        request: Request<B>,
    ) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let _in_flight = InFlight::new(&self.metrics);
        let (request_id, mut trace) = self.request_ids.for_request(request.headers());
        let span = self.telemetry.as_ref().map(|t| t.callback(&mut trace));
        let keeps_alive_by_header = request.version() <= Version::HTTP_11;
        let mut record = Record {
            body_read: request.body().is_end_stream(),
            ..Record::default()
        };
        let processed = {
            let processing = std::pin::pin!(self.process(
                upstream,
                request,
                started,
                (&request_id, &trace, span.as_ref()),
                &mut record,
            ));
            CatchPanic(processing).await
        };
        // A bug in any step is answered in Feishu's format like every other outcome,
        // rather than by a connection dropped without an answer.
        let outcome = processed.unwrap_or_else(|()| {
            record.detail = Some("the gateway panicked on this callback (a bug)".to_owned());
            Outcome::Internal
        });

        let mut response = self.translator.respond(&outcome);
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID), request_id.clone());
        let close = !record.body_read || outcome.closes_connection();
        if close {
            response.extensions_mut().insert(CloseConnection);
        }
        if keeps_alive_by_header && close {
            // Refused before its body was read, the connection cannot carry another
            // request; refused before its token verified, it should not, or a client
            // without the token could hold it for ever with requests refused one by
            // one. Saying so keeps the client from sending its next request into a
            // socket that is going away.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let elapsed = started.elapsed();
        self.observe(&outcome, elapsed);
        if let Some(span) = span {
            span.finish(
                &outcome,
                response.status(),
                request_id.to_str().unwrap_or("-"),
                record.summary.as_ref(),
                record.upstream_status,
            );
        }
        log(
            &outcome,
            response.status(),
            &request_id,
            &trace,
            elapsed,
            &record,
        );
        response
    }

    async fn process<B>(
        &self,
        upstream: &Arc<Upstream>,
        request: Request<B>,
        started: Instant,
        ids: Ids<'_>,
        record: &mut Record,
    ) -> Outcome
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if request.uri().path() != self.path {
            return Outcome::BadRequest(BadRequest::NotFound);
        }
        if request.method() != Method::POST {
            return Outcome::BadRequest(BadRequest::MethodNotAllowed);
        }
        if self.health.is_shutting_down() {
            return Outcome::TryLater(TryLater::ShuttingDown);
        }
        let (body, _reserved) = match self.read_body(request, started).await {
            Ok(body) => {
                record.body_read = true;
                body
            }
            Err(outcome) => return outcome,
        };
        let callback = match self.verifier.verify(&body) {
            Ok(callback) => callback,
            Err(why) => {
                record.detail = Some(detail(&why));
                return Outcome::BadRequest(why);
            }
        };
        let Callback {
            summary,
            upstream_body,
            decision,
        } = callback;
        let summary = record.summary.insert(summary);
        // Charged only now, once the token matched: were junk charged, anyone
        // could spend Feishu's budget and crowd out real callbacks. What
        // bounds junk instead is the CPU each refusal costs.
        if let Err(retry_after_secs) = self.limits.check_global() {
            self.metrics.count_rate_limited("global");
            return Outcome::TryLater(TryLater::RateLimited { retry_after_secs });
        }
        if let Err(retry_after_secs) = self.limits.check_user(&summary.user_id) {
            self.metrics.count_rate_limited("user");
            return Outcome::TryLater(TryLater::RateLimited { retry_after_secs });
        }
        let now = Instant::now();
        let outbound = Outbound {
            body: upstream_body,
            decision,
            verified_at: now,
            deadline: (now + self.upstream_timeout).min(started + self.answer_within),
        };
        self.forward(upstream, outbound, ids, record).await
    }

    /// Reads the whole body, by `BODY_READ_TIMEOUT` after the request `started`, with its
    /// share of [`BODY_BUDGET_BYTES`], to be held until the callback is answered.
    async fn read_body<B>(
        &self,
        request: Request<B>,
        started: Instant,
    ) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), Outcome>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(Outcome::BadRequest(BadRequest::TooLarge));
        }
        let limit = declared.map_or(self.max_body, |n| n as usize);
        let reserve = u32::try_from(limit.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        let read = async {
            let reserved = self
                .body_budget
                .clone()
                .acquire_many_owned(reserve)
                .await
                .map_err(|_| Outcome::TryLater(TryLater::ShuttingDown))?;
            let limited = Limited::new(request.into_body(), self.max_body);
            Ok::<_, Outcome>((limited.collect().await, reserved))
        };
        match timeout_at(started + BODY_READ_TIMEOUT, read).await {
            Err(_) => Err(Outcome::BadRequest(BadRequest::SlowBody)),
            Ok(Err(outcome)) => Err(outcome),
            Ok(Ok((Ok(collected), reserved))) => Ok((collected.to_bytes(), reserved)),
            Ok(Ok((Err(e), _))) if e.downcast_ref::<LengthLimitError>().is_some() => {
                Err(Outcome::BadRequest(BadRequest::TooLarge))
            }
            Ok(Ok((Err(_), _))) => Err(Outcome::BadRequest(BadRequest::Unreadable)),
        }
    }

    async fn forward(
        &self,
        upstream: &Arc<Upstream>,
        outbound: Outbound,
        (request_id, trace, span): Ids<'_>,
        record: &mut Record,
    ) -> Outcome {
        let Outbound {
            body: upstream_body,
            decision,
            verified_at,
            deadline,
        } = outbound;
        let ticket = match &self.dedup {
            None => None,
            Some(dedup) => match dedup.admit(&decision) {
                Admission::Deliver(ticket) => Some(ticket),
                Admission::AlreadyDelivered => {
                    self.metrics.count_duplicate("remembered", "local");
                    return Outcome::Duplicate;
                }
                Admission::Wait(mut first) => {
                    self.metrics.count_duplicate("in_flight", "local");
                    let settled = async {
                        first
                            .wait_for(Option::is_some)
                            .await
                            .ok()
                            .and_then(|o| o.clone())
                    };
                    return match timeout_at(deadline, settled).await {
                        Err(_) => Outcome::UpstreamTimedOut,
                        Ok(Some(Outcome::Delivered)) => Outcome::Duplicate,
                        Ok(Some(other)) => other,
                        // The first copy's delivery panicked: its fate is unknown.
                        Ok(None) => Outcome::Internal,
                    };
                }
            },
        };
        let upstream = Arc::clone(upstream);
        let request_id = request_id.clone();
        let mut trace = trace.clone();
        let exchange_parent = self.telemetry.clone().zip(span.map(CallbackSpan::context));
        let shared = self.shared.clone();
        let metrics = Arc::clone(&self.metrics);
        // A task of its own, so a client hanging up cannot cancel a delivery half-way:
        // once started, it completes and settles its duplicate memory, local and shared,
        // and shutdown waits for it on the tracker.
        let delivery = self.deliveries.spawn(async move {
            let (claim, ticket) = match &shared {
                None => (None, ticket),
                Some(shared) => ask_shared(shared, &decision, deadline, &metrics, ticket).await?,
            };
            // Only a request actually sent has a span of its own.
            let exchange_span = exchange_parent.map(|(t, parent)| t.exchange(&parent, &mut trace));
            let exchange = upstream
                .deliver(
                    upstream_body,
                    &request_id,
                    &trace,
                    &decision,
                    verified_at,
                    deadline,
                )
                .await;
            if let Some(span) = exchange_span {
                span.finish(&exchange);
            }
            if let Some(ticket) = ticket {
                ticket.finish(&exchange.outcome);
            }
            if let (Some(shared), Some(claim)) = (&shared, claim) {
                shared
                    .settle(claim, &exchange.outcome, deadline, &metrics)
                    .await;
            }
            Ok(exchange)
        });
        let exchange: Exchange = match delivery.await {
            Ok(Ok(exchange)) => exchange,
            // Answered from the shared memory, without a delivery of its own.
            Ok(Err((outcome, why))) => {
                record.detail = Some(why.to_owned());
                return outcome;
            }
            // Deliveries are never aborted: a panic, or a runtime going away under it.
            // Either way the decision's fate is unknown.
            Err(e) => {
                record.detail = Some(if e.is_panic() {
                    "the delivery panicked (a bug)".to_owned()
                } else {
                    "the delivery was cancelled".to_owned()
                });
                return Outcome::Internal;
            }
        };
        record.upstream_status = exchange.status;
        record.upstream_elapsed = Some(exchange.elapsed);
        record.attempts = Some(exchange.attempts());
        record.detail = self
            .translator
            .log_detail(exchange.detail, &exchange.outcome);
        self.metrics
            .upstream_duration
            .observe(exchange.elapsed.as_secs_f64());
        if exchange.retries.total() > 0 {
            self.metrics
                .count_retries("unsent", exchange.retries.unsent);
            self.metrics
                .count_retries("unavailable", exchange.retries.unavailable);
            self.metrics.count_retried(exchange.outcome.label());
        }
        exchange.outcome
    }

    fn observe(&self, outcome: &Outcome, elapsed: Duration) {
        let m = &self.metrics;
        m.count_callback(outcome.label());
        m.callback_duration.observe(elapsed.as_secs_f64());
        let kind = match outcome {
            Outcome::UpstreamUnreachable(e) => Some(e.label()),
            Outcome::UpstreamTimedOut => Some("timeout"),
            Outcome::UpstreamRefused(r) if r.business_rule => Some("not_ok"),
            Outcome::UpstreamRefused(_) => Some("status"),
            _ => None,
        };
        if let Some(kind) = kind {
            m.count_upstream_error(kind);
        }
    }
}

/// Asks the memory shared with the other replicas whether this replica may
/// deliver `decision`: `Ok` with its claim (none when Redis could not be asked and
/// `REDIS_FAILURE=open`), or the answer to give without delivering, with the
/// reason for the log line. The local `ticket` learns the same outcome.
async fn ask_shared(
    shared: &SharedMemory,
    decision: &Decision,
    deadline: Instant,
    metrics: &Metrics,
    ticket: Option<Ticket>,
) -> Result<(Option<redis_dedup::Claim>, Option<Ticket>), (Outcome, &'static str)> {
    let (outcome, why) = match shared.admit(decision, deadline, metrics).await {
        redis_dedup::Admission::Deliver(claim) => return Ok((claim, ticket)),
        redis_dedup::Admission::Delivered { waited } => {
            if !waited {
                metrics.count_duplicate("remembered", "shared");
            }
            (Outcome::Duplicate, "delivered by another replica")
        }
        redis_dedup::Admission::TimedOut => (
            Outcome::UpstreamTimedOut,
            "another replica was still delivering it at the deadline",
        ),
        redis_dedup::Admission::Unavailable => (
            Outcome::TryLater(TryLater::MemoryUnavailable),
            "the shared duplicate memory is unreachable",
        ),
    };
    if let Some(ticket) = ticket {
        // Delivered elsewhere is remembered by this replica's own memory too, so
        // its next copy needs no round trip.
        let local = match outcome {
            Outcome::Duplicate => Outcome::Delivered,
            ref other => other.clone(),
        };
        ticket.finish(&local);
    }
    Err((outcome, why))
}

/// A future, pinned where its caller keeps it, whose panic is returned as `Err(())`
/// instead of unwinding further.
struct CatchPanic<'a, F>(Pin<&'a mut F>);

impl<F: Future> Future for CatchPanic<'_, F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// Counts a callback in flight for as long as it is held.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// Request ids: the caller's `X-Request-Id` when it is a sane token,
/// otherwise a new random UUID; and the ids of a new trace or span.
#[derive(Debug, Default)]
struct RequestIds {
    /// SipHash keyed once from the operating system's randomness, over a counter:
    /// ids no caller can predict, without asking the kernel for each one.
    keys: RandomState,
    next: AtomicU64,
}

impl RequestIds {
    fn for_request(&self, headers: &HeaderMap) -> (HeaderValue, Trace) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Words 0 and 1 are the request id's.
        let mut word = 1u8;
        let trace = Trace::from_headers(headers, || {
            word += 1;
            self.keys.hash_one((n, word))
        });
        let request_id = headers
            .get(REQUEST_ID)
            .filter(|v| {
                let b = v.as_bytes();
                !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
            })
            .cloned()
            .unwrap_or_else(|| self.fresh(n));
        (request_id, trace)
    }

    fn fresh(&self, n: u64) -> HeaderValue {
        let high = u128::from(self.keys.hash_one((n, 0u8)));
        let low = u128::from(self.keys.hash_one((n, 1u8)));
        let uuid = uuid::Builder::from_random_bytes(((high << 64) | low).to_be_bytes()).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        // A hyphenated UUID is always a valid header value.
        HeaderValue::from_bytes(uuid.hyphenated().encode_lower(&mut text).as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

fn detail(why: &BadRequest) -> String {
    match why {
        BadRequest::Unauthorized(why) => why.to_string(),
        BadRequest::Invalid(why) => why.to_string(),
        other => format!("{other:?}"),
    }
}

/// Milliseconds to the microsecond: `2.226`, not the `2.2260079999999998` that
/// `as_secs_f64() * 1000.0` prints.
fn millis(d: Duration) -> f64 {
    // Microseconds fit an f64 exactly for 285 years; the division rounds once.
    d.as_micros() as f64 / 1000.0
}

macro_rules! callback_line {
    ($level:ident, $outcome:expr, $status:expr, $id:expr, $trace_id:expr, $elapsed:expr, $r:expr) => {{
        let s = $r.summary.as_ref();
        tracing::$level!(
            target: crate::logging::CALLBACK_TARGET,
            request_id = $id,
            trace_id = $trace_id,
            approval_code = s.map(|s| bounded(&s.approval_code)),
            instance_id = s.and_then(|s| s.instance_id.as_deref()).map(bounded),
            task_id = s.and_then(|s| s.task_id.as_deref()).map(bounded),
            message_id = s.and_then(|s| s.message_id.as_deref()).map(bounded),
            action = s.map(|s| bounded(&s.action_type)),
            outcome = $outcome.label(),
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

fn log(
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
    if outcome.is_upstream_failure() {
        callback_line!(warn, outcome, status, id, trace_id, elapsed, record)
    } else {
        callback_line!(info, outcome, status, id, trace_id, elapsed, record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request body whose first read panics, as a bug in any step would.
    struct Panics;

    impl Body for Panics {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            panic!("a bug while reading the body")
        }
    }

    #[tokio::test]
    async fn a_panic_while_handling_a_callback_is_answered_in_feishus_format_and_counted() {
        let loaded = Config::from_vars([
            (crate::config::UPSTREAM_URL, "http://127.0.0.1:9/"),
            (crate::config::TOKEN, "s3cret-token-for-tests"),
        ])
        .unwrap();
        let gateway = Gateway::new(&loaded.config).unwrap();
        let upstream = gateway.upstream_for_worker();
        let request = Request::post(loaded.config.callback_path.as_str())
            .body(Panics)
            .unwrap();
        let response = gateway.handle(&upstream, request).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().contains_key(REQUEST_ID));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["without_prefix"], "true");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        let metrics = gateway.metrics.render();
        assert!(
            metrics.contains("feishu_gate_callbacks_total{outcome=\"internal\"} 1"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn a_panic_is_returned_not_unwound() {
        let ok = CatchPanic(std::pin::pin!(async { 7 })).await;
        assert_eq!(ok, Ok(7));
        let failed = CatchPanic(std::pin::pin!(async {
            tokio::task::yield_now().await;
            if std::hint::black_box(true) {
                panic!("a bug in a step");
            }
            7
        }))
        .await;
        assert_eq!(failed, Err(()));
    }

    #[test]
    fn durations_are_logged_to_the_microsecond() {
        let shown = |nanos| serde_json::to_string(&millis(Duration::from_nanos(nanos))).unwrap();
        assert_eq!(shown(2_226_008), "2.226");
        assert_eq!(shown(9_500_000_000), "9500.0");
        assert_eq!(shown(999), "0.0");
        assert_eq!(shown(1_001), "0.001");
        for micros in [1_u64, 7, 333, 12_345, 2_226, 9_499_999] {
            let text = shown(micros * 1_000);
            let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(decimals <= 3, "{micros} µs shown as {text}");
        }
    }
}
