//! The legacy system the tests start: a real HTTP/1.1 server on loopback, in
//! plain TCP or TLS, that records every request and answers as told.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// Serves HTTP/1.1 on every connection `listener` accepts, over TLS when
/// `tls` is given, answering each request with `answer`.
pub fn serve<F, Fut>(listener: TcpListener, tls: Option<ServerConfig>, answer: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, std::io::Error>> + Send + 'static,
{
    let acceptor = tls.map(|c| TlsAcceptor::from(Arc::new(c)));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                match acceptor {
                    None => serve_connection(tcp, answer).await,
                    Some(acceptor) => {
                        // A handshake the gateway refuses is the test's business, not the server's.
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            serve_connection(tls, answer).await;
                        }
                    }
                }
            });
        }
    });
}

async fn serve_connection<I, F, Fut>(io: I, answer: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, std::io::Error>> + Send + 'static,
{
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service_fn(answer))
        .await;
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
    tls: bool,
    received: Arc<Mutex<Vec<Received>>>,
    reply: Arc<Mutex<Reply>>,
}

impl Upstream {
    pub async fn start(reply: Reply) -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), reply)
    }

    /// The same server speaking TLS with `tls`.
    pub async fn start_tls(reply: Reply, tls: ServerConfig) -> Self {
        Self::serving(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            reply,
            Some(tls),
        )
    }

    /// The same server on a listener the test bound itself (a port that was
    /// refusing connections until now, say).
    pub fn on(listener: TcpListener, reply: Reply) -> Self {
        Self::serving(listener, reply, None)
    }

    fn serving(listener: TcpListener, reply: Reply, tls: Option<ServerConfig>) -> Self {
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            tls: tls.is_some(),
            received: Arc::default(),
            reply: Arc::new(Mutex::new(reply)),
        };
        let server = up.clone();
        serve(listener, tls, move |req| {
            let server = server.clone();
            async move { server.answer(req).await }
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

    /// The URL to configure as the upstream: `https://` when it speaks TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/legacy/approve", self.addr)
    }
}
