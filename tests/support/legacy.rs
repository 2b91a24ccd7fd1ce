//! A legacy system that speaks raw TCP, for what an HTTP server library would
//! never do: answer with exactly the bytes given (any charset, any header case),
//! break off mid-answer, trickle, hang, reset. It records every request as the
//! bytes arrived and acts out a script, one act per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The request line and headers, blank line included, byte for byte.
    pub head: Vec<u8>,
    /// The `content-length` bytes after the head.
    pub body: Vec<u8>,
}

impl RawRequest {
    pub fn head_text(&self) -> String {
        String::from_utf8_lossy(&self.head).into_owned()
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the fake does once it has read a request: write `send`, then leave the
/// connection as `then` says.
#[derive(Debug, Clone)]
pub struct Act {
    send: Bytes,
    /// A pause after every byte of `send`, for answers that trickle in.
    pace: Option<Duration>,
    /// Filler written after `send` until this many bytes in all have gone out,
    /// so an enormous answer never has to be held in memory.
    fill_to: u64,
    then: Then,
}

#[derive(Debug, Clone, Copy)]
enum Then {
    /// Reads the next request on the same connection.
    KeepAlive,
    /// Closes with FIN.
    Close,
    /// Closes with RST after the pause, which gives what was sent time to arrive.
    Reset(Duration),
    /// Reads and discards whatever comes until the peer leaves.
    Hang,
}

impl Act {
    /// Writes `raw` as given and keeps the connection for the next request.
    pub fn answer(raw: impl Into<Bytes>) -> Self {
        Act {
            send: raw.into(),
            pace: None,
            fill_to: 0,
            then: Then::KeepAlive,
        }
    }
    /// Never answers.
    pub fn hang() -> Self {
        Self::answer("").then_hang()
    }
    /// Resets the connection without answering.
    pub fn reset() -> Self {
        Self::answer("").then_reset_after(Duration::ZERO)
    }
    /// Closes the connection without answering.
    pub fn close() -> Self {
        Self::answer("").then_close()
    }
    pub fn then_close(mut self) -> Self {
        self.then = Then::Close;
        self
    }
    pub fn then_hang(mut self) -> Self {
        self.then = Then::Hang;
        self
    }
    pub fn then_reset_after(mut self, pause: Duration) -> Self {
        self.then = Then::Reset(pause);
        self
    }
    /// Writes one byte at a time, pausing `pause` after each.
    pub fn trickled(mut self, pause: Duration) -> Self {
        self.pace = Some(pause);
        self
    }
    /// Goes on writing `a`s until `total` bytes, answer included, have been
    /// written or the peer stops taking them.
    pub fn filled_to(mut self, total: u64) -> Self {
        self.fill_to = total;
        self
    }
}

type Script = Arc<dyn Fn(usize) -> Act + Send + Sync>;

#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<RawRequest>>,
    connections: AtomicUsize,
    /// Bytes written by acts with filler, and how many such acts have ended.
    filled: AtomicU64,
    fills_ended: AtomicUsize,
}

/// A raw TCP legacy system on loopback, acting out its script.
#[derive(Clone)]
pub struct RawLegacy {
    pub addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    seen: Arc<Seen>,
}

impl RawLegacy {
    /// Acts out `script(n)` for the n-th request (from 0, over all connections).
    pub async fn start(script: impl Fn(usize) -> Act + Send + Sync + 'static) -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), script)
    }

    /// Acts out `act` for every request.
    pub async fn answering(act: Act) -> Self {
        Self::start(move |_| act.clone()).await
    }

    /// The same on a listener the test bound itself (a port that was refusing
    /// connections until now, say).
    pub fn on(
        listener: TcpListener,
        script: impl Fn(usize) -> Act + Send + Sync + 'static,
    ) -> Self {
        let fake = RawLegacy {
            addr: listener.local_addr().unwrap(),
            script: Arc::new(Mutex::new(Arc::new(script))),
            seen: Arc::default(),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                server.seen.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(server.clone().connection(stream));
            }
        });
        fake
    }

    /// Acts out `script` from the next request on; `n` still counts from the first.
    pub fn set(&self, script: impl Fn(usize) -> Act + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(script);
    }

    pub fn url(&self) -> String {
        format!("http://{}/legacy/approve", self.addr)
    }

    pub fn requests(&self) -> Vec<RawRequest> {
        self.seen.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.requests.lock().unwrap().len()
    }

    /// Connections accepted.
    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    /// Bytes written by acts with filler, head included.
    pub fn filled(&self) -> u64 {
        self.seen.filled.load(Ordering::SeqCst)
    }

    /// Acts with filler that have finished writing.
    pub fn fills_ended(&self) -> usize {
        self.seen.fills_ended.load(Ordering::SeqCst)
    }

    async fn connection(self, mut stream: TcpStream) {
        while let Some(request) = read_raw_request(&mut stream).await {
            let n = {
                let mut requests = self.seen.requests.lock().unwrap();
                requests.push(request);
                requests.len() - 1
            };
            let script = self.script.lock().unwrap().clone();
            let act = script(n);
            self.write(&mut stream, &act).await;
            match act.then {
                Then::KeepAlive => continue,
                Then::Close => {
                    let _ = stream.shutdown().await;
                }
                Then::Reset(pause) => {
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    reset(stream);
                }
                Then::Hang => hold(stream).await,
            }
            return;
        }
    }

    /// Write errors are left for the next step to meet: the peer has gone,
    /// and whatever the act does next finds that out too.
    async fn write(&self, stream: &mut TcpStream, act: &Act) {
        match act.pace {
            None => {
                let _ = stream.write_all(&act.send).await;
            }
            Some(pause) => {
                for byte in act.send.iter() {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
        if act.fill_to > 0 {
            let mut written = act.send.len() as u64;
            let chunk = vec![b'a'; 64 * 1024];
            while written < act.fill_to {
                match stream.write(&chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => written += n as u64,
                }
            }
            self.seen.filled.fetch_add(written, Ordering::SeqCst);
            self.seen.fills_ended.fetch_add(1, Ordering::SeqCst);
        }
        let _ = stream.flush().await;
    }
}

/// Reads one HTTP/1.1 request off a raw socket: its head as it arrived, blank line
/// included, and its `content-length` body; `None` if the peer closed first.
pub async fn read_raw_request(stream: &mut TcpStream) -> Option<RawRequest> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let length: usize = String::from_utf8_lossy(&buf[..header_end])
        .to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(RawRequest {
        head: buf[..header_end].to_vec(),
        body: buf[header_end..header_end + length].to_vec(),
    })
}

/// Keeps a connection open, reading and discarding, until the peer leaves (or
/// a minute passes, so nothing outlives the test run).
async fn hold(mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Closes with RST instead of FIN.
// A zero linger never blocks on drop, which is what the deprecation is about.
#[allow(deprecated)]
fn reset(stream: TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}
