//! A closed-loop load generator for `bench/shared_memory.sh`: `connections`
//! HTTP/1.1 keep-alive connections each POST the next of `count` distinct
//! sealed decisions, for `seconds` or until every decision was sent once,
//! whichever comes first; then one JSON line with the figures.
//!
//! Distinct decisions, because the point is what a decision new to every
//! replica costs: a repeat is answered from the local memory without asking
//! Redis, which would measure nothing. wrk cannot send each body only once.
//!
//! `cargo run --release --example bench_load -- http://127.0.0.1:18081/ 8 4 40000`

#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url: http::Uri = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:18081/".to_owned())
        .parse()?;
    let connections: usize = args.next().unwrap_or_else(|| "8".to_owned()).parse()?;
    let seconds: f64 = args.next().unwrap_or_else(|| "4".to_owned()).parse()?;
    let count: u64 = args.next().unwrap_or_else(|| "40000".to_owned()).parse()?;
    let offset: u64 = args.next().unwrap_or_else(|| "0".to_owned()).parse()?;
    let authority = url.authority().ok_or("the URL has no host")?.to_string();

    // Sealed before the clock starts: the generator's own AES is not the hop's.
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (offset..offset + count)
            .map(|n| Bytes::from(common::sealed(n, common::Size::Typical)))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (bodies, next, authority) = (bodies.clone(), next.clone(), authority.clone());
        let path = url.path().to_owned();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&authority).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut latencies = Vec::new();
            let mut failed = 0usize;
            while Instant::now() < until {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let request = http::Request::post(path.as_str())
                    .header("host", authority.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))?;
                let sent = Instant::now();
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let ok = response.status() == 200;
                response.into_body().collect().await?;
                latencies.push(sent.elapsed());
                if !ok {
                    failed += 1;
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((latencies, failed))
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (l, f) = task.await?.map_err(|e| e.to_string())?;
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len().max(1)) - 1;
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    println!(
        r#"{{"requests":{},"failed":{failed},"elapsed_s":{:.3},"rps":{:.0},"p50_us":{:.0},"p99_us":{:.0},"p999_us":{:.0},"exhausted":{}}}"#,
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        latencies.len() as u64 >= count,
    );
    Ok(())
}
