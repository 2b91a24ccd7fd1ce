//! The one HTTP client of the tests: HTTP/1.1 or HTTP/2 over any stream (TCP or
//! TLS), one-shot requests on top, and raw sockets for what a client library
//! would never send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{KEY, TOKEN};

/// A response as the test sees it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub version: Version,
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
    /// Whether the body is Feishu's error shape: `without_prefix` and a short,
    /// printable message.
    pub fn is_feishu_error(&self) -> bool {
        serde_json::from_str::<serde_json::Value>(&self.text).is_ok_and(|v| {
            v["without_prefix"] == "true"
                && v["message"].as_str().is_some_and(|m| {
                    !m.is_empty()
                        && m.chars().count() <= 200
                        && !m.chars().any(char::is_control)
                        && !m.contains(['<', '>'])
                })
        })
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
        assert!(self.is_feishu_error(), "{m:?}");
        assert!(
            !self.text.contains(TOKEN) && !self.text.contains(KEY),
            "{}",
            self.text
        );
        m
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One client connection, kept open for as many requests as the server allows.
pub struct Conn {
    sender: Sender,
    /// `scheme://host:port`: HTTP/2 requests carry it in their URI, HTTP/1.1 ones
    /// the authority in `host`.
    base: String,
    driver: JoinHandle<Result<(), hyper::Error>>,
}

impl Conn {
    /// Handshakes `protocol` on `io`; `base` is `scheme://host:port`.
    pub async fn open<I>(io: I, protocol: Protocol, base: &str) -> Result<Self, hyper::Error>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let (sender, driver) = match protocol {
            Protocol::Http1 => {
                let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
                (Sender::Http1(sender), tokio::spawn(connection))
            }
            Protocol::Http2 => {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                (Sender::Http2(sender), tokio::spawn(connection))
            }
        };
        Ok(Conn {
            sender,
            base: base.to_owned(),
            driver,
        })
    }

    /// A plain TCP connection to `addr`, or the reason there is none.
    pub async fn connect(addr: SocketAddr, protocol: Protocol) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        Self::open(tcp, protocol, &format!("http://{addr}"))
            .await
            .map_err(std::io::Error::other)
    }

    /// An HTTP/1.1 connection to `addr`.
    pub async fn http1(addr: SocketAddr) -> Self {
        Self::connect(addr, Protocol::Http1).await.unwrap()
    }

    /// An HTTP/2 (prior knowledge) connection to `addr`.
    pub async fn http2(addr: SocketAddr) -> Self {
        Self::connect(addr, Protocol::Http2).await.unwrap()
    }

    /// A request to `path` on this connection, JSON when it has a body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().method(method);
        builder = match self.sender {
            Sender::Http1(_) => builder
                .uri(path)
                .header("host", self.base.split_once("://").map_or("", |(_, a)| a)),
            Sender::Http2(_) => builder.uri(format!("{}{path}", self.base)),
        };
        let body = body.into();
        if !body.is_empty() {
            builder = builder.header("content-type", "application/json");
        }
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(Full::new(body)).unwrap()
    }

    /// Waits until the connection can take another request.
    pub async fn ready(&mut self) -> Result<(), hyper::Error> {
        match &mut self.sender {
            Sender::Http1(s) => s.ready().await,
            Sender::Http2(s) => s.ready().await,
        }
    }

    pub fn is_closed(&self) -> bool {
        match &self.sender {
            Sender::Http1(s) => s.is_closed(),
            Sender::Http2(s) => s.is_closed(),
        }
    }

    /// Sends `request` once the connection is ready, and reads the whole answer.
    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Answer, hyper::Error> {
        self.ready().await?;
        let response = match &mut self.sender {
            Sender::Http1(s) => s.send_request(request).await?,
            Sender::Http2(s) => s.send_request(request).await?,
        };
        let (status, version) = (response.status().as_u16(), response.version());
        let headers = response.headers().clone();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            version,
            headers,
            text: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// POSTs a JSON `body` to `/`.
    pub async fn post(&mut self, body: impl Into<Bytes>) -> Result<Answer, hyper::Error> {
        let request = self.request("POST", "/", body, &[]);
        self.send(request).await
    }

    /// Whether the connection has ended, cleanly or not.
    pub fn is_finished(&self) -> bool {
        self.driver.is_finished()
    }

    /// How the connection ended, or `None` if it is still open after `limit`.
    pub async fn ended(self, limit: Duration) -> Option<Result<(), hyper::Error>> {
        let driver = self.driver;
        tokio::time::timeout(limit, driver)
            .await
            .ok()
            .map(|joined| joined.unwrap())
    }
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut conn = Conn::http1(addr).await;
    let mut request = conn.request("POST", path, body, headers);
    // A body-less POST is JSON too, as the tests' callbacks are.
    request
        .headers_mut()
        .entry("content-type")
        .or_insert(http::HeaderValue::from_static("application/json"));
    conn.send(request).await.unwrap()
}

pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    let mut conn = Conn::http1(addr).await;
    let request = conn.request(method, path, Bytes::new(), &[]);
    conn.send(request).await.unwrap()
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "GET", path).await
}

/// A GET that may find nothing listening yet: `None` on any failure, or after 10 s.
pub async fn try_get(addr: SocketAddr, path: &str) -> Option<Answer> {
    let exchange = async {
        let mut conn = Conn::connect(addr, Protocol::Http1).await.ok()?;
        let request = conn.request("GET", path, Bytes::new(), &[]);
        conn.send(request).await.ok()
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

/// A TLS client configuration trusting `roots`, offering `alpn`.
pub fn tls_client(roots: rustls::RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(super::certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // A resumed session reports the certificate of the session it resumes;
    // every handshake here must show what the server presents now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A TLS connection to `addr`, checked against the name `127.0.0.1`.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
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
