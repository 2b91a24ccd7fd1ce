//! The deployments people really run, against the real binary and real
//! upstreams: Lark's shorter deadline, a legacy system that is restarting,
//! and trace context carried across the hop.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::otlp::OtlpReceiver;

use tokio::net::TcpListener;

use feishu_gate::testing::config;
use support::*;

/// Lark's page gives a callback 5 s; the README tells its users to set this.
const LARK_ANSWER_WITHIN_MS: &str = "4500";
const LARK_DEADLINE: Duration = Duration::from_secs(5);

async fn timed_sealed_post(addr: SocketAddr, task: &str) -> (Answer, Duration) {
    let body = seal(
        KEY,
        &callback_with(TOKEN, "task_id", &format!("\"{task}\"")),
    );
    let started = Instant::now();
    let answer = post(addr, "/", body, &[]).await;
    (answer, started.elapsed())
}

/// At Lark's setting a silent legacy system is answered 504 before Lark's
/// 5 s: by the default upstream timeout, which follows the bound, and by the
/// bound itself when the upstream timeout is as long as the bound.
#[tokio::test(flavor = "multi_thread")]
async fn at_larks_setting_a_silent_legacy_system_is_answered_504_before_5_s() {
    let silent = RawLegacy::answering(Act::hang()).await;
    let url = silent.url();
    let by_default =
        Binary::start(&url, &[(config::ANSWER_WITHIN_MS, LARK_ANSWER_WITHIN_MS)]).await;
    let at_the_bound = Binary::start(
        &url,
        &[
            (config::ANSWER_WITHIN_MS, LARK_ANSWER_WITHIN_MS),
            (config::UPSTREAM_TIMEOUT_MS, LARK_ANSWER_WITHIN_MS),
        ],
    )
    .await;
    let ((default_answer, default_took), (bound_answer, bound_took)) = tokio::join!(
        timed_sealed_post(by_default.addr, "lark-default"),
        timed_sealed_post(at_the_bound.addr, "lark-bound"),
    );
    default_answer.feishu_error(504);
    bound_answer.feishu_error(504);
    println!(
        "silent upstream at Lark's setting: 504 after {default_took:?} (default upstream timeout), {bound_took:?} (at the bound)"
    );
    // The default upstream timeout under a 4.5 s bound is 3 s.
    assert!(
        default_took >= Duration::from_millis(2_900) && default_took < LARK_DEADLINE,
        "{default_took:?}"
    );
    assert!(
        bound_took >= Duration::from_millis(4_400) && bound_took < LARK_DEADLINE,
        "{bound_took:?}"
    );
}

const OK: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{\"code\":0}";

fn is_callback_line(v: &serde_json::Value) -> bool {
    v["fields"]["message"] == "callback" || v["message"] == "callback"
}

/// Waits for the log line of the callback whose `task_id` is `task`.
async fn callback_line(gate: &Binary, task: &str) -> serde_json::Value {
    gate.json_line(&format!("callback line for {task}"), |v| {
        is_callback_line(v) && field(v, "task_id") == Some(task.into())
    })
    .await
}

/// A field of a log line, wherever the JSON layout puts it.
fn field(line: &serde_json::Value, name: &str) -> Option<serde_json::Value> {
    line.get(name)
        .or_else(|| line["fields"].get(name))
        .filter(|v| !v.is_null())
        .cloned()
}

const INFO: (&str, &str) = ("RUST_LOG", "info");

/// A legacy system down for good costs each tap at most `CONNECT_RETRY_MS` (3 s) of
/// retries; once its refusals have outlasted that, taps are answered at once, one at a time
/// probing it; the first that connects closes the breaker and is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_legacy_system_is_answered_fast_and_its_return_noticed() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gate = Binary::start(&format!("http://{addr}/legacy/approve"), &[INFO]).await;
    let mut times = Vec::new();
    for i in 0..5 {
        let (answer, took) = timed_sealed_post(gate.addr, &format!("dead-{i}")).await;
        assert_eq!(answer.status, 502, "{}", answer.text);
        assert_eq!(
            answer.message(),
            "The approval system is unavailable, please try again later."
        );
        assert!(took < Duration::from_secs(4), "tap {i}: {took:?}");
        times.push(took);
    }
    // The first tap spent the budget: no retry starts that could not end within it, so
    // the last ends up to a pause (600 ms at most) and 250 ms short of 3 s. By the third
    // tap the breaker is open.
    assert!(times[0] >= Duration::from_millis(2_000), "{times:?}");
    for took in &times[2..] {
        assert!(*took < Duration::from_secs(1), "{times:?}");
    }
    let scrape = gate.metrics().await;
    assert_eq!(metric(&scrape, "feishu_gate_upstream_breaker_open"), 1.0);
    assert_eq!(
        metric(&scrape, "feishu_gate_upstream_breaker_openings_total"),
        1.0
    );
    gate.line("the breaker's line", |l| {
        l.contains("refused every connection for longer than CONNECT_RETRY_MS")
    })
    .await;

    // Back: the next tap is the probe, and it is delivered.
    let up = Upstream::on(TcpListener::bind(addr).await.unwrap(), Reply::ok());
    let (answer, _) = timed_sealed_post(gate.addr, "back").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(up.count(), 1);
    let scrape = gate.metrics().await;
    assert_eq!(metric(&scrape, "feishu_gate_upstream_breaker_open"), 0.0);
    gate.line("the breaker's closing line", |l| {
        l.contains("accepts connections again")
    })
    .await;
}

/// A legacy container restarting: connections are refused until it listens,
/// 1.5 s after the callback arrived. The callback is delivered once, when it
/// does, and Feishu gets 200; the log line and the metrics say it took retries.
#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_system_listening_only_after_1_5_s_gets_the_callback_once() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gate = Binary::start(&format!("http://{addr}/legacy/approve"), &[INFO]).await;
    let posted = tokio::spawn(timed_sealed_post(gate.addr, "while-restarting"));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let up = Upstream::on(TcpListener::bind(addr).await.unwrap(), Reply::ok());
    let (answer, took) = posted.await.unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(took >= Duration::from_millis(1_500), "{took:?}");
    // The longest pause between tries is 600 ms; the rest is room for a loaded machine.
    assert!(took < Duration::from_millis(3_500), "{took:?}");
    let received = up.received();
    assert_eq!(received.len(), 1, "delivered once");
    assert!(received[0].text().contains("while-restarting"));

    let line = callback_line(&gate, "while-restarting").await;
    let attempts = field(&line, "attempts").and_then(|v| v.as_u64()).unwrap();
    assert!(attempts > 2, "{line}");
    assert_eq!(field(&line, "outcome"), Some("delivered".into()), "{line}");
    let scrape = gate.metrics().await;
    assert_eq!(
        metric(
            &scrape,
            r#"feishu_gate_upstream_retries_total{reason="unsent"}"#
        ),
        (attempts - 1) as f64
    );
    assert_eq!(
        metric(
            &scrape,
            r#"feishu_gate_retried_deliveries_total{outcome="delivered"}"#
        ),
        1.0
    );
}

/// A legacy system that read the request and reset the connection may have
/// recorded the decision: the request is not sent again, and Feishu is told
/// the legacy system is unreachable.
#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_system_that_received_the_request_and_reset_is_not_retried() {
    let up = RawLegacy::start(|_| Act::reset()).await;
    let gate = Binary::start(&up.url(), &[INFO]).await;
    let (answer, _) = timed_sealed_post(gate.addr, "reset-after-reading").await;
    answer.feishu_error(502);
    // Long enough for a retry's pause to have passed, had there been one.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(up.count(), 1, "sent exactly once");
    let line = callback_line(&gate, "reset-after-reading").await;
    assert_eq!(field(&line, "attempts"), Some(1.into()), "{line}");
    let scrape = gate.metrics().await;
    assert_eq!(
        metric(
            &scrape,
            r#"feishu_gate_upstream_retries_total{reason="unsent"}"#
        ),
        0.0
    );
}

/// With `RETRY_503=true`, a `503` whose `Retry-After` fits in the time left is tried
/// again, with the same `Idempotency-Key`; one that does not fit is passed on at once.
/// By default a `503` is passed on as it came: a proxy in front of the legacy system may
/// answer it after passing the request on, and sending it again would deliver it twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_503_with_a_retry_after_is_tried_again_only_when_asked() {
    const UNAVAILABLE_1S: &str = "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: application/json\r\ncontent-length: 22\r\n\r\n{\"message\":\"starting\"}";
    const UNAVAILABLE_60S: &str = "HTTP/1.1 503 Service Unavailable\r\nretry-after: 60\r\ncontent-type: application/json\r\ncontent-length: 22\r\n\r\n{\"message\":\"starting\"}";
    let fits = RawLegacy::start(|n| {
        if n == 0 {
            Act::answer(UNAVAILABLE_1S)
        } else {
            Act::answer(OK)
        }
    })
    .await;
    let too_long = RawLegacy::answering(Act::answer(UNAVAILABLE_60S)).await;
    let once = RawLegacy::answering(Act::answer(UNAVAILABLE_1S)).await;
    let opted_in = [(config::RETRY_503, "true")];
    let gate = Binary::start(&fits.url(), &[INFO, opted_in[0]]).await;
    let other = Binary::start(&too_long.url(), &opted_in).await;
    let default = Binary::start(&once.url(), &[]).await;

    let (answer, took) = timed_sealed_post(default.addr, "unavailable-by-default").await;
    assert_eq!(answer.feishu_error(503), "starting");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert_eq!(once.count(), 1);

    let (answer, took) = timed_sealed_post(gate.addr, "unavailable-then-ok").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert!(took >= Duration::from_secs(1), "{took:?}");
    let requests = fits.requests();
    assert_eq!(requests.len(), 2);
    let key = |r: &RawRequest| {
        r.head_text()
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("idempotency-key:"))
            .map(str::to_owned)
            .unwrap()
    };
    assert_eq!(key(&requests[0]), key(&requests[1]));
    let line = callback_line(&gate, "unavailable-then-ok").await;
    assert_eq!(field(&line, "attempts"), Some(2.into()), "{line}");
    assert_eq!(
        metric(
            &gate.metrics().await,
            r#"feishu_gate_upstream_retries_total{reason="unavailable"}"#
        ),
        1.0
    );

    let (answer, took) = timed_sealed_post(other.addr, "unavailable-for-long").await;
    assert_eq!(answer.feishu_error(503), "starting");
    // Not the minute it asked for: passed on at once.
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(too_long.count(), 1);
}

/// `version-traceid-parentid-flags`, split.
fn traceparent_parts(value: &str) -> (String, String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(value.len(), 55, "{value}");
    for part in &parts {
        assert!(
            part.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{value}"
        );
    }
    (
        parts[0].to_owned(),
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The caller's trace is continued to the legacy system: same trace, a span
/// of the gateway's own as the parent, the sampled flag and `tracestate`
/// kept; the callback's log line names the trace.
#[tokio::test(flavor = "multi_thread")]
async fn a_callers_traceparent_is_continued_to_the_legacy_system() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Binary::start(&up.url(), &[INFO]).await;
    for (task, flags) in [("traced-sampled", "01"), ("traced-unsampled", "00")] {
        let body = seal(
            KEY,
            &callback_with(TOKEN, "task_id", &format!("\"{task}\"")),
        );
        let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}");
        let answer = post(
            gate.addr,
            "/",
            body,
            &[
                ("traceparent", &traceparent),
                ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            ],
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        let received = up.received().pop().unwrap();
        assert!(received.text().contains(task));
        let sent = received.header("traceparent").unwrap();
        let (version, trace, span, sent_flags) = traceparent_parts(&sent);
        assert_eq!(version, "00");
        assert_eq!(trace, CALLER_TRACE);
        assert_ne!(span, CALLER_SPAN, "a span of the gateway's own");
        assert_ne!(span, "0000000000000000");
        assert_eq!(sent_flags, flags);
        assert_eq!(
            received.header("tracestate").as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        let line = callback_line(&gate, task).await;
        assert_eq!(
            field(&line, "trace_id"),
            Some(CALLER_TRACE.into()),
            "{line}"
        );
    }
}

/// Without a (valid) `traceparent` a trace is started: a new trace id for
/// each callback, sent to the legacy system and written in the log line, and
/// a `tracestate` without its `traceparent` is not passed on.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_traceparent_a_trace_is_started() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Binary::start(&up.url(), &[INFO]).await;
    let mut traces = Vec::new();
    for (task, traceparent) in [
        ("untraced-1", None),
        ("untraced-2", None),
        (
            "badly-traced",
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ),
    ] {
        let body = seal(
            KEY,
            &callback_with(TOKEN, "task_id", &format!("\"{task}\"")),
        );
        let mut headers = vec![("tracestate", "congo=t61rcWkgMzE")];
        if let Some(traceparent) = traceparent {
            headers.push(("traceparent", traceparent));
        }
        let answer = post(gate.addr, "/", body, &headers).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        let received = up.received().pop().unwrap();
        assert!(received.text().contains(task));
        let (version, trace, span, _) = traceparent_parts(&received.header("traceparent").unwrap());
        assert_eq!(version, "00");
        assert_ne!(trace, "0".repeat(32));
        assert_ne!(span, "0".repeat(16));
        assert_eq!(received.header("tracestate"), None, "{task}");
        let line = callback_line(&gate, task).await;
        assert_eq!(
            field(&line, "trace_id"),
            Some(trace.clone().into()),
            "{line}"
        );
        traces.push(trace);
    }
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), 3, "each callback a trace of its own");
}

const SPAN_KIND_SERVER: u64 = 2;
const SPAN_KIND_CLIENT: u64 = 3;
const STATUS_ERROR: u64 = 2;

/// With OpenTelemetry's variables set, each callback is exported over
/// OTLP/HTTP as a server span with the exchange with the legacy system as its
/// child, the ids matching what the legacy system and the log line saw. The
/// batch is only due after a minute: what arrives was flushed at SIGTERM.
/// `OTEL_TRACES_SAMPLER` is respected.
#[tokio::test(flavor = "multi_thread")]
async fn spans_are_exported_to_a_real_otlp_receiver_and_flushed_at_shutdown() {
    let receiver = OtlpReceiver::start().await;
    let up = Upstream::start(Reply::ok()).await;
    let refusing = Upstream::start(Reply::json(409, r#"{"message":"already done"}"#)).await;
    let endpoint = receiver.endpoint();
    let traced = [
        INFO,
        (config::OTEL_EXPORTER_OTLP_ENDPOINT, endpoint.as_str()),
        (config::OTEL_SERVICE_NAME, "gate-under-test"),
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
    ];
    let mut gate = Binary::start(&up.url(), &traced).await;
    let mut refused_gate = Binary::start(
        &refusing.url(),
        &[
            (config::OTEL_EXPORTER_OTLP_ENDPOINT, endpoint.as_str()),
            (config::OTEL_SERVICE_NAME, "gate-refused"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    let mut unsampled_gate = Binary::start(
        &up.url(),
        &[
            (config::OTEL_EXPORTER_OTLP_ENDPOINT, endpoint.as_str()),
            (config::OTEL_SERVICE_NAME, "gate-unsampled"),
            (config::OTEL_TRACES_SAMPLER, "always_off"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;

    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let body = |task: &str| {
        seal(
            KEY,
            &callback_with(TOKEN, "task_id", &format!("\"{task}\"")),
        )
    };
    let answer = post(
        gate.addr,
        "/",
        body("span-continued"),
        &[("traceparent", &caller)],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let continued_sent = up.received().pop().unwrap().header("traceparent").unwrap();
    let answer = post(gate.addr, "/", body("span-started"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let started_sent = up.received().pop().unwrap().header("traceparent").unwrap();
    let started_line = callback_line(&gate, "span-started").await;
    // Strangers get no span, and their trace context is not adopted: a wrong token and a
    // wrong path, each carrying a traceparent of their own.
    let stranger_trace = "0af7651916cd43dd8448eb211c80319c";
    let stranger = format!("00-{stranger_trace}-b7ad6b7169203331-01");
    let refused = post(
        gate.addr,
        "/",
        seal(
            KEY,
            &callback_with("not-the-token", "task_id", "\"span-stranger\""),
        ),
        &[("traceparent", &stranger), ("x-request-id", "stranger-1")],
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.text);
    let lost = post(
        gate.addr,
        "/nowhere",
        body("span-lost"),
        &[("traceparent", &stranger), ("x-request-id", "stranger-2")],
    )
    .await;
    assert_eq!(lost.status, 404, "{}", lost.text);
    for id in ["stranger-1", "stranger-2"] {
        let line = gate.json_line(id, |l| l["request_id"] == id).await;
        assert_ne!(line["trace_id"], stranger_trace, "{line}");
    }
    let answer = post(refused_gate.addr, "/", body("span-refused"), &[]).await;
    answer.feishu_error(409);
    let answer = post(unsampled_gate.addr, "/", body("span-unsampled"), &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let unsampled_sent = up.received().pop().unwrap().header("traceparent").unwrap();
    assert!(unsampled_sent.ends_with("-00"), "{unsampled_sent}");

    // Not due for a minute: nothing yet, until SIGTERM flushes it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(receiver.spans_of("gate-under-test").is_empty());
    gate.signal("TERM");
    assert_eq!(gate.wait_exit(Duration::from_secs(15)).await, Some(0));
    for other in [&mut refused_gate, &mut unsampled_gate] {
        other.signal("TERM");
        assert_eq!(other.wait_exit(Duration::from_secs(15)).await, Some(0));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.spans_of("gate-under-test").len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = receiver.spans_of("gate-under-test");
    println!("spans received: {spans:#?}");
    assert_eq!(
        spans.len(),
        4,
        "two callbacks, a server and a client span each"
    );
    let everything = serde_json::to_string(&*receiver.spans.lock().unwrap()).unwrap();
    assert!(
        !everything.contains(TOKEN) && !everything.contains(KEY),
        "a secret in a span"
    );

    let check = |task: &str, sent: &str| {
        let (_, trace, sent_parent, flags) = traceparent_parts(sent);
        assert_eq!(flags, "01", "{task}: recorded, so sampled");
        let server = spans
            .iter()
            .find(|s| s["kind"] == SPAN_KIND_SERVER && s["attributes"]["feishu.task_id"] == task)
            .unwrap_or_else(|| panic!("no server span for {task}"));
        let client = spans
            .iter()
            .find(|s| s["kind"] == SPAN_KIND_CLIENT && s["parent_span_id"] == server["span_id"])
            .unwrap_or_else(|| panic!("no client span under {task}'s"));
        assert_eq!(server["trace_id"], trace.as_str(), "{task}");
        assert_eq!(client["trace_id"], trace.as_str(), "{task}");
        assert_eq!(
            client["span_id"],
            sent_parent.as_str(),
            "{task}: the legacy system's parent"
        );
        let a = &server["attributes"];
        assert_eq!(a["feishu.approval_code"], "CODE-1");
        assert_eq!(a["feishu.action"], "APPROVE");
        assert_eq!(a["feishu.instance_id"], "inst-1");
        assert_eq!(a["feishu_gate.outcome"], "delivered");
        assert_eq!(a["http.response.status_code"], 200);
        assert_eq!(a["feishu_gate.upstream_status"], 200);
        let a = &client["attributes"];
        assert_eq!(a["http.request.method"], "POST");
        assert_eq!(a["http.response.status_code"], 200);
        assert_eq!(a["feishu_gate.attempts"], 1);
        assert_eq!(a["server.address"], "127.0.0.1");
        assert!(server["start_ns"].as_u64() <= client["start_ns"].as_u64());
        assert!(client["end_ns"].as_u64() <= server["end_ns"].as_u64());
        server.clone()
    };
    let continued = check("span-continued", &continued_sent);
    assert_eq!(continued["trace_id"], CALLER_TRACE);
    assert_eq!(
        continued["parent_span_id"], CALLER_SPAN,
        "the caller's span is the parent"
    );
    let started = check("span-started", &started_sent);
    assert_eq!(started["parent_span_id"], "", "a new trace's root");
    assert_eq!(
        field(&started_line, "trace_id"),
        Some(started["trace_id"].clone())
    );

    let refused = receiver.spans_of("gate-refused");
    let server = refused
        .iter()
        .find(|s| s["kind"] == SPAN_KIND_SERVER)
        .expect("the refused callback's span");
    assert_eq!(
        server["attributes"]["feishu_gate.outcome"],
        "upstream_refused"
    );
    assert_eq!(server["attributes"]["http.response.status_code"], 409);
    assert_eq!(server["status_code"], STATUS_ERROR);
    assert!(receiver.spans_of("gate-unsampled").is_empty());
}

/// A collector that cannot be reached costs the callbacks nothing: they are
/// answered as usual, shutdown still ends promptly, and the log says spans
/// were lost.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_collector_does_not_hold_up_callbacks_or_shutdown() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let up = Upstream::start(Reply::ok()).await;
    let endpoint = format!("http://{closed}");
    let mut gate = Binary::start(
        &up.url(),
        &[
            (config::OTEL_EXPORTER_OTLP_ENDPOINT, endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    for i in 0..5 {
        let (answer, took) = timed_sealed_post(gate.addr, &format!("no-collector-{i}")).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        assert!(took < Duration::from_secs(1), "{took:?}");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(up.count(), 5);
    let stopping = Instant::now();
    gate.signal("TERM");
    assert_eq!(gate.wait_exit(Duration::from_secs(15)).await, Some(0));
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    // The operator is told the spans are being lost.
    let log = gate.log_tail();
    assert!(
        log.iter().any(|l| l.contains("ExportError")),
        "no export failure logged: {log:#?}"
    );
}
