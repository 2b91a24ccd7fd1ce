//! Shared test fixtures: a real upstream HTTP server, the gateway on real
//! sockets, and a plain HTTP client. Every test binary includes this module
//! and uses a different part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use feishu_gate::config::{self, Config};
use feishu_gate::gateway::Gateway;
use feishu_gate::server::{self, Listeners};

pub const TOKEN: &str = "test-token-4f9a";
pub const KEY: &str = "test-key-7c1e";

/// A callback with every common field; `message_id` is above 2^53.
pub fn callback(token: &str) -> String {
    format!(
        r#"{{"action_type":"APPROVE","action_context":"ctx-1","user_id":"u-1","approval_code":"CODE-1","instance_id":"inst-1","task_id":"task-1","message_id":7250020197497765889,"reason":"好的 ok","token":"{token}"}}"#
    )
}

/// The same callback with one field replaced.
pub fn callback_with(token: &str, field: &str, value: &str) -> String {
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&callback(token)).unwrap();
    v.insert(field.to_owned(), serde_json::from_str(value).unwrap());
    serde_json::to_string(&v).unwrap()
}

/// What the upstream saw.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}

/// How the upstream answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Answer {
        status: u16,
        body: String,
        delay: Duration,
        headers: Vec<(String, String)>,
    },
    /// Close the connection without answering.
    Drop,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Self {
        Reply::Answer {
            status,
            body: body.to_owned(),
            delay: Duration::ZERO,
            headers: vec![("content-type".into(), "application/json".into())],
        }
    }
    pub fn ok() -> Self {
        Self::json(200, r#"{"code":0}"#)
    }
    pub fn slow(mut self, delay: Duration) -> Self {
        if let Reply::Answer { delay: d, .. } = &mut self {
            *d = delay;
        }
        self
    }
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let Reply::Answer { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }
}

/// A real HTTP/1.1 server that records every request and answers as told.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    reply: Arc<Mutex<Reply>>,
}

impl Upstream {
    pub async fn start(reply: Reply) -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), reply)
    }

    /// The same server on a listener the test bound itself (a port that was
    /// refusing connections until now, say).
    pub fn on(listener: TcpListener, reply: Reply) -> Self {
        let addr = listener.local_addr().unwrap();
        let up = Upstream {
            addr,
            received: Arc::default(),
            reply: Arc::new(Mutex::new(reply)),
        };
        let server = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let server = server.clone();
                        async move { server.answer(req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        up
    }

    async fn answer(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        self.received.lock().unwrap().push(Received {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            headers: parts.headers,
            body,
        });
        let reply = self.reply.lock().unwrap().clone();
        match reply {
            Reply::Drop => Err(std::io::Error::other("dropping the connection on purpose")),
            Reply::Answer {
                status,
                body,
                delay,
                headers,
            } => {
                tokio::time::sleep(delay).await;
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                for (k, v) in headers {
                    r.headers_mut().insert(
                        http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        v.parse().unwrap(),
                    );
                }
                Ok(r)
            }
        }
    }

    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn url(&self) -> String {
        format!("http://{}/legacy/approve", self.addr)
    }
}

/// The gateway, in process, on port 0.
pub struct Gate {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gate {
    /// Starts with `TOKEN`, the given upstream, and `extra` variables on top.
    /// Duplicate suppression is off unless `extra` turns it on, so tests can
    /// send the same callback repeatedly and see each delivery.
    pub async fn start(upstream_url: &str, extra: &[(&str, &str)]) -> Self {
        let mut vars: Vec<(String, String)> = vec![
            (config::UPSTREAM_URL.into(), upstream_url.into()),
            (config::TOKEN.into(), TOKEN.into()),
            (config::LANG.into(), "en".into()),
            (config::DEDUP_TTL_SECS.into(), "0".into()),
        ];
        for (k, v) in extra {
            vars.retain(|(name, _)| name != k);
            vars.push(((*k).into(), (*v).into()));
        }
        let config = Config::from_vars(vars)
            .expect("test configuration is valid")
            .config;
        let gateway = Arc::new(Gateway::new(&config).expect("gateway builds"));
        let callback = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (callback.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            gateway.clone(),
            Listeners { callback, admin },
            None,
            async move {
                let _ = stopped.await;
            },
            config.shutdown_grace,
        ));
        Gate {
            addr,
            admin: admin_addr,
            gateway,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Begins graceful shutdown; the returned handle completes when drained.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("shut down once")
    }

    pub async fn post(&self, body: impl Into<Bytes>) -> Answer {
        post(self.addr, "/", body, &[]).await
    }

    pub async fn metrics(&self) -> String {
        get(self.admin, "/metrics").await.text
    }
}

/// A response as the test sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_else(|_| panic!("not JSON: {:?}", self.text))
    }
    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
    /// Asserts the Feishu error shape and returns the message.
    pub fn feishu_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "body: {}", self.text);
        let v = self.json();
        assert_eq!(v["without_prefix"], "true", "{}", self.text);
        let m = v["message"]
            .as_str()
            .expect("message is a string")
            .to_owned();
        assert!(!m.is_empty() && m.chars().count() <= 200, "{m:?}");
        assert!(!m.chars().any(char::is_control), "{m:?}");
        assert!(!m.contains('<') && !m.contains('>'), "{m:?}");
        assert!(
            !self.text.contains(TOKEN) && !self.text.contains(KEY),
            "{}",
            self.text
        );
        m
    }
}

async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn post(
    addr: SocketAddr,
    path: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut builder = Request::post(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    send(addr, builder.body(Full::new(body.into())).unwrap()).await
}

pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(addr, req).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path).await
}

/// Writes raw bytes and reads whatever comes back until the peer closes or
/// `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one HTTP/1.1 request off a raw socket: its head as it arrived, blank line
/// included, and its `content-length` body; `None` if the peer closed first.
pub async fn read_raw_request(stream: &mut TcpStream) -> Option<(String, String)> {
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
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let length: usize = head
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
    let body = String::from_utf8_lossy(&buf[header_end..header_end + length]).into_owned();
    Some((head, body))
}

/// Seals a callback body the way Feishu does, with a fresh IV.
pub fn seal(key: &str, plaintext: &str) -> String {
    feishu_gate::send::seal(key, plaintext).unwrap()
}

/// A metric's value from the text exposition; a series that is not exported fails the test,
/// so an assertion on a misspelt or never-registered metric cannot pass by reading 0.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("no series {series} in the scrape:\n{text}"))
}
