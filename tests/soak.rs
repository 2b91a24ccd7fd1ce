//! Nothing lost, measured: the real binary under a mixed load against a real
//! upstream that fails, stalls and sometimes accepts after the gateway has
//! given up. Every answer is checked against what the upstream recorded.
//!
//! The suite runs a short version. The long one is the same test, larger:
//!
//! ```text
//! SOAK_CALLBACKS=50000 SOAK_CONCURRENCY=64 SOAK_SIGTERM_CALLBACKS=20000 \
//!     SOAK_REPLICA_CALLBACKS=50000 \
//!     cargo test --release --test soak -- --nocapture --test-threads 1
//! ```
//!
//! A variant runs two gateway processes sharing one `redis-server`, in each
//! `REDIS_FAILURE` mode, with Redis paused now and then: callbacks alternate between
//! them, two copies of a decision go to different ones at once, a third 0.4 s later,
//! and a copy of every decision 13 s after the start. Every decision the legacy system
//! accepted was accepted once, counted by `Idempotency-Key`. `SOAK_LOG=1` prints the
//! replicas' logs after it.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use feishu_gate::testing::config;
use support::binary::memory_of;
use support::client::Protocol;
use support::redis_server::Redis;
use support::{Binary, Conn, KEY, TOKEN, duplicates, metric, seal};

/// The gateway's upstream timeout during the soak.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(600);
/// The gateway's refusal once shutdown has begun (`LANG=en`).
const SHUTTING_DOWN: &str = "The approval gateway is restarting, please try again shortly.";
/// Longer than Feishu waits: a callback not answered by then is hanging.
const CLIENT_LIMIT: Duration = Duration::from_secs(15);
/// Peak resident memory the gateway may reach under the soak, whatever its length.
const RSS_BOUND_KIB: u64 = 128 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: a small, seedable generator, so a failing mix can be replayed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn mix(seed: u64, id: u64) -> Rng {
    let mut r = Rng(seed ^ id.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    r.next();
    r
}

// ---------------------------------------------------------------------------
// The upstream: a real HTTP server that decides each delivery's fate.

/// What the legacy system did with one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Recorded the decision; `late` when it did so after the gateway's timeout.
    Accepted { late: bool },
    /// Refused with this status; `late` likewise.
    Refused { status: u16, late: bool },
}

#[derive(Debug, Clone)]
struct Delivery {
    key: String,
    fate: Fate,
}

#[derive(Clone, Default)]
struct Ledger {
    /// By the callback's unique `soak_id`: every delivery that reached the upstream.
    by_id: Arc<Mutex<HashMap<String, Vec<Delivery>>>>,
    /// Deliveries whose fate is still being decided (a slow answer in progress).
    pending: Arc<AtomicUsize>,
}

impl Ledger {
    fn record(&self, id: &str, delivery: Delivery) {
        self.by_id
            .lock()
            .unwrap()
            .entry(id.to_owned())
            .or_default()
            .push(delivery);
    }
}

/// Starts the upstream. Each delivery's fate follows from its `soak_id`:
/// mostly accepted at once, sometimes refused, slow, or slower than the
/// gateway waits. The fate is recorded when it happens, whether or not the
/// gateway is still listening, as a real legacy system would.
async fn start_upstream(seed: u64) -> (SocketAddr, Ledger) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ledger = Ledger::default();
    let shared = ledger.clone();
    support::upstream::serve(listener, None, move |req| {
        let ledger = shared.clone();
        async move { Ok(decide(req, ledger, seed).await) }
    });
    (addr, ledger)
}

async fn decide(req: Request<Incoming>, ledger: Ledger, seed: u64) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = doc["soak_id"].as_str().unwrap_or_default().to_owned();
    let number: u64 = id.trim_start_matches('c').parse().unwrap_or(0);
    let mut r = mix(seed ^ 0x5eed, number);
    let t = UPSTREAM_TIMEOUT.as_millis() as u64;
    let (delay_ms, status) = match r.below(100) {
        0..=7 => (0, 503),
        8..=9 => (r.below(t / 2), 500),
        10..=15 => (t / 5 + r.below(t * 2 / 5), 200),
        16..=18 => (t * 3 / 2, 200),
        19 => (t * 3 / 2, 500),
        _ => (r.below(3), 200),
    };
    let late = Duration::from_millis(delay_ms) >= UPSTREAM_TIMEOUT;
    let fate = if status == 200 {
        Fate::Accepted { late }
    } else {
        Fate::Refused { status, late }
    };
    // The decision is taken after the delay in a task of its own, so the
    // gateway hanging up cannot undo it.
    ledger.pending.fetch_add(1, Ordering::SeqCst);
    let taken = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        ledger.record(&id, Delivery { key, fate });
        ledger.pending.fetch_sub(1, Ordering::SeqCst);
    });
    let _ = taken.await;
    let text = if status == 200 {
        r#"{"code":0}"#.to_owned()
    } else {
        format!(r#"{{"message":"legacy says {status}"}}"#)
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
}

// ---------------------------------------------------------------------------
// The load: a mix of callbacks, each with a unique `soak_id`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Valid,
    /// The same decision as an earlier callback, sealed again.
    Repeat,
    BadToken,
    Malformed,
    /// From the one approver who acts too fast.
    Hot,
}

#[derive(Debug, Clone)]
struct Sent {
    id: String,
    kind: Kind,
    /// The task the decision is about; one decision per task.
    task: u64,
    body: String,
}

impl Sent {
    /// The decision on `task`, sealed, from the approver the task falls to.
    fn sealed(task: u64, id: String, kind: Kind) -> Self {
        Sent {
            body: seal(KEY, &decision(task, task % 10_000, &id)),
            id,
            kind,
            task,
        }
    }
}

/// One unit of work: a callback, or two copies of a decision sent at once.
type Job = Vec<Sent>;

fn decision(task: u64, user: u64, id: &str) -> String {
    format!(
        r#"{{"action_type":"APPROVE","user_id":"u-{user}","approval_code":"SOAK","instance_id":"i-{task}","task_id":"t-{task}","message_id":{},"reason":"ok","soak_id":"{id}","token":"{TOKEN}"}}"#,
        7_250_020_197_497_765_889u64 - task
    )
}

fn workload(seed: u64, callbacks: usize) -> Vec<Job> {
    let mut r = Rng(seed);
    let mut jobs = Vec::new();
    let mut decisions: Vec<u64> = Vec::new();
    let mut n = 0u64;
    let mut next_id = move || {
        n += 1;
        format!("c{n}")
    };
    let mut total = 0;
    while total < callbacks {
        let roll = r.below(100);
        let job: Job = match roll {
            0..=69 => {
                let task = decisions.len() as u64;
                decisions.push(task);
                vec![Sent::sealed(task, next_id(), Kind::Valid)]
            }
            70..=77 => {
                // Two copies at once: the second waits for the first's outcome.
                let task = decisions.len() as u64;
                decisions.push(task);
                (0..2)
                    .map(|_| Sent::sealed(task, next_id(), Kind::Repeat))
                    .collect()
            }
            78..=84 if !decisions.is_empty() => {
                // A later copy of a recent decision, whatever became of it.
                let back = r.below(decisions.len().min(400) as u64) as usize;
                let task = decisions[decisions.len() - 1 - back];
                vec![Sent::sealed(task, next_id(), Kind::Repeat)]
            }
            85..=89 => {
                let id = next_id();
                let task = 1_000_000 + jobs.len() as u64;
                let body = decision(task, 1, &id).replace(TOKEN, "not-the-token");
                vec![Sent {
                    body: seal(KEY, &body),
                    id,
                    kind: Kind::BadToken,
                    task,
                }]
            }
            90..=93 => {
                let id = next_id();
                let task = 2_000_000 + jobs.len() as u64;
                let body = if roll.is_multiple_of(2) {
                    format!(r#"{{"soak_id":"{id}","action_type":"APPROVE","#)
                } else {
                    seal(
                        KEY,
                        &decision(task, 1, &id).replace(r#""user_id""#, r#""user""#),
                    )
                };
                vec![Sent {
                    body,
                    id,
                    kind: Kind::Malformed,
                    task,
                }]
            }
            _ => {
                let task = 3_000_000 + jobs.len() as u64;
                let id = next_id();
                let body = decision(task, 0, &id).replace("\"u-0\"", "\"u-hot\"");
                vec![Sent {
                    body: seal(KEY, &body),
                    id,
                    kind: Kind::Hot,
                    task,
                }]
            }
        };
        total += job.len();
        jobs.push(job);
    }
    jobs
}

/// How one callback ended, seen from Feishu's side.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Answered {
        status: u16,
        feishu_shaped: bool,
        /// The gateway's own "restarting" refusal.
        shutting_down: bool,
    },
    /// The connection was refused (or reset) while connecting: nothing was sent.
    RefusedAtConnect,
    /// Sent, then the connection closed with no answer.
    ClosedUnanswered,
    /// No answer within [`CLIENT_LIMIT`].
    Hung,
}

/// An HTTP/1.1 client connection kept alive across callbacks.
struct Client {
    addr: SocketAddr,
    keep_alive: bool,
    conn: Option<Conn>,
}

impl Client {
    async fn send(&mut self, body: &str) -> Seen {
        match tokio::time::timeout(CLIENT_LIMIT, self.exchange(body)).await {
            Ok(seen) => seen,
            Err(_) => {
                self.conn = None;
                Seen::Hung
            }
        }
    }

    async fn exchange(&mut self, body: &str) -> Seen {
        let reusable = self.conn.as_ref().is_some_and(|c| !c.is_closed());
        if !reusable || !self.keep_alive {
            self.conn = Conn::connect(self.addr, Protocol::Http1).await.ok();
        }
        let Some(conn) = self.conn.as_mut() else {
            return Seen::RefusedAtConnect;
        };
        let close: &[(&str, &str)] = if self.keep_alive {
            &[]
        } else {
            &[("connection", "close")]
        };
        let request = conn.request("POST", "/", body.to_owned(), close);
        let Ok(answer) = conn.send(request).await else {
            self.conn = None;
            return Seen::ClosedUnanswered;
        };
        let feishu_shaped = if answer.status == 200 {
            answer.text == r#"{"code":0,"msg":"success"}"#
        } else {
            answer.is_feishu_error()
        };
        let shutting_down = answer.status == 503
            && serde_json::from_str::<serde_json::Value>(&answer.text)
                .is_ok_and(|v| v["message"] == SHUTTING_DOWN);
        Seen::Answered {
            status: answer.status,
            feishu_shaped,
            shutting_down,
        }
    }
}

struct Run {
    results: Vec<(Sent, Seen)>,
    elapsed: Duration,
    peak_rss_kib: u64,
    baseline_rss_kib: u64,
    final_rss_kib: u64,
}

/// Sends every job with `concurrency` workers; `on_progress` sees the number
/// of callbacks finished so far, after each one. With several gateways (replicas
/// sharing a duplicate memory), callbacks alternate between them and the two
/// copies of a job go to different ones; with `echo`, a third copy follows that long
/// after them, to the first. Memory is sampled on the first gateway.
async fn drive(
    gates: &[&Binary],
    jobs: Vec<Job>,
    (concurrency, echo): (usize, Option<Duration>),
    keep_alive: bool,
    on_progress: impl Fn(usize) + Send + Sync + 'static,
) -> Run {
    let gate = gates[0];
    let addrs: Vec<SocketAddr> = gates.iter().map(|g| g.addr).collect();
    let pid = gate.pid();
    let baseline_rss_kib = gate.memory().rss_kib;
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop_sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                match memory_of(pid) {
                    Some(m) => peak = peak.max(m.rss_kib),
                    None => break,
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let started = Instant::now();
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let on_progress = Arc::new(on_progress);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (jobs, next, done, on_progress) = (
            jobs.clone(),
            next.clone(),
            done.clone(),
            on_progress.clone(),
        );
        let addrs = addrs.clone();
        workers.spawn(async move {
            let mut clients: Vec<Client> = addrs
                .iter()
                .map(|&addr| Client {
                    addr,
                    keep_alive,
                    conn: None,
                })
                .collect();
            let mut results = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(job) = jobs.get(i) else { break };
                if let [only] = job.as_slice() {
                    let client = &mut clients[i % addrs.len()];
                    let seen = client.send(&only.body).await;
                    results.push((only.clone(), seen));
                } else {
                    // Copies at once, each on its own connection (and replica).
                    let (first, second) = (addrs[0], addrs[1 % addrs.len()]);
                    let once = |sent: Sent, addr: SocketAddr| async move {
                        let mut own = Client {
                            addr,
                            keep_alive: false,
                            conn: None,
                        };
                        let seen = own.send(&sent.body).await;
                        (sent, seen)
                    };
                    let (a, b) =
                        tokio::join!(once(job[0].clone(), first), once(job[1].clone(), second));
                    results.push(a);
                    results.push(b);
                    if let Some(after) = echo {
                        tokio::time::sleep(after).await;
                        let again = Sent::sealed(job[0].task, echo_id(&job[0].id), Kind::Repeat);
                        results.push(once(again, first).await);
                    }
                }
                on_progress(done.fetch_add(job.len(), Ordering::SeqCst) + job.len());
            }
            results
        });
    }
    let mut results = Vec::new();
    while let Some(r) = workers.join_next().await {
        results.extend(r.unwrap());
    }
    let elapsed = started.elapsed();
    stop_sampling.store(true, Ordering::SeqCst);
    let peak_rss_kib = sampler.await.unwrap();
    let final_rss_kib = memory_of(pid).map_or(0, |m| m.rss_kib);
    Run {
        results,
        elapsed,
        peak_rss_kib,
        baseline_rss_kib,
        final_rss_kib,
    }
}

/// The id of a further copy of the callback `id`: numeric like every id, so the
/// upstream decides its fate as for any other, and unused by the workload.
fn echo_id(id: &str) -> String {
    let n: u64 = id.trim_start_matches('c').parse().unwrap_or(0);
    format!("c{}", 50_000_000 + n)
}

/// Sends, at `at`, a copy of every decision `run` carried, alternating between the
/// replicas: Feishu's last retries, long after the first. `taken` ids are not reused.
async fn resend_at(
    gates: &[&Binary],
    run: &Run,
    at: Instant,
    concurrency: usize,
) -> Vec<(Sent, Seen)> {
    let mut tasks: Vec<u64> = run
        .results
        .iter()
        .filter(|(sent, _)| matches!(sent.kind, Kind::Valid | Kind::Repeat))
        .map(|(sent, _)| sent.task)
        .collect();
    tasks.sort_unstable();
    tasks.dedup();
    let copies: Vec<Sent> = tasks
        .iter()
        .map(|&task| Sent::sealed(task, format!("c{}", 90_000_000 + task), Kind::Repeat))
        .collect();
    tokio::time::sleep_until(at.into()).await;
    let addrs: Vec<SocketAddr> = gates.iter().map(|g| g.addr).collect();
    let copies = Arc::new(copies);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (copies, next, addrs) = (copies.clone(), next.clone(), addrs.clone());
        workers.spawn(async move {
            let mut seen = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(sent) = copies.get(i) else { break };
                let mut client = Client {
                    addr: addrs[i % addrs.len()],
                    keep_alive: false,
                    conn: None,
                };
                seen.push((sent.clone(), client.send(&sent.body).await));
            }
            seen
        });
    }
    let mut results = Vec::new();
    while let Some(r) = workers.join_next().await {
        results.extend(r.unwrap());
    }
    results
}

/// Pauses `redis` (SIGSTOP) for 150-600 ms every 1-3 s until `stop` is set; returns
/// how many pauses it made.
fn pause_redis_now_and_then(
    pid: u32,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut r = Rng(seed ^ 0x9a05e);
        let mut pauses = 0;
        while !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1_000 + r.below(2_000))).await;
            if stop.load(Ordering::SeqCst) {
                break;
            }
            support::signal(pid, "STOP");
            tokio::time::sleep(Duration::from_millis(150 + r.below(450))).await;
            support::signal(pid, "CONT");
            pauses += 1;
        }
        pauses
    })
}

/// Waits until the upstream has settled every delivery it started.
async fn settle(ledger: &Ledger) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.pending.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ledger.pending.load(Ordering::SeqCst),
        0,
        "upstream deliveries never settled"
    );
}

/// The tally of a run, and every broken promise found in it.
#[derive(Debug, Default)]
struct Verdict {
    by_status: std::collections::BTreeMap<u16, usize>,
    /// Answered 200 after the upstream accepted this very callback.
    delivered: usize,
    /// Answered 200 as a copy of a decision already delivered.
    answered_from_memory: usize,
    /// The upstream refused, and Feishu was told so.
    refused_upstream: usize,
    /// The upstream accepted after the gateway stopped waiting (504).
    ambiguous: usize,
    /// Of those, ones the upstream meant to answer within the timeout: the
    /// answer was still late (a loaded machine), and Feishu was told so.
    ambiguous_though_prompt: usize,
    /// Answered with an error without reaching the upstream.
    not_forwarded: usize,
    /// Of those, refused with 503 because shutdown had begun.
    shutting_down: usize,
    refused_at_connect: usize,
    closed_unanswered: usize,
    /// Distinct decisions the upstream accepted.
    decisions: usize,
    /// Of those, accepted more than once.
    accepted_twice: usize,
    violations: Vec<String>,
}

/// Checks every answer against what the upstream recorded.
fn judge(results: &[(Sent, Seen)], ledger: &Ledger) -> Verdict {
    let by_id = ledger.by_id.lock().unwrap();
    let mut v = Verdict::default();
    // Decisions the legacy system accepted, in time or late: what a copy answered
    // from memory may count on.
    let mut delivered_tasks = std::collections::HashSet::new();
    for (sent, _) in results {
        let accepted = by_id
            .get(&sent.id)
            .and_then(|d| d.first())
            .is_some_and(|d| matches!(d.fate, Fate::Accepted { .. }));
        if accepted {
            delivered_tasks.insert(sent.task);
        }
    }
    // Deliveries per Idempotency-Key, whichever callback carried them: a decision is
    // recorded once however many copies, 504s and replicas it went through. Refused
    // deliveries free the decision, so only acceptances count.
    let mut accepted_per_key: HashMap<&str, Vec<&str>> = HashMap::new();
    for (id, deliveries) in by_id.iter() {
        for delivery in deliveries {
            if matches!(delivery.fate, Fate::Accepted { .. }) {
                accepted_per_key
                    .entry(delivery.key.as_str())
                    .or_default()
                    .push(id.as_str());
            }
        }
    }
    v.decisions = accepted_per_key.len();
    for (key, ids) in &accepted_per_key {
        if ids.len() > 1 {
            v.accepted_twice += 1;
            let answers: Vec<String> = ids
                .iter()
                .map(|id| {
                    let seen = results.iter().find(|(sent, _)| sent.id == *id);
                    format!("{id}: {:?}", seen.map(|(_, seen)| seen))
                })
                .collect();
            v.violations.push(format!(
                "decision {key} was accepted {} times: {answers:?}",
                ids.len()
            ));
        }
    }
    let mut answered_delivered: HashMap<&str, usize> = HashMap::new();
    for (sent, seen) in results {
        let deliveries = by_id.get(&sent.id).map(Vec::as_slice).unwrap_or_default();
        if deliveries.len() > 1 {
            v.violations.push(format!(
                "{} reached the upstream {} times",
                sent.id,
                deliveries.len()
            ));
        }
        let delivery = deliveries.first();
        let status = match seen {
            Seen::Hung => {
                v.violations.push(format!("{} hung", sent.id));
                continue;
            }
            Seen::RefusedAtConnect | Seen::ClosedUnanswered => {
                if *seen == Seen::RefusedAtConnect {
                    v.refused_at_connect += 1;
                } else {
                    v.closed_unanswered += 1;
                }
                if delivery.is_some() {
                    v.violations
                        .push(format!("{} was delivered but never answered", sent.id));
                }
                continue;
            }
            Seen::Answered {
                status,
                feishu_shaped,
                shutting_down,
            } => {
                if *shutting_down {
                    v.shutting_down += 1;
                }
                if !feishu_shaped {
                    v.violations.push(format!(
                        "{} answered {status} not in Feishu's format",
                        sent.id
                    ));
                }
                *status
            }
        };
        *v.by_status.entry(status).or_default() += 1;
        let allowed: &[u16] = match sent.kind {
            Kind::BadToken => &[401, 503],
            Kind::Malformed => &[422, 401, 503],
            _ => &[],
        };
        if !allowed.is_empty() && !allowed.contains(&status) {
            v.violations
                .push(format!("{} ({:?}) answered {status}", sent.id, sent.kind));
        }
        match (status, delivery.map(|d| d.fate)) {
            (200, Some(Fate::Accepted { .. })) => {
                v.delivered += 1;
                let key = delivery.map_or("", |d| d.key.as_str());
                let n = answered_delivered.entry(key).or_default();
                *n += 1;
                if *n > 1 {
                    v.violations.push(format!(
                        "{}: its decision was delivered and answered 200 again",
                        sent.id
                    ));
                }
            }
            (200, Some(other)) => {
                v.violations.push(format!(
                    "{} answered 200 but the upstream {other:?}",
                    sent.id
                ));
            }
            (200, None) => {
                // A copy answered from memory counts its original's delivery.
                v.answered_from_memory += 1;
                if !delivered_tasks.contains(&sent.task) {
                    v.violations.push(format!(
                        "{} answered 200 but its decision was never accepted",
                        sent.id
                    ));
                }
            }
            // Refused by the gateway itself (or told the first copy's failure): nothing delivered.
            (_, None) => v.not_forwarded += 1,
            // The gateway stopped waiting before the upstream's answer arrived, and
            // said so: the one truthful answer whatever the upstream then did.
            (504, Some(Fate::Accepted { late })) => {
                v.ambiguous += 1;
                if !late {
                    v.ambiguous_though_prompt += 1;
                }
            }
            (504, Some(Fate::Refused { .. })) => v.refused_upstream += 1,
            (status, Some(Fate::Refused { status: up, .. })) => {
                v.refused_upstream += 1;
                let expected = if (401..=599).contains(&up) { up } else { 502 };
                if status != expected {
                    v.violations.push(format!(
                        "{}: upstream refused {up}, Feishu told {status}",
                        sent.id
                    ));
                }
            }
            (status, Some(Fate::Accepted { .. })) => {
                v.violations.push(format!(
                    "{}: the upstream accepted, Feishu told {status}",
                    sent.id
                ));
            }
        }
    }
    v
}

fn report(title: &str, callbacks: usize, concurrency: usize, run: &Run, v: &Verdict) {
    let rate = callbacks as f64 / run.elapsed.as_secs_f64();
    println!(
        "{title}: {callbacks} callbacks, concurrency {concurrency}, {:.1} s ({rate:.0}/s)\n  \
         answered by status: {:?}\n  \
         delivered and answered 200: {}; copies answered 200 from memory: {}; \
         upstream refusals passed on: {}; ambiguous (accepted after the deadline, answered 504): {} \
         ({} of them meant to be prompt)\n  \
         errors without forwarding: {} (of them refused as shutting down: {})\n  \
         refused at connect: {}; closed unanswered (never delivered): {}; violations: {}\n  \
         decisions accepted: {}, of them delivered once: {}, more than once: {}\n  \
         gateway VmRSS: {} KiB at start, {} KiB peak, {} KiB at the end",
        run.elapsed.as_secs_f64(),
        v.by_status,
        v.delivered,
        v.answered_from_memory,
        v.refused_upstream,
        v.ambiguous,
        v.ambiguous_though_prompt,
        v.not_forwarded,
        v.shutting_down,
        v.refused_at_connect,
        v.closed_unanswered,
        v.violations.len(),
        v.decisions,
        v.decisions - v.accepted_twice,
        v.accepted_twice,
        run.baseline_rss_kib,
        run.peak_rss_kib,
        run.final_rss_kib,
    );
}

/// The binary with the soak's limits, `extra` on top, delivering to `upstream`.
async fn soak_gateway(upstream: SocketAddr, extra: &[(&str, &str)]) -> Binary {
    let timeout = UPSTREAM_TIMEOUT.as_millis().to_string();
    let mut vars = vec![
        (config::UPSTREAM_TIMEOUT_MS, timeout.as_str()),
        (config::RATE_LIMIT_RPS, "0"),
        (config::USER_RATE_LIMIT_RPS, "2"),
        (config::USER_RATE_LIMIT_BURST, "2"),
        (config::SHUTDOWN_GRACE_MS, "5000"),
    ];
    vars.extend_from_slice(extra);
    Binary::start(&format!("http://{upstream}/legacy"), &vars).await
}

/// Waits for the upstream to settle, judges the run, prints its report, and
/// fails on any broken promise.
async fn conclude(title: &str, concurrency: usize, run: &Run, ledger: &Ledger) -> Verdict {
    settle(ledger).await;
    let v = judge(&run.results, ledger);
    report(title, run.results.len(), concurrency, run, &v);
    assert!(
        v.violations.is_empty(),
        "{:#?}",
        &v.violations[..v.violations.len().min(20)]
    );
    v
}

fn seed() -> u64 {
    env_usize("SOAK_SEED", 6) as u64
}

#[tokio::test(flavor = "multi_thread")]
async fn every_callback_answered_200_was_delivered_once_and_nothing_else_was() {
    let callbacks = env_usize("SOAK_CALLBACKS", 3_000);
    let concurrency = env_usize("SOAK_CONCURRENCY", 32);
    let seed = seed();
    let (upstream, ledger) = start_upstream(seed).await;
    let gate = soak_gateway(upstream, &[]).await;
    let jobs = workload(seed, callbacks);
    let run = drive(&[&gate], jobs, (concurrency, None), true, |_| {}).await;
    let title = format!("soak (seed {seed})");
    let v = conclude(&title, concurrency, &run, &ledger).await;
    assert_eq!(
        v.refused_at_connect + v.closed_unanswered,
        0,
        "every callback was answered"
    );
    assert!(
        v.delivered > 0 && v.answered_from_memory > 0 && v.ambiguous > 0 && v.refused_upstream > 0
    );
    assert!(
        v.by_status.contains_key(&429)
            && v.by_status.contains_key(&401)
            && v.by_status.contains_key(&422)
    );
    assert!(
        run.peak_rss_kib < RSS_BOUND_KIB,
        "peak RSS {} KiB",
        run.peak_rss_kib
    );
    assert_eq!(gate.readiness().await, Some(200));
}

/// Two replicas over one Redis in `mode`, Redis paused now and then, copies of each
/// decision at once on both replicas, 0.4 s later, and 13 s after the run began, and a
/// share of the legacy system's answers slower than the gateway's deadline.
async fn two_replicas_through_redis_pauses(mode: &str, seed: u64) {
    let callbacks = env_usize("SOAK_REPLICA_CALLBACKS", 2_000);
    let concurrency = env_usize("SOAK_CONCURRENCY", 32);
    let redis = Redis::start();
    let (upstream, ledger) = start_upstream(seed).await;
    let redis_url = redis.url();
    let shared_memory = [
        (config::REDIS_URL, redis_url.as_str()),
        (config::REDIS_FAILURE, mode),
    ];
    let a = soak_gateway(upstream, &shared_memory).await;
    let b = soak_gateway(upstream, &shared_memory).await;
    let jobs = workload(seed, callbacks);
    let stop = Arc::new(AtomicBool::new(false));
    let pauser = pause_redis_now_and_then(redis.pid(), seed, stop.clone());
    let started = Instant::now();
    let echo = Some(Duration::from_millis(400));
    let mut run = drive(&[&a, &b], jobs, (concurrency, echo), true, |_| {}).await;
    let later = resend_at(
        &[&a, &b],
        &run,
        started + Duration::from_secs(13),
        concurrency,
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let pauses = pauser.await.unwrap();
    run.results.extend(later);
    run.elapsed = started.elapsed();
    let title =
        format!("soak on two replicas, REDIS_FAILURE={mode}, {pauses} Redis pauses (seed {seed})");
    for (name, gate) in [("a", &a), ("b", &b)] {
        let m = gate.metrics().await;
        let unanswered: Vec<&str> = m
            .lines()
            .filter(|l| l.starts_with("feishu_gate_redis_operations_total") && !l.ends_with(" 0"))
            .filter(|l| !l.contains(r#"result="ok""#))
            .collect();
        println!("  replica {name}, Redis calls not answered: {unanswered:?}");
        if std::env::var("SOAK_LOG").is_ok() {
            for line in gate.log_tail() {
                println!("    {line}");
            }
        }
    }
    let v = conclude(&title, concurrency, &run, &ledger).await;
    assert!(pauses > 0, "Redis was never paused");
    assert_eq!(v.refused_at_connect + v.closed_unanswered, 0);
    assert!(v.delivered > 0 && v.answered_from_memory > 0 && v.ambiguous > 0);
    assert_eq!(v.accepted_twice, 0);
    // Copies were recognised through Redis, not only by each replica's own memory.
    let shared: f64 = [a.metrics().await, b.metrics().await]
        .iter()
        .flat_map(|m| ["in_flight", "remembered"].map(|how| duplicates(m, how, "shared")))
        .sum();
    assert!(shared > 0.0, "no copy was found in the shared memory");
    for gate in [&a, &b] {
        let m = gate.metrics().await;
        assert_eq!(metric(&m, "feishu_gate_redis_records_pending"), 0.0, "{m}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_open_through_redis_pauses_deliver_each_decision_once() {
    two_replicas_through_redis_pauses("open", seed() + 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_closed_through_redis_pauses_deliver_each_decision_once() {
    two_replicas_through_redis_pauses("closed", seed() + 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_answers_or_refuses_every_callback_and_loses_none() {
    let callbacks = env_usize("SOAK_SIGTERM_CALLBACKS", 2_000);
    let concurrency = env_usize("SOAK_CONCURRENCY", 32);
    let seed = seed() + 1;
    let (upstream, ledger) = start_upstream(seed).await;
    let mut gate = soak_gateway(upstream, &[]).await;
    let jobs = workload(seed, callbacks);
    let pid = gate.pid();
    let signalled = Arc::new(Mutex::new(None::<Instant>));
    let at = callbacks * 2 / 5;
    let mark = signalled.clone();
    // A callback per connection, as a client that does not keep connections.
    let run = drive(&[&gate], jobs, (concurrency, None), false, move |done| {
        let mut mark = mark.lock().unwrap();
        if done >= at && mark.is_none() {
            support::signal(pid, "TERM");
            *mark = Some(Instant::now());
        }
    })
    .await;
    let signalled = signalled.lock().unwrap().expect("SIGTERM was sent");
    let code = gate.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "log: {:?}", gate.log_tail());
    println!(
        "exited 0, {:.1} s after SIGTERM",
        signalled.elapsed().as_secs_f64()
    );
    let title = format!("soak with SIGTERM after {at} (seed {seed})");
    let v = conclude(&title, concurrency, &run, &ledger).await;
    assert!(v.refused_at_connect > 0, "the load went on past the exit");
    assert!(v.delivered > 0);
}
