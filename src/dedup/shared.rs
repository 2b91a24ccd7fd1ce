//! The duplicate memory shared by every replica, on Redis (`REDIS_URL`).
//!
//! [`super::local`] stays in front: it suppresses this replica's own copies
//! without a round trip. What reaches this module is a callback that replica
//! has not seen in flight or delivered, and the question is whether any other
//! replica has.
//!
//! One key per decision, `{prefix}{hex digest}`, holds either a claim
//! (`claim:<random>`, set atomically only when the key is absent, expiring
//! [`CLAIM_TTL`] after it was taken) or `delivered` (expiring after
//! `DEDUP_TTL_SECS`). A claim expires on its own shortly after Feishu's
//! deadline, so a replica that dies mid-delivery does not block the decision;
//! a failed delivery deletes its own claim (and only its own), so a retry goes
//! through. Every operation has [`OP_BUDGET`]; when Redis cannot answer in it,
//! `REDIS_FAILURE` decides.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::callback::{Decision, idempotency_key};
use crate::observe::metrics::{How, LabelValue as _, Metrics, RedisOp, RedisResult, Store};
use crate::outcome::Outcome;
use crate::util::pem::{self, PemError};
use crate::util::text::{percent_decode, redact};
use crate::vars::{ConfigError, REDIS_CA_FILE, REDIS_URL};

/// The most one Redis operation may take. A round trip inside a zone is well
/// under a millisecond; this leaves room for a busy server while costing a
/// callback at most a small share of Feishu's 10 s.
pub const OP_BUDGET: Duration = Duration::from_millis(300);

/// How long a claim lives: past the latest moment any replica can still be
/// delivering (`ANSWER_WITHIN` after arrival), so it never lapses during a
/// live delivery, and short enough that a replica killed mid-delivery holds
/// the decision only a little past Feishu's deadline.
pub const CLAIM_TTL: Duration = Duration::from_secs(12);

/// How often a copy looks again at a decision another replica is delivering.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// A copy whose first disappeared delivers itself only with at least this
/// much of its deadline left: less cannot fit a useful exchange with the
/// legacy system.
pub const MIN_TIME_TO_DELIVER: Duration = Duration::from_millis(500);

/// While Redis is failing, one callback in this interval tries it again; the
/// rest go straight to `REDIS_FAILURE`'s answer instead of each spending the
/// whole budget on an unreachable server.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How long past a delivery's deadline its outcome may still be recorded:
/// the deadline leaves Feishu 500 ms, and this takes at most half of it.
pub const SETTLE_GRACE: Duration = Duration::from_millis(250);

const DELIVERED: &str = "delivered";

/// Returns the key's value if it has one; otherwise claims it and returns nil.
/// One script, so no other replica can claim between the look and the set, and
/// it runs on any Redis from 2.6 (`SET NX GET` needs 7.0).
const CLAIM_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Deletes the key only while it still holds this replica's claim: a claim
/// that expired and was taken by another replica, or a `delivered` written by
/// one, is not this replica's to delete.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The shared memory of one gateway.
pub struct SharedMemory {
    client: redis::Client,
    /// Made on first use, inside the runtime of the worker that first needs
    /// it: the connection's tasks must live in a runtime, and `check-config`
    /// builds a gateway without one. Dropped after an error, so the next
    /// attempt starts afresh: the manager reconnects by itself after an I/O
    /// error, but keeps returning any other error its connection ended with
    /// (a password rotated, a server still loading its data).
    connection: Mutex<Option<ConnectionManager>>,
    url: RedisUrl,
    prefix: String,
    ttl_secs: u64,
    failure: FailureMode,
    claim: redis::Script,
    release: redis::Script,
    /// Whether the last operation failed: the start and end of an episode are
    /// logged once each.
    failing: AtomicBool,
    /// While failing, when (in ms since `epoch`) the next probe may go.
    next_probe_ms: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("ttl_secs", &self.ttl_secs)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

/// This replica's hold on a decision, taken before delivering it.
#[derive(Debug)]
pub struct Claim {
    key: String,
    token: String,
}

/// What the shared memory says about a callback this replica is about to deliver.
#[derive(Debug)]
pub enum Admission {
    /// Deliver it. `Some`: under this replica's claim, to be settled with
    /// [`SharedMemory::settle`]; `None`: Redis could not be asked and
    /// `REDIS_FAILURE=open` lets the local memory alone decide.
    Deliver(Option<Claim>),
    /// Another replica delivered it: `waited` when it was still in flight as
    /// this copy arrived.
    Delivered { waited: bool },
    /// Another replica was still delivering it when this copy's deadline came.
    TimedOut,
    /// Redis could not be asked and `REDIS_FAILURE=closed`.
    Unavailable,
}

/// Why an operation did not get an answer.
enum Failed {
    Error(redis::RedisError),
    Timeout,
    /// Not tried: Redis is failing and this is not the moment for a probe.
    Skipped,
}

impl SharedMemory {
    /// Prepares the client; no connection is made until the first callback, so
    /// the gateway starts (and `/readyz` passes) whether or not Redis is up.
    ///
    /// A problem is returned with the variable it is about.
    pub fn new(settings: &RedisSettings, ttl: Duration) -> Result<Self, ConfigError> {
        let scrub = |e: redis::RedisError| settings.url.scrub(&e.to_string());
        let client = match &settings.ca_file {
            None => redis::Client::open(settings.url.expose())
                .map_err(|e| ConfigError::new(REDIS_URL, scrub(e)))?,
            Some(path) => {
                let shown = path.display();
                // redis-rs would take a file with no certificate in it as an empty
                // trust store, and every connection would then fail.
                let ca_error = |problem: String| ConfigError::new(REDIS_CA_FILE, problem);
                let pem = std::fs::read(path)
                    .map_err(|e| ca_error(format!("cannot read {shown}: {}", e.kind())))?;
                if pem::certs(&pem).is_none() {
                    let path = path.clone();
                    return Err(ca_error(PemError::NoCertificates { path }.to_string()));
                }
                redis::Client::build_with_tls(
                    settings.url.expose(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )
                .map_err(|e| ca_error(format!("{shown} is not usable: {}", scrub(e))))?
            }
        };
        Ok(Self {
            client,
            connection: Mutex::new(None),
            url: settings.url.clone(),
            prefix: settings.prefix.clone(),
            ttl_secs: ttl.as_secs().max(1),
            failure: settings.failure,
            claim: redis::Script::new(CLAIM_SCRIPT),
            release: redis::Script::new(RELEASE_SCRIPT),
            failing: AtomicBool::new(false),
            next_probe_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        let mut slot = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // Reconnection is retried by the manager with a short backoff; each
        // callback's own budget bounds how long it waits for one.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_BUDGET))
            .set_response_timeout(Some(OP_BUDGET))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(self.client.clone(), config)?;
        *slot = Some(manager.clone());
        Ok(manager)
    }

    fn forget_connection(&self) {
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn key(&self, decision: &Decision) -> String {
        let hex = idempotency_key(decision);
        let mut key = String::with_capacity(self.prefix.len() + hex.len());
        key.push_str(&self.prefix);
        key.extend(hex.iter().map(|&b| char::from(b)));
        key
    }

    /// Asks the shared memory whether this replica may deliver `decision`;
    /// waits, until `deadline`, while another replica is delivering it.
    pub async fn admit(
        &self,
        decision: &Decision,
        deadline: Instant,
        metrics: &Metrics,
    ) -> Admission {
        let key = self.key(decision);
        let token = format!("claim:{}", uuid::Uuid::new_v4().simple());
        let mut waited = false;
        loop {
            // A claim that vanished while this copy waited means the first
            // delivery failed: the copy takes the decision over and delivers
            // it, but only with time left to do so; later, it only watches
            // for the first's success.
            let late = waited && too_late(deadline);
            let seen = if late {
                self.peek(&key, deadline, metrics).await
            } else {
                let op = if waited {
                    RedisOp::Wait
                } else {
                    RedisOp::Claim
                };
                self.try_claim(&key, &token, op, deadline, metrics).await
            };
            match seen {
                Ok(None) if late => return Admission::TimedOut,
                Ok(None) => return Admission::Deliver(Some(Claim { key, token })),
                Ok(Some(value)) if value == DELIVERED => return Admission::Delivered { waited },
                // Another replica's claim: look again shortly, within the deadline.
                Ok(Some(_)) => {}
                Err(()) => {
                    return match self.failure {
                        FailureMode::Closed => Admission::Unavailable,
                        FailureMode::Open if waited && too_late(deadline) => Admission::TimedOut,
                        FailureMode::Open => Admission::Deliver(None),
                    };
                }
            }
            if !waited {
                metrics.count_duplicate(How::InFlight, Store::Shared);
            }
            waited = true;
            let next = Instant::now() + POLL_EVERY;
            if next >= deadline {
                return Admission::TimedOut;
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// The key's value, without claiming it.
    async fn peek(
        &self,
        key: &str,
        deadline: Instant,
        metrics: &Metrics,
    ) -> Result<Option<String>, ()> {
        self.run(RedisOp::Wait, deadline, metrics, |mut c| {
            let key = key.to_owned();
            async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut c)
                    .await
            }
        })
        .await
        .map_err(|_| ())
    }

    /// Runs the claim script: `None` when this replica now holds the claim,
    /// otherwise what the key holds.
    async fn try_claim(
        &self,
        key: &str,
        token: &str,
        op: RedisOp,
        deadline: Instant,
        metrics: &Metrics,
    ) -> Result<Option<String>, ()> {
        let ttl_ms = ms(CLAIM_TTL);
        let result = self
            .run(op, deadline, metrics, |mut c| {
                let mut invocation = self.claim.key(key);
                invocation.arg(token).arg(ttl_ms);
                async move { invocation.invoke_async::<Option<String>>(&mut c).await }
            })
            .await;
        if matches!(result, Err(Failed::Timeout)) {
            self.abandon(key, token);
        }
        result.map_err(|_| ())
    }

    /// Withdraws a claim this replica gave up waiting for. A server that was
    /// stopped, not gone, still runs the claim when it resumes, and that claim
    /// would hold the decision for [`CLAIM_TTL`] with nobody delivering it:
    /// copies on other replicas would wait and time out. The release goes down
    /// the same connection, so it runs right after the claim, whenever that is.
    fn abandon(&self, key: &str, token: &str) {
        let Ok(mut c) = self.connection() else {
            return;
        };
        let mut release = redis::cmd("EVAL");
        release.arg(RELEASE_SCRIPT).arg(1).arg(key).arg(token);
        tokio::spawn(async move {
            let _ = release.query_async::<i64>(&mut c).await;
        });
    }

    /// Records how a delivery under `claim` ended: `delivered` for the TTL, or
    /// the claim removed so that a retry, here or on another replica, goes through.
    /// It runs before Feishu is answered, so that a decision answered 200 is
    /// already remembered by every replica; `deadline` is the delivery's, and
    /// the record may take [`SETTLE_GRACE`] past it, inside Feishu's 10 s.
    pub async fn settle(
        &self,
        claim: Claim,
        outcome: &Outcome,
        deadline: Instant,
        metrics: &Metrics,
    ) {
        let by = deadline.max(Instant::now()) + SETTLE_GRACE;
        if *outcome == Outcome::Delivered {
            let ttl = self.ttl_secs;
            // Written whatever the key holds now: `delivered` is the final word,
            // even over a claim taken after this one's expired.
            let _ = self
                .run(RedisOp::Remember, by, metrics, |mut c| {
                    let key = claim.key.clone();
                    async move {
                        redis::cmd("SET")
                            .arg(&key)
                            .arg(DELIVERED)
                            .arg("EX")
                            .arg(ttl)
                            .query_async::<()>(&mut c)
                            .await
                    }
                })
                .await;
        } else {
            let _ = self
                .run(RedisOp::Release, by, metrics, |mut c| {
                    let mut invocation = self.release.key(&claim.key);
                    invocation.arg(&claim.token);
                    async move { invocation.invoke_async::<i64>(&mut c).await }
                })
                .await;
        }
    }

    /// One operation, ended by [`OP_BUDGET`] or `by` if sooner, counted,
    /// timed, and folded into the failing/recovered state.
    async fn run<T, F, Fut>(
        &self,
        op: RedisOp,
        by: Instant,
        metrics: &Metrics,
        call: F,
    ) -> Result<T, Failed>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if self.failing.load(Ordering::Relaxed) && !self.probe_now() {
            return Err(Failed::Skipped);
        }
        let started = Instant::now();
        let budget_end = started + OP_BUDGET;
        let result = match self.connection() {
            Err(e) => Err(Failed::Error(e)),
            Ok(c) => match tokio::time::timeout_at(budget_end.min(by), call(c)).await {
                Err(_) => Err(Failed::Timeout),
                Ok(Err(e)) if e.is_timeout() => Err(Failed::Timeout),
                Ok(Err(e)) => Err(Failed::Error(e)),
                Ok(Ok(v)) => Ok(v),
            },
        };
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => {
                metrics.count_redis(op, RedisResult::Ok, seconds);
                self.recovered(metrics);
            }
            Err(Failed::Timeout) => {
                metrics.count_redis(op, RedisResult::Timeout, seconds);
                // Cut short by the callback's own deadline, it says nothing
                // about Redis.
                if by >= budget_end {
                    self.failed(op, "no answer within the budget".to_owned(), metrics);
                }
            }
            Err(Failed::Error(e)) => {
                metrics.count_redis(op, RedisResult::Error, seconds);
                self.forget_connection();
                self.failed(op, self.url.scrub(&e.to_string()), metrics);
            }
            Err(Failed::Skipped) => {}
        }
        result
    }

    /// Whether this caller is the one to try Redis again during a failure.
    fn probe_now(&self) -> bool {
        let now = ms_since(self.epoch);
        let due = self.next_probe_ms.load(Ordering::Relaxed);
        now >= due
            && self
                .next_probe_ms
                .compare_exchange(
                    due,
                    now + ms(PROBE_EVERY),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn failed(&self, op: RedisOp, error: String, metrics: &Metrics) {
        self.next_probe_ms
            .store(ms_since(self.epoch) + ms(PROBE_EVERY), Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            metrics.redis_fallback.set(1);
            tracing::warn!(
                redis = self.url.shown(),
                op = op.label(),
                error = %error,
                failure_mode = self.failure.label(),
                until_it_returns = match self.failure {
                    FailureMode::Open => "duplicates are suppressed per replica only",
                    FailureMode::Closed => "callbacks are answered 503",
                },
                "shared duplicate memory unreachable"
            );
        }
    }

    fn recovered(&self, metrics: &Metrics) {
        if self.failing.swap(false, Ordering::Relaxed) {
            metrics.redis_fallback.set(0);
            tracing::info!(
                redis = self.url.shown(),
                "shared duplicate memory reachable again"
            );
        }
    }
}

/// Whether a copy that waited has too little time left to deliver itself.
fn too_late(deadline: Instant) -> bool {
    Instant::now() + MIN_TIME_TO_DELIVER > deadline
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ms_since(epoch: Instant) -> u64 {
    ms(epoch.elapsed())
}

/// What the gateway does while the shared duplicate memory cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Keep answering: this replica's own memory still suppresses its duplicates,
    /// and the `Idempotency-Key` lets the legacy system recognise the rest.
    Open,
    /// Answer 503 rather than risk a second delivery through another replica.
    Closed,
}

impl FailureMode {
    pub fn label(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// A Redis URL. It usually carries a password, so only [`RedisUrl::shown`],
/// with the credentials replaced, ever leaves this type.
#[derive(Clone)]
pub struct RedisUrl {
    url: String,
    shown: String,
    /// The user name and password as written and decoded, for scrubbing
    /// messages that might repeat them.
    secrets: Vec<String>,
}

impl RedisUrl {
    /// Parses `redis://` and `rediss://` URLs. Problems never quote the URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let scheme = text.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("redis" | "rediss")) {
            return Err("must start with redis:// or rediss://".to_owned());
        }
        let url = redis::parse_redis_url(text).ok_or_else(|| "is not a valid URL".to_owned())?;
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err("has no host".to_owned());
        };
        if let Err(e) = redis::Client::open(text) {
            // redis-rs names what it refused (a database that is not a number, an
            // unsupported option) without repeating the URL.
            let why = e
                .detail()
                .map(str::to_owned)
                .unwrap_or_else(|| e.category().to_owned());
            return Err(format!("is not usable: {why}"));
        }
        let mut secrets = Vec::new();
        for raw in [url.username(), url.password().unwrap_or_default()] {
            if raw.is_empty() {
                continue;
            }
            secrets.push(raw.to_owned());
            if let Some(decoded) = percent_decode(raw).and_then(|b| String::from_utf8(b).ok())
                && decoded != raw
            {
                secrets.push(decoded);
            }
        }
        let mut shown = format!("{}://", url.scheme());
        if !secrets.is_empty() {
            shown.push_str("<redacted>@");
        }
        shown.push_str(host);
        if let Some(port) = url.port() {
            shown.push_str(&format!(":{port}"));
        }
        shown.push_str(url.path());
        Ok(Self {
            url: text.to_owned(),
            shown,
            secrets,
        })
    }

    /// The URL to connect with. Never log or print it.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The URL with its credentials replaced, fit for logs and `check-config`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `text` with every occurrence of the URL's credentials replaced.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(self.url.as_str(), self.shown.as_str());
        redact(&mut out, &self.secrets);
        out
    }

    pub(crate) fn secrets(&self) -> &[String] {
        &self.secrets
    }

    pub fn is_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.shown)
    }
}

/// The shared duplicate memory (`REDIS_*`).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: RedisUrl,
    /// `None`: the system's trust roots.
    pub ca_file: Option<PathBuf>,
    pub prefix: String,
    pub failure: FailureMode,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, REDIS_PREFIX, REDIS_URL, TOKEN, UPSTREAM_URL};

    fn memory(prefix: &str) -> SharedMemory {
        let config = Config::from_vars([
            (UPSTREAM_URL, "http://u/"),
            (TOKEN, "t"),
            (REDIS_URL, "redis://:pw@127.0.0.1:1/"),
            (REDIS_PREFIX, prefix),
        ])
        .unwrap()
        .config;
        SharedMemory::new(
            config.dedup.redis.as_ref().unwrap(),
            Duration::from_secs(60),
        )
        .unwrap()
    }

    #[test]
    fn keys_are_the_prefix_and_the_idempotency_key() {
        let m = memory("gw-a:");
        let key = m.key(&[0xab; 32]);
        assert_eq!(key, format!("gw-a:{}", "ab".repeat(32)));
        assert!(!format!("{m:?}").contains("pw"));
    }

    #[tokio::test(start_paused = true)]
    async fn while_failing_one_caller_per_interval_probes() {
        let m = memory("p:");
        let metrics = Metrics::new();
        m.failed(RedisOp::Claim, "refused".to_owned(), &metrics);
        assert_eq!(metrics.redis_fallback.get(), 1);
        assert!(!m.probe_now(), "the failure itself was the last try");
        tokio::time::advance(PROBE_EVERY).await;
        assert!(m.probe_now());
        assert!(!m.probe_now(), "only one caller probes");
        m.recovered(&metrics);
        assert_eq!(metrics.redis_fallback.get(), 0);
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_within_the_budget_per_mode() {
        // Port 1 on loopback refuses at once; the answer is the mode's.
        let m = memory("p:");
        let metrics = Metrics::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let started = Instant::now();
        let admission = m.admit(&[1; 32], deadline, &metrics).await;
        assert!(
            matches!(admission, Admission::Deliver(None)),
            "{admission:?}"
        );
        assert!(started.elapsed() <= OP_BUDGET + Duration::from_millis(200));
        assert_eq!(metrics.redis_fallback.get(), 1);
        // The next callback inside the probe interval does not try again.
        let started = Instant::now();
        let admission = m.admit(&[2; 32], deadline, &metrics).await;
        assert!(matches!(admission, Admission::Deliver(None)));
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}
