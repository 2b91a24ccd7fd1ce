//! A fake of Feishu's OpenAPI over real HTTP on loopback: the token endpoint and
//! `approval/v1/message/update`, recording every call, able to refuse a token once as
//! expired, to be slow, or to refuse the app's secret.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

/// The app secret the fake accepts.
pub const APP_SECRET: &str = "app-secret-5d21c0ffee";
pub const APP_ID: &str = "cli_a1b2c3";

/// One call the fake received.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub authorization: Option<String>,
    pub body: serde_json::Value,
}

#[derive(Clone, Default)]
pub struct FakeOpenApi {
    pub addr: Option<SocketAddr>,
    calls: Arc<Mutex<Vec<Call>>>,
    tokens_issued: Arc<AtomicUsize>,
    /// The next message update is answered "token expired" (99991663), once.
    expire_next: Arc<AtomicBool>,
    delay: Arc<Mutex<Duration>>,
}

impl FakeOpenApi {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Self {
            addr: Some(listener.local_addr().unwrap()),
            ..Self::default()
        };
        let server = fake.clone();
        super::upstream::serve(listener, None, move |req| {
            let server = server.clone();
            async move { Ok(server.answer(req).await) }
        });
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr.unwrap())
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The message updates received.
    pub fn updates(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.path.ends_with("/message/update"))
            .collect()
    }

    pub fn tokens_issued(&self) -> usize {
        self.tokens_issued.load(Ordering::SeqCst)
    }

    pub fn expire_next_token(&self) {
        self.expire_next.store(true, Ordering::SeqCst);
    }

    pub fn slow(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let authorization = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        self.calls.lock().unwrap().push(Call {
            path: path.clone(),
            authorization: authorization.clone(),
            body: body.clone(),
        });
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let (status, answer) = match path.as_str() {
            "/open-apis/auth/v3/tenant_access_token/internal" => {
                if body["app_id"] == APP_ID && body["app_secret"] == APP_SECRET {
                    let n = self.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
                    (
                        200,
                        serde_json::json!({"code": 0, "msg": "ok", "tenant_access_token": format!("t-fake-token-{n}"), "expire": 7200}),
                    )
                } else {
                    (
                        400,
                        serde_json::json!({"code": 10014, "msg": "app secret invalid"}),
                    )
                }
            }
            "/open-apis/approval/v1/message/update" => {
                let issued = self.tokens_issued.load(Ordering::SeqCst);
                let current = format!("Bearer t-fake-token-{issued}");
                if self.expire_next.swap(false, Ordering::SeqCst)
                    || authorization.as_deref() != Some(current.as_str())
                {
                    // Feishu answers token errors with 400 as well as 200.
                    (
                        400,
                        serde_json::json!({"code": 99991663, "msg": "Invalid access token for authorization."}),
                    )
                } else {
                    (
                        200,
                        serde_json::json!({"code": 0, "msg": "success", "data": {"message_id": body["message_id"]}}),
                    )
                }
            }
            _ => (404, serde_json::json!({"code": 404, "msg": "not found"})),
        };
        let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        response
    }
}
