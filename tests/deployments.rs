//! The deployments people really run, against the real binary and real
//! upstreams: Lark's shorter deadline, a legacy system that is restarting,
//! and trace context carried across the hop.

mod common;
mod harness;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use common::*;
use feishu_gate::config;

/// Lark's page gives a callback 5 s; the README tells its users to set this.
const LARK_ANSWER_WITHIN_MS: &str = "4500";
const LARK_DEADLINE: Duration = Duration::from_secs(5);

/// A legacy system that accepts connections, reads what it is sent and
/// never answers.
async fn silent_upstream() -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(Mutex::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            *counted.lock().unwrap() += 1;
            tokio::spawn(hold(stream));
        }
    });
    (addr, connections)
}

async fn hold(mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

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
    let (addr, _) = silent_upstream().await;
    let url = format!("http://{addr}/legacy/approve");
    let by_default =
        harness::Binary::start(&url, &[(config::ANSWER_WITHIN_MS, LARK_ANSWER_WITHIN_MS)]).await;
    let at_the_bound = harness::Binary::start(
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
