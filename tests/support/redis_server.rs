//! A real `redis-server` on a free loopback port, killed when dropped. The one on
//! the PATH when there is one; otherwise the tests bring their own, taken out of
//! Debian's packages (`apt-get download`, `dpkg-deb -x`, nothing installed) into the
//! target directory the first time a test needs it. A server that cannot be had
//! fails the test that needs it rather than skipping it: a suite that passes because
//! it did not run proves nothing.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const REDIS_SERVER: &str = "redis-server";

/// Set to fetch Debian's server even when one is on the PATH: how the fetching
/// itself is tried on a machine that has Redis installed.
const FETCH_ANYWAY: &str = "FEISHU_GATE_TEST_FETCH_REDIS";

/// Debian's packages the server is taken from: the server's name, the binary, and
/// the libraries it links that a machine without Redis may lack.
const PACKAGES: &str = "redis-server redis-tools libjemalloc2 liblzf1 libatomic1";

/// The program to run, and the library path it needs when it was fetched.
struct Server {
    program: PathBuf,
    libraries: Option<OsString>,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let on_path = Command::new(REDIS_SERVER)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if on_path && std::env::var_os(FETCH_ANYWAY).is_none() {
            return Server {
                program: PathBuf::from(REDIS_SERVER),
                libraries: None,
            };
        }
        fetch(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("redis-server"))
    })
}

/// Takes the server out of Debian's packages into `dir`, once (a lock keeps test
/// processes running side by side from doing it twice).
fn fetch(dir: &Path) -> Server {
    let root = dir.join("root");
    let program = root.join("usr/bin/redis-server");
    let script = format!(
        r#"set -e
mkdir -p "$0/deb"
exec 9>"$0/lock"
flock 9
[ -x "$0/root/usr/bin/redis-server" ] && exit 0
cd "$0/deb"
if ! apt-get download {PACKAGES} >/dev/null 2>&1; then
  # A machine whose package lists were never fetched.
  [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null
  apt-get download {PACKAGES} >/dev/null
fi
for deb in *.deb; do dpkg-deb -x "$deb" "$0/root"; done
"#
    );
    let fetched = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        fetched && program.exists(),
        "{REDIS_SERVER} is not on the PATH and could not be taken out of Debian's packages \
         ({PACKAGES}) into {}: install it (apt-get install redis-server)",
        dir.display()
    );
    let mut libraries = Vec::new();
    for lib in ["usr/lib", "lib"] {
        if let Ok(entries) = std::fs::read_dir(root.join(lib)) {
            libraries.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir() && p.to_string_lossy().ends_with("-linux-gnu")),
            );
        }
        libraries.push(root.join(lib));
    }
    Server {
        program,
        libraries: std::env::join_paths(libraries).ok(),
    }
}

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
        let server = server();
        let mut cmd = Command::new(&server.program);
        if let Some(libraries) = &server.libraries {
            cmd.env("LD_LIBRARY_PATH", libraries);
        }
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
                    "cannot run {} ({e}): install it (Debian: apt-get install redis-server)",
                    server.program.display()
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
