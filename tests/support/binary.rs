//! The real `feishu-gate` binary: its commands run to completion, or `serve`
//! started on free loopback ports and waited for, its output captured line by
//! line, its memory read from /proc, signalled and waited for.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use feishu_gate::testing::config;

use super::{KEY, TOKEN, client, eventually};

pub const BIN: &str = env!("CARGO_BIN_EXE_feishu-gate");

/// Log lines kept from a child, newest last; older ones are only counted.
const KEEP_LINES: usize = 400;

/// How long `serve` may take to become ready, and a child's output to show.
const PATIENCE: Duration = Duration::from_secs(20);

/// The binary with `args`, in an empty environment but for `env`.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear().envs(env.iter().copied());
    cmd
}

/// What a finished command said: its exit code (-1 when a signal ended it),
/// stdout and stderr.
pub type Ran = (i32, String, String);

fn ran(out: std::process::Output) -> Ran {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The binary started with `stdin`, its stdout and stderr piped.
fn spawn_piped(args: &[&str], env: &[(&str, &str)], stdin: Stdio) -> Child {
    command(args, env)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs the binary to completion with `input` on stdin.
pub fn run_with_input(args: &[&str], env: &[(&str, &str)], input: &str) -> Ran {
    let mut child = spawn_piped(args, env, Stdio::piped());
    // A command that refuses its arguments exits before reading stdin.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    ran(child.wait_with_output().unwrap())
}

/// Runs the binary to completion with nothing on stdin.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Ran {
    run_with_input(args, env, "")
}

/// Runs the binary with nothing on stdin if it finishes within `limit`; kills
/// it and says `None` if it does not.
pub fn run_within(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Option<Ran> {
    let mut child = spawn_piped(args, env, Stdio::null());
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(ran(child.wait_with_output().unwrap()))
}

/// A free loopback address, for a listener the binary binds itself.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Resident memory of a process, in KiB: now and at its peak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

#[derive(Default)]
struct Log {
    lines: VecDeque<(Stream, String)>,
    total: usize,
}

/// A running child of the binary, killed when dropped; its stdout and stderr
/// kept line by line.
pub struct Process {
    child: Child,
    log: Arc<Mutex<Log>>,
}

impl Process {
    /// Starts the binary with `args` in an empty environment but for `env`.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = spawn_piped(args, env, Stdio::null());
        let log = Arc::new(Mutex::new(Log::default()));
        let outputs: [(Stream, Box<dyn std::io::Read + Send>); 2] = [
            (Stream::Stdout, Box::new(child.stdout.take().unwrap())),
            (Stream::Stderr, Box::new(child.stderr.take().unwrap())),
        ];
        for (stream, output) in outputs {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(output).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap();
                    log.total += 1;
                    if log.lines.len() == KEEP_LINES {
                        log.lines.pop_front();
                    }
                    log.lines.push_back((stream, line));
                }
            });
        }
        Process { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn memory(&self) -> Memory {
        memory_of(self.pid()).expect("the gateway is running")
    }

    pub fn signal(&self, name: &str) {
        super::signal(self.pid(), name);
    }

    /// The exit code (-1 for a signal), or `None` if the process is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let mut status = None;
        eventually(limit, || {
            status = self.child.try_wait().unwrap();
            std::future::ready(status.is_some())
        })
        .await;
        status.map(|s| s.code().unwrap_or(-1))
    }

    /// The last lines of stdout and stderr, interleaved as they arrived.
    pub fn log_tail(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.lines.iter().map(|(_, l)| l.clone()).collect()
    }

    /// The last lines of stdout only.
    pub fn stdout_lines(&self) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log.lines
            .iter()
            .filter(|(s, _)| *s == Stream::Stdout)
            .map(|(_, l)| l.clone())
            .collect()
    }

    /// Every stdout line kept, each of which must be JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout_lines()
            .iter()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|_| panic!("log line is not JSON: {l}"))
            })
            .collect()
    }

    /// Waits for a line `wanted` accepts, failing with the log after [`PATIENCE`].
    pub async fn line(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let mut found = None;
        eventually(PATIENCE, || {
            found = self.log_tail().into_iter().find(|l| wanted(l));
            std::future::ready(found.is_some())
        })
        .await;
        found.unwrap_or_else(|| panic!("no {what} in the log: {:#?}", self.log_tail()))
    }

    /// Waits for a JSON log line that `wanted` accepts.
    pub async fn json_line(
        &self,
        what: &str,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let parse = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok();
        let line = self
            .line(what, |l| parse(l).is_some_and(|v| wanted(&v)))
            .await;
        parse(&line).unwrap()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `feishu-gate serve` on free loopback ports.
pub struct Binary {
    process: Process,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
}

impl Binary {
    /// Starts `serve` with the test token and key, the given upstream, English
    /// messages, warnings only in the log, and `extra` variables on top; waits
    /// until `/readyz` says 200.
    pub async fn start(upstream_url: &str, extra: &[(&str, &str)]) -> Self {
        let (addr, admin) = (free_addr(), free_addr());
        let (listen, admin_listen) = (addr.to_string(), admin.to_string());
        let mut env = vec![
            ("RUST_LOG", "warn"),
            (config::UPSTREAM_URL, upstream_url),
            (config::TOKEN, TOKEN),
            (config::KEY, KEY),
            (config::LISTEN, listen.as_str()),
            (config::ADMIN_LISTEN, admin_listen.as_str()),
            (config::LANG, "en"),
        ];
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k, v));
        }
        let binary = Binary {
            process: Process::spawn(&["serve"], &env),
            addr,
            admin,
        };
        binary.wait_ready().await;
        binary
    }

    async fn wait_ready(&self) {
        let ready = eventually(PATIENCE, || async {
            client::try_get(self.admin, "/readyz")
                .await
                .is_some_and(|a| a.status == 200)
        })
        .await;
        assert!(ready, "not ready in time; log: {:?}", self.log_tail());
    }

    /// `/readyz`'s status now, `None` when nothing answers.
    pub async fn readiness(&self) -> Option<u16> {
        client::try_get(self.admin, "/readyz")
            .await
            .map(|a| a.status)
    }

    pub async fn metrics(&self) -> String {
        super::metrics::scrape(self.admin).await
    }
}

impl Deref for Binary {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Binary {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}
