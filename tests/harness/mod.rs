//! The real `feishu-gate` binary under test, for the reliability suites:
//! started on free loopback ports, its memory read from /proc, signalled,
//! and waited for.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod redis_server;

pub const BIN: &str = env!("CARGO_BIN_EXE_feishu-gate");

/// Log lines kept from the child, newest last; older ones are only counted.
const KEEP_LINES: usize = 400;

#[derive(Default)]
pub struct Log {
    pub lines: Vec<String>,
    pub total: usize,
}

/// The binary serving callbacks on loopback.
pub struct Binary {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Log>>,
}

/// Resident memory of a process, in KiB: now and at its peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Binary {
    /// Starts `feishu-gate serve` with the test token and key, the given
    /// upstream and `extra` variables, and waits until `/readyz` says 200.
    pub async fn start(upstream_url: &str, extra: &[(&str, &str)]) -> Self {
        let (addr, admin) = (free_addr(), free_addr());
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env_clear()
            .env("RUST_LOG", "warn")
            .env("FEISHU_GATE_UPSTREAM_URL", upstream_url)
            .env("FEISHU_GATE_TOKEN", crate::common::TOKEN)
            .env("FEISHU_GATE_KEY", crate::common::KEY)
            .env("FEISHU_GATE_LISTEN", addr.to_string())
            .env("FEISHU_GATE_ADMIN_LISTEN", admin.to_string())
            .env("FEISHU_GATE_LANG", "en");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap();
                    log.total += 1;
                    if log.lines.len() == KEEP_LINES {
                        log.lines.remove(0);
                    }
                    log.lines.push(line);
                }
            });
        }
        let binary = Binary {
            child,
            addr,
            admin,
            log,
        };
        binary.wait_ready().await;
        binary
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if get_status(self.admin, "/readyz").await == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "not ready in time; log: {:?}",
            self.log.lock().unwrap().lines
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn memory(&self) -> Memory {
        memory_of(self.pid()).expect("the gateway is running")
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The exit code, or `None` if the process is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub fn log_tail(&self) -> Vec<String> {
        self.log.lock().unwrap().lines.clone()
    }

    pub async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.unwrap_or_default().1
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS and VmHWM from /proc/<pid>/status.
pub fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// A one-shot HTTP/1.1 GET with `connection: close`: status and body.
pub async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

pub async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    get(addr, path).await.map(|(s, _)| s)
}

// Strict JSON, checked independently of the gateway's parser; the fuzz targets
// assert the same property with the same code.
#[path = "../../fuzz/fuzz_targets/strict.rs"]
mod strict;
// Each test crate that includes this harness uses a different part of it.
#[allow(unused_imports)]
pub use strict::is_json as is_strict_json;
