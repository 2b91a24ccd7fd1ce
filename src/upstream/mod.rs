//! Delivery to the legacy system: kept-alive HTTP/1.1 connections, one
//! bounded exchange per callback.
//!
//! Each worker thread has its own pool of hyper connections (see
//! [`Upstream::for_worker`]), so a connection is only ever used and driven
//! by one thread. The pool is a stack: the connection used last is used
//! next, which keeps few connections busy and lets the rest time out.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::Full;
use hyper::client::conn::http1;
use tokio::time::{Instant, timeout_at};
use tower_service::Service as _;

use crate::callback::{self, Decision};
use crate::observe::trace::{TRACEPARENT, TRACESTATE, Trace};
use crate::outcome::{Outcome, UpstreamError};
use crate::util::body::{Gather, gather};
use crate::util::https::{self, Connector, TrustFile, Versions};
use crate::vars::{self, ConfigError, ConfigErrors};

pub mod answer;
pub mod breaker;
mod pool;
mod retry;
mod spelling;

use answer::{MAX_ANSWER_BYTES, OkRule, Unread};
use breaker::{Breaker, Pass};
use pool::{Pool, STALE_TRIES, Sender};
use retry::{
    FIRST_BACKOFF, MAX_BACKOFF, MIN_ATTEMPT, Retry, jittered, never_sent, refused_by_tls,
    retry_after,
};
use spelling::{Spelled, Spellings};

/// Header carrying the key that names the approval decision.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Header carrying the request id, end to end.
pub const REQUEST_ID: &str = "x-request-id";
/// Header carrying the lease's fencing token: a number that grows with every lease
/// taken, so a legacy system can refuse a request older than one it already took for
/// the same `Idempotency-Key`.
pub const FENCING_TOKEN: &str = "fencing-token";

/// `feishu-gate/<version>`, sent as `User-Agent`.
pub const USER_AGENT: &str = concat!("feishu-gate/", env!("CARGO_PKG_VERSION"));

/// The legacy system, as the gateway reaches it: where it is and how to
/// talk to it, and this worker's connections to it.
pub struct Upstream {
    pool: Pool,
    route: Route,
    /// The header map of the last answer read, emptied, for the next request.
    spare_headers: std::sync::Mutex<Option<HeaderMap>>,
}

/// Everything about the upstream but the connections, shared by the workers.
#[derive(Clone)]
struct Route {
    /// The bound on one exchange.
    timeout: Duration,
    connector: Connector,
    url: Uri,
    /// The request target: the URL's path and query (origin form).
    target: Uri,
    headers: UpstreamHeaders,
    /// The `Host` header the client would otherwise format for every request.
    host: Option<HeaderValue>,
    ok_rule: Option<OkRule>,
    retry_503: bool,
    /// Shared by every worker: the legacy system's reachability is one fact.
    breaker: Arc<Breaker>,
    spellings: Spellings,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &crate::util::text::shown_url(&self.route.url))
            .field("headers", &self.route.headers)
            .field("ok_rule", &self.route.ok_rule)
            .finish_non_exhaustive()
    }
}

/// What one delivery came to, over all its attempts.
#[derive(Debug)]
pub struct Exchange {
    pub outcome: Outcome,
    /// The last attempt's status.
    pub status: Option<StatusCode>,
    pub elapsed: Duration,
    /// A detail for the operator's log, never shown to Feishu.
    pub detail: Option<String>,
    /// The attempts made after the first, by why.
    pub retries: Retries,
    /// Whether a request may have reached the legacy system: a failure after that leaves
    /// the decision uncertain, not free for another delivery.
    pub sent: bool,
}

/// One decision to deliver, and its time.
pub struct Delivery<'a> {
    pub body: Vec<u8>,
    pub request_id: &'a HeaderValue,
    pub trace: &'a Trace,
    pub decision: &'a Decision,
    /// The lease's fencing token, sent as [`FENCING_TOKEN`].
    pub fence: Option<u64>,
    /// The caller's reading of the clock just before the call, which the exchange's
    /// duration counts from.
    pub started: Instant,
    /// No attempt starts after this: the caller is answered then.
    pub answer_by: Instant,
    /// An attempt under way is waited for until this (`LATE_VERDICT_MS`).
    pub give_up: Instant,
}

/// Why a request was not sent after all: what the caller is answered, and why, for the log.
#[derive(Debug)]
pub struct Withheld {
    pub outcome: Outcome,
    pub why: &'static str,
}

impl Exchange {
    /// Requests tried, the first included.
    pub fn attempts(&self) -> u32 {
        1 + self.retries.total()
    }
}

/// Attempts repeated, by why each was safe to repeat.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// The request never reached the legacy system (refused, or the
    /// connection closed before a byte of it was written).
    pub unsent: u32,
    /// A `503` with a `Retry-After` that fitted in the time left.
    pub unavailable: u32,
}

impl Retries {
    pub fn total(&self) -> u32 {
        self.unsent + self.unavailable
    }
}

impl Upstream {
    /// Builds the client from its settings; fails on unreadable TLS material.
    pub fn new(settings: &Settings) -> Result<Self, ConfigErrors> {
        let https = settings.url.scheme() == Some(&http::uri::Scheme::HTTPS);
        let identity = settings
            .client
            .as_ref()
            .map(|id| (id.cert.as_path(), id.key.as_path()));
        let tls = https::client_config(https, settings.ca_file.as_deref(), identity).map_err(
            |(file, e)| {
                let variable = match file {
                    TrustFile::Ca => vars::UPSTREAM_CA_FILE,
                    TrustFile::ClientCert => vars::UPSTREAM_CLIENT_CERT,
                    TrustFile::ClientKey => vars::UPSTREAM_CLIENT_KEY,
                };
                ConfigErrors::from(ConfigError::new(variable, e.to_string()))
            },
        )?;
        let connector = https::connector(tls, Versions::Http1, Some(settings.timeout));
        let target = settings.url.path_and_query().map_or_else(
            || Uri::from_static("/"),
            |p| Uri::try_from(p.as_str()).unwrap_or_else(|_| Uri::from_static("/")),
        );
        Ok(Self {
            pool: Pool::default(),
            spare_headers: std::sync::Mutex::default(),
            route: Route {
                timeout: settings.timeout,
                connector,
                url: settings.url.clone(),
                target,
                headers: settings.headers.clone(),
                host: host_header(&settings.url),
                ok_rule: settings.ok_rule.clone(),
                retry_503: settings.retry_503,
                breaker: Arc::new(Breaker::new(settings.connect_retry)),
                spellings: spellings(&settings.headers),
            },
        })
    }

    /// Whether the legacy system counts as down (`CONNECT_RETRY_MS`), shared by every
    /// worker's upstream.
    pub fn breaker(&self) -> &Breaker {
        &self.route.breaker
    }

    /// The same upstream with a connection pool of its own, for one worker
    /// thread: a connection is then only ever driven by the thread whose
    /// requests it carries, and a request never waits on another thread.
    pub fn for_worker(&self) -> Self {
        Self {
            pool: Pool::default(),
            route: self.route.clone(),
            spare_headers: std::sync::Mutex::default(),
        }
    }

    /// The bound on one exchange, as configured.
    pub fn timeout(&self) -> Duration {
        self.route.timeout
    }

    /// Closes connections idle for longer than the pool keeps them.
    pub fn close_idle(&self) {
        self.pool.close_idle(Instant::now());
    }

    /// Sends `request` on a kept-alive connection, or a new one. A pooled
    /// connection the upstream closed before the request could be written
    /// is passed over for the next: nothing was sent on it.
    async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
        now: Instant,
    ) -> Result<(Sender, http::Response<hyper::body::Incoming>), SendError> {
        for _ in 0..STALE_TRIES {
            let Some(mut sender) = self.pool.checkout(now) else {
                break;
            };
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((sender, response)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        // A connection made is the news the breaker waits for, whatever comes of the request.
        self.route.breaker.connected();
        match sender.try_send_request(request).await {
            Ok(response) => Ok((sender, response)),
            Err(mut e) => {
                let unsent = e.take_message().is_some();
                let error = e.into_error();
                if unsent {
                    // Closed before a byte of the request went out: as good as refused.
                    Err(SendError::Unsent(error))
                } else {
                    Err(SendError::Exchange(error))
                }
            }
        }
    }

    async fn connect(&self) -> Result<Sender, SendError> {
        let mut connector = self.route.connector.clone();
        let io = connector
            .call(self.route.url.clone())
            .await
            .map_err(SendError::Connect)?;
        let io = Spelled::new(io, self.route.spellings.clone());
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))?;
        // The connection reads and writes on this worker for as long as it lives.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %error_chain(&e), "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// POSTs the body and classifies the answer. Redirects are answers, not
    /// instructions: never followed.
    ///
    /// `may_send` is asked right before every attempt; when it withholds the request,
    /// nothing more is sent. A request that provably never reached the legacy system is
    /// tried again after a short jittered pause, as is one answered `503` with a
    /// `Retry-After` that fits, for as long as `answer_by` leaves time for another
    /// attempt; a request that may have been received never is.
    pub async fn deliver<G, F>(&self, mut delivery: Delivery<'_>, mut may_send: G) -> Exchange
    where
        G: FnMut() -> F,
        F: std::future::Future<Output = Result<(), Withheld>>,
    {
        let prepared = Prepared::new(std::mem::take(&mut delivery.body), &delivery);
        let mut retries = Retries::default();
        let mut backoff = FIRST_BACKOFF;
        let breaker = &self.route.breaker;
        // Refused connections are retried this long, within the answer bound.
        let connect_retry_by = match breaker.budget() {
            budget if budget.is_zero() => delivery.answer_by,
            budget => (delivery.started + budget).min(delivery.answer_by),
        };
        loop {
            let probe = match breaker.pass() {
                Pass::Normal => None,
                Pass::Probe(guard) => Some(guard),
                Pass::Refused(since) => {
                    return Exchange {
                        outcome: Outcome::UpstreamUnreachable(UpstreamError::Connect),
                        status: None,
                        elapsed: delivery.started.elapsed(),
                        detail: Some(format!(
                            "not sent: the legacy system has refused every connection for {} s \
                             (CONNECT_RETRY_MS), and another callback is probing it",
                            since.as_secs()
                        )),
                        retries,
                        sent: false,
                    };
                }
            };
            if let Err(withheld) = may_send().await {
                return Exchange {
                    outcome: withheld.outcome,
                    status: None,
                    elapsed: delivery.started.elapsed(),
                    detail: Some(withheld.why.to_owned()),
                    retries,
                    sent: false,
                };
            }
            let (mut exchange, retry) = self
                .attempt(
                    (&prepared, delivery.request_id, delivery.trace),
                    delivery.started,
                    (delivery.answer_by, delivery.give_up),
                )
                .await;
            let refused = matches!(retry, Some(Retry::Unsent))
                && matches!(
                    exchange.outcome,
                    Outcome::UpstreamUnreachable(UpstreamError::Connect)
                );
            if refused {
                breaker.refused();
            }
            let pause = match retry {
                // A probe is one attempt: the callback waiting on it is answered now.
                _ if probe.is_some() => None,
                None => None,
                Some(Retry::Unsent) => Some(jittered(backoff)),
                Some(Retry::After(asked)) => Some(asked.max(jittered(backoff))),
            };
            let now = Instant::now();
            let retry_by = if refused {
                connect_retry_by
            } else {
                delivery.answer_by
            };
            drop(probe);
            match pause {
                Some(pause) if now + pause + MIN_ATTEMPT <= retry_by => {
                    match retry {
                        Some(Retry::After(_)) => retries.unavailable += 1,
                        _ => retries.unsent += 1,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    tokio::time::sleep_until(now + pause).await;
                }
                _ => {
                    exchange.retries = retries;
                    return exchange;
                }
            }
        }
    }

    /// One attempt: the exchange it came to, and whether it may be repeated.
    async fn attempt(
        &self,
        outgoing: Outgoing<'_>,
        started: Instant,
        (answer_by, give_up): (Instant, Instant),
    ) -> (Exchange, Option<Retry>) {
        // Before an answer: no status, and the time is up to now.
        let done = |outcome, detail: String, sent| Exchange {
            outcome,
            status: None,
            elapsed: started.elapsed(),
            detail: Some(detail),
            retries: Retries::default(),
            sent,
        };
        let request = match self.request(outgoing) {
            Ok(r) => r,
            Err(e) => {
                return (
                    done(
                        Outcome::UpstreamUnreachable(UpstreamError::Connect),
                        e.to_string(),
                        false,
                    ),
                    None,
                );
            }
        };
        let (sender, response) = match timeout_at(give_up, self.send(request, Instant::now())).await
        {
            // Connecting is bounded by the connector's own timeout, well before
            // this: what ran out was the wait for an answer to a request sent.
            Err(_) => {
                return (
                    done(
                        Outcome::UpstreamTimedOut,
                        "no answer before the deadline".into(),
                        true,
                    ),
                    None,
                );
            }
            Ok(Err(SendError::Connect(e))) => {
                let retry = never_sent(&*e).then_some(Retry::Unsent);
                return (
                    done(
                        Outcome::UpstreamUnreachable(UpstreamError::Connect),
                        format!("connecting: {}", error_chain(&*e)),
                        false,
                    ),
                    retry,
                );
            }
            Ok(Err(SendError::Unsent(e))) => {
                return (
                    done(
                        Outcome::UpstreamUnreachable(UpstreamError::Connect),
                        format!("closed before the request was written: {}", error_chain(&e)),
                        false,
                    ),
                    // A refused certificate stays refused.
                    (!refused_by_tls(&e)).then_some(Retry::Unsent),
                );
            }
            Ok(Err(SendError::Exchange(e))) => {
                let refused = refused_by_tls(&e);
                let kind = if refused {
                    UpstreamError::Connect
                } else {
                    UpstreamError::Dropped
                };
                return (
                    done(
                        Outcome::UpstreamUnreachable(kind),
                        error_chain(&e),
                        !refused,
                    ),
                    None,
                );
            }
            Ok(Ok(sent)) => sent,
        };
        let status = response.status();
        let retry = (self.route.retry_503 && status == StatusCode::SERVICE_UNAVAILABLE)
            .then(|| retry_after(response.headers()))
            .flatten()
            .map(Retry::After);
        let (parts, body) = response.into_parts();
        // Any status but a success is a refusal whatever its body says: its message
        // is not worth a late verdict.
        let body_by = if status.is_success() {
            give_up
        } else {
            answer_by
        };
        let answer = timeout_at(body_by, gather(body, 1024, MAX_ANSWER_BYTES, usize::MAX)).await;
        let answered = Instant::now();
        let answer: Result<Bytes, Unread> = match answer {
            Ok(Ok(collected)) => {
                // Only a connection whose answer was read to its end can carry
                // the next request; any other is dropped, which closes it.
                self.pool.checkin(sender, answered);
                Ok(collected)
            }
            Ok(Err(Gather::TooLarge | Gather::TooManyPieces)) => Err(Unread::TooLong),
            Ok(Err(Gather::Broken(e))) => Err(Unread::Broken(format!("reading the answer: {e}"))),
            Err(_) => Err(Unread::Late),
        };
        let (outcome, detail) =
            answer::judge(status, &parts.headers, answer, self.route.ok_rule.as_ref());
        let mut spare = parts.headers;
        spare.clear();
        *self
            .spare_headers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(spare);
        let exchange = Exchange {
            outcome,
            status: Some(status),
            elapsed: answered - started,
            detail,
            retries: Retries::default(),
            sent: true,
        };
        (exchange, retry)
    }

    fn request(
        &self,
        (prepared, request_id, trace): Outgoing<'_>,
    ) -> Result<Request<Full<Bytes>>, http::Error> {
        // Names are built once, not parsed for every callback.
        const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);
        const IDEMPOTENCY_KEY_NAME: HeaderName = HeaderName::from_static(IDEMPOTENCY_KEY);
        const TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
        const TRACESTATE_NAME: HeaderName = HeaderName::from_static(TRACESTATE);
        const FENCING_TOKEN_NAME: HeaderName = HeaderName::from_static(FENCING_TOKEN);
        // The map the last answer was read into, emptied: its room is this request's.
        let mut headers = self
            .spare_headers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .unwrap_or_else(|| HeaderMap::with_capacity(8 + self.route.headers.0.len()));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        headers.insert(REQUEST_ID_NAME, request_id.clone());
        headers.insert(IDEMPOTENCY_KEY_NAME, prepared.idempotency_key.clone());
        headers.insert(TRACEPARENT_NAME, prepared.traceparent.clone());
        if let Some(state) = &trace.tracestate {
            headers.insert(TRACESTATE_NAME, state.clone());
        }
        if let Some(fence) = &prepared.fence {
            headers.insert(FENCING_TOKEN_NAME, fence.clone());
        }
        for (name, value) in &self.route.headers.0 {
            headers.append(name, value.clone());
        }
        // Where and as the client would add it: last, unless one was configured.
        if let Some(host) = &self.route.host
            && !headers.contains_key(header::HOST)
        {
            headers.insert(header::HOST, host.clone());
        }
        // Set here, the client takes it as it is instead of formatting one.
        headers.insert(header::CONTENT_LENGTH, prepared.content_length.clone());
        let mut request = Request::new(Full::new(prepared.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.route.target.clone();
        *request.headers_mut() = headers;
        Ok(request)
    }
}

/// What every attempt of one delivery sends alike: the body and the values of the
/// headers that depend on the decision, written after the body in the room its buffer
/// keeps for them ([`callback::UPSTREAM_BODY_SPARE`]), so that one allocation holds
/// them all and each attempt only counts references.
struct Prepared {
    body: Bytes,
    content_length: HeaderValue,
    idempotency_key: HeaderValue,
    traceparent: HeaderValue,
    fence: Option<HeaderValue>,
}

impl Prepared {
    fn new(body: Vec<u8>, delivery: &Delivery<'_>) -> Self {
        let body_len = body.len();
        let mut buffer = body;
        let mut digits = itoa::Buffer::new();
        let mut ends = [0usize; 4];
        buffer.extend_from_slice(digits.format(body_len).as_bytes());
        ends[0] = buffer.len();
        buffer.extend_from_slice(&callback::idempotency_key(delivery.decision));
        ends[1] = buffer.len();
        buffer.extend_from_slice(&delivery.trace.traceparent_text());
        ends[2] = buffer.len();
        if let Some(fence) = delivery.fence {
            buffer.extend_from_slice(digits.format(fence).as_bytes());
        }
        ends[3] = buffer.len();
        let all = Bytes::from(buffer);
        // Digits, hex and dashes: always a valid header value.
        let value = |from: usize, to: usize| {
            HeaderValue::from_maybe_shared(all.slice(from..to))
                .unwrap_or_else(|_| HeaderValue::from_static(""))
        };
        Self {
            body: all.slice(..body_len),
            content_length: value(body_len, ends[0]),
            idempotency_key: value(ends[0], ends[1]),
            traceparent: value(ends[1], ends[2]),
            fence: delivery.fence.map(|_| value(ends[2], ends[3])),
        }
    }
}

/// What one attempt sends: the delivery's prepared parts, its request id and trace.
type Outgoing<'a> = (&'a Prepared, &'a HeaderValue, &'a Trace);

/// Why a request could not be exchanged.
enum SendError {
    /// No connection: nothing was sent.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// A new connection closed before a byte of the request was written
    /// (hyper handed the request back): nothing was sent.
    Unsent(hyper::Error),
    /// The connection failed once the request was (or may have been) sent.
    Exchange(hyper::Error),
}

/// `host[:port]` for the upstream URL, the port left out when it is the
/// scheme's default, exactly as hyper-util's client writes `Host`.
fn host_header(url: &Uri) -> Option<HeaderValue> {
    let host = url.host()?;
    let secure = matches!(url.scheme_str(), Some("https" | "wss"));
    let value = match url.port() {
        Some(port) if !(port.as_u16() == 443 && secure || port.as_u16() == 80 && !secure) => {
            format!("{host}:{port}")
        }
        _ => host.to_owned(),
    };
    HeaderValue::from_str(&value).ok()
}

/// The whole cause chain of an error, for logs and command output.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The legacy system, as the operator configured it (`UPSTREAM_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: Uri,
    /// The bound on the whole exchange.
    pub timeout: Duration,
    pub headers: UpstreamHeaders,
    /// Trust anchors added to the system's.
    pub ca_file: Option<PathBuf>,
    pub client: Option<ClientIdentity>,
    pub ok_rule: Option<OkRule>,
    /// Whether a `503` with a fitting `Retry-After` is sent again (`RETRY_503`).
    pub retry_503: bool,
    /// How long a refused connection is retried, and how long refusals last before
    /// callbacks are answered at once (`CONNECT_RETRY_MS`); zero: the answer bound alone.
    pub connect_retry: Duration,
}

/// Client certificate for mutual TLS to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Extra headers for the upstream, and each name as the operator wrote it, which is how
/// it goes out. Values are secret; `Debug` shows names only.
#[derive(Clone, Default)]
pub struct UpstreamHeaders(pub Vec<(HeaderName, HeaderValue)>, pub Vec<String>);

impl std::fmt::Debug for UpstreamHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.1.iter().map(|n| (n.as_str(), "<redacted>")))
            .finish()
    }
}

/// How every header name of a request goes out: the gateway's own as their standards and
/// the conventions of legacy servers write them (`traceparent` and `tracestate` lower-case,
/// as W3C writes them, are sent as hyper writes every name), the operator's as written.
fn spellings(headers: &UpstreamHeaders) -> Spellings {
    const OWN: &[&str] = &[
        "Host",
        "Content-Type",
        "Content-Length",
        "User-Agent",
        "X-Request-Id",
        "Idempotency-Key",
        "Fencing-Token",
    ];
    Spellings::new(
        OWN.iter()
            .copied()
            .chain(headers.1.iter().map(String::as_str)),
    )
}

/// Headers the gateway itself owns on the upstream request.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "expect",
    "user-agent",
    "x-request-id",
    "idempotency-key",
    "traceparent",
    "tracestate",
    FENCING_TOKEN,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_is_written_as_the_client_writes_it() {
        let host = |url: &str| host_header(&url.parse().unwrap()).unwrap();
        assert_eq!(host("http://127.0.0.1:8080/legacy"), "127.0.0.1:8080");
        assert_eq!(host("http://legacy.internal/approve"), "legacy.internal");
        assert_eq!(host("http://legacy:80/"), "legacy");
        assert_eq!(host("https://legacy:443/"), "legacy");
        assert_eq!(host("https://legacy:80/"), "legacy:80");
        assert_eq!(host("http://legacy:443/"), "legacy:443");
        assert_eq!(host("http://[::1]:9000/"), "[::1]:9000");
    }
}
