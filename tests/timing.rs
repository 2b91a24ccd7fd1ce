//! Delivered once, whatever the timing: a legacy system slower than Feishu's deadline,
//! Redis pausing or restarting under a delivery, a replica killed or frozen in the middle
//! of one. Real gateway processes, a real `redis-server` and a counting upstream on
//! loopback; faults are real signals. Each test counts what the legacy system received.

mod support;

use std::time::{Duration, Instant};

use support::redis_server::Redis;
use support::*;

const PREFIX: &str = "feishu-gate:";

/// A distinct decision per `n`.
fn decision(n: u32) -> String {
    seal(
        KEY,
        &callback_with(TOKEN, "instance_id", &format!("\"timing-{n}\"")),
    )
}

async fn replica(up: &Upstream, redis: Option<&Redis>, extra: &[(&str, &str)]) -> Binary {
    let url = redis.map(Redis::url);
    let mut vars = vec![("RUST_LOG", "info")];
    if let Some(url) = &url {
        vars.push(("FEISHU_GATE_REDIS_URL", url.as_str()));
    }
    vars.extend_from_slice(extra);
    Binary::start(&up.url(), &vars).await
}

/// Two replicas over one fresh `redis-server`, delivering to an upstream answering `reply`.
async fn two_replicas(reply: Reply) -> (Redis, Upstream, Binary, Binary) {
    let redis = Redis::start();
    let up = Upstream::start(reply).await;
    let a = replica(&up, Some(&redis), &[]).await;
    let b = replica(&up, Some(&redis), &[]).await;
    (redis, up, a, b)
}

async fn send(gate: &Binary, body: &str) -> Answer {
    post(gate.addr, "/", body.to_owned(), &[]).await
}

/// Sends `body` to `gate` in the background.
fn send_later(gate: &Binary, body: &str) -> tokio::task::JoinHandle<Answer> {
    let (addr, body) = (gate.addr, body.to_owned());
    tokio::spawn(async move { post(addr, "/", body, &[]).await })
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(at.into()).await;
}

/// The value Redis holds for the only decision key, if there is one.
fn decision_value(redis: &Redis) -> Option<String> {
    decision_value_besides(redis, &[])
}

/// The value Redis holds for the only decision key not in `old`, if there is one.
fn decision_value_besides(redis: &Redis, old: &[String]) -> Option<String> {
    let keys: Vec<_> = redis
        .keys(PREFIX)
        .into_iter()
        .filter(|k| !k.ends_with(":lease") && !k.ends_with("fence") && !old.contains(k))
        .collect();
    assert!(keys.len() <= 1, "{keys:?}");
    keys.first().and_then(|k| redis.get(k))
}

/// A legacy system slower than the answer bound: Feishu is answered 504 in time, the
/// exchange goes on, and Feishu's retries, at once and 13 s later, are not delivered
/// again. On one replica (its own memory) and on two sharing Redis.
#[tokio::test]
async fn a_slow_legacy_system_is_waited_for_and_its_copies_join_the_exchange() {
    let redis = Redis::start();
    let up = Upstream::start(Reply::ok().slow(Duration::from_secs(3))).await;
    let bound = [("FEISHU_GATE_ANSWER_WITHIN_MS", "1500")];
    let alone = replica(&up, None, &bound).await;
    let a = replica(&up, Some(&redis), &bound).await;
    let b = replica(&up, Some(&redis), &bound).await;

    for (first, second, n) in [(&alone, &alone, 1), (&a, &b, 2)] {
        let body = decision(n);
        let before = up.count();
        let started = Instant::now();
        let answer = send(first, &body).await;
        let message = answer.feishu_error(504);
        assert!(message.contains("still being submitted"), "{message}");
        assert!(started.elapsed() < Duration::from_millis(2000));
        // Feishu's retry at once joins the exchange: 504 again, nothing sent.
        let retry = send(second, &body).await;
        assert_eq!(retry.status, 504, "{}", retry.text);
        assert_eq!(up.count(), before + 1);
        // Accepted at 3 s: copies from then on are answered 200.
        sleep_until(started + Duration::from_millis(3300)).await;
        let copy = send(second, &body).await;
        assert_eq!(copy.status, 200, "{}", copy.text);
        let copy = send(first, &body).await;
        assert_eq!(copy.status, 200, "{}", copy.text);
        assert_eq!(up.count(), before + 1, "delivered once");
    }
    // Feishu's last retry, 13 s after the first: past the lease and the old claim's life.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(send(&alone, &decision(1)).await.status, 200);
    assert_eq!(send(&b, &decision(2)).await.status, 200);
    assert_eq!(up.count(), 2);
    assert_eq!(decision_value(&redis).as_deref(), Some("delivered"));

    // The fencing token went out with each delivery, a number.
    for received in up.received() {
        let fence = received.header("fencing-token").unwrap();
        assert!(fence.parse::<u64>().is_ok(), "{fence}");
    }
    // The late acceptance is in the log and the metrics of the replica that waited.
    let m = a.metrics().await;
    assert_eq!(
        metric(&m, r#"feishu_gate_late_verdicts_total{verdict="accepted"}"#),
        1.0,
        "{m}"
    );
    a.line("the late verdict", |l| l.contains("late verdict: accepted"))
        .await;
}

/// A client that hangs up while its decision is being delivered does not cut the
/// delivery: it runs to its end, its acceptance is recorded and logged as a verdict the
/// caller never heard, and the copy Feishu sends next is answered 200 without a second
/// delivery.
#[tokio::test]
async fn a_client_hanging_up_mid_delivery_does_not_cut_it() {
    use tokio::io::AsyncWriteExt as _;

    let up = Upstream::start(Reply::ok().slow(Duration::from_millis(800))).await;
    let gate = replica(&up, None, &[]).await;
    let body = decision(1);
    let mut client = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async { up.count() == 1 }).await,
        "the request reached the legacy system"
    );
    drop(client);
    gate.line("the verdict nobody heard", |l| {
        l.contains("late verdict: accepted")
    })
    .await;
    let copy = send(&gate, &body).await;
    assert_eq!(copy.status, 200, "{}", copy.text);
    assert_eq!(up.count(), 1, "delivered once");
    let m = gate.metrics().await;
    assert_eq!(
        metric(&m, r#"feishu_gate_late_verdicts_total{verdict="accepted"}"#),
        1.0,
        "{m}"
    );
}

/// The delivery ends while Redis is stopped, just after another call on the same
/// replica failed: its `delivered` mark is still written (when Redis returns), not
/// skipped, and a copy on the other replica 13 s later, past any claim's life, is not
/// delivered again.
#[tokio::test]
async fn a_delivery_ending_while_redis_is_paused_is_still_recorded() {
    let (redis, up, a, b) = two_replicas(Reply::ok().slow(Duration::from_millis(1000))).await;
    let body = decision(1);
    let started = Instant::now();
    let first = send_later(&a, &body);
    sleep_until(started + Duration::from_millis(500)).await;
    redis.signal("STOP");
    // Another decision on the same replica meets the stopped Redis first.
    sleep_until(started + Duration::from_millis(600)).await;
    let other = send_later(&a, &decision(2));
    // The legacy system accepts the first at 1 s; its mark cannot be written before 2.5 s.
    let answer = first.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    sleep_until(started + Duration::from_millis(2500)).await;
    redis.signal("CONT");
    let _ = other.await.unwrap();
    let key = idempotency_key_of(&up, "timing-1");
    let recorded = eventually(Duration::from_secs(5), || async {
        redis.get(&format!("{PREFIX}{key}")).as_deref() == Some("delivered")
    })
    .await;
    assert!(recorded, "{:?}", redis.get(&format!("{PREFIX}{key}")));
    sleep_until(started + Duration::from_secs(14)).await;
    let copy = send(&b, &body).await;
    assert_eq!(copy.status, 200, "{}", copy.text);
    assert_eq!(deliveries_of(&up, &key), 1, "delivered once");
    let m = a.metrics().await;
    assert!(
        metric(&m, "feishu_gate_redis_records_deferred_total") >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "feishu_gate_redis_records_pending"), 0.0, "{m}");
    a.line("the record after all", |l| {
        l.contains("outcome recorded after all")
    })
    .await;
}

/// The `Idempotency-Key` of the first delivery whose body contains `marker`.
fn idempotency_key_of(up: &Upstream, marker: &str) -> String {
    up.received()
        .iter()
        .find(|r| r.text().contains(marker))
        .and_then(|r| r.header("idempotency-key"))
        .unwrap_or_else(|| panic!("no delivery of {marker}"))
}

/// How many deliveries carried `key`.
fn deliveries_of(up: &Upstream, key: &str) -> usize {
    up.received()
        .iter()
        .filter(|r| r.header("idempotency-key").as_deref() == Some(key))
        .count()
}

/// A copy that has seen the other replica's claim keeps waiting through a Redis pause
/// instead of delivering on a failed poll, in both failure modes.
#[tokio::test]
async fn a_copy_polling_during_a_pause_does_not_deliver() {
    for mode in ["open", "closed"] {
        let redis = Redis::start();
        let up = Upstream::start(Reply::ok().slow(Duration::from_millis(2000))).await;
        let extra = [("FEISHU_GATE_REDIS_FAILURE", mode)];
        let a = replica(&up, Some(&redis), &extra).await;
        let b = replica(&up, Some(&redis), &extra).await;
        let body = decision(1);
        let started = Instant::now();
        let first = send_later(&a, &body);
        sleep_until(started + Duration::from_millis(300)).await;
        let copy = send_later(&b, &body);
        sleep_until(started + Duration::from_millis(600)).await;
        redis.signal("STOP");
        sleep_until(started + Duration::from_millis(1600)).await;
        redis.signal("CONT");
        let (first, copy) = (first.await.unwrap(), copy.await.unwrap());
        assert_eq!(first.status, 200, "{mode}: {}", first.text);
        assert_eq!(copy.status, 200, "{mode}: {}", copy.text);
        assert_eq!(up.count(), 1, "{mode}: delivered once");
    }
}

/// Redis stopped while a new decision's claim is on its way: the claim runs when Redis
/// resumes, after the call has timed out. The replica finds its own claim on its next
/// try, delivers under it and records the delivery, so the other replica's copy is not
/// delivered again.
#[tokio::test]
async fn a_claim_that_timed_out_but_ran_is_kept_and_recorded() {
    let (redis, up, a, b) = two_replicas(Reply::ok()).await;
    // A first decision, so that A's connection to Redis is open before the pause.
    assert_eq!(send(&a, &decision(1)).await.status, 200);
    let body = decision(2);
    redis.signal("STOP");
    let started = Instant::now();
    let first = send_later(&a, &body);
    sleep_until(started + Duration::from_millis(900)).await;
    redis.signal("CONT");
    let answer = first.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    let copy = send(&b, &body).await;
    assert_eq!(copy.status, 200, "{}", copy.text);
    assert_eq!(up.count(), 2, "each decision delivered once");
    let m = a.metrics().await;
    assert!(
        metric(
            &m,
            r#"feishu_gate_redis_operations_total{op="claim",result="timeout"}"#
        ) >= 1.0,
        "{m}"
    );
}

/// A replica killed after sending leaves the decision uncertain, not free: copies are
/// answered 504 and not delivered, until the decision's late window ends.
#[tokio::test]
async fn a_replica_killed_after_sending_leaves_the_decision_uncertain() {
    let redis = Redis::start();
    let up = Upstream::start(Reply::ok().slow(Duration::from_secs(30))).await;
    let extra = [
        ("FEISHU_GATE_ANSWER_WITHIN_MS", "1500"),
        ("FEISHU_GATE_LATE_VERDICT_MS", "10000"),
    ];
    let mut a = replica(&up, Some(&redis), &extra).await;
    let b = replica(&up, Some(&redis), &extra).await;
    let body = decision(1);
    let started = Instant::now();
    let _first = send_later(&a, &body);
    sleep_until(started + Duration::from_millis(500)).await;
    assert!(decision_value(&redis).is_some_and(|v| v.starts_with("sent:")));
    a.signal("KILL");
    let _ = a.wait_exit(Duration::from_secs(5)).await;
    // Within the lease, the copy waits for a holder that may yet answer.
    let copy = send(&b, &body).await;
    assert_eq!(copy.status, 504, "{}", copy.text);
    // Once the lease has lapsed, the copy is told at once that it may have taken effect.
    sleep_until(started + Duration::from_millis(6000)).await;
    let asked = Instant::now();
    let copy = send(&b, &body).await;
    let message = copy.feishu_error(504);
    assert!(
        message.contains("check whether it took effect"),
        "{message}"
    );
    assert!(asked.elapsed() < Duration::from_millis(500));
    assert_eq!(up.count(), 1, "not delivered again while uncertain");
    // After the window (10 s from arrival), the decision may be delivered again.
    up.set(Reply::ok());
    sleep_until(started + Duration::from_millis(10_600)).await;
    let retry = send(&b, &body).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(up.count(), 2);
}

/// A replica frozen after sending: its lease lapses, copies are answered 504 and not
/// delivered; when it resumes, it reads the legacy system's acceptance and records it,
/// and copies are answered 200.
#[tokio::test]
async fn a_replica_stopped_mid_delivery_resumes_and_records_its_verdict() {
    let (redis, up, a, b) = two_replicas(Reply::ok().slow(Duration::from_millis(1000))).await;
    let body = decision(1);
    let started = Instant::now();
    let _first = send_later(&a, &body);
    sleep_until(started + Duration::from_millis(300)).await;
    a.signal("STOP");
    sleep_until(started + Duration::from_millis(6500)).await;
    let copy = send(&b, &body).await;
    let message = copy.feishu_error(504);
    assert!(
        message.contains("check whether it took effect"),
        "{message}"
    );
    a.signal("CONT");
    let recorded = eventually(Duration::from_secs(5), || async {
        decision_value(&redis).as_deref() == Some("delivered")
    })
    .await;
    assert!(recorded, "{:?}", decision_value(&redis));
    assert_eq!(send(&b, &body).await.status, 200);
    assert_eq!(up.count(), 1, "delivered once");
}

/// A replica frozen while its claim was on its way: nobody renews the claim, so it
/// lapses and the other replica delivers the decision with a larger fencing token; the
/// frozen one, once resumed, finds it delivered and does not send.
#[tokio::test]
async fn a_replica_frozen_while_claiming_loses_the_decision_and_does_not_send() {
    let (redis, up, a, b) = two_replicas(Reply::ok()).await;
    assert_eq!(send(&a, &decision(1)).await.status, 200);
    let old = redis.keys(PREFIX);
    let decision_value = |redis: &Redis| decision_value_besides(redis, &old);
    let body = decision(2);
    // A's claim waits in Redis's socket; A is frozen before it can read the answer.
    redis.signal("STOP");
    let _first = send_later(&a, &body);
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.signal("STOP");
    redis.signal("CONT");
    let claimed = eventually(Duration::from_secs(2), || async {
        decision_value(&redis).is_some_and(|v| v.starts_with("claim:"))
    })
    .await;
    assert!(claimed, "{:?}", decision_value(&redis));
    // Nobody renews it: after the lease, the other replica takes the decision.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert_eq!(send(&b, &body).await.status, 200);
    assert_eq!(up.count(), 2);
    let fenced = up.received()[1].header("fencing-token").unwrap();
    a.signal("CONT");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        up.count(),
        2,
        "the replica that lost its lease did not send"
    );
    assert_eq!(decision_value(&redis).as_deref(), Some("delivered"));
    assert!(fenced.parse::<u64>().is_ok());
}

/// Redis restarted empty while a delivery runs: the holder's next renewal puts its
/// mark back, so a copy arriving after that is not delivered again, and the acceptance
/// is recorded. (A copy inside the second before the renewal could be: a restart
/// without persistence is one of the faults that can still deliver twice.)
#[tokio::test]
async fn redis_restarted_empty_mid_delivery_is_repaired_by_the_holder() {
    let mut redis = Redis::start();
    let up = Upstream::start(Reply::ok().slow(Duration::from_millis(4000))).await;
    let a = replica(&up, Some(&redis), &[]).await;
    let b = replica(&up, Some(&redis), &[]).await;
    let body = decision(1);
    let started = Instant::now();
    let first = send_later(&a, &body);
    sleep_until(started + Duration::from_millis(500)).await;
    redis.restart();
    assert_eq!(decision_value(&redis), None, "restarted empty");
    let restored = eventually(Duration::from_secs(3), || async {
        decision_value(&redis).is_some_and(|v| v.starts_with("sent:"))
    })
    .await;
    assert!(restored, "{:?}", decision_value(&redis));
    let copy = send(&b, &body).await;
    assert_eq!(copy.status, 200, "{}", copy.text);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(up.count(), 1, "delivered once");
    assert_eq!(decision_value(&redis).as_deref(), Some("delivered"));
    a.line("the restored lease", |l| l.contains("lease restored"))
        .await;
}

/// The check right before sending, between two replicas' memories on one real Redis: a
/// holder that went quiet past its lease (frozen after taking the claim, before sending)
/// finds the decision taken over, with a larger fencing token, and does not send; the
/// new holder does.
#[tokio::test]
async fn a_holder_that_lost_its_lease_is_refused_at_the_check_before_sending() {
    use feishu_gate::testing::dedup::shared::{
        Admission, FailureMode, Hold, LEASE, RedisSettings, RedisUrl, SharedMemory,
    };
    use feishu_gate::testing::observe::metrics::Metrics;
    let redis = Redis::start();
    let settings = RedisSettings {
        url: RedisUrl::parse(&redis.url()).unwrap(),
        ca_file: None,
        prefix: PREFIX.to_owned(),
        failure: FailureMode::Open,
    };
    let memory = || SharedMemory::new(&settings, Duration::from_secs(600)).unwrap();
    let (a, b, metrics) = (memory(), memory(), Metrics::new());
    let decision = [9; 32];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let Admission::Deliver(Some(first)) = a.admit(&decision, deadline, &metrics).await else {
        panic!("the first replica claims the decision")
    };
    // Nothing renews it: the replica is frozen.
    tokio::time::sleep(LEASE + Duration::from_millis(300)).await;
    let Admission::Deliver(Some(second)) = b.admit(&decision, deadline, &metrics).await else {
        panic!("the lapsed claim is taken over")
    };
    assert!(second.fence() > first.fence());
    assert_eq!(
        a.check_before_sending(&first, deadline, &metrics).await,
        Hold::Lost
    );
    assert_eq!(
        b.check_before_sending(&second, deadline, &metrics).await,
        Hold::Held
    );
    assert!(decision_value(&redis).is_some_and(|v| v.starts_with("sent:")));
}
