//! The admin listener: `/livez`, `/readyz`, `/metrics`. Never the callback port,
//! so probes and scrapes neither compete with nor reveal the callback path.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::pipeline::Gateway;
use crate::server::idle::{Activity, IdleIo};
use crate::server::slots::{HeardIo, Policy, Slots};
use crate::server::{ADMIN_MAX_CONNECTIONS, HEADER_READ_TIMEOUT, MAX_HEAD_BYTES};

/// Serves until `stop` turns true, at most [`ADMIN_MAX_CONNECTIONS`] connections at once,
/// each closed once it has carried no request for [`HEADER_READ_TIMEOUT`], with heads
/// bounded as on the callback port. A newcomer at the cap takes the slot of the connection
/// that has shown least, the longest held first (see `slots`): the kubelet's probe, on a
/// new connection each time, is answered however many clients flood the port or keep
/// connections busy with `/metrics`.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, mut stop: watch::Receiver<bool>) {
    let slots = Slots::new(ADMIN_MAX_CONNECTIONS, Policy::ADMIN);
    loop {
        let accepted = tokio::select! {
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = slots.admit().await else {
            return;
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let activity = Activity::default();
            let seen = slot.seen.clone();
            let stream = HeardIo::new(stream, seen.clone());
            let io = IdleIo::new(stream, activity.clone(), HEADER_READ_TIMEOUT);
            let service = service_fn(move |request| {
                let gateway = gateway.clone();
                let busy = activity.begin();
                seen.begun();
                async move {
                    let _busy = busy;
                    Ok::<_, Infallible>(route(&gateway, &request))
                }
            });
            let serving = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(io), service);
            tokio::select! {
                _ = serving => {}
                () = slot.evicted() => {}
            }
        });
    }
}

fn route(gateway: &Gateway, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match request.uri().path() {
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" if gateway.health.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" if gateway.health.is_shutting_down() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        }
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(gateway.metrics.render())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                // prometheus-client writes OpenMetrics (`# EOF`, counters typed without `_total`).
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
