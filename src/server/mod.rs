//! Listening: the callback port (plain or TLS), connection limits, timeouts,
//! and graceful shutdown.
//!
//! [`serve`] takes listeners that are already bound and a shutdown future, so
//! the configuration stays at the edge and tests run it on port 0.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use crate::pipeline::{CloseConnection, Gateway};
use crate::upstream::Upstream;

/// `AsyncWrite` for a transport wrapper that only watches what is read: every call goes
/// to its `io` as it is.
macro_rules! write_through {
    ($wrapper:ident) => {
        impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<I> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
            }
        }
    };
}
use write_through;

pub mod admin;
pub(crate) mod idle;
mod slots;
pub mod tls;

use slots::{Policy, Slot, Slots};

/// The listeners and how they serve (`LISTEN`, `ADMIN_LISTEN`, `TLS_*`,
/// `MAX_CONNECTIONS`, `WORKERS`, `SHUTDOWN_GRACE_MS`).
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<tls::TlsFiles>,
    /// Callback connections served at once.
    pub max_connections: usize,
    /// Worker threads; `None` is one per available CPU.
    pub workers: Option<usize>,
    /// How long in-flight callbacks may finish after the signal.
    pub shutdown_grace: Duration,
}

/// Time a client has to send a request's headers. It also bounds how long any
/// connection may carry no request, HTTP/1 or HTTP/2, including before its
/// first byte (see `idle`).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection has from its accept to its first verified callback, handshake, head
/// and body together: Feishu's takes well under a second. A connection that has shown no
/// token by then is closed, whatever it is still sending. Later than the idle limit and
/// its GOAWAY grace, which close a connection carrying no request gracefully: this one
/// ends those still trickling a request, which the idle limit does not see as idle.
pub const FIRST_CALLBACK_WITHIN: Duration = Duration::from_secs(7);
/// Connections served at once unless `FEISHU_GATE_MAX_CONNECTIONS` says otherwise. At
/// the cap a newcomer takes the slot of a connection that has shown least (see `slots`);
/// only when every slot carries a verified callback does it wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1_024;
/// The most an HTTP/1 request's head may take, on either listener: hyper's read buffer,
/// at its smallest but for a factor of two. A longer head is answered 431. Feishu's are
/// under 1 KiB.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most an HTTP/2 request's header list may take.
pub const MAX_HEADER_LIST_BYTES: u32 = 8 * 1024;
/// Requests one HTTP/2 connection may have open at once.
pub const MAX_STREAMS: u32 = 4;
/// HTTP/2 flow-control windows, per request and per connection: how much of a body a
/// client may send ahead of the gateway reading it. A callback fits in one.
const STREAM_WINDOW: u32 = 16 * 1024;
const CONNECTION_WINDOW: u32 = 32 * 1024;
/// What an HTTP/2 connection buffers of its answers, which are under 1 KiB.
const SEND_BUFFER: usize = 16 * 1024;
/// Connections the admin listener serves at once: probes and scrapes need a handful.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// Connections the kernel completes and queues for each listener before the
/// gateway accepts them; the kernel lowers it to `net.core.somaxconn`. A
/// burst of connects beyond the queue is dropped, and a dropped client that
/// has nothing to send yet is only let in by the handshake's retransmissions,
/// seconds later; std's default of 128 is far below a burst of a few hundred.
pub const LISTEN_BACKLOG: u32 = 4_096;

/// Listens on `addr` with [`LISTEN_BACKLOG`], reusing the address as std does.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
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
///
/// Callback connections are served by worker threads, each running its own
/// single-threaded event loop with its own upstream connection pool, the way
/// nginx runs worker processes: a callback is read, verified, delivered and
/// answered on one thread, with no hand-off between threads and no lock on
/// its path. The caller's runtime accepts connections and gives each to the
/// worker serving the fewest, and serves the admin endpoints.
pub async fn serve(
    gateway: Arc<Gateway>,
    listeners: Listeners,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
    settings: Settings,
) {
    let grace = settings.shutdown_grace;
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

    // Every callback connection from its accept to its end, on any worker.
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    let workers = match Workers::start(&gateway, settings.workers, tls.as_ref(), &stop) {
        Ok(workers) => workers,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the worker threads");
            housekeeping.abort();
            let _ = admin_stop.send(true);
            let _ = admin.await;
            return;
        }
    };
    let slots = Slots::new(settings.max_connections, Policy::CALLBACKS);
    gateway.set_ready();
    tracing::info!(
        listen = %listeners.callback.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = tls.is_some(),
        workers = workers.queues.len(),
        "serving callbacks"
    );

    tokio::pin!(shutdown);
    loop {
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
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.admit() => match slot {
                Some(slot) => slot,
                None => break,
            },
        };
        // Callbacks are small request/response pairs; Nagle only adds latency.
        let _ = stream.set_nodelay(true);
        // Leaves this runtime's event loop for the worker's.
        match stream.into_std() {
            Ok(stream) => workers.dispatch(stream, peer, (slot, connections.token())),
            Err(e) => tracing::debug!(%peer, error = %e, "accepted connection unusable"),
        }
    }

    gateway.begin_shutdown();
    drop(listeners.callback);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining in-flight callbacks"
    );
    // Each worker closes its connections, each as soon as it carries no request.
    let threads = workers.close();
    let drained = tokio::time::timeout(grace, async {
        connections.close();
        connections.wait().await;
        gateway.deliveries.close();
        gateway.deliveries.wait().await;
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("drained"),
        Err(_) => {
            let abandoned = gateway.under_way();
            tracing::warn!(
                deliveries = abandoned.len(),
                "grace period over with callbacks or deliveries still under way"
            );
            // Each by its key, so the operator can look the decisions up in the
            // legacy system: an exchange abandoned may still have been accepted.
            for (key, stage) in abandoned {
                tracing::warn!(
                    idempotency_key = key,
                    stage = stage.label(),
                    "abandoned at shutdown: whether the legacy system took it is not known here"
                );
            }
        }
    }
    // Whatever is still running after the grace ends with its worker.
    stop.cancel();
    let _ = tokio::task::spawn_blocking(move || {
        for thread in threads {
            let _ = thread.join();
        }
    })
    .await;
    housekeeping.abort();
    let _ = admin_stop.send(true);
    let _ = admin.await;
}

/// A connection on its way to a worker, and what it holds while open: its
/// place under the connection cap, in the drain's count and in its worker's.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    held: (Slot, TaskTrackerToken, OpenConnection),
}

/// The worker threads: each one's queue of connections, and how many it serves.
struct Workers {
    queues: Vec<(mpsc::UnboundedSender<Accepted>, Arc<AtomicUsize>)>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn start(
        gateway: &Arc<Gateway>,
        workers: Option<usize>,
        tls: Option<&TlsAcceptor>,
        stop: &CancellationToken,
    ) -> std::io::Result<Self> {
        let count = workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        let mut workers = Self {
            queues: Vec::new(),
            threads: Vec::new(),
        };
        for index in 0..count.max(1) {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(crate::observe::logging::flush)
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    // The ones started end at once: no connection reached them.
                    stop.cancel();
                    return Err(e);
                }
            };
            let (queue, incoming) = mpsc::unbounded_channel();
            let worker = worker(incoming, gateway.clone(), tls.cloned(), stop.clone());
            let thread = std::thread::Builder::new()
                .name(format!("feishu-gate-worker-{index}"))
                // Connections still open past the grace end with the runtime.
                .spawn(move || {
                    runtime.block_on(worker);
                    drop(runtime);
                    crate::observe::logging::flush();
                });
            match thread {
                Ok(thread) => workers.threads.push(thread),
                Err(e) => {
                    stop.cancel();
                    return Err(e);
                }
            }
            workers.queues.push((queue, Arc::default()));
        }
        Ok(workers)
    }

    /// Hands the connection to the worker serving the fewest: connections
    /// stay with one worker for life, so balancing them as they come keeps
    /// every core busy when a few long-lived connections carry the load.
    fn dispatch(
        &self,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        (slot, tracked): (Slot, TaskTrackerToken),
    ) {
        let Some((queue, open)) = self
            .queues
            .iter()
            .min_by_key(|(_, open)| open.load(Ordering::Relaxed))
        else {
            return;
        };
        open.fetch_add(1, Ordering::Relaxed);
        // Only a worker that is gone refuses; the connection closes.
        let _ = queue.send(Accepted {
            stream,
            peer,
            held: (slot, tracked, OpenConnection(open.clone())),
        });
    }

    /// Stops handing out connections; each worker then closes its own as soon
    /// as they carry no request. Returns the threads, to join after `stop`.
    fn close(self) -> Vec<std::thread::JoinHandle<()>> {
        drop(self.queues);
        self.threads
    }
}

/// One worker's event loop: serves the connections it is given until the
/// accept loop stops, then closes them once idle, and runs until `stop`.
async fn worker(
    mut incoming: mpsc::UnboundedReceiver<Accepted>,
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let upstream = gateway.upstream_for_worker();
    tokio::spawn({
        let upstream = upstream.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                upstream.close_idle();
            }
        }
    });
    let builder = Arc::new(connection_builder());
    // The worker's own: a connection checks for shutdown each time it is
    // polled, under a lock that, shared between workers, would pass from core
    // to core every request.
    let closing = CancellationToken::new();
    // Connections dispatched before the accept loop stopped are still received.
    while let Some(accepted) = incoming.recv().await {
        tokio::spawn(serve_connection(
            accepted,
            closing.clone(),
            gateway.clone(),
            upstream.clone(),
            builder.clone(),
            tls.clone(),
        ));
    }
    closing.cancel();
    // Deliveries that outlived their requests, and whatever the drain left
    // open, run until the grace ends.
    stop.cancelled().await;
}

/// Counts a connection against its worker for as long as it is held.
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    accepted: Accepted,
    closing: CancellationToken,
    gateway: Arc<Gateway>,
    upstream: Arc<Upstream>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
) {
    let Accepted { stream, peer, held } = accepted;
    let (slot, _tracked, _open) = held;
    let unverified_by = tokio::time::Instant::now() + FIRST_CALLBACK_WITHIN;
    let stream = match TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot register the connection");
            return;
        }
    };
    let seen = slot.seen.clone();
    let stream = slots::HeardIo::new(stream, seen.clone());
    let serving = async {
        match tls {
            None => serve_io(stream, &builder, gateway, upstream, closing, seen).await,
            Some(acceptor) => {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        serve_io(tls_stream, &builder, gateway, upstream, closing, seen).await
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    };
    tokio::select! {
        () = serving => {}
        () = slot.evicted() => tracing::debug!(%peer, "closed to make room for a newcomer"),
        () = unverified_past(&slot, unverified_by) => {
            tracing::debug!(%peer, "closed: no verified callback in time");
        }
    }
}

/// Completes at `deadline` unless the connection carried a verified callback by then.
async fn unverified_past(slot: &Slot, deadline: tokio::time::Instant) {
    tokio::time::sleep_until(deadline).await;
    if slot.seen.is_verified() {
        std::future::pending::<()>().await;
    }
}

fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // `IdleIo` bounds the wait for each request's head (see `idle`); hyper's
    // own header timer would cost a boxed timer per request to do the same.
    builder
        .http1()
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buf_size(SEND_BUFFER)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

async fn serve_io<I>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    gateway: Arc<Gateway>,
    upstream: Arc<Upstream>,
    closing: CancellationToken,
    seen: Arc<slots::Seen>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = idle::Activity::default();
    let goaway_wanted = activity.goaway_wanted();
    let io = idle::IdleIo::new(io, activity.clone(), HEADER_READ_TIMEOUT);
    let service = service_fn(move |request| {
        let gateway = gateway.clone();
        let upstream = upstream.clone();
        let activity = activity.clone();
        let busy = activity.begin();
        let seen = seen.clone();
        seen.begun();
        async move {
            let _busy = busy;
            let response = gateway.handle(&upstream, request, &seen).await;
            // HTTP/1 says so in `Connection: close`; HTTP/2 has no such header, and a
            // client refusing requests on it must not keep it either: GOAWAY.
            if response.extensions().get::<CloseConnection>().is_some() {
                activity.want_goaway();
            }
            Ok::<_, Infallible>(response)
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let draining = closing.cancelled();
    tokio::pin!(draining, goaway_wanted);
    // Shutting down gracefully closes an idle HTTP/1 connection and sends an
    // HTTP/2 one GOAWAY; either way requests in progress finish first.
    let mut shutting_down = false;
    let ended = loop {
        tokio::select! {
            biased;
            ended = connection.as_mut() => break ended,
            () = &mut draining, if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
            () = &mut goaway_wanted, if !shutting_down => {
                shutting_down = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
