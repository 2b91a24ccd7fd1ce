//! The path of one callback, top to bottom: route, limit, read, verify,
//! deduplicate, forward, translate, answer, log.

mod guard;
mod ids;
pub mod limit;
mod record;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, Version, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use tokio::time::{Instant, timeout_at};
use tokio_util::task::TaskTracker;

use guard::{CatchPanic, InFlight};
use ids::RequestIds;
use record::{Record, log};

use crate::callback::verify::Verifier;
use crate::callback::{Callback, Decision};
use crate::dedup::local::{Admission, Dedup, Ticket};
use crate::dedup::shared::{self, SharedMemory};
use crate::observe::metrics::{How, Metrics, RetryReason, Scope, Store, UpstreamErrorKind as Kind};
use crate::observe::otlp::{CallbackSpan, Telemetry};
use crate::observe::trace::Trace;
use crate::outcome::{BadRequest, Outcome, TryLater, UpstreamError};
use crate::pipeline::limit::{Limits, RateLimit};
use crate::respond::Translator;
use crate::upstream::{Exchange, REQUEST_ID, Upstream};

/// Bytes of request bodies held at once, every connection together. Each request reserves
/// its declared length (or `MAX_BODY_BYTES` when it declares none) before its body is
/// read, and keeps it until answered; one that cannot within its read deadline is refused
/// as too slow. So the memory bodies take does not grow with the connections open.
pub const BODY_BUDGET_BYTES: usize = 32 * 1024 * 1024;

/// A callback body is a few KiB; a client slower than this is not Feishu.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(3);

/// The callback path and its bounds (`CALLBACK_PATH`, `MAX_BODY_BYTES`,
/// `ANSWER_WITHIN_MS`, `RATE_LIMIT_*`, `USER_RATE_LIMIT_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub path: String,
    pub max_body: usize,
    /// By when after its arrival every callback is answered.
    pub answer_within: Duration,
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

impl Gateway {
    /// The pipeline over its parts, which the composition root builds from the
    /// configuration.
    pub fn new(settings: &Settings, parts: Parts) -> Self {
        Self {
            path: settings.path.clone(),
            max_body: settings.max_body,
            upstream_timeout: parts.upstream.timeout(),
            answer_within: settings.answer_within,
            verifier: parts.verifier,
            upstream: parts.upstream,
            translator: parts.translator,
            limits: Limits::new(settings.rate_limit, settings.user_rate_limit),
            dedup: parts.dedup,
            shared: parts.shared.map(Arc::new),
            request_ids: RequestIds::default(),
            body_budget: Arc::new(tokio::sync::Semaphore::new(BODY_BUDGET_BYTES / 1024)),
            health: Arc::default(),
            metrics: Arc::default(),
            deliveries: TaskTracker::new(),
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
            self.metrics.count_rate_limited(Scope::Global);
            return Outcome::TryLater(TryLater::RateLimited { retry_after_secs });
        }
        if let Err(retry_after_secs) = self.limits.check_user(&summary.user_id) {
            self.metrics.count_rate_limited(Scope::User);
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
                    self.metrics.count_duplicate(How::Remembered, Store::Local);
                    return Outcome::Duplicate;
                }
                Admission::Wait(mut first) => {
                    self.metrics.count_duplicate(How::InFlight, Store::Local);
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
                span.finish(&exchange.outcome, exchange.status, exchange.attempts());
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
                .count_retries(RetryReason::Unsent, exchange.retries.unsent);
            self.metrics
                .count_retries(RetryReason::Unavailable, exchange.retries.unavailable);
            self.metrics.count_retried(exchange.outcome.label());
        }
        exchange.outcome
    }

    fn observe(&self, outcome: &Outcome, elapsed: Duration) {
        let m = &self.metrics;
        m.count_callback(outcome.label());
        m.callback_duration.observe(elapsed.as_secs_f64());
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
) -> Result<(Option<shared::Claim>, Option<Ticket>), (Outcome, &'static str)> {
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
        shared::Admission::Unavailable => (
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

fn detail(why: &BadRequest) -> String {
    match why {
        BadRequest::Unauthorized(why) => why.to_string(),
        BadRequest::Invalid(why) => why.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
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
