//! Listening: the callback port (plain or TLS), connection limits, timeouts,
//! and graceful shutdown.
//!
//! [`serve`] takes listeners that are already bound and a shutdown future, so
//! the configuration stays at the edge and tests run it on port 0.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::admin;
use crate::gateway::Gateway;

mod idle;

/// Time a client has to send a request's headers. It also bounds how long any
/// connection may carry no request, HTTP/1 or HTTP/2, including before its
/// first byte (see `idle`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once unless `FEISHU_GATE_MAX_CONNECTIONS` says
/// otherwise; further clients wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 4_096;
/// How often idle per-approver state is forgotten.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(10);

/// The bound sockets the gateway serves on.
#[derive(Debug)]
pub struct Listeners {
    pub callback: TcpListener,
    pub admin: TcpListener,
}

/// Serves callbacks and the admin endpoints until `shutdown` completes, then
/// drains: readiness fails at once, no new connection is accepted, idle
/// connections close, and in-flight callbacks get up to `grace` to finish.
pub async fn serve(
    gateway: Arc<Gateway>,
    listeners: Listeners,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let (admin_stop, admin_stopped) = tokio::sync::watch::channel(false);
    let admin = tokio::spawn(admin::serve(
        listeners.admin,
        gateway.clone(),
        admin_stopped,
    ));
    let housekeeping = tokio::spawn({
        let gateway = gateway.clone();
        async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
            loop {
                tick.tick().await;
                gateway.housekeeping();
            }
        }
    });

    let builder = Arc::new(connection_builder());
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(gateway.max_connections));
    gateway.health.set_ready();
    gateway.metrics.ready.set(1);
    tracing::info!(
        listen = %listeners.callback.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = tls.is_some(),
        "serving callbacks"
    );

    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listeners.callback.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Callbacks are small request/response pairs; Nagle only adds latency.
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_io(stream, &builder, gateway, watcher).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => {
                            serve_io(tls_stream, &builder, gateway, watcher).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }

    gateway.health.begin_shutdown();
    gateway.metrics.ready.set(0);
    drop(listeners.callback);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining in-flight callbacks"
    );
    let drained = tokio::time::timeout(grace, async {
        graceful.shutdown().await;
        gateway.deliveries.close();
        gateway.deliveries.wait().await;
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("drained"),
        Err(_) => tracing::warn!("grace period over with callbacks still in flight"),
    }
    housekeeping.abort();
    let _ = admin_stop.send(true);
    let _ = admin.await;
}

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

async fn serve_io<I>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = idle::Activity::default();
    let io = idle::IdleIo::new(io, activity.clone(), HEADER_READ_TIMEOUT);
    let service = service_fn(move |request| {
        let gateway = gateway.clone();
        let busy = activity.begin();
        async move {
            let _busy = busy;
            Ok::<_, Infallible>(gateway.handle(request).await)
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
