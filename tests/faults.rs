//! Upstream faults: raw TCP servers that misbehave on purpose. Whatever the
//! legacy system does, Feishu gets a truthful answer in its own format before
//! its deadline, and the gateway serves the next callback normally.

mod support;

use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use feishu_gate::testing::config;
use support::*;

/// Short, so the suite stays fast; every bound below is relative to it.
const TIMEOUT_MS: &str = "800";
const TIMEOUT: Duration = Duration::from_millis(800);
/// Room for the gateway's own work on a loaded 2-core machine; still far
/// inside Feishu's 10 s.
const SLACK: Duration = Duration::from_secs(3);

const UNREACHABLE: &str = "The approval system is unavailable, please try again later.";
const BROKE_OFF: &str = "The connection to the approval system broke off; refresh to check whether the action took effect.";
/// A 504 whose exchange goes on (`LATE_VERDICT_MS`, on by default).
const TOO_SLOW: &str = "The action is still being submitted to the approval system; refresh shortly to see the result.";
const NOT_CONFIRMED: &str =
    "The approval system did not confirm this action, please try again later.";

/// What the misbehaving upstream does once it has read a request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    /// Answers 200 `{"code":0}` properly, keeping the connection alive.
    Healthy,
    /// Never answers; holds the connection until the gateway lets go.
    Silent,
    /// Sends the status line and headers promising a body, then nothing.
    HeadersThenStall(u16),
    /// Sends headers and part of the body, then resets the connection.
    ResetMidBody(u16),
    /// Sends headers and part of the body, then closes normally.
    Truncated(u16),
    /// Answers with something that is not HTTP.
    Garbage,
    /// Promises and streams a 1 GiB body.
    Enormous(u16),
    /// Sends a proper answer one byte a second.
    Trickle,
    /// Resets the connection without answering.
    ResetBeforeAnswer,
    /// Answers 200 properly, without `connection: close`, then closes the
    /// connection, as a server does when its keep-alive timeout passes.
    CloseAfterAnswer,
}

const ENORMOUS: u64 = 1 << 30;

const HEALTHY: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{\"code\":0}";

impl Fault {
    fn act(self) -> Act {
        let partial = |status| format!("{}{}", head(status, 100), r#"{"message":"par"#);
        match self {
            Fault::Healthy => Act::answer(HEALTHY),
            Fault::Silent => Act::hang(),
            Fault::HeadersThenStall(status) => Act::answer(head(status, 100)).then_hang(),
            Fault::ResetMidBody(status) => {
                Act::answer(partial(status)).then_reset_after(Duration::from_millis(50))
            }
            Fault::Truncated(status) => Act::answer(partial(status)).then_close(),
            Fault::Garbage => {
                Act::answer(&b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02\xff garbage\r\n\r\n"[..])
                    .then_close()
            }
            Fault::Enormous(status) => Act::answer(head(status, ENORMOUS))
                .filled_to(ENORMOUS)
                .then_close(),
            Fault::Trickle => Act::answer(format!("{}{{\"code\":0}}", head(200, 10)))
                .trickled(Duration::from_secs(1))
                .then_close(),
            Fault::ResetBeforeAnswer => Act::reset(),
            Fault::CloseAfterAnswer => {
                Act::answer(format!("{}{{\"code\":0}}", head(200, 10))).then_close()
            }
        }
    }
}

/// A raw TCP server acting out a [`Fault`].
async fn faulty(fault: Fault) -> RawLegacy {
    RawLegacy::start(move |_| fault.act()).await
}

fn set(up: &RawLegacy, fault: Fault) {
    up.set(move |_| fault.act());
}

fn head(status: u16, length: u64) -> String {
    format!(
        "HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
}

/// The gateway under test: a short late window, so that an exchange the fault left
/// hanging must have ended within [`SLACK`] of its answer.
async fn gate_for(up: &str, extra: &[(&str, &str)]) -> Gate {
    let mut vars = vec![
        (config::UPSTREAM_TIMEOUT_MS, TIMEOUT_MS),
        (config::ANSWER_WITHIN_MS, "1000"),
        (config::LATE_VERDICT_MS, "2000"),
    ];
    vars.extend_from_slice(extra);
    Gate::start(up, &vars).await
}

/// Posts a callback and returns the answer and how long it took.
async fn timed_post(gate: &Gate, task: &str) -> (Answer, Duration) {
    let started = Instant::now();
    let answer = gate
        .post(callback_with(TOKEN, "task_id", &format!("\"{task}\"")))
        .await;
    (answer, started.elapsed())
}

/// After a fault: a normal callback is delivered and answered 200, and
/// nothing from the fault is left running.
async fn still_healthy(gate: &Gate, up: &RawLegacy) {
    set(up, Fault::Healthy);
    let before = up.count();
    let (answer, _) = timed_post(gate, "after-the-fault").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let requests = up.requests();
    assert_eq!(requests.len(), before + 1);
    assert!(requests[before].text().contains("after-the-fault"));
    let deadline = Instant::now() + SLACK;
    while !gate.gateway.deliveries.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        gate.gateway.deliveries.is_empty(),
        "a delivery was left running"
    );
    assert_eq!(
        metric(&gate.metrics().await, "feishu_gate_callbacks_in_flight"),
        0.0
    );
}

/// One fault end to end: the status and message Feishu gets, within the
/// deadline, then a healthy callback.
async fn survives(fault: Fault, extra: &[(&str, &str)], status: u16, message: Option<&str>) {
    let up = faulty(fault).await;
    let gate = gate_for(&up.url(), extra).await;
    let (answer, elapsed) = timed_post(&gate, "during-the-fault").await;
    if status == 200 {
        assert_eq!(answer.status, 200, "{fault:?}: {}", answer.text);
        assert_eq!(answer.json(), serde_json::json!({"code":0,"msg":"success"}));
    } else {
        let shown = answer.feishu_error(status);
        if let Some(message) = message {
            assert_eq!(shown, message, "{fault:?}");
        }
    }
    assert!(
        elapsed < TIMEOUT + SLACK,
        "{fault:?} answered after {elapsed:?}"
    );
    assert_eq!(up.count(), 1, "{fault:?}: delivered once, never retried");
    still_healthy(&gate, &up).await;
}

#[tokio::test]
async fn an_upstream_refusing_connections_is_unreachable_until_it_is_back() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let gate = gate_for(&format!("http://{addr}/legacy/approve"), &[]).await;
    let (answer, elapsed) = timed_post(&gate, "while-down").await;
    assert_eq!(answer.feishu_error(502), UNREACHABLE);
    assert!(elapsed < TIMEOUT + SLACK);
    let up = RawLegacy::on(TcpListener::bind(addr).await.unwrap(), |_| {
        Fault::Healthy.act()
    });
    still_healthy(&gate, &up).await;
    assert_eq!(up.count(), 1, "the failed callback was not replayed");
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_too_slow() {
    survives(Fault::Silent, &[], 504, Some(TOO_SLOW)).await;
}

#[tokio::test]
async fn a_reset_before_any_answer_is_unreachable() {
    survives(Fault::ResetBeforeAnswer, &[], 502, Some(BROKE_OFF)).await;
}

#[tokio::test]
async fn garbage_instead_of_http_is_unreachable() {
    survives(Fault::Garbage, &[], 502, Some(BROKE_OFF)).await;
}

#[tokio::test]
async fn an_answer_trickling_a_byte_a_second_is_too_slow() {
    survives(Fault::Trickle, &[], 504, Some(TOO_SLOW)).await;
}

/// Without `UPSTREAM_OK` the status is the acceptance, of an answer that arrived whole
/// (RFC 9112 §8): a 2xx whose body then stalls is too slow, one that breaks or stops short
/// leaves the decision's fate unknown. One that never ends is acceptance: its body does
/// not matter and, as far as anyone can tell, was being sent whole.
#[tokio::test]
async fn a_2xx_with_a_broken_body_is_not_acceptance_when_no_rule_is_set() {
    survives(Fault::HeadersThenStall(200), &[], 504, Some(TOO_SLOW)).await;
    survives(Fault::ResetMidBody(200), &[], 502, Some(BROKE_OFF)).await;
    survives(Fault::Truncated(201), &[], 502, Some(BROKE_OFF)).await;
    survives(Fault::Enormous(200), &[], 200, None).await;
}

/// With `UPSTREAM_OK` the body decides, so a body that does not arrive leaves
/// the decision's fate unknown: too slow when it stalls, unreachable when the
/// connection breaks, and unconfirmed when it is too long to judge.
#[tokio::test]
async fn a_2xx_with_a_broken_body_is_not_confirmed_when_a_rule_is_set() {
    let rule = [(config::UPSTREAM_OK, "/code==0")];
    survives(Fault::HeadersThenStall(200), &rule, 504, Some(TOO_SLOW)).await;
    survives(Fault::ResetMidBody(200), &rule, 502, Some(BROKE_OFF)).await;
    survives(Fault::Truncated(200), &rule, 502, Some(BROKE_OFF)).await;
    survives(Fault::Enormous(200), &rule, 502, Some(NOT_CONFIRMED)).await;
}

/// A refusal's status stands whatever happens to its body; only its own
/// message is lost.
#[tokio::test]
async fn a_refusal_with_a_broken_body_keeps_its_status() {
    let refused = |code: u16| format!("The approval system refused this action (HTTP {code}).");
    let failed = |code: u16| {
        format!(
            "The approval system had an error (HTTP {code}); refresh later to check whether the action took effect."
        )
    };
    let redirected = "The approval gateway is misconfigured: the approval system redirected the request (HTTP 302); contact the administrator.";
    survives(Fault::HeadersThenStall(503), &[], 503, Some(&failed(503))).await;
    survives(Fault::ResetMidBody(409), &[], 409, Some(&refused(409))).await;
    survives(Fault::Truncated(500), &[], 500, Some(&failed(500))).await;
    survives(Fault::Enormous(500), &[], 500, Some(&failed(500))).await;
    survives(Fault::ResetMidBody(302), &[], 502, Some(redirected)).await;
}

/// The real binary, handed 1 GiB answers: it reads a bounded part of each and
/// hangs up, and its memory does not follow the size of the answer.
#[tokio::test(flavor = "multi_thread")]
async fn an_enormous_answer_is_cut_off_and_memory_stays_flat() {
    const ROUNDS: usize = 6;
    let up = faulty(Fault::Enormous(200)).await;
    let gate = Binary::start(&up.url(), &[(config::UPSTREAM_TIMEOUT_MS, "5000")]).await;
    // One ordinary exchange first, so the baseline includes a warm client.
    set(&up, Fault::Healthy);
    let sealed = seal(KEY, &callback(TOKEN));
    assert_eq!(post(gate.addr, "/", sealed, &[]).await.status, 200);
    let before = gate.memory();

    set(&up, Fault::Enormous(200));
    for i in 0..ROUNDS {
        let body = seal(
            KEY,
            &callback_with(TOKEN, "task_id", &format!("\"big-{i}\"")),
        );
        let answer = post(gate.addr, "/", body, &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.fills_ended() < ROUNDS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        up.fills_ended(),
        ROUNDS,
        "the gateway hung up on every answer"
    );
    let after = gate.memory();
    let taken = up.filled();
    println!(
        "enormous answers: {} GiB offered, {} KiB taken by the kernel's buffers and the gateway; \
         VmHWM {} -> {} KiB, VmRSS {} -> {} KiB",
        ROUNDS,
        taken / 1024,
        before.hwm_kib,
        after.hwm_kib,
        before.rss_kib,
        after.rss_kib
    );
    // Socket buffers take a few MiB per connection; reading the whole answer
    // would take 1 GiB each.
    assert!(
        taken < ROUNDS as u64 * 64 * 1024 * 1024,
        "{taken} bytes taken"
    );
    assert!(
        after.hwm_kib < before.hwm_kib + 32 * 1024,
        "peak memory grew from {} to {} KiB",
        before.hwm_kib,
        after.hwm_kib
    );
}

/// Kept-alive connections to the upstream are reused: callbacks one after
/// another travel on one connection (one worker, so one pool).
#[tokio::test]
async fn callbacks_one_after_another_share_one_upstream_connection() {
    let up = faulty(Fault::Healthy).await;
    let gate = gate_for(&up.url(), &[(config::WORKERS, "1")]).await;
    for i in 0..5 {
        let (answer, _) = timed_post(&gate, &format!("in-turn-{i}")).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
    }
    assert_eq!(up.count(), 5);
    assert_eq!(up.connections(), 1, "each callback opened a connection");
}

/// A server closes kept-alive connections it considers idle. A pooled
/// connection the upstream has closed is never used for a callback: each
/// callback is delivered once, on a live connection, and answered 200.
#[tokio::test]
async fn a_kept_alive_connection_the_upstream_closed_is_not_used_again() {
    let up = faulty(Fault::CloseAfterAnswer).await;
    let gate = gate_for(&up.url(), &[(config::WORKERS, "1")]).await;
    for i in 0..3 {
        let (answer, _) = timed_post(&gate, &format!("after-close-{i}")).await;
        assert_eq!(answer.status, 200, "callback {i}: {}", answer.text);
        // Long enough for the close to arrive before the next callback.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = up.requests();
    assert_eq!(requests.len(), 3, "each callback delivered exactly once");
    for (i, request) in requests.iter().enumerate() {
        let body = request.text();
        assert!(body.contains(&format!("after-close-{i}")), "{body}");
    }
    assert_eq!(up.connections(), 3);
    still_healthy(&gate, &up).await;
}
