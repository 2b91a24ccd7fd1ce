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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
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
/// its path. Each worker accepts its own connections while it serves the
/// fewest (see [`Balance`]). The caller's runtime serves the admin endpoints.
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
    let listen = listeners
        .callback
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let count = settings
        .workers
        .unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
        .max(1);
    let intake = Arc::new(Intake {
        slots: Slots::new(settings.max_connections, Policy::CALLBACKS),
        connections: connections.clone(),
        accepting: CancellationToken::new(),
        listening: TaskTracker::new(),
        balance: Arc::new(Balance::with_workers(count)),
    });
    // The workers accept from clones of the socket, each registered with its own event
    // loop; this runtime's registration goes.
    let started = listeners.callback.into_std().and_then(|listener| {
        Workers::start(&gateway, count, tls.as_ref(), &stop, &intake, &listener)
    });
    let workers = match started {
        Ok(workers) => workers,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the worker threads");
            // Those started let the socket go and end.
            intake.accepting.cancel();
            housekeeping.abort();
            let _ = admin_stop.send(true);
            let _ = admin.await;
            return;
        }
    };
    gateway.set_ready();
    tracing::info!(
        listen = %listen,
        tls = tls.is_some(),
        workers = workers.threads.len(),
        "serving callbacks"
    );

    shutdown.await;
    // One grace for everything after the signal.
    let deadline = tokio::time::Instant::now() + grace;
    gateway.begin_shutdown();
    // The socket closes once every worker has let its clone go, so that a newcomer is
    // refused rather than left in a backlog nobody reads.
    intake.accepting.cancel();
    intake.listening.close();
    // Bounded: a worker thread held up by a connection must not hold up the drain.
    let _ = tokio::time::timeout_at(deadline, intake.listening.wait()).await;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining in-flight callbacks"
    );
    // Each worker closes its connections, each as soon as it carries no request.
    let threads = workers.threads;
    let drained = tokio::time::timeout_at(deadline, async {
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

/// A connection just accepted, and what it holds while open: its place under the
/// connection cap, in the drain's count and in its worker's.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    held: (Slot, TaskTrackerToken, OpenConnection),
}

/// What the workers' accept loops share.
struct Intake {
    slots: Arc<Slots>,
    /// Every callback connection from its accept to its end.
    connections: TaskTracker,
    /// Cancelled when the gateway stops taking connections.
    accepting: CancellationToken,
    /// Held by each worker while its clone of the listening socket is open.
    listening: TaskTracker,
    balance: Arc<Balance>,
}

/// How many connections each worker serves. Connections stay with one worker for life,
/// so a worker accepts only while it serves the fewest: balancing them as they come
/// keeps every core busy when a few long-lived connections carry the load. Every worker
/// watches the socket, so the one that takes a connection registers it once, with its
/// own event loop, and no thread hands it to another.
struct Balance {
    workers: Vec<Turn>,
}

#[derive(Default)]
struct Turn {
    open: AtomicUsize,
    /// Set while the worker waits for its turn to accept.
    waiting: AtomicBool,
    nudge: Notify,
}

impl Balance {
    fn with_workers(count: usize) -> Self {
        Self {
            workers: (0..count).map(|_| Turn::default()).collect(),
        }
    }

    fn fewest(&self) -> usize {
        self.workers
            .iter()
            .map(|worker| worker.open.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    }

    /// Whether worker `index` serves no more than any other.
    fn may_take(&self, index: usize) -> bool {
        self.workers
            .get(index)
            .is_some_and(|mine| mine.open.load(Ordering::SeqCst) <= self.fewest())
    }

    /// Returns once worker `index` serves the fewest.
    async fn turn(&self, index: usize) {
        let Some(turn) = self.workers.get(index) else {
            return std::future::pending().await;
        };
        loop {
            // Set before looking, and a count changed before it is read (both
            // sequentially consistent): a change this look misses sees the flag.
            turn.waiting.store(true, Ordering::SeqCst);
            if self.may_take(index) {
                turn.waiting.store(false, Ordering::SeqCst);
                return;
            }
            turn.nudge.notified().await;
        }
    }

    /// Wakes every worker waiting whose turn a changed count has made.
    fn changed(&self) {
        let fewest = self.fewest();
        for turn in &self.workers {
            if turn.waiting.load(Ordering::SeqCst) && turn.open.load(Ordering::SeqCst) <= fewest {
                turn.nudge.notify_one();
            }
        }
    }

    fn opened(self: &Arc<Self>, index: usize) -> Option<OpenConnection> {
        let turn = self.workers.get(index)?;
        turn.open.fetch_add(1, Ordering::SeqCst);
        self.changed();
        Some(OpenConnection {
            balance: self.clone(),
            index,
        })
    }

    /// Takes a worker that no longer accepts out of the balance, so the others do not
    /// wait for its turn.
    fn withdraw(&self, index: usize) {
        if let Some(turn) = self.workers.get(index) {
            turn.open.store(usize::MAX, Ordering::SeqCst);
            self.changed();
        }
    }
}

/// Counts a connection against its worker for as long as it is held.
struct OpenConnection {
    balance: Arc<Balance>,
    index: usize,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if let Some(turn) = self.balance.workers.get(self.index) {
            turn.open.fetch_sub(1, Ordering::SeqCst);
            self.balance.changed();
        }
    }
}

/// The worker threads.
struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn start(
        gateway: &Arc<Gateway>,
        count: usize,
        tls: Option<&TlsAcceptor>,
        stop: &CancellationToken,
        intake: &Arc<Intake>,
        listener: &std::net::TcpListener,
    ) -> std::io::Result<Self> {
        let mut workers = Self {
            threads: Vec::new(),
        };
        for index in 0..count {
            let started = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(crate::observe::logging::flush)
                .build()
                .and_then(|runtime| {
                    // Registered with this worker's event loop, here, so that a failure
                    // stops the start instead of leaving a worker that never accepts.
                    let listener = {
                        let _entered = runtime.enter();
                        TcpListener::from_std(listener.try_clone()?)?
                    };
                    Ok((runtime, listener))
                });
            let (runtime, listener) = match started {
                Ok(started) => started,
                Err(e) => {
                    // The ones started end once the caller stops them accepting.
                    stop.cancel();
                    return Err(e);
                }
            };
            let worker = worker(
                index,
                (listener, intake.listening.token()),
                intake.clone(),
                gateway.clone(),
                tls.cloned(),
                stop.clone(),
            );
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
        }
        Ok(workers)
    }
}

/// One worker's event loop: accepts and serves connections until the gateway stops
/// taking them, then closes them once idle, and runs until `stop`.
async fn worker(
    index: usize,
    (listener, listening): (TcpListener, TaskTrackerToken),
    intake: Arc<Intake>,
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
    // The worker's own: a connection checks for shutdown each time it is
    // polled, under a lock that, shared between workers, would pass from core
    // to core every request.
    let closing = CancellationToken::new();
    let serving = Serving {
        closing: closing.clone(),
        gateway,
        upstream,
        builder: Arc::new(connection_builder()),
        tls,
    };
    accept_loop(index, &listener, &intake, &serving).await;
    // Whatever ended the loop, the others must not wait for this worker's turn.
    intake.balance.withdraw(index);
    drop((listener, listening));
    closing.cancel();
    // Deliveries that outlived their requests, and whatever the drain left
    // open, run until the grace ends.
    stop.cancelled().await;
}

/// What every connection of one worker is served with.
#[derive(Clone)]
struct Serving {
    closing: CancellationToken,
    gateway: Arc<Gateway>,
    upstream: Arc<Upstream>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
}

/// Accepts while this worker serves the fewest connections, until the gateway stops
/// taking them.
async fn accept_loop(
    index: usize,
    listener: &TcpListener,
    intake: &Arc<Intake>,
    serving: &Serving,
) {
    let accepting = &intake.accepting;
    loop {
        tokio::select! {
            biased;
            () = accepting.cancelled() => return,
            () = intake.balance.turn(index) => {}
        }
        let (stream, peer) = tokio::select! {
            biased;
            () = accepting.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(worker = index, error = %e, "accept failed");
                    tokio::select! {
                        () = accepting.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            },
        };
        let slot = tokio::select! {
            biased;
            () = accepting.cancelled() => return,
            slot = intake.slots.admit() => match slot {
                Some(slot) => slot,
                None => return,
            },
        };
        let Some(open) = intake.balance.opened(index) else {
            return;
        };
        // Callbacks are small request/response pairs; Nagle only adds latency.
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            Accepted {
                stream,
                peer,
                held: (slot, intake.connections.token(), open),
            },
            serving.clone(),
        ));
    }
}

async fn serve_connection(accepted: Accepted, serving: Serving) {
    let Accepted { stream, peer, held } = accepted;
    let Serving {
        closing,
        gateway,
        upstream,
        builder,
        tls,
    } = serving;
    let (slot, _tracked, _open) = held;
    let unverified_by = tokio::time::Instant::now() + FIRST_CALLBACK_WITHIN;
    let seen = slot.seen.clone();
    let stream = slots::HeardIo::new(stream, seen.clone());
    let served = async {
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
        () = served => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `turn` once: whether it is this worker's turn now.
    async fn has_turn(balance: &Balance, index: usize) -> bool {
        tokio::select! {
            biased;
            () = balance.turn(index) => true,
            () = std::future::ready(()) => false,
        }
    }

    #[tokio::test]
    async fn a_worker_accepts_only_while_it_serves_the_fewest() {
        let balance = Arc::new(Balance::with_workers(2));
        assert!(has_turn(&balance, 0).await && has_turn(&balance, 1).await);
        let first = balance.opened(0).unwrap();
        assert!(!has_turn(&balance, 0).await);
        assert!(has_turn(&balance, 1).await);
        let second = balance.opened(1).unwrap();
        assert!(has_turn(&balance, 0).await && has_turn(&balance, 1).await);
        drop(first);
        assert!(has_turn(&balance, 0).await);
        assert!(!has_turn(&balance, 1).await);
        drop(second);
        assert!(has_turn(&balance, 1).await);
        assert!(balance.opened(2).is_none());
    }

    #[tokio::test]
    async fn a_waiting_worker_is_woken_when_its_turn_comes() {
        let balance = Arc::new(Balance::with_workers(2));
        let open = balance.opened(0).unwrap();
        let waiting = tokio::spawn({
            let balance = balance.clone();
            async move { balance.turn(0).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // The other worker takes a connection too: the counts are level again.
        let other = balance.opened(1).unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken")
            .unwrap();
        drop((open, other));
    }

    #[tokio::test]
    async fn a_withdrawn_worker_never_holds_the_others_back() {
        let balance = Arc::new(Balance::with_workers(2));
        balance.withdraw(1);
        let _open: Vec<_> = (0..3).map(|_| balance.opened(0).unwrap()).collect();
        assert!(has_turn(&balance, 0).await);
        assert!(!has_turn(&balance, 1).await);
    }
}
