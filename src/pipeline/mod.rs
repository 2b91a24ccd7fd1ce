//! The path of one callback, top to bottom: route, limit, read, verify,
//! deduplicate, forward, translate, answer, log.

mod guard;
mod ids;
pub mod limit;
mod record;
pub mod running;
mod shown;

pub use shown::Shown;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Version, header};
use http_body_util::Full;
use hyper::body::Body;
use tokio::time::{Instant, timeout_at};
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use guard::{CatchPanic, InFlight};
use ids::{RequestIds, Seed};
use record::{Record, log};
use running::{Fences, Running, Stage};

use crate::callback::verify::Verifier;
use crate::callback::{Callback, Decision, idempotency_key};
use crate::dedup::local::{Admission, Dedup, Ticket};
use crate::dedup::shared::{self, FailureMode, Hold, SharedMemory};
use crate::observe::metrics::{
    CardRepair, How, LabelValue as _, Metrics, RetryReason, Scope, Store,
    UpstreamErrorKind as Kind, Verdict,
};
use crate::observe::otlp::{CallbackSpan, Telemetry};
use crate::observe::trace::{TRACEPARENT, TRACESTATE, Trace};
use crate::openapi::{Card, CardStatus, OpenApi};
use crate::outcome::{BadRequest, Fate, Outcome, TryLater, UpstreamError};
use crate::pipeline::limit::{Limits, RateLimit};
use crate::respond::Translator;
use crate::upstream::{Delivery, Exchange, REQUEST_ID, Upstream, Withheld};
use crate::util::body::{Gather, gather};

/// Bytes of request bodies held at once, every connection together. Each request reserves
/// its declared length (or `MAX_BODY_BYTES` when it declares none) before its body is
/// read, and keeps it until answered; one that cannot within its read deadline is refused
/// as too slow. So the memory bodies take does not grow with the connections open.
pub const BODY_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// A callback body is a few KiB; a client slower than this is not Feishu.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Pieces (HTTP/1 chunks, HTTP/2 DATA frames) one body may come in. Feishu sends a
/// callback in one or a few; each piece costs a parse, so a body of one-byte pieces is
/// refused long before it could cost much.
pub const MAX_BODY_PIECES: usize = 1_024;

/// The callback path and its bounds (`CALLBACK_PATH`, `MAX_BODY_BYTES`,
/// `ANSWER_WITHIN_MS`, `RATE_LIMIT_*`, `USER_RATE_LIMIT_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub path: String,
    pub max_body: usize,
    /// By when after its arrival every callback is answered.
    pub answer_within: Duration,
    /// By when after its arrival the legacy system's answer is still waited for, once
    /// the caller was answered 504; zero: not past the upstream timeout.
    pub late_verdict: Duration,
    pub rate_limit: Option<RateLimit>,
    pub user_rate_limit: Option<RateLimit>,
}

/// What the pipeline runs a callback through, each built from its component's settings.
pub struct Parts {
    pub verifier: Verifier,
    pub upstream: Upstream,
    pub translator: Translator,
    pub dedup: Option<Dedup>,
    pub shared: Option<SharedMemory>,
    /// Set with `APP_ID`: late acceptances repair the approver's card.
    pub openapi: Option<Arc<OpenApi>>,
}

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
    /// `LATE_VERDICT_MS`: zero, or how long after arrival an answer is still waited for.
    late_verdict: Duration,
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
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    /// Every delivery, whether on its callback's task or moved to one of its own (see
    /// [`Detachable`]), so that shutdown waits for each here.
    pub deliveries: TaskTracker,
    /// The same deliveries by decision, for the drain to name what it abandons.
    running: Arc<Running>,
    fences: Fences,
    openapi: Option<Arc<OpenApi>>,
    /// The span exporter, when OpenTelemetry's variables configure one.
    telemetry: Option<Arc<Telemetry>>,
}

/// Who a callback is: its request id, its trace, and its span when spans are exported.
type Ids<'a> = (&'a HeaderValue, &'a Trace, Option<&'a CallbackSpan>);

/// A request's trace: one of its own until its callback verified; then the caller's, if it
/// sent one, and the callback's span. A stranger's trace id reaches no span, no log line
/// and no legacy system, and costs no export.
struct Traced {
    trace: Trace,
    span: Option<CallbackSpan>,
    /// The caller's `traceparent` and `tracestate`, set aside.
    caller: Option<HeaderMap>,
    seed: Seed,
    /// When the request arrived, for the span's start; read only when spans are exported.
    arrived: Option<SystemTime>,
}

/// What a verified callback sends to the legacy system, and when.
struct Outbound {
    body: Vec<u8>,
    decision: Decision,
    /// When it was ready to send: the upstream's share of the time counts from here.
    verified_at: Instant,
    /// When the upstream's answer must have come, for Feishu's to be in time.
    deadline: Instant,
    /// Until when an answer is still waited for (`LATE_VERDICT_MS`), at least `deadline`.
    give_up: Instant,
    /// Until when a decision sent and never answered is not delivered again.
    uncertain_until: Instant,
    /// The approver's card, to repair after a late acceptance (with `APP_ID`), or why
    /// it cannot be.
    card: Option<Result<Card, CardRepair>>,
}

impl Gateway {
    /// The pipeline over its parts, which the composition root builds from the
    /// configuration.
    pub fn new(settings: &Settings, parts: Parts) -> Self {
        let metrics = Arc::new(Metrics::default());
        parts.upstream.breaker().report_to(
            metrics.upstream_breaker_open.clone(),
            metrics.upstream_breaker_openings.clone(),
        );
        Self {
            path: settings.path.clone(),
            max_body: settings.max_body,
            upstream_timeout: parts.upstream.timeout(),
            answer_within: settings.answer_within,
            late_verdict: settings.late_verdict,
            verifier: parts.verifier,
            upstream: parts.upstream,
            translator: parts.translator,
            limits: Limits::new(settings.rate_limit, settings.user_rate_limit),
            dedup: parts.dedup,
            shared: parts.shared.map(Arc::new),
            request_ids: RequestIds::default(),
            body_budget: Arc::new(tokio::sync::Semaphore::new(BODY_BUDGET_BYTES / 1024)),
            health: Arc::default(),
            metrics,
            deliveries: TaskTracker::new(),
            running: Arc::default(),
            fences: Fences::default(),
            openapi: parts.openapi,
            telemetry: None,
        }
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
    ///
    /// `shown` is marked verified once the callback's token matched: the connection it
    /// came on has shown it is Feishu's, and keeps its slot.
    pub async fn handle<B>(
        &self,
        upstream: &Arc<Upstream>,
        request: Request<B>,
        shown: &Shown,
    ) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let _in_flight = InFlight::new(&self.metrics);
        let (mut head, body) = request.into_parts();
        let (request_id, trace, seed) = self.request_ids.for_request(&head.headers);
        let mut traced = Traced {
            trace,
            span: None,
            caller: caller_trace(&head.headers),
            seed,
            arrived: self.telemetry.as_ref().map(|_| SystemTime::now()),
        };
        let keeps_alive_by_header = head.version <= Version::HTTP_11;
        let mut record = Record {
            body_read: body.is_end_stream(),
            ..Record::default()
        };
        let declared = declared_length(&head.headers);
        // Emptied now, so the request's header bytes are let go; its room holds the answer's.
        let mut headers = std::mem::take(&mut head.headers);
        headers.clear();
        let processed = {
            let processing = std::pin::pin!(self.process(
                upstream,
                (&head, body, declared),
                started,
                &request_id,
                (&mut traced, shown),
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

        let mut response = self.translator.respond_in(&outcome, headers);
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
        self.observe(&outcome, &record, elapsed);
        let Traced { trace, span, .. } = traced;
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
        (head, body, declared): (&http::request::Parts, B, Option<u64>),
        started: Instant,
        request_id: &HeaderValue,
        (traced, shown): (&mut Traced, &Shown),
        record: &mut Record,
    ) -> Outcome
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if head.uri.path() != self.path {
            return Outcome::BadRequest(BadRequest::NotFound);
        }
        if head.method != Method::POST {
            return Outcome::BadRequest(BadRequest::MethodNotAllowed);
        }
        if self.health.is_shutting_down() {
            return Outcome::TryLater(TryLater::ShuttingDown);
        }
        let (body, _reserved) = match self.read_body(body, declared, started).await {
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
        // What is forwarded is the callback's own copy; the body as it came may be a slice
        // of the connection's read buffer, not to be held for as long as a delivery.
        drop(body);
        if !shown.verify() {
            // Its connection was given up to make room a moment before: nothing is
            // delivered on a connection that will not carry the answer; Feishu retries.
            record.detail = Some("its connection was closed to make room for a newcomer".into());
            return Outcome::TryLater(TryLater::ShuttingDown);
        }
        if let Some(caller) = &traced.caller
            && let Some(trace) = self.request_ids.adopt(traced.seed, caller)
        {
            traced.trace = trace;
        }
        if let (Some(telemetry), Some(arrived)) = (&self.telemetry, traced.arrived) {
            traced.span = Some(telemetry.callback(&mut traced.trace, arrived));
        }
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
            self.metrics.count_rate_limited(Scope::Global);
            return Outcome::TryLater(TryLater::RateLimited { retry_after_secs });
        }
        if let Err(retry_after_secs) = self.limits.check_user(summary.user_id()) {
            self.metrics.count_rate_limited(Scope::User);
            return Outcome::TryLater(TryLater::RateLimited { retry_after_secs });
        }
        let now = Instant::now();
        let deadline = (now + self.upstream_timeout).min(started + self.answer_within);
        // Zero keeps the exchange to the deadline, and holds nothing past it.
        let late_end = (started + self.late_verdict).max(deadline);
        let card = self.openapi.as_ref().map(|_| card(summary, &decision));
        let outbound = Outbound {
            body: upstream_body,
            decision,
            verified_at: now,
            deadline,
            give_up: late_end,
            uncertain_until: late_end,
            card,
        };
        let ids = (request_id, &traced.trace, traced.span.as_ref());
        self.forward(upstream, outbound, ids, record).await
    }

    /// Reads the whole body, by `BODY_READ_TIMEOUT` after the request `started`, with its
    /// share of [`BODY_BUDGET_BYTES`], to be held until the callback is answered.
    async fn read_body<B>(
        &self,
        body: B,
        declared: Option<u64>,
        started: Instant,
    ) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), Outcome>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
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
            let body = collect(body, declared, self.max_body).await?;
            Ok::<_, Outcome>((body, reserved))
        };
        match timeout_at(started + BODY_READ_TIMEOUT, read).await {
            Err(_) => Err(Outcome::BadRequest(BadRequest::SlowBody)),
            Ok(result) => result,
        }
    }

    async fn forward(
        &self,
        upstream: &Arc<Upstream>,
        outbound: Outbound,
        (request_id, trace, span): Ids<'_>,
        record: &mut Record,
    ) -> Outcome {
        let deadline = outbound.deadline;
        let ticket = match &self.dedup {
            None => None,
            Some(dedup) => match dedup.admit(&outbound.decision, request_id) {
                Admission::Deliver(ticket) => Some(ticket),
                Admission::AlreadyDelivered => {
                    self.metrics.count_duplicate(How::Remembered, Store::Local);
                    return Outcome::Duplicate;
                }
                Admission::Uncertain => {
                    self.metrics.count_duplicate(How::Remembered, Store::Local);
                    record.detail = Some(UNCERTAIN_BEFORE.to_owned());
                    return Outcome::Uncertain;
                }
                Admission::Wait(mut first, first_id) => {
                    self.metrics.count_duplicate(How::InFlight, Store::Local);
                    record.delivered_by = Some(first_id.to_str().unwrap_or("-").to_owned());
                    let settled = async {
                        first
                            .wait_for(Option::is_some)
                            .await
                            .ok()
                            .and_then(|o| o.clone())
                    };
                    return match timeout_at(deadline, settled).await {
                        Err(_) => {
                            record.detail = Some(JOINED.to_owned());
                            Outcome::UpstreamTimedOut
                        }
                        Ok(Some(Outcome::Delivered)) => Outcome::Duplicate,
                        Ok(Some(other)) => other,
                        // The first copy's delivery panicked: its fate is unknown, and
                        // this copy's outcome is the bug, not a duplicate.
                        Ok(None) => {
                            record.delivered_by = None;
                            Outcome::Internal
                        }
                    };
                }
            },
        };
        let delivery = Delivering {
            upstream: Arc::clone(upstream),
            request_id: request_id.clone(),
            trace: trace.clone(),
            exchange_parent: self.telemetry.clone().zip(span.map(CallbackSpan::context)),
            shared: self.shared.clone(),
            metrics: Arc::clone(&self.metrics),
            running: self.running.enter(outbound.decision),
            fence: self.fences.next(),
            ticket,
            late_exchange: !self.late_verdict.is_zero(),
            openapi: self.openapi.clone(),
        };
        // Run here, on the callback's own task, unless the callback stops waiting for it:
        // then it goes on as a task of its own, so a client hanging up cannot cancel a
        // delivery half-way, and the exchange can outlive the answer. Once started, it
        // completes and records its outcome, local and shared, and shutdown waits for it.
        let delivery = Detachable::new(delivery.exchange(outbound), &self.deliveries);
        // What the legacy system answers by the deadline is the caller's answer; the
        // shared memory's record may take a little longer, so that a 200 is given once
        // every replica would know it, unless Redis cannot take it in that time.
        let grace = if self.shared.is_some() {
            shared::SETTLE_GRACE
        } else {
            VERDICT_SLACK
        };
        let finished = match timeout_at(deadline + grace, delivery.run()).await {
            Ok(finished) => finished,
            // Its outcome is the detached delivery's to log as a late verdict.
            Err(_) if self.late_verdict.is_zero() => {
                record.detail = Some("no answer before the deadline".to_owned());
                return Outcome::UpstreamTimedOut;
            }
            Err(_) => {
                record.detail = Some(GOING_ON.to_owned());
                return Outcome::UpstreamTimedOut;
            }
        };
        let Finished { answer, rest } = finished;
        if let Some(rest) = rest {
            rest.settle(true, &self.deliveries);
        }
        let exchange = match answer {
            Ok(exchange) => exchange,
            // Answered from the shared memory, without a delivery of its own.
            Err((outcome, why)) => {
                record.detail = Some(why.to_owned());
                record.joined_elsewhere(&outcome);
                return outcome;
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
                .count_retries(RetryReason::Unsent, exchange.retries.unsent);
            self.metrics
                .count_retries(RetryReason::Unavailable, exchange.retries.unavailable);
            self.metrics.count_retried(exchange.outcome.label());
        }
        exchange.outcome
    }

    /// The idempotency key and stage of every delivery still under way: what the drain
    /// abandons when its grace ends.
    pub fn under_way(&self) -> Vec<(String, Stage)> {
        self.running.under_way()
    }

    fn observe(&self, outcome: &Outcome, record: &Record, elapsed: Duration) {
        let m = &self.metrics;
        m.count_callback(record.label(outcome));
        m.callback_duration.observe(elapsed.as_secs_f64());
        if record.delivered_by.is_some() {
            // The exchange it joined is counted once, by the request that made it.
            return;
        }
        let kind = match outcome {
            Outcome::UpstreamUnreachable(UpstreamError::Connect) => Some(Kind::Connect),
            Outcome::UpstreamUnreachable(UpstreamError::Dropped) => Some(Kind::Dropped),
            Outcome::UpstreamTimedOut => Some(Kind::Timeout),
            Outcome::UpstreamRefused(r) if r.business_rule => Some(Kind::NotOk),
            Outcome::UpstreamRefused(_) => Some(Kind::Status),
            _ => None,
        };
        if let Some(kind) = kind {
            m.count_upstream_error(kind);
        }
    }
}

/// How long past its deadline a callback waits for its delivery to report: an exchange
/// cut at the deadline (a refusal whose body was still coming) reports a moment later.
const VERDICT_SLACK: Duration = Duration::from_millis(20);

/// What the log says of a copy answered 504 while its first's exchange went on.
const JOINED: &str = "joined the exchange already under way, still unanswered at the deadline";
/// What the log says of a callback answered 504 whose exchange goes on.
const GOING_ON: &str = "no answer by the deadline; the exchange goes on (LATE_VERDICT_MS)";
/// What the log says of a copy of a decision sent before and never answered.
const UNCERTAIN_BEFORE: &str =
    "sent before and never answered: not delivered again within LATE_VERDICT_MS";

/// What the caller is answered without a delivery of its own, and why.
type Answered = (Outcome, &'static str);

/// One delivery, with what it needs to outlive its callback.
struct Delivering {
    upstream: Arc<Upstream>,
    request_id: HeaderValue,
    trace: Trace,
    exchange_parent: Option<(Arc<Telemetry>, opentelemetry::trace::SpanContext)>,
    shared: Option<Arc<SharedMemory>>,
    metrics: Arc<Metrics>,
    running: running::Entry,
    /// The fencing token when the shared memory gives none.
    fence: u64,
    ticket: Option<Ticket>,
    late_exchange: bool,
    openapi: Option<Arc<OpenApi>>,
}

impl Delivering {
    /// Asks the shared memory, delivers, and records the outcome: what the callback is
    /// answered, and what is left to do once it has been (or never will be).
    async fn exchange(self, outbound: Outbound) -> Finished {
        let Self {
            upstream,
            request_id,
            mut trace,
            exchange_parent,
            shared,
            metrics,
            running,
            fence,
            ticket,
            late_exchange,
            openapi,
        } = self;
        let Outbound {
            body,
            decision,
            verified_at,
            deadline,
            give_up,
            uncertain_until,
            card,
        } = outbound;
        let (claim, ticket) = match &shared {
            None => (None, ticket),
            Some(shared) => {
                match ask_shared(
                    shared,
                    &decision,
                    deadline,
                    &metrics,
                    ticket,
                    uncertain_until,
                )
                .await
                {
                    Ok(held) => held,
                    Err(answered) => {
                        return Finished {
                            answer: Err(answered),
                            rest: None,
                        };
                    }
                }
            }
        };
        let mut renewal = match (&shared, &claim) {
            (Some(shared), Some(claim)) => Some(shared.keep(claim, give_up, &metrics)),
            _ => None,
        };
        // Only a request actually sent has a span of its own.
        let exchange_span = exchange_parent.map(|(t, parent)| t.exchange(&parent, &mut trace));
        let (memory, held, counted) = (shared.as_deref(), claim.as_deref(), &*metrics);
        let may_send = move || async move {
            // A replica that was frozen past its callback's deadline does not send:
            // Feishu has given up on that callback, and may have retried elsewhere.
            if Instant::now() > deadline {
                return Err(Withheld {
                    outcome: Outcome::UpstreamTimedOut,
                    why: "the callback's deadline passed before its request could be sent",
                });
            }
            let (Some(memory), Some(claim)) = (memory, held) else {
                return Ok(());
            };
            match memory.check_before_sending(claim, give_up, counted).await {
                // The check may have taken its whole budget.
                Hold::Held if Instant::now() > deadline => Err(Withheld {
                    outcome: Outcome::UpstreamTimedOut,
                    why: "the callback's deadline passed before its request could be sent",
                }),
                Hold::Held => Ok(()),
                Hold::Lost => Err(Withheld {
                    outcome: Outcome::UpstreamTimedOut,
                    why: "another replica took the decision over before it was sent",
                }),
                Hold::Unknown => match memory.failure() {
                    // The claim was this replica's a moment ago and is renewed, from now
                    // on as sent: the request may go out.
                    FailureMode::Open => {
                        claim.assume_sent();
                        Ok(())
                    }
                    FailureMode::Closed => Err(Withheld {
                        outcome: Outcome::TryLater(TryLater::MemoryUnavailable),
                        why: "the shared duplicate memory did not answer the check before sending",
                    }),
                },
            }
        };
        let exchange = upstream
            .deliver(
                Delivery {
                    body,
                    request_id: &request_id,
                    trace: &trace,
                    decision: &decision,
                    fence: Some(claim.as_ref().map_or(fence, |c| c.fence())),
                    started: verified_at,
                    answer_by: deadline,
                    give_up,
                },
                may_send,
            )
            .await;
        if let Some(span) = exchange_span {
            span.finish(&exchange.outcome, exchange.status, exchange.attempts());
        }
        let fate = exchange.outcome.fate(exchange.sent);
        if let Some(claim) = &claim {
            claim.finish();
        }
        if let Some(ticket) = ticket {
            ticket.finish(&exchange.outcome, fate, uncertain_until);
        }
        let mut recorded = true;
        if let Some(shared) = &shared {
            // Stopped first: a renewal after the record would find the key no longer
            // this replica's. Taken up again below if the record does not land.
            renewal = None;
            let by = deadline.max(Instant::now()) + shared::SETTLE_GRACE;
            recorded = shared
                .record(
                    &decision,
                    claim.as_deref(),
                    fate,
                    uncertain_until,
                    by,
                    &metrics,
                )
                .await
                .is_ok();
        }
        let late = Late {
            sent: exchange.sent,
            request_id: request_id.clone(),
            outcome: exchange.outcome.clone(),
            status: exchange.status,
            elapsed: exchange.elapsed,
            fate,
        };
        // Whatever renews the claim now is the rest's; none is, once recorded.
        drop(renewal);
        Finished {
            answer: Ok(exchange),
            rest: Some(Rest {
                late,
                decision,
                metrics,
                late_exchange,
                openapi,
                card,
                unrecorded: shared.filter(|_| !recorded).map(|shared| Unrecorded {
                    shared,
                    claim,
                    give_up,
                    uncertain_until,
                }),
                running,
            }),
        }
    }
}

/// What a delivery came to: the callback's answer, and, once an exchange was made, what
/// is left to do after it.
struct Finished {
    answer: Result<Exchange, Answered>,
    rest: Option<Rest>,
}

/// What is left of a delivery once its callback has its answer, or has stopped waiting.
struct Rest {
    late: Late,
    decision: Decision,
    metrics: Arc<Metrics>,
    late_exchange: bool,
    openapi: Option<Arc<OpenApi>>,
    card: Option<Result<Card, CardRepair>>,
    /// Set when the outcome did not reach the shared memory in the callback's time.
    unrecorded: Option<Unrecorded>,
    running: running::Entry,
}

/// An outcome the shared memory has still to take.
struct Unrecorded {
    shared: Arc<SharedMemory>,
    claim: Option<Arc<shared::Claim>>,
    give_up: Instant,
    uncertain_until: Instant,
}

impl Rest {
    /// Logs a verdict the callback never heard (`answered` false) and repairs the card
    /// after a late acceptance; an outcome the shared memory has not taken is written in
    /// the background, on `tracker`, until it is.
    fn settle(self, answered: bool, tracker: &TaskTracker) {
        let Self {
            late,
            decision,
            metrics,
            late_exchange,
            openapi,
            card,
            unrecorded,
            running,
        } = self;
        let (fate, sent) = (late.fate, late.sent);
        if !answered {
            late.log(&decision, &metrics, late_exchange);
            if let (Some(openapi), Some(card), true) = (&openapi, card, late_exchange && sent) {
                repair_card(openapi, card, fate, &metrics);
            }
        }
        let Some(Unrecorded {
            shared,
            claim,
            give_up,
            uncertain_until,
        }) = unrecorded
        else {
            return;
        };
        tracker.spawn(async move {
            running.reached(Stage::Record);
            // An acceptance is still this replica's to hold while its record is pending.
            // Anything else is not renewed: a renewal racing the release would put back
            // the key the release deletes.
            let renewal = match (&claim, fate) {
                (Some(claim), Fate::Delivered) => Some(shared.keep(claim, give_up, &metrics)),
                _ => None,
            };
            record_in_background(
                &shared,
                &decision,
                claim.as_deref(),
                fate,
                uncertain_until,
                &metrics,
            )
            .await;
            drop((renewal, running));
        });
    }
}

/// A delivery run on its callback's task until the callback stops waiting for it (its
/// deadline passed, or its client went away): then it is moved, as it is, to a task of
/// its own on the tracker, and finishes there.
struct Detachable<F: Future<Output = Finished> + Send + 'static> {
    delivery: Option<std::pin::Pin<Box<F>>>,
    /// Counts the delivery on the tracker while it runs here: an HTTP/2 request runs as
    /// a task of hyper's, which the drain does not otherwise wait for.
    tracked: TaskTrackerToken,
}

impl<F: Future<Output = Finished> + Send + 'static> Detachable<F> {
    fn new(delivery: F, tracker: &TaskTracker) -> Self {
        Self {
            delivery: Some(Box::pin(delivery)),
            tracked: tracker.token(),
        }
    }

    /// Runs the delivery to its end; dropped before then, it detaches it.
    async fn run(mut self) -> Finished {
        if let Some(delivery) = &mut self.delivery {
            let finished = delivery.as_mut().await;
            self.delivery = None;
            return finished;
        }
        // `new` always holds a delivery.
        std::future::pending().await
    }
}

impl<F: Future<Output = Finished> + Send + 'static> Drop for Detachable<F> {
    fn drop(&mut self) {
        let Some(delivery) = self.delivery.take() else {
            return;
        };
        // A delivery that panicked is not resumed; with no runtime left (it is being
        // torn down), none can be.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if std::thread::panicking() {
            return;
        }
        // Spawned before `tracked` is dropped: the tracker counts it throughout.
        let tracker = self.tracked.task_tracker().clone();
        tracker.clone().spawn_on(
            async move {
                if let Some(rest) = delivery.await.rest {
                    rest.settle(false, &tracker);
                }
            },
            &runtime,
        );
    }
}

/// An exchange that ended after its callback was answered.
struct Late {
    /// Whether a request went out: one withheld has no verdict to speak of.
    sent: bool,
    request_id: HeaderValue,
    outcome: Outcome,
    status: Option<http::StatusCode>,
    elapsed: Duration,
    fate: Fate,
}

impl Late {
    fn log(self, decision: &Decision, metrics: &Metrics, late_exchange: bool) {
        let key = idempotency_key(decision);
        let key = std::str::from_utf8(&key).unwrap_or("-");
        let request_id = self.request_id.to_str().unwrap_or("-");
        let status = self.status.map(|s| s.as_u16());
        let elapsed_ms = u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX);
        let outcome = self.outcome.label();
        if !self.sent {
            tracing::debug!(
                request_id,
                idempotency_key = key,
                outcome,
                "after the answer: nothing was sent"
            );
            return;
        }
        match self.fate {
            Fate::Delivered => {
                metrics.count_late_verdict(Verdict::Accepted);
                tracing::info!(
                    request_id,
                    idempotency_key = key,
                    outcome,
                    upstream_status = status,
                    upstream_ms = elapsed_ms,
                    "late verdict: accepted after the caller stopped waiting (answered 504, or gone); \
                     recorded as delivered, its copies are answered 200"
                );
            }
            Fate::Free => {
                metrics.count_late_verdict(Verdict::Refused);
                tracing::warn!(
                    request_id,
                    idempotency_key = key,
                    outcome,
                    upstream_status = status,
                    upstream_ms = elapsed_ms,
                    "late verdict: not accepted after the caller stopped waiting (answered 504, or gone); \
                     the next copy is delivered again"
                );
            }
            // With the exchange cut at the deadline, the caller saw this outcome itself.
            Fate::Uncertain if !late_exchange => {}
            Fate::Uncertain => {
                metrics.count_late_verdict(Verdict::Unanswered);
                tracing::warn!(
                    request_id,
                    idempotency_key = key,
                    outcome,
                    upstream_ms = elapsed_ms,
                    "late verdict: none, the legacy system never answered; \
                     copies are answered 504 until LATE_VERDICT_MS after arrival"
                );
            }
        }
    }
}

/// The card a callback's decision shows on: its `message_id` and the status its action
/// sets, or why there is none to repair.
fn card(summary: &crate::callback::Summary, decision: &Decision) -> Result<Card, CardRepair> {
    let message_id = summary
        .message_id()
        .ok_or(CardRepair::SkippedNoMessageId)?
        .to_owned();
    let status = CardStatus::for_action(summary.action_type()).ok_or(CardRepair::SkippedAction)?;
    let key = idempotency_key(decision);
    Ok(Card {
        message_id,
        status,
        key: String::from_utf8_lossy(&key).into_owned(),
    })
}

/// After a late verdict: an acceptance repairs the card in the background; anything
/// else leaves it, counted.
fn repair_card(
    openapi: &Arc<OpenApi>,
    card: Result<Card, CardRepair>,
    fate: Fate,
    metrics: &Arc<Metrics>,
) {
    match (fate, card) {
        (Fate::Delivered, Ok(card)) => openapi.repair(card, metrics),
        (Fate::Delivered, Err(skipped)) => {
            metrics.count_card_repair(skipped);
            tracing::info!(why = skipped.label(), "late acceptance: no card to repair");
        }
        (Fate::Free | Fate::Uncertain, card) => {
            metrics.count_card_repair(CardRepair::SkippedNotAccepted);
            tracing::info!(
                message_id = card.as_ref().ok().map(|c| c.message_id.as_str()),
                "late verdict not an acceptance: the card is left as it is"
            );
        }
    }
}

/// Writes an outcome the shared memory did not take in the callback's time, until it does.
async fn record_in_background(
    shared: &SharedMemory,
    decision: &Decision,
    claim: Option<&shared::Claim>,
    fate: Fate,
    uncertain_until: Instant,
    metrics: &Metrics,
) {
    let key = idempotency_key(decision);
    let key = std::str::from_utf8(&key).unwrap_or("-");
    metrics.count_deferred_record();
    metrics.redis_records_pending.inc();
    tracing::warn!(
        idempotency_key = key,
        fate = ?fate,
        "outcome not yet in the shared duplicate memory: retrying until Redis takes it"
    );
    let recorded = shared
        .record_until_done(decision, claim, fate, uncertain_until, metrics)
        .await;
    metrics.redis_records_pending.dec();
    match recorded {
        shared::Recorded::Landed => {
            tracing::info!(idempotency_key = key, fate = ?fate, "outcome recorded after all");
        }
        shared::Recorded::Lapsed => tracing::warn!(
            idempotency_key = key,
            fate = ?fate,
            "outcome never recorded; its late window is over and its key lapses by itself"
        ),
        shared::Recorded::TooMany => tracing::error!(
            idempotency_key = key,
            fate = ?fate,
            pending = shared::MAX_PENDING_RECORDS,
            "outcome not recorded: too many others are waiting for Redis; a copy reaching \
             another replica may be delivered again"
        ),
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
    uncertain_until: Instant,
) -> Result<(Option<Arc<shared::Claim>>, Option<Ticket>), Answered> {
    let (outcome, why) = match shared.admit(decision, deadline, metrics).await {
        shared::Admission::Deliver(claim) => return Ok((claim, ticket)),
        shared::Admission::Delivered { waited } => {
            if !waited {
                metrics.count_duplicate(How::Remembered, Store::Shared);
            }
            (Outcome::Duplicate, "delivered by another replica")
        }
        shared::Admission::TimedOut => (
            Outcome::UpstreamTimedOut,
            "another replica was still delivering it at the deadline",
        ),
        shared::Admission::Uncertain => {
            metrics.count_duplicate(How::Remembered, Store::Shared);
            (
                Outcome::Uncertain,
                "sent by another replica and never answered, within LATE_VERDICT_MS",
            )
        }
        shared::Admission::Unavailable => (
            Outcome::TryLater(TryLater::MemoryUnavailable),
            "the shared duplicate memory is unreachable",
        ),
    };
    if let Some(ticket) = ticket {
        // Delivered elsewhere is remembered by this replica's own memory too, so its
        // next copy needs no round trip; anything else is the shared memory's to say.
        match outcome {
            Outcome::Duplicate => {
                ticket.finish(&Outcome::Delivered, Fate::Delivered, uncertain_until)
            }
            ref other => ticket.finish(other, Fate::Free, uncertain_until),
        }
    }
    Err((outcome, why))
}

fn detail(why: &BadRequest) -> String {
    match why {
        BadRequest::Unauthorized(why) => why.to_string(),
        BadRequest::Invalid(why) => why.to_string(),
        other => format!("{other:?}"),
    }
}

/// The body length a request declares in `Content-Length`, when it declares one.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The caller's trace context, copied aside while the request is read and verified;
/// `None` without a `traceparent`, as Feishu sends.
fn caller_trace(headers: &HeaderMap) -> Option<HeaderMap> {
    let traceparent = headers.get(TRACEPARENT)?;
    let mut caller = HeaderMap::new();
    caller.insert(TRACEPARENT, traceparent.clone());
    for state in headers.get_all(TRACESTATE) {
        caller.append(TRACESTATE, state.clone());
    }
    Some(caller)
}

/// The callback's body, read whole within `max_body` and [`MAX_BODY_PIECES`].
async fn collect<B>(body: B, declared: Option<u64>, max_body: usize) -> Result<Bytes, Outcome>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The declared length is at most `max_body`, checked before.
    let expected = declared.map_or(max_body.min(16 * 1024), |n| n as usize);
    gather(body, expected, max_body, MAX_BODY_PIECES)
        .await
        .map_err(|e| {
            Outcome::BadRequest(match e {
                Gather::TooLarge => BadRequest::TooLarge,
                Gather::TooManyPieces => BadRequest::Fragmented,
                Gather::Broken(_) => BadRequest::Unreadable,
            })
        })
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use http_body_util::BodyExt as _;
    use std::task::{Context, Poll};

    use super::*;
    use http::StatusCode;

    use super::record::millis;

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
        let loaded = crate::config::Config::from_vars([
            (crate::config::UPSTREAM_URL, "http://127.0.0.1:9/"),
            (crate::config::TOKEN, "s3cret-token-for-tests"),
        ])
        .unwrap();
        let app = crate::app::App::build(&loaded.config).unwrap();
        let gateway = app.gateway();
        let upstream = gateway.upstream_for_worker();
        let request = Request::post(loaded.config.pipeline.path.as_str())
            .body(Panics)
            .unwrap();
        let response = gateway.handle(&upstream, request, &Shown::default()).await;
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
