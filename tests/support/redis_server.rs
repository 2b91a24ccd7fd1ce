//! A real `redis-server` on a free loopback port, killed when dropped. Debian's
//! package provides it; `.ci/run` installs it. A missing server fails the test
//! that needs it rather than skipping it: a suite that passes because it did
//! not run proves nothing.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REDIS_SERVER: &str = "redis-server";

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    password: Option<String>,
    /// Certificate chain and key files: the port then speaks TLS only.
    tls: Option<(String, String)>,
}

impl Redis {
    /// Starts a server without persistence on a free port.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts a server that requires `password`.
    pub fn with_password(password: &str) -> Self {
        Self::start_with(Some(password.to_owned()))
    }

    /// Starts a server that speaks only TLS, with this certificate chain and key.
    pub fn with_tls(cert_file: &str, key_file: &str) -> Self {
        let mut redis = Self::unstarted(None);
        redis.tls = Some((cert_file.to_owned(), key_file.to_owned()));
        redis.restart();
        redis
    }

    fn unstarted(password: Option<String>) -> Self {
        let port = super::binary::free_addr().port();
        Redis {
            child: None,
            port,
            password,
            tls: None,
        }
    }

    fn start_with(password: Option<String>) -> Self {
        let mut redis = Self::unstarted(password);
        redis.restart();
        redis
    }

    /// Starts the server again on the same port, empty (nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new(REDIS_SERVER);
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some((cert, key)) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--tls-cert-file", cert, "--tls-key-file", key])
                .args(["--tls-auth-clients", "no"]),
        };
        cmd.args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"]);
        if let Some(password) = &self.password {
            cmd.args(["--requirepass", password]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {REDIS_SERVER} ({e}): install it (Debian: apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let up = match self.tls {
                // The test's client speaks no TLS: an accepted connection will do.
                Some(_) => std::net::TcpStream::connect(self.addr()).is_ok(),
                None => self.answers(),
            };
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{REDIS_SERVER} did not start on port {}", self.port);
    }

    /// `redis://` URL of this server, with the password when it has one.
    pub fn url(&self) -> String {
        if self.tls.is_some() {
            return format!("rediss://localhost:{}/", self.port);
        }
        match &self.password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the server.
    pub fn signal(&self, name: &str) {
        super::signal(self.pid(), name);
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped server is woken first, so it can be reaped.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A fresh connection, or `None` while the server does not answer.
    pub fn connect(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        let c = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        c.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        Some(c)
    }

    /// Whether the server answers `PING`.
    pub fn answers(&self) -> bool {
        self.connect()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).ok())
            .is_some()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        let mut c = self.connect().expect("redis answers");
        redis::cmd("GET").arg(key).query(&mut c).unwrap()
    }

    /// Keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut c = self.connect().expect("redis answers");
        redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut c)
            .unwrap()
    }

    /// Seconds `key` has left to live.
    pub fn ttl(&self, key: &str) -> i64 {
        let mut c = self.connect().expect("redis answers");
        redis::cmd("TTL").arg(key).query(&mut c).unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
