//! The real binary: configuration errors and exit codes, logs, signals, and
//! the debugging commands.

mod support;

use std::time::{Duration, Instant};

use feishu_gate::testing::config;
use support::binary::{free_addr, run, run_with_input};
use support::*;

#[test]
fn missing_configuration_exits_64_naming_each_variable() {
    for command in [&["check-config"][..], &["serve"][..], &[][..]] {
        let (code, _, err) = run(command, &[]);
        assert_eq!(code, 64, "{command:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("FEISHU_GATE_UPSTREAM_URL: ")),
            "{err}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("FEISHU_GATE_TOKEN: ")),
            "{err}"
        );
        assert!(lines.iter().all(|l| l.starts_with("FEISHU_GATE_")), "{err}");
    }
}

#[test]
fn every_bad_variable_is_reported_at_once() {
    let (code, _, err) = run(
        &["check-config"],
        &[
            ("FEISHU_GATE_UPSTREAM_URL", "ftp://legacy/"),
            ("FEISHU_GATE_TOKEN", "t"),
            ("FEISHU_GATE_TOKEN_FILE", "/etc/hostname"),
            ("FEISHU_GATE_UPSTREAM_TIMEOUT_MS", "12000"),
            ("FEISHU_GATE_LISTEN", "everywhere"),
            ("FEISHU_GATE_TLS_CERT", "/nonexistent.pem"),
            ("FEISHU_GATE_LANG", "fr"),
            ("FEISHU_GATE_MAX_BODY_BYTES", "lots"),
            (
                "FEISHU_GATE_UPSTREAM_HEADERS",
                "Authorization: Bearer hush-hush%zz",
            ),
        ],
    );
    assert_eq!(code, 64);
    for var in [
        "FEISHU_GATE_UPSTREAM_URL",
        "FEISHU_GATE_TOKEN",
        "FEISHU_GATE_UPSTREAM_TIMEOUT_MS",
        "FEISHU_GATE_LISTEN",
        "FEISHU_GATE_TLS_KEY",
        "FEISHU_GATE_LANG",
        "FEISHU_GATE_MAX_BODY_BYTES",
        "FEISHU_GATE_UPSTREAM_HEADERS",
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&format!("{var}: "))),
            "{var} missing in:\n{err}"
        );
    }
    assert!(!err.contains("hush-hush"), "{err}");
}

#[test]
fn check_config_names_each_mistake_that_would_fail_at_run_time() {
    let base = [("FEISHU_GATE_TOKEN", "t")];
    let url = "FEISHU_GATE_UPSTREAM_URL";
    let headers = "FEISHU_GATE_UPSTREAM_HEADERS";
    for (variable, value, problem) in [
        (
            url,
            "http://127.0.0.1:80800/",
            "has a port out of range: it must be from 1 to 65535",
        ),
        (
            url,
            "127.0.0.1:8080/approve",
            "has no scheme: write it in full, e.g. http://127.0.0.1:8080/approve",
        ),
        (
            headers,
            "X-Tenant=acme;X-Token=hush-hush",
            "the value of x-tenant holds a ';': separate headers with ',', and write a ';' \
             that belongs to a value as %3B",
        ),
        (
            headers,
            "X-Token=a,x-token=hush-hush",
            "x-token is given twice",
        ),
        (
            headers,
            "X-Token=hush-hush%G1",
            "the value of x-token has a % not followed by two hex digits \
             (write a literal % as %25)",
        ),
        (
            "FEISHU_GATE_LOG_FORMAT",
            "yaml",
            "\"yaml\" is not json or text",
        ),
    ] {
        let mut env = base.to_vec();
        if variable != url {
            env.push((url, "http://127.0.0.1:8080/"));
        }
        env.push((variable, value));
        let (code, out, err) = run(&["check-config"], &env);
        assert_eq!(code, 64, "{value}: {out}{err}");
        assert_eq!(err.trim_end(), format!("{variable}: {problem}"), "{value}");
        assert!(!err.contains("hush-hush"), "{err}");
    }
}

#[test]
fn check_config_accepts_what_operators_paste_and_warns_about_what_misleads() {
    let (code, out, err) = run(
        &["check-config"],
        &[
            ("FEISHU_GATE_UPSTREAM_URL", "http://legacy.internal:8080/cb"),
            ("FEISHU_GATE_TOKEN", "t"),
            (
                "FEISHU_GATE_UPSTREAM_HEADERS",
                "Authorization: Bearer hush-hush, X-Tenant: acme",
            ),
            ("FEISHU_GATE_LANG", "zh_CN.UTF-8"),
            ("FEISHU_GATE_LOG_FORMAT", "TEXT"),
            ("FEISHU_GATE_ALLOW_PLAINTEXT", "true"),
            ("FEISHU_GATE_UPSTREAM_TIMEOUT_MS", "9000"),
            ("FEISHU_GATE_SHUTDOWN_GRACE_MS", "3000"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("FEISHU_GATE_UPSTREAM_HEADERS=Authorization=<redacted>,X-Tenant=<redacted>"),
        "{out}"
    );
    assert!(out.contains("FEISHU_GATE_LANG=zh\n"), "{out}");
    assert!(out.contains("FEISHU_GATE_LOG_FORMAT=text\n"), "{out}");
    let warnings: Vec<&str> = err
        .lines()
        .filter_map(|l| l.strip_prefix("warning: "))
        .collect();
    for about in [
        "FEISHU_GATE_ALLOW_PLAINTEXT has no effect without FEISHU_GATE_KEY",
        "FEISHU_GATE_UPSTREAM_OK is not set",
        "FEISHU_GATE_UPSTREAM_TIMEOUT_MS (9000 ms) is longer than FEISHU_GATE_SHUTDOWN_GRACE_MS (3000 ms)",
        "neither TLS (FEISHU_GATE_TLS_CERT and FEISHU_GATE_TLS_KEY) nor callback encryption (FEISHU_GATE_KEY) is set",
        "FEISHU_GATE_UPSTREAM_URL is http:// to a host other than this pod's loopback",
    ] {
        assert!(
            warnings.iter().any(|w| w.starts_with(about)),
            "{about} not in {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), 5, "{warnings:#?}");
    assert!(!err.contains("hush-hush") && !out.contains("hush-hush"));
}

#[test]
fn check_config_prints_effective_settings_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "file-key-secret\n").unwrap();
    let (code, out, err) = run(
        &["check-config"],
        &[
            ("FEISHU_GATE_UPSTREAM_URL", "http://127.0.0.1:8080/cb"),
            ("FEISHU_GATE_TOKEN", "tok-secret-1,tok-secret-2"),
            ("FEISHU_GATE_KEY_FILE", key_file.to_str().unwrap()),
            (
                "FEISHU_GATE_UPSTREAM_HEADERS",
                "Authorization=Bearer%20hdr-secret",
            ),
            ("FEISHU_GATE_UPSTREAM_TIMEOUT_MS", "5000"),
            ("FEISHU_GATE_TYPO", "x"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("FEISHU_GATE_UPSTREAM_URL=http://127.0.0.1:8080/cb"),
        "{out}"
    );
    assert!(out.contains("FEISHU_GATE_UPSTREAM_TIMEOUT_MS=5000"));
    assert!(out.contains("FEISHU_GATE_LISTEN=0.0.0.0:8443"));
    assert!(out.contains("FEISHU_GATE_TOKEN=<redacted: 2>"));
    assert!(out.contains("FEISHU_GATE_KEY=<redacted: 1>"));
    assert!(out.contains("FEISHU_GATE_UPSTREAM_HEADERS=Authorization=<redacted>"));
    for secret in ["tok-secret", "file-key-secret", "hdr-secret"] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} leaked"
        );
    }
    assert!(
        err.contains("FEISHU_GATE_TYPO is not a feishu-gate setting"),
        "{err}"
    );
}

#[test]
fn encrypt_and_decrypt_commands_speak_feishus_envelope() {
    let vectors: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/crypto-vectors.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for v in vectors.as_array().unwrap() {
        let key = v["key"].as_str().unwrap();
        let plaintext = v["plaintext"].as_str().unwrap();
        if !plaintext.starts_with('{') {
            continue;
        }
        let out = pipe(
            &["decrypt", "--show-token", "--key", key],
            v["encrypt"].as_str().unwrap(),
        );
        assert_eq!(out.trim_end(), plaintext, "{}", v["name"]);
        let sealed = pipe(&["encrypt", "--key", key], plaintext);
        assert!(sealed.starts_with("{\"encrypt\":"), "{sealed}");
        assert_eq!(
            pipe(&["decrypt", "--show-token", "--key", key], &sealed).trim_end(),
            plaintext
        );
    }
    let (code, _, err) = run_with_input(
        &["decrypt", "--key", "wrong"],
        &[],
        "P37w+VZImNgPEO1RBhJ6RtKl7n6zymIbEG1pReEzghk=",
    );
    assert_eq!(code, 1);
    assert!(err.contains("cannot decrypt"), "{err}");
}

#[test]
fn debugging_commands_take_secrets_from_files_and_keep_them_off_the_screen() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let key_path = key_file.to_str().unwrap();
    let plaintext = callback(TOKEN);

    // Sealed with the key read from a file, by flag or by variable.
    let (code, sealed, err) = run_with_input(&["encrypt", "--key-file", key_path], &[], &plaintext);
    assert_eq!(code, 0, "{err}");
    let (code, opened, err) =
        run_with_input(&["decrypt"], &[("FEISHU_GATE_KEY_FILE", key_path)], &sealed);
    assert_eq!(code, 0, "{err}");
    // The token is not shown unless asked for; the rest is byte for byte.
    assert_eq!(
        opened.trim_end(),
        plaintext.replace(&format!("\"{TOKEN}\""), "\"<redacted>\"")
    );
    assert!(!opened.contains(TOKEN));
    let (_, shown, _) = run_with_input(
        &["decrypt", "--show-token", "--key-file", key_path],
        &[],
        &sealed,
    );
    assert_eq!(shown.trim_end(), plaintext);

    // A missing file is named; the key is never echoed.
    let (code, _, err) = run_with_input(&["encrypt", "--key-file", "/no/such/key"], &[], "{}");
    assert_eq!(code, 64);
    assert_eq!(
        err.trim_end(),
        "feishu-gate: cannot read the key from /no/such/key: No such file or directory (os error 2)"
    );
    let (code, _, err) = run_with_input(&["decrypt"], &[], &sealed);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--key-file"), "{err}");
}

#[test]
fn encrypt_refuses_what_is_not_a_callback_unless_asked() {
    let key = [("FEISHU_GATE_KEY", KEY)];
    for (input, problem) in [
        ("", "stdin is empty"),
        ("\n", "stdin is empty"),
        (
            "approve please",
            "stdin is not a JSON object, as a callback is",
        ),
        ("[1,2]", "stdin is not a JSON object, as a callback is"),
        (
            "{\"token\":",
            "stdin is not a JSON object, as a callback is",
        ),
    ] {
        let (code, out, err) = run_with_input(&["encrypt"], &key, input);
        assert_eq!(code, 1, "{input:?}");
        assert!(out.is_empty(), "{out}");
        assert_eq!(
            err.trim_end(),
            format!("feishu-gate: {problem}; --any-input seals it anyway"),
            "{input:?}"
        );
    }
    let (code, sealed, _) =
        run_with_input(&["encrypt", "--any-input", "--raw"], &key, "approve please");
    assert_eq!(code, 0);
    let opened = feishu_gate::testing::callback::envelope::CallbackKey::new(KEY)
        .decrypt(sealed.trim_end())
        .unwrap();
    assert_eq!(opened, b"approve please");
    // What `--any-input` sealed, `decrypt` opens only when told the result need not be JSON.
    let (code, _, err) = run_with_input(&["decrypt"], &key, &sealed);
    assert_eq!(code, 1);
    assert!(err.contains("--any-output prints it"), "{err}");
    let (code, out, err) = run_with_input(&["decrypt", "--any-output"], &key, &sealed);
    assert_eq!((code, out.as_str()), (0, "approve please\n"), "{err}");
}

#[test]
fn help_lists_the_variables_and_shows_no_empty_values() {
    let (code, out, _) = run(&["serve", "--help"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("README.md, \"Configuration\""), "{out}");
    for name in config::VARIABLES.iter().chain(config::OTEL_VARIABLES) {
        assert!(
            out.lines().any(|l| l.trim_start().starts_with(name)),
            "{name}: {out}"
        );
    }
    assert!(
        out.contains("FEISHU_GATE_TOKEN  (secret; or a file named by FEISHU_GATE_TOKEN_FILE)"),
        "{out}"
    );
    let (_, check, _) = run(&["check-config", "--help"], &[]);
    let variables = |help: &str| {
        help.split_once("Variables (")
            .map(|(_, list)| list.to_owned())
    };
    assert_eq!(variables(&check), variables(&out));
    let (_, send, _) = run(&["send", "--help"], &[]);
    assert!(send.contains("[env: FEISHU_GATE_TOKEN_FILE]"), "{send}");
    assert!(!send.contains("=]"), "{send}");
}

#[test]
fn check_config_says_not_set_one_way_and_why_a_setting_is_unused() {
    let (code, out, err) = run(
        &["check-config"],
        &[
            ("FEISHU_GATE_UPSTREAM_URL", "http://127.0.0.1:8080/"),
            ("FEISHU_GATE_TOKEN", "t"),
            ("OTEL_SERVICE_NAME", "approvals"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    for line in [
        "FEISHU_GATE_KEY=not set",
        "FEISHU_GATE_UPSTREAM_OK=not set",
        "FEISHU_GATE_APP_ID=not set",
        "FEISHU_GATE_USER_RATE_LIMIT_RPS=off",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=off",
        "OTEL_SERVICE_NAME=unused: traces are off",
        "FEISHU_GATE_REDIS_PREFIX=unused: FEISHU_GATE_REDIS_URL is not set",
        "FEISHU_GATE_OPENAPI_URL=unused: FEISHU_GATE_APP_ID is not set",
    ] {
        assert!(out.lines().any(|l| l == line), "{line}: {out}");
    }
    assert!(
        !out.lines()
            .any(|l| l.ends_with("=none") || l.ends_with("=-")),
        "{out}"
    );
}

fn pipe(args: &[&str], input: &str) -> String {
    let (code, out, err) = run_with_input(args, &[], input);
    assert_eq!(code, 0, "{args:?}: {err}");
    out
}

/// Info lines in the log, as operators run it.
const INFO: (&str, &str) = ("RUST_LOG", "info");

#[tokio::test(flavor = "multi_thread")]
async fn one_json_log_line_per_callback_without_secrets() {
    let up = Upstream::start(Reply::ok()).await;
    let served = Binary::start(&up.url(), &[INFO]).await;
    let sealed = seal(KEY, &callback(TOKEN));
    assert_eq!(
        post(served.addr, "/", sealed.clone(), &[]).await.status,
        200
    );
    let refused = post(served.addr, "/", seal(KEY, &callback("bad-token")), &[]).await;
    assert_eq!(refused.status, 401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for line in served.log_tail() {
        assert!(
            !line.contains(TOKEN) && !line.contains(KEY) && !line.contains(&sealed[12..60]),
            "{line}"
        );
    }
    let lines = served.json_lines();
    let callbacks: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "feishu_gate::callback")
        .collect();
    assert_eq!(callbacks.len(), 2, "{lines:#?}");
    // Each worker thread writes its own batch, and a warning (the 401) at once, so the two
    // lines may come in either order (src/observe/logging).
    let by_outcome = |outcome: &str| {
        *callbacks
            .iter()
            .find(|l| l["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} line in {callbacks:#?}"))
    };
    let ok = by_outcome("delivered");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["upstream_status"], 200);
    assert_eq!(ok["approval_code"], "CODE-1");
    assert_eq!(ok["instance_id"], "inst-1");
    assert_eq!(ok["task_id"], "task-1");
    assert_eq!(ok["action"], "APPROVE");
    assert!(ok["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    for field in ["duration_ms", "upstream_ms"] {
        let ms = ok[field].to_string();
        assert!(ok[field].as_f64().is_some(), "{field}: {ms}");
        // To the microsecond, never float noise.
        assert!(
            ms.split_once('.')
                .is_none_or(|(_, decimals)| decimals.len() <= 3),
            "{field}: {ms}"
        );
    }
    assert_eq!(by_outcome("unauthorized")["status"], 401);
    // Start-up logs the effective configuration, redacted, each setting a field named as
    // its variable.
    let start = lines
        .iter()
        .find(|l| l["message"] == "starting")
        .expect("a start-up line");
    assert_eq!(start["token"], "<redacted: 1>", "{start}");
    assert_eq!(start["key"], "<redacted: 1>", "{start}");
    assert_eq!(start["upstream_timeout_ms"], "8000", "{start}");
    assert!(start.get("other_settings").is_none(), "{start}");
    let burst = [config::RATE_LIMIT_BURST, config::USER_RATE_LIMIT_BURST];
    for variable in config::VARIABLES.iter().filter(|v| !burst.contains(v)) {
        let field = variable
            .strip_prefix(config::PREFIX)
            .unwrap()
            .to_ascii_lowercase();
        assert!(start[&field].is_string(), "{field} missing from {start}");
    }
}

/// Starts the binary with `grace_ms` of shutdown grace in front of an upstream
/// that answers after `delay`, posts one callback, and sends SIGTERM once the
/// upstream holds it, so the signal finds it in flight. The handle yields the
/// answer the callback got, if any.
async fn terminated_with_a_callback_in_flight(
    delay: Duration,
    grace_ms: &str,
) -> (Binary, tokio::task::JoinHandle<Option<Answer>>, Instant) {
    let upstream = Upstream::start(Reply::ok().slow(delay)).await;
    let served = Binary::start(
        &upstream.url(),
        &[INFO, ("FEISHU_GATE_SHUTDOWN_GRACE_MS", grace_ms)],
    )
    .await;
    let mut conn = Conn::http1(served.addr).await;
    let in_flight = tokio::spawn(async move {
        let request = conn.request("POST", "/", seal(KEY, &callback(TOKEN)), &[]);
        conn.send(request).await.ok()
    });
    let arrived = eventually(Duration::from_secs(10), || {
        std::future::ready(upstream.count() > 0)
    })
    .await;
    assert!(
        arrived && upstream.count() == 1,
        "the callback reached the upstream"
    );
    served.signal("TERM");
    (served, in_flight, Instant::now())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_a_slow_callback_and_exits_zero() {
    let (mut served, in_flight, signalled) =
        terminated_with_a_callback_in_flight(Duration::from_millis(1500), "5000").await;
    // Readiness fails at once, while the callback is still in flight.
    let saw_503 = eventually(Duration::from_secs(1), || async {
        served.readiness().await == Some(503)
    })
    .await;
    assert!(saw_503, "readiness never turned 503");
    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight callback was answered");
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(served.wait_exit(Duration::from_secs(5)).await, Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exited within the grace period"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grace_period_bounds_the_drain() {
    // The upstream would take 8 s; the process leaves after its grace instead.
    let (mut served, in_flight, _) =
        terminated_with_a_callback_in_flight(Duration::from_secs(8), "300").await;
    assert_eq!(served.wait_exit(Duration::from_secs(4)).await, Some(0));
    let answer = in_flight.await.unwrap();
    assert_ne!(
        answer.map(|a| a.status),
        Some(200),
        "never 200 for an unconfirmed decision"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once() {
    let (mut served, _in_flight, _) =
        terminated_with_a_callback_in_flight(Duration::from_secs(8), "60000").await;
    assert_eq!(
        served.wait_exit(Duration::from_millis(200)).await,
        None,
        "still draining after one signal"
    );
    served.signal("INT");
    assert_eq!(served.wait_exit(Duration::from_secs(3)).await, Some(130));
}

#[tokio::test(flavor = "multi_thread")]
async fn send_command_smoke_tests_a_running_gateway() {
    let up = Upstream::start(Reply::ok()).await;
    let served = Binary::start(&up.url(), &[INFO]).await;
    let target = format!("http://{}/", served.addr);
    // The commands block; the upstream answers on the runtime meanwhile.
    tokio::task::spawn_blocking(move || {
        let (code, out, err) = run(
            &[
                "send",
                "--url",
                &target,
                "--action",
                "REJECT",
                "--task-id",
                "t-9",
                "--message-id",
                "7250020197497765889",
            ],
            &[("FEISHU_GATE_TOKEN", TOKEN), ("FEISHU_GATE_KEY", KEY)],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.starts_with("200 "), "{out}");
        assert!(
            out.lines().any(|l| l.starts_with("X-Request-Id: ")),
            "{out}"
        );
        let (code, out, _) = run(&["send", "--url", &target, "--token", "wrong"], &[]);
        assert_eq!(code, 1);
        assert!(out.starts_with("401 "), "{out}");
        // The token from a file, and a request id of the operator's choosing.
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let (code, out, err) = run(
            &[
                "send",
                "--url",
                &target,
                "--token-file",
                token_file.to_str().unwrap(),
                "--request-id",
                "smoke-test-42",
                "--task-id",
                "t-10",
            ],
            &[("FEISHU_GATE_KEY", KEY)],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert_eq!(
            out.lines().nth(1),
            Some("X-Request-Id: smoke-test-42"),
            "{out}"
        );
    })
    .await
    .unwrap();
    let got = up.received();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[1].header("x-request-id").as_deref(),
        Some("smoke-test-42")
    );
    let text = got[0].text();
    assert!(
        text.contains(r#""action_type":"REJECT""#) && text.contains("7250020197497765889"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn send_shows_when_to_try_again() {
    let up = Upstream::start(Reply::ok()).await;
    let served = Binary::start(
        &up.url(),
        &[
            INFO,
            ("FEISHU_GATE_RATE_LIMIT_RPS", "1"),
            ("FEISHU_GATE_RATE_LIMIT_BURST", "1"),
        ],
    )
    .await;
    let target = format!("http://{}/", served.addr);
    tokio::task::spawn_blocking(move || {
        let secrets = [("FEISHU_GATE_TOKEN", TOKEN), ("FEISHU_GATE_KEY", KEY)];
        let (code, out, _) = run(&["send", "--url", &target, "--task-id", "a"], &secrets);
        assert_eq!(code, 0, "{out}");
        let (code, out, _) = run(&["send", "--url", &target, "--task-id", "b"], &secrets);
        assert_eq!(code, 1, "{out}");
        assert!(out.starts_with("429 "), "{out}");
        assert!(out.lines().any(|l| l == "Retry-After: 1"), "{out}");
    })
    .await
    .unwrap();
}

#[test]
fn demo_once_shows_a_full_round_trip() {
    let (port, admin) = (
        free_addr().port().to_string(),
        free_addr().port().to_string(),
    );
    let (code, out, err) = run(
        &["demo", "--once", "--port", &port, "--admin-port", &admin],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    for hop in [
        "① Feishu → feishu-gate",
        "② feishu-gate → legacy system",
        "③ legacy system → feishu-gate: 200",
        "④ feishu-gate → Feishu: 200",
    ] {
        assert!(out.contains(hop), "{hop} missing:\n{out}");
    }
    assert!(out.contains("7250020197497765889"));
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_for_people_are_plain_lines_without_secrets() {
    let up = Upstream::start(Reply::ok()).await;
    let served = Binary::start(&up.url(), &[INFO, ("FEISHU_GATE_LOG_FORMAT", "text")]).await;
    let answer = post(served.addr, "/", seal(KEY, &callback(TOKEN)), &[]).await;
    assert_eq!(answer.status, 200);
    let line = served
        .line("callback line", |l| l.contains("feishu_gate::callback"))
        .await;
    assert!(!line.starts_with('{'), "{line}");
    assert!(
        !line.contains('\u{1b}'),
        "no colour codes into a pipe: {line:?}"
    );
    assert!(
        line.contains("outcome=\"delivered\"") && line.contains("approval_code=\"CODE-1\""),
        "{line}"
    );
    assert!(!line.contains(TOKEN) && !line.contains(KEY), "{line}");
}

#[test]
fn send_refuses_a_zero_timeout_as_a_usage_error_and_says_when_nothing_answered() {
    let (code, out, err) = run(
        &[
            "send",
            "--url",
            "http://127.0.0.1:9/",
            "--token",
            "t",
            "--timeout-ms",
            "0",
        ],
        &[],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("--timeout-ms") && err.contains("0"), "{err}");
    assert!(!err.contains("0ns"), "{err}");
    // Nothing answering is not a usage error: it has a status of its own.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let (code, out, err) = run(&["send", "--url", &url, "--token", "t"], &[]);
    assert_eq!(code, 3, "{out}{err}");
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    assert!(
        err.contains(&format!("POST {url}: request failed: "))
            && err.contains("Connection refused"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "hint: nothing listens on {authority}: is the gateway running, and is that its FEISHU_GATE_LISTEN port?"
        )),
        "{err}"
    );
}

/// https:// to a gateway serving plain HTTP says to use http://.
#[tokio::test]
async fn send_over_tls_to_a_plain_port_says_to_use_http() {
    let up = Upstream::start(Reply::ok()).await;
    let gate = Binary::start(&up.url(), &[]).await;
    let url = format!("https://{}/", gate.addr);
    let (code, out, err) = run(&["send", "--url", &url, "--token", TOKEN], &[]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains(&format!("POST {url}: ")), "{err}");
    assert!(
        err.contains(
            "hint: the port does not speak TLS: if the gateway serves plain HTTP, use http://"
        ),
        "{err}"
    );
    assert_eq!(up.count(), 0);
}

#[test]
fn a_misspelt_variable_is_named_beside_the_error_it_causes() {
    let (code, out, err) = run(
        &["check-config"],
        &[
            ("FEISHU_GATE_UPSTREM_URL", "http://127.0.0.1:8080/"),
            ("FEISHU_GATE_TOKEN", "t"),
        ],
    );
    assert_eq!(code, 64, "{out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            "warning: FEISHU_GATE_UPSTREM_URL is not a feishu-gate setting and is ignored \
             (did you mean FEISHU_GATE_UPSTREAM_URL?)",
            "FEISHU_GATE_UPSTREAM_URL: is required (the legacy system's endpoint, http:// or https://)",
        ],
        "{err}"
    );
}

#[test]
fn an_empty_secret_counts_as_unset_and_an_empty_secret_file_is_named() {
    let (code, _, err) = run(
        &["send", "--url", "http://127.0.0.1:9/", "--token", ""],
        &[],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("give the token with"), "{err}");
    let (code, _, err) = run(&["encrypt", "--key", ""], &[]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("give the key with"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("token");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.to_string_lossy().into_owned();
    let (code, _, err) = run(
        &["check-config"],
        &[
            ("FEISHU_GATE_UPSTREAM_URL", "http://127.0.0.1:8080/"),
            ("FEISHU_GATE_TOKEN_FILE", empty.as_str()),
        ],
    );
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains(&format!("FEISHU_GATE_TOKEN_FILE: {empty} is empty")),
        "{err}"
    );
    let (code, _, err) = run(
        &[
            "send",
            "--url",
            "http://127.0.0.1:9/",
            "--token-file",
            empty.as_str(),
        ],
        &[],
    );
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("the file is empty"), "{err}");
}

#[test]
fn the_demo_survives_a_closed_stdout_and_suggests_a_command_that_works_as_started() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let (port, admin) = (
        free_addr().port().to_string(),
        free_addr().port().to_string(),
    );
    // `feishu-gate demo --once | head -0`: nobody reads, the pipe is closed at once.
    let mut closed = support::binary::command(
        &["demo", "--once", "--port", &port, "--admin-port", &admin],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    drop(closed.stdout.take());
    let status = closed.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a closed stdout made the demo fail");

    // Started as a plain binary, it suggests the binary, not cargo.
    let (port, admin) = (
        free_addr().port().to_string(),
        free_addr().port().to_string(),
    );
    let mut serving =
        support::binary::command(&["demo", "--port", &port, "--admin-port", &admin], &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let lines = BufReader::new(serving.stdout.take().unwrap()).lines();
    let suggestion = lines
        .map_while(Result::ok)
        .find(|l| l.contains(" send --url "))
        .expect("a send command is suggested");
    let _ = serving.kill();
    let _ = serving.wait();
    assert!(!suggestion.contains("cargo run"), "{suggestion}");
    assert!(
        suggestion.trim_start().starts_with(support::binary::BIN),
        "{suggestion}"
    );
}

/// No URL the gateway shows carries a password or a query value: not `check-config`,
/// not the start-up line, not the line saying where spans go.
#[tokio::test]
async fn urls_are_shown_without_their_credentials() {
    let upstream_url = "http://127.0.0.1:9/approve?access_token=upstream-secret-1";
    let endpoint = "http://collector:otlp-secret-2@127.0.0.1:9/v1/traces?api_key=otlp-secret-3";
    let env = [
        ("FEISHU_GATE_UPSTREAM_URL", upstream_url),
        ("FEISHU_GATE_TOKEN", "t"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint),
    ];
    let (code, out, err) = run(&["check-config"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .any(|l| l
                == "FEISHU_GATE_UPSTREAM_URL=http://127.0.0.1:9/approve?access_token=<redacted>"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l
            == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://<redacted>@127.0.0.1:9/v1/traces?api_key=<redacted>"),
        "{out}"
    );
    let up = Upstream::start(Reply::ok()).await;
    let url = format!("{}?access_token=upstream-secret-1", up.url());
    let gate = Binary::start(
        &url,
        &[INFO, ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)],
    )
    .await;
    let exporting = gate
        .line("the exporter's line", |l| l.contains("exporting spans"))
        .await;
    assert!(exporting.contains("<redacted>"), "{exporting}");
    for line in gate.log_tail() {
        assert!(!line.contains("secret-"), "{line}");
    }
    assert!(
        out.lines()
            .chain(err.lines())
            .all(|l| !l.contains("secret-")),
        "{out}{err}"
    );
}
