//! The duplicate memory shared by every replica, on Redis (`REDIS_URL`).
//!
//! [`super::local`] stays in front: it suppresses this replica's own copies
//! without a round trip. What reaches this module is a callback that replica
//! has not seen in flight or delivered, and the question is whether any other
//! replica has.
//!
//! One key per decision, `{prefix}{hex digest}`, goes through these values:
//!
//! - `claim:<fence>:<nonce>`: a replica holds the decision and has not sent it yet.
//!   A lease of [`LEASE`], renewed every [`RENEW_EVERY`] while the holder lives: a
//!   replica that dies or freezes before sending frees the decision within seconds.
//! - `sent:<fence>:<nonce>`: the holder checked its lease and is sending. The key
//!   lives until the decision's late window ends, whatever becomes of the holder: a
//!   request sent may have been accepted, so no copy delivers it again meanwhile.
//!   Beside it, `{key}:lease` lives while the holder renews it; a copy that finds it
//!   gone knows nobody is waiting for the answer any more.
//! - `delivered`, for `DEDUP_TTL_SECS`: the final word, written whatever the key held.
//! - `uncertain`, until the late window ends: sent, never answered.
//!
//! A refusal or a request never sent deletes the holder's own key, so a retry goes
//! through. The fence is a number from `{prefix}fence`, which only grows (it starts
//! from the clock in milliseconds if Redis lost it); the holder sends it to the legacy
//! system as `Fencing-Token`. Every operation has [`OP_BUDGET`]; when Redis cannot
//! answer for longer than [`ADMIT_PATIENCE`], `REDIS_FAILURE` decides whether a new
//! decision is delivered. What must be written is never skipped.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::IntoConnectionInfo as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

use crate::callback::{Decision, idempotency_key};
use crate::observe::metrics::{How, LabelValue as _, Metrics, RedisOp, RedisResult, Store};
use crate::outcome::Fate;
use crate::util::pem::{self, PemError};
use crate::util::text::{percent_decode, redact};
use crate::vars::{ConfigError, REDIS_CA_FILE, REDIS_URL};

/// The most one Redis operation may take. A round trip inside a zone is well
/// under a millisecond; this leaves room for a busy server while costing a
/// callback at most a small share of Feishu's 10 s.
pub const OP_BUDGET: Duration = Duration::from_millis(300);

/// How long a claim outlives its holder's last renewal: long enough to ride out a
/// Redis or network pause of a few seconds, short enough that a decision whose holder
/// died before sending is free again well inside Feishu's retries.
pub const LEASE: Duration = Duration::from_secs(5);

/// How often a holder renews its lease: five chances before it lapses.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

/// How often a copy looks again at a decision another replica is delivering.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// A copy whose first disappeared delivers itself only with at least this
/// much of its deadline left: less cannot fit a useful exchange with the
/// legacy system.
pub const MIN_TIME_TO_DELIVER: Duration = Duration::from_millis(500);

/// How long a new decision keeps asking a Redis that does not answer before
/// `REDIS_FAILURE` decides: a pause or a restart is ridden out, not taken for an outage.
pub const ADMIT_PATIENCE: Duration = Duration::from_secs(1);

/// The fewest failed tries before `REDIS_FAILURE` decides, however long they took: a
/// replica frozen mid-call (a stopped container, a long pause of the machine) finds its
/// call timed out when it resumes, which says nothing about Redis.
pub const ADMIT_TRIES: u32 = 3;

/// Redis failing with no answer for this long is an outage: new decisions go straight
/// to `REDIS_FAILURE`'s answer, but for one probe every [`PROBE_EVERY`], instead of each
/// waiting [`ADMIT_PATIENCE`]. Writes are never skipped.
pub const OUTAGE_AFTER: Duration = Duration::from_secs(1);

/// While Redis is out, one new decision in this interval asks it again.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How long past a delivery's deadline its outcome may still be recorded before the
/// caller is answered: the deadline leaves Feishu 500 ms, and this takes at most half
/// of it. A record that does not land by then goes on in the background.
pub const SETTLE_GRACE: Duration = Duration::from_millis(250);

/// The longest pause between two tries of a record that has not landed.
pub const MAX_RECORD_PAUSE: Duration = Duration::from_secs(2);

/// The most records written in the background at once: a Redis that refuses writes for
/// hours (full, read-only after a bad failover) must not make them pile up without end.
pub const MAX_PENDING_RECORDS: u64 = 10_000;

const DELIVERED: &str = "delivered";
const UNCERTAIN: &str = "uncertain";

/// Returns what the key holds, with whether a sending holder's lease is `live` or
/// `gone`; when it holds nothing and claiming is allowed, claims it under a new fence
/// and returns the claim. One script, so no other replica can claim between the look
/// and the set; it runs on any Redis from 2.6.
const ADMIT_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  if string.sub(v, 1, 5) == 'sent:' and redis.call('EXISTS', KEYS[2]) == 0 then
    return {v, 'gone'}
  end
  return {v, 'live'}
end
if ARGV[4] ~= '1' then return {'', 'free'} end
local n = redis.call('INCR', KEYS[3])
if n < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[3], ARGV[3])
  n = tonumber(ARGV[3])
end
local claim = 'claim:' .. string.format('%d', n) .. ':' .. ARGV[1]
redis.call('SET', KEYS[1], claim, 'PX', ARGV[2])
return {claim, 'new'}
";

/// The check right before sending: while the key holds this holder's claim (or
/// nothing, its claim forgotten and taken by nobody), marks it sent for the rest of the
/// late window and starts the lease beside it. 0: another replica has the decision.
const SEND_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] and v ~= ARGV[2] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
return 1
";

/// Renews the holder's lease; puts its value back when Redis forgot it (2), refuses
/// when another replica's is there (0). A send marked by a check whose answer was lost
/// is renewed as a send.
const RENEW_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] and v ~= ARGV[2] then return 0 end
if ARGV[3] == 'sent' or v == ARGV[2] then
  if v ~= ARGV[2] or redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5])
  end
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[4])
end
if v then return 1 end
return 2
";

/// Records how a delivery ended. `delivered` is written whatever the key holds; the
/// rest only replace the holder's own value (or, for `uncertain`, nothing).
const RECORD_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if ARGV[1] == 'delivered' then
  redis.call('SET', KEYS[1], 'delivered', 'PX', ARGV[4])
  redis.call('DEL', KEYS[2])
  return 1
end
local keep = ARGV[1] == 'uncertain' and tonumber(ARGV[4]) > 0
if v and ARGV[2] ~= '' and (v == ARGV[2] or v == ARGV[3]) then
  redis.call('DEL', KEYS[2])
  if keep then
    redis.call('SET', KEYS[1], 'uncertain', 'PX', ARGV[4])
  else
    redis.call('DEL', KEYS[1])
  end
  return 1
end
if not v and keep then
  redis.call('SET', KEYS[1], 'uncertain', 'PX', ARGV[4])
  return 1
end
return 0
";

/// Withdraws a claim whose answer never came, found by its nonce: a server that was
/// stopped, not gone, still runs the claim when it resumes, and it would hold the
/// decision for a lease with nobody delivering it.
const ABANDON_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, 6) == 'claim:' and string.sub(v, -string.len(ARGV[1])) == ARGV[1] then
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
    fence_key: String,
    ttl_ms: u64,
    failure: FailureMode,
    admit: redis::Script,
    send: redis::Script,
    renew: redis::Script,
    record: redis::Script,
    /// Whether the last operation failed: the start and end of an episode are
    /// logged once each.
    failing: AtomicBool,
    /// When (in ms since `epoch`) the current failure began.
    failing_since_ms: AtomicU64,
    /// Failed operations since the last answer.
    failures_in_row: AtomicU64,
    /// Records still being written in the background.
    pending_records: AtomicU64,
    /// During an outage, when (in ms since `epoch`) the next probe may go.
    next_probe_ms: AtomicU64,
    epoch: Instant,
}

impl std::fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("ttl_ms", &self.ttl_ms)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

/// This replica's hold on a decision, taken before delivering it.
#[derive(Debug)]
pub struct Claim {
    key: String,
    lease_key: String,
    fence: u64,
    /// `claim:<fence>:<nonce>`, the key's value before sending.
    claimed: String,
    /// `sent:<fence>:<nonce>`, its value once sending.
    sent: String,
    /// Whether the check before sending marked it sent.
    sending: AtomicBool,
    /// Whether a renewal found another replica's value: logged once.
    lost: AtomicBool,
    /// The exchange is over: a renewal finding the key changed is the record's doing.
    done: AtomicBool,
}

impl Claim {
    fn new(key: String, fence: u64, nonce: &str) -> Self {
        Self {
            lease_key: format!("{key}:lease"),
            key,
            fence,
            claimed: format!("claim:{fence}:{nonce}"),
            sent: format!("sent:{fence}:{nonce}"),
            sending: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            done: AtomicBool::new(false),
        }
    }

    /// A request may have gone out though the check before sending had no answer:
    /// renewals mark the decision sent from now on.
    pub fn assume_sent(&self) {
        self.sending.store(true, Ordering::Relaxed);
    }

    /// The exchange is over; what follows is its record.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// The fencing token: larger than that of any claim on this Redis before it.
    pub fn fence(&self) -> u64 {
        self.fence
    }
}

/// What the shared memory says about a callback this replica is about to deliver.
#[derive(Debug)]
pub enum Admission {
    /// Deliver it. `Some`: under this replica's claim, to be settled with
    /// [`SharedMemory::record`]; `None`: Redis could not be asked and
    /// `REDIS_FAILURE=open` lets the local memory alone decide.
    Deliver(Option<Arc<Claim>>),
    /// Another replica delivered it: `waited` when it was still in flight as
    /// this copy arrived.
    Delivered { waited: bool },
    /// Another replica was still delivering it when this copy's deadline came.
    TimedOut,
    /// Another replica sent it and its answer never came, within its late window.
    Uncertain,
    /// Redis could not be asked and `REDIS_FAILURE=closed`.
    Unavailable,
}

/// What the check before sending found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The claim is this replica's, now marked sent.
    Held,
    /// Another replica has the decision: this one must not send.
    Lost,
    /// Redis did not answer.
    Unknown,
}

/// What the key held, as the admit script saw it.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// This replica's claim, new or taken by an earlier try whose answer was lost.
    Mine(u64),
    /// Nothing, and claiming was not asked for.
    Free,
    Delivered,
    Uncertain,
    /// Another replica's claim, or its send with a live lease.
    Held,
}

/// Why an operation did not get an answer.
enum Failed {
    Error(redis::RedisError),
    Timeout,
}

impl SharedMemory {
    /// Prepares the client; no connection is made until the first callback, so
    /// the gateway starts (and `/readyz` passes) whether or not Redis is up.
    ///
    /// A problem is returned with the variable it is about.
    pub fn new(settings: &RedisSettings, ttl: Duration) -> Result<Self, ConfigError> {
        let scrub = |e: redis::RedisError| settings.url.scrub(&e.to_string());
        // Pipelined small writes wait for the previous one's ACK under Nagle, which
        // the server may delay by up to 40 ms.
        let info = settings
            .url
            .expose()
            .into_connection_info()
            .map_err(|e| ConfigError::new(REDIS_URL, scrub(e)))?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = match &settings.ca_file {
            None => redis::Client::open(info).map_err(|e| ConfigError::new(REDIS_URL, scrub(e)))?,
            Some(path) => {
                let shown = path.display();
                // redis-rs would take a file with no certificate in it as an empty
                // trust store, and every connection would then fail.
                let ca_error = |problem: String| ConfigError::new(REDIS_CA_FILE, problem);
                let pem = std::fs::read(path)
                    .map_err(|e| ca_error(format!("cannot read {shown}: {e}")))?;
                if pem::certs(&pem).is_none() {
                    let path = path.clone();
                    return Err(ca_error(PemError::NoCertificates { path }.to_string()));
                }
                redis::Client::build_with_tls(
                    info,
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
            fence_key: format!("{}fence", settings.prefix),
            prefix: settings.prefix.clone(),
            ttl_ms: ms(ttl).max(1_000),
            failure: settings.failure,
            admit: redis::Script::new(ADMIT_SCRIPT),
            send: redis::Script::new(SEND_SCRIPT),
            renew: redis::Script::new(RENEW_SCRIPT),
            record: redis::Script::new(RECORD_SCRIPT),
            failing: AtomicBool::new(false),
            failing_since_ms: AtomicU64::new(0),
            failures_in_row: AtomicU64::new(0),
            pending_records: AtomicU64::new(0),
            next_probe_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// What happens to new decisions while Redis cannot be reached.
    pub fn failure(&self) -> FailureMode {
        self.failure
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
        // operation's own budget bounds how long it waits for one.
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

    /// The decision's key: the prefix and its idempotency key.
    pub fn key(&self, decision: &Decision) -> String {
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
        let lease_key = format!("{key}:lease");
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let mut waited = false;
        // Once a poll has failed, a vanished claim may be Redis's loss, not its
        // holder's release: the copy no longer takes the decision over.
        let mut doubtful = false;
        let mut failures = 0;
        let patience_end = Instant::now() + ADMIT_PATIENCE;
        // During an outage one decision now and then probes, once; the rest are
        // answered by the mode at once.
        let probing = self.in_outage();
        if probing && !self.probe_now() {
            metrics.count_redis(RedisOp::Claim, RedisResult::Skipped, 0.0);
            return self.unreachable(&key, &nonce, true);
        }
        loop {
            // A claim that vanished while this copy waited means the first delivery
            // was refused or never sent: the copy takes the decision over, but only
            // with time left to deliver it; later, it only watches for the first's
            // success.
            let may_claim = !(waited && (doubtful || too_late(deadline)));
            let op = if waited {
                RedisOp::Wait
            } else {
                RedisOp::Claim
            };
            let seen = self
                .ask(
                    (&key, &lease_key),
                    &nonce,
                    may_claim,
                    (op, deadline),
                    metrics,
                )
                .await;
            match seen {
                // Its holder puts it back on its next renewal, or records its verdict.
                Ok(Seen::Free) if doubtful => {}
                Ok(Seen::Mine(fence)) => {
                    return Admission::Deliver(Some(Arc::new(Claim::new(key, fence, &nonce))));
                }
                Ok(Seen::Free) => return Admission::TimedOut,
                Ok(Seen::Delivered) => return Admission::Delivered { waited },
                Ok(Seen::Uncertain) => return Admission::Uncertain,
                Ok(Seen::Held) => {
                    if !waited {
                        metrics.count_duplicate(How::InFlight, Store::Shared);
                    }
                    waited = true;
                }
                // A copy that has seen another replica's claim never delivers on a
                // failed poll: the claim may be alive and well.
                Err(()) if waited => doubtful = true,
                // A try that could not end before patience does is not started.
                Err(()) => {
                    failures += 1;
                    let next_try_ends = Instant::now() + POLL_EVERY + OP_BUDGET;
                    let patient = failures < ADMIT_TRIES || next_try_ends <= patience_end;
                    if probing || !patient {
                        return self.unreachable(&key, &nonce, true);
                    }
                    // The deadline came before Redis had failed long enough to call it
                    // down: a pause, most likely, which is no reason to deliver blind.
                    if too_late(deadline) {
                        return self.unreachable(&key, &nonce, false);
                    }
                }
            }
            let next = Instant::now() + POLL_EVERY;
            if next >= deadline {
                return if waited {
                    Admission::TimedOut
                } else {
                    self.unreachable(&key, &nonce, false)
                };
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// The answer for a decision Redis could not be asked about: `REDIS_FAILURE`'s once
    /// Redis is `down` (failing for [`ADMIT_PATIENCE`], or in an outage), 503 before. A
    /// claim an unanswered try may still have taken is withdrawn when the decision is not
    /// delivered; when it is, the claim stays, for copies elsewhere to wait on.
    fn unreachable(&self, key: &str, nonce: &str, down: bool) -> Admission {
        match self.failure {
            FailureMode::Open if down => Admission::Deliver(None),
            FailureMode::Open | FailureMode::Closed => {
                if let Ok(mut c) = self.connection() {
                    let mut abandon = redis::cmd("EVAL");
                    abandon.arg(ABANDON_SCRIPT).arg(1).arg(key).arg(nonce);
                    // Down the same connection, so it runs right after the claim,
                    // whenever that is.
                    tokio::spawn(async move {
                        let _ = abandon.query_async::<i64>(&mut c).await;
                    });
                }
                Admission::Unavailable
            }
        }
    }

    /// Runs the admit script.
    async fn ask(
        &self,
        (key, lease_key): (&str, &str),
        nonce: &str,
        may_claim: bool,
        (op, deadline): (RedisOp, Instant),
        metrics: &Metrics,
    ) -> Result<Seen, ()> {
        let lease_ms = ms(LEASE);
        let floor = unix_ms();
        let claim = if may_claim { "1" } else { "0" };
        let (value, lease) = self
            .run(op, deadline, metrics, |mut c| {
                let mut invocation = self.admit.key(key);
                invocation
                    .key(lease_key)
                    .key(&self.fence_key)
                    .arg(nonce)
                    .arg(lease_ms)
                    .arg(floor)
                    .arg(claim);
                async move { invocation.invoke_async::<(String, String)>(&mut c).await }
            })
            .await
            .map_err(|_| ())?;
        Ok(seen(&value, &lease, nonce))
    }

    /// The check right before a request goes out: whether the claim is still this
    /// replica's, marking it sent until `window_end` if so.
    pub async fn check_before_sending(
        &self,
        claim: &Claim,
        window_end: Instant,
        metrics: &Metrics,
    ) -> Hold {
        let window_ms = window_ms(window_end);
        let lease_ms = ms(LEASE);
        let by = Instant::now() + OP_BUDGET;
        let result = self
            .run(RedisOp::Send, by, metrics, |mut c| {
                let mut invocation = on_claim(&self.send, claim);
                invocation.arg(window_ms).arg(lease_ms);
                async move { invocation.invoke_async::<i64>(&mut c).await }
            })
            .await;
        match result {
            Ok(1) => {
                claim.sending.store(true, Ordering::Relaxed);
                Hold::Held
            }
            Ok(_) => Hold::Lost,
            Err(_) => Hold::Unknown,
        }
    }

    /// Renews `claim` every [`RENEW_EVERY`] until the returned guard is dropped.
    pub fn keep(
        self: &Arc<Self>,
        claim: &Arc<Claim>,
        window_end: Instant,
        metrics: &Arc<Metrics>,
    ) -> Renewal {
        let (memory, claim, metrics) = (Arc::clone(self), Arc::clone(claim), Arc::clone(metrics));
        Renewal(tokio::spawn(async move {
            let mut next = Instant::now() + RENEW_EVERY;
            loop {
                tokio::time::sleep_until(next).await;
                next += RENEW_EVERY;
                memory.renew(&claim, window_end, &metrics).await;
            }
        }))
    }

    async fn renew(&self, claim: &Claim, window_end: Instant, metrics: &Metrics) {
        let lease_ms = ms(LEASE);
        let window_ms = window_ms(window_end);
        let phase = if claim.sending.load(Ordering::Relaxed) {
            "sent"
        } else {
            "claim"
        };
        let by = Instant::now() + OP_BUDGET;
        let result = self
            .run(RedisOp::Renew, by, metrics, |mut c| {
                let mut invocation = on_claim(&self.renew, claim);
                invocation.arg(phase).arg(lease_ms).arg(window_ms);
                async move { invocation.invoke_async::<i64>(&mut c).await }
            })
            .await;
        match result {
            Ok(0) if claim.done.load(Ordering::Relaxed) => {}
            Ok(0) if !claim.lost.swap(true, Ordering::Relaxed) => {
                tracing::warn!(
                    idempotency_key = key_of(&claim.key, &self.prefix),
                    fence = claim.fence,
                    sending = phase == "sent",
                    "lease lost: another replica holds the decision"
                );
            }
            Ok(2) => {
                tracing::warn!(
                    idempotency_key = key_of(&claim.key, &self.prefix),
                    fence = claim.fence,
                    "lease restored: Redis had forgotten it (restarted without its data?)"
                );
            }
            _ => {}
        }
    }

    /// Records how a delivery of `decision` ended, under `claim` if it had one: one
    /// try, by `by` at the latest. `uncertain_until` is when its late window ends.
    /// `Ok(())` once Redis has it.
    pub async fn record(
        &self,
        decision: &Decision,
        claim: Option<&Claim>,
        fate: Fate,
        uncertain_until: Instant,
        by: Instant,
        metrics: &Metrics,
    ) -> Result<(), ()> {
        let (what, op, ms_arg) = match fate {
            Fate::Delivered => (DELIVERED, RedisOp::Remember, self.ttl_ms),
            Fate::Uncertain => (
                UNCERTAIN,
                RedisOp::Release,
                ms(uncertain_until.saturating_duration_since(Instant::now())),
            ),
            Fate::Free => ("free", RedisOp::Release, 0),
        };
        if claim.is_none() && fate == Fate::Free {
            return Ok(());
        }
        let key = claim.map_or_else(|| self.key(decision), |c| c.key.clone());
        let lease_key = format!("{key}:lease");
        let (claimed, sent) = claim.map_or(("", ""), |c| (c.claimed.as_str(), c.sent.as_str()));
        self.run(op, by, metrics, |mut c| {
            let mut invocation = self.record.key(&key);
            invocation
                .key(&lease_key)
                .arg(what)
                .arg(claimed)
                .arg(sent)
                .arg(ms_arg);
            async move { invocation.invoke_async::<i64>(&mut c).await }
        })
        .await
        .map(|_| ())
        .map_err(|_| ())
    }

    /// [`Self::record`] until it lands: for ever for an acceptance, which must not be
    /// forgotten while the process lives; until the late window ends otherwise, when
    /// the key lapses by itself anyway.
    pub async fn record_until_done(
        &self,
        decision: &Decision,
        claim: Option<&Claim>,
        fate: Fate,
        uncertain_until: Instant,
        metrics: &Metrics,
    ) -> Recorded {
        if self.pending_records.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_RECORDS {
            self.pending_records.fetch_sub(1, Ordering::Relaxed);
            return Recorded::TooMany;
        }
        let recorded = self
            .keep_recording(decision, claim, fate, uncertain_until, metrics)
            .await;
        self.pending_records.fetch_sub(1, Ordering::Relaxed);
        recorded
    }

    async fn keep_recording(
        &self,
        decision: &Decision,
        claim: Option<&Claim>,
        fate: Fate,
        uncertain_until: Instant,
        metrics: &Metrics,
    ) -> Recorded {
        let mut pause = POLL_EVERY;
        loop {
            let by = Instant::now() + OP_BUDGET;
            if self
                .record(decision, claim, fate, uncertain_until, by, metrics)
                .await
                .is_ok()
            {
                return Recorded::Landed;
            }
            if fate != Fate::Delivered && Instant::now() >= uncertain_until {
                return Recorded::Lapsed;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_RECORD_PAUSE);
        }
    }

    /// One operation, ended by [`OP_BUDGET`] or `by` if sooner, counted,
    /// timed, and folded into the failing/recovered state. A connection found
    /// dropped (Redis restarted) is replaced and the operation tried once more at once.
    async fn run<T, F, Fut>(
        &self,
        op: RedisOp,
        by: Instant,
        metrics: &Metrics,
        call: F,
    ) -> Result<T, Failed>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let started = Instant::now();
        let budget_end = started + OP_BUDGET;
        let end = budget_end.min(by);
        let mut again = true;
        let result = loop {
            let result = match self.connection() {
                Err(e) => Err(Failed::Error(e)),
                Ok(c) => match tokio::time::timeout_at(end, call(c)).await {
                    Err(_) => Err(Failed::Timeout),
                    Ok(Err(e)) if e.is_timeout() => Err(Failed::Timeout),
                    Ok(Err(e)) => Err(Failed::Error(e)),
                    Ok(Ok(v)) => Ok(v),
                },
            };
            match &result {
                Err(Failed::Error(e))
                    if again
                        && (e.is_connection_dropped() || e.is_io_error())
                        && Instant::now() < end =>
                {
                    again = false;
                    self.forget_connection();
                }
                _ => break result,
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => {
                metrics.count_redis(op, RedisResult::Ok, seconds);
                self.recovered(metrics);
            }
            Err(Failed::Timeout) => {
                metrics.count_redis(op, RedisResult::Timeout, seconds);
                // Cut short by the caller's own deadline, it says nothing about Redis.
                if by >= budget_end {
                    self.failed(op, "no answer within the budget".to_owned(), metrics);
                }
            }
            Err(Failed::Error(e)) => {
                metrics.count_redis(op, RedisResult::Error, seconds);
                self.forget_connection();
                self.failed(op, self.url.scrub(&e.to_string()), metrics);
            }
        }
        result
    }

    /// Whether Redis has been failing, with no answer at all, for [`OUTAGE_AFTER`] and
    /// [`ADMIT_TRIES`] calls: two blips on a quiet replica are not an outage.
    fn in_outage(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
            && self.failures_in_row.load(Ordering::Relaxed) >= u64::from(ADMIT_TRIES)
            && ms_since(self.epoch).saturating_sub(self.failing_since_ms.load(Ordering::Relaxed))
                >= ms(OUTAGE_AFTER)
    }

    /// Whether this caller is the one to try Redis again during an outage.
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
        self.failures_in_row.fetch_add(1, Ordering::Relaxed);
        if !self.failing.load(Ordering::Relaxed) {
            self.failing_since_ms
                .store(ms_since(self.epoch), Ordering::Relaxed);
        }
        if !self.failing.swap(true, Ordering::Relaxed) {
            metrics.redis_fallback.set(1);
            tracing::warn!(
                redis = self.url.shown(),
                op = op.label(),
                error = %error,
                failure_mode = self.failure.label(),
                meanwhile = match self.failure {
                    FailureMode::Open => "new decisions are delivered on this replica's memory after 1 s without an answer",
                    FailureMode::Closed => "new decisions are answered 503 after 1 s without an answer",
                },
                "shared duplicate memory unreachable"
            );
        }
    }

    fn recovered(&self, metrics: &Metrics) {
        self.failures_in_row.store(0, Ordering::Relaxed);
        if self.failing.swap(false, Ordering::Relaxed) {
            metrics.redis_fallback.set(0);
            tracing::info!(
                redis = self.url.shown(),
                "shared duplicate memory reachable again"
            );
        }
    }
}

/// How a record written in the background ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Landed,
    /// Given up once the late window was over: the key lapses by itself.
    Lapsed,
    /// Not tried: [`MAX_PENDING_RECORDS`] were pending already.
    TooMany,
}

/// Renews a claim while it lives; dropping it stops the renewals.
#[derive(Debug)]
pub struct Renewal(tokio::task::JoinHandle<()>);

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads the admit script's answer.
fn seen(value: &str, lease: &str, nonce: &str) -> Seen {
    if lease == "free" {
        return Seen::Free;
    }
    if value == DELIVERED {
        return Seen::Delivered;
    }
    if value == UNCERTAIN {
        return Seen::Uncertain;
    }
    let mut parts = value.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("claim"), Some(fence), Some(theirs)) if theirs == nonce => {
            fence.parse().map_or(Seen::Held, Seen::Mine)
        }
        (Some("sent"), _, _) if lease == "gone" => Seen::Uncertain,
        // Another replica's claim or send; or a value an older version wrote, which
        // lapses by itself.
        _ => Seen::Held,
    }
}

/// The idempotency key in `key`, for logs.
fn key_of<'a>(key: &'a str, prefix: &str) -> &'a str {
    key.strip_prefix(prefix).unwrap_or(key)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
}

/// `script` over a claim's key and lease key, with its two values as the first arguments:
/// how the check before sending and the renewal both begin.
fn on_claim<'a>(script: &'a redis::Script, claim: &Claim) -> redis::ScriptInvocation<'a> {
    let mut invocation = script.key(&claim.key);
    invocation
        .key(&claim.lease_key)
        .arg(&claim.claimed)
        .arg(&claim.sent);
    invocation
}

/// What is left of a decision's late window, in ms, and never less than a lease: the
/// life a `sent:` mark is given.
fn window_ms(window_end: Instant) -> u64 {
    ms(window_end
        .saturating_duration_since(Instant::now())
        .max(LEASE))
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
    host: String,
    has_password: bool,
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
            host: host.to_owned(),
            has_password: url.password().is_some_and(|p| !p.is_empty()),
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

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn has_password(&self) -> bool {
        self.has_password
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
    async fn one_failure_is_not_an_outage_and_an_outage_is_probed_once_per_interval() {
        let m = memory("p:");
        let metrics = Metrics::new();
        m.failed(RedisOp::Claim, "refused".to_owned(), &metrics);
        assert_eq!(metrics.redis_fallback.get(), 1);
        assert!(!m.in_outage(), "one failed call is not an outage");
        tokio::time::advance(OUTAGE_AFTER).await;
        m.failed(RedisOp::Claim, "refused".to_owned(), &metrics);
        assert!(
            !m.in_outage(),
            "two failures a second apart are not an outage"
        );
        m.failed(RedisOp::Claim, "refused".to_owned(), &metrics);
        assert!(m.in_outage());
        assert!(m.probe_now());
        assert!(!m.probe_now(), "only one caller probes");
        tokio::time::advance(PROBE_EVERY).await;
        assert!(m.probe_now());
        m.recovered(&metrics);
        assert_eq!(metrics.redis_fallback.get(), 0);
        assert!(!m.in_outage());
    }

    #[test]
    fn the_admit_answer_is_read_for_what_it_means() {
        let n = "0123abcd";
        assert_eq!(
            seen("claim:1700000000123:0123abcd", "new", n),
            Seen::Mine(1_700_000_000_123)
        );
        assert_eq!(
            seen("claim:17:0123abcd", "live", n),
            Seen::Mine(17),
            "an earlier try's claim"
        );
        assert_eq!(seen("claim:17:ffff0000", "live", n), Seen::Held);
        assert_eq!(seen("sent:17:ffff0000", "live", n), Seen::Held);
        assert_eq!(seen("sent:17:ffff0000", "gone", n), Seen::Uncertain);
        assert_eq!(seen("delivered", "live", n), Seen::Delivered);
        assert_eq!(seen("uncertain", "live", n), Seen::Uncertain);
        assert_eq!(seen("", "free", n), Seen::Free);
        // What an older version wrote lapses by itself; until then it holds the decision.
        assert_eq!(seen("claim:6f1c2a", "live", n), Seen::Held);
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_asked_for_a_while_then_the_mode_answers() {
        // Port 1 on loopback refuses at once; the answer is the mode's.
        let m = memory("p:");
        let metrics = Metrics::new();
        let deadline = Instant::now() + Duration::from_secs(8);
        let started = Instant::now();
        let admission = m.admit(&[1; 32], deadline, &metrics).await;
        assert!(
            matches!(admission, Admission::Deliver(None)),
            "{admission:?}"
        );
        let count = |result: &str| {
            let series =
                format!(r#"feishu_gate_redis_operations_total{{op="claim",result="{result}"}} "#);
            let text = metrics.render();
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|n| n.parse::<u32>().ok())
                .unwrap_or_default()
        };
        assert!(count("error") > 1, "one refusal is not an outage");
        assert!(started.elapsed() <= ADMIT_PATIENCE + OP_BUDGET);
        assert_eq!(metrics.redis_fallback.get(), 1);
        // Failing for longer is an outage: the next decision probes once, and the one
        // after it is not asked about at all.
        tokio::time::sleep(OUTAGE_AFTER).await;
        let tried = count("error");
        let started = Instant::now();
        let admission = m.admit(&[2; 32], deadline, &metrics).await;
        assert!(matches!(admission, Admission::Deliver(None)));
        assert_eq!(count("error"), tried + 1, "one probe");
        let admission = m.admit(&[3; 32], deadline, &metrics).await;
        assert!(matches!(admission, Admission::Deliver(None)));
        assert_eq!(count("skipped"), 1);
        assert!(started.elapsed() < ADMIT_PATIENCE);
    }
}
