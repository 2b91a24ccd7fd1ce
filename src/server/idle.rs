//! Closing connections that carry no request.
//!
//! Nothing in hyper bounds a connection before its protocol is known (a
//! client that connects and sends nothing, or sends half of HTTP/2's
//! preface), nor an HTTP/2 connection with no open stream: its client answers
//! keep-alive pings, so those never end it. Each would hold a connection
//! permit for good, and enough of them stop the gateway from accepting.
//!
//! [`IdleIo`] ends such a connection by reporting end-of-file once no request
//! has been in progress for the idle limit, whether the client is silent or
//! trickles bytes that never make a request (slowloris). For HTTP/1 that is
//! also the header read timeout, between requests and while the next one's
//! head arrives, so hyper's own per-request timer is not needed. Requests are
//! counted by [`Activity::begin`], held for as long as the service handles one.
//!
//! An HTTP/2 connection is told first: at the idle limit [`IdleIo`] asks for
//! a graceful shutdown ([`Activity::goaway_wanted`]), which sends GOAWAY, so
//! a client whose next request crosses the close learns it was never
//! processed and may send it again (RFC 9113 §6.8); a bare end of stream
//! would leave it guessing. Bytes keep flowing while the client answers the
//! shutdown's ping, and the connection reads as closed only if it is still
//! open [`GOAWAY_GRACE`] later.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long an HTTP/2 connection told GOAWAY at the idle limit has to
/// finish closing: a ping's round trip, and any request that crossed the
/// GOAWAY, before it reads as closed regardless.
pub const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug)]
struct State {
    active: usize,
    idle_since: Instant,
    /// The connection should be shut down gracefully (HTTP/2 at the idle limit).
    goaway: bool,
    /// The task waiting in [`GoawayWanted`], woken when `goaway` is set.
    closer: Option<Waker>,
    /// The reader waiting while a request was in progress, woken when the
    /// last one ends so the idle clock restarts even if nothing else polls
    /// the connection. A reader waiting on an idle connection needs no
    /// waking: its timer is armed.
    reader: Option<Waker>,
}

/// The requests in progress on one connection.
#[derive(Debug, Clone)]
pub struct Activity(Arc<Mutex<State>>);

impl Default for Activity {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(State {
            active: 0,
            idle_since: Instant::now(),
            goaway: false,
            closer: None,
            reader: None,
        })))
    }
}

impl Activity {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below completes before it could unwind.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks a request in progress until the returned guard is dropped.
    pub fn begin(&self) -> Busy {
        self.lock().active += 1;
        Busy(self.clone())
    }

    /// Completes once the connection should be shut down gracefully, which
    /// for HTTP/2 sends GOAWAY.
    pub fn goaway_wanted(&self) -> GoawayWanted {
        GoawayWanted(self.clone())
    }

    /// Asks for the connection to be shut down gracefully once its requests in progress end.
    pub fn want_goaway(&self) {
        let mut state = self.lock();
        state.goaway = true;
        if let Some(closer) = state.closer.take() {
            closer.wake();
        }
    }
}

/// See [`Activity::goaway_wanted`].
#[derive(Debug)]
pub struct GoawayWanted(Activity);

impl std::future::Future for GoawayWanted {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.0.lock();
        if state.goaway {
            return Poll::Ready(());
        }
        if !state
            .closer
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.closer = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// What the connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// This many bytes of [`PREFACE`] have arrived, and nothing else.
    Unknown(usize),
    Http2,
    Other,
}

/// A request in progress.
#[derive(Debug)]
pub struct Busy(Activity);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.active = state.active.saturating_sub(1);
        if state.active == 0 {
            state.idle_since = Instant::now();
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
        }
    }
}

/// A connection's transport that reads as closed once the connection has
/// carried no request for `limit`.
#[derive(Debug)]
pub struct IdleIo<I> {
    io: I,
    activity: Activity,
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    closed: bool,
    protocol: Protocol,
    /// When an HTTP/2 connection at the idle limit was asked to shut down.
    closing_since: Option<Instant>,
}

impl<I> IdleIo<I> {
    pub fn new(io: I, activity: Activity, limit: Duration) -> Self {
        let deadline = activity.lock().idle_since + limit;
        Self {
            io,
            activity,
            limit,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            closed: false,
            protocol: Protocol::Unknown(0),
            closing_since: None,
        }
    }

    /// When the connection, idle since `state.idle_since`, reads as closed
    /// (or, for HTTP/2 not yet told, is told GOAWAY).
    fn deadline(&self, state: &State) -> Instant {
        match self.closing_since {
            None => state.idle_since + self.limit,
            // A request that crossed the GOAWAY gets its answer out first.
            Some(since) => since.max(state.idle_since) + GOAWAY_GRACE,
        }
    }

    /// After a read that brought bytes: whether they came past the idle
    /// limit. Every read of a request passes here, so it reads no clock and
    /// takes no lock unless the timer armed for an idle period has fired.
    fn past_limit(&self) -> bool {
        if !self.timer.is_elapsed() {
            return false;
        }
        let state = self.activity.lock();
        state.active == 0 && self.timer.deadline() == self.deadline(&state)
    }

    /// At a deadline: whether the connection now reads as closed. An HTTP/2
    /// connection is first asked to shut down gracefully, and given
    /// [`GOAWAY_GRACE`] to do so.
    fn at_deadline(&mut self) -> bool {
        if self.protocol != Protocol::Http2 || self.closing_since.is_some() {
            return true;
        }
        self.closing_since = Some(Instant::now());
        self.activity.want_goaway();
        false
    }

    /// Before waiting for bytes: whether the connection has been idle too
    /// long. If not, arms the timer for this idle period, or, with requests
    /// in progress, registers to be woken when the last one ends.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        // Twice at most: an HTTP/2 connection told GOAWAY at its idle limit
        // is armed again for the grace.
        loop {
            let mut state = self.activity.lock();
            if state.active > 0 {
                if !state
                    .reader
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.reader = Some(cx.waker().clone());
                }
                return false;
            }
            state.reader = None;
            let deadline = self.deadline(&state);
            drop(state);
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.at_deadline() {
                return true;
            }
        }
    }

    /// Follows the first bytes until they tell HTTP/2's preface from anything else.
    fn sniff(&mut self, read: &[u8]) {
        let Protocol::Unknown(matched) = self.protocol else {
            return;
        };
        let expected = &PREFACE[matched..];
        let n = read.len().min(expected.len());
        self.protocol = if read[..n] != expected[..n] {
            Protocol::Other
        } else if matched + n == PREFACE.len() {
            Protocol::Http2
        } else {
            Protocol::Unknown(matched + n)
        };
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        let filled = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > filled => {
                this.sniff(&buf.filled()[filled..]);
                // Bytes that arrive after the idle limit start no request: to
                // HTTP/1, end-of-file is a client that went away between
                // requests. HTTP/2 is told GOAWAY instead, and what it sends
                // meanwhile (a ping's answer, a request that crossed it) is read.
                if this.past_limit() && this.at_deadline() {
                    buf.set_filled(filled);
                    this.closed = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(read) => Poll::Ready(read),
            Poll::Pending if this.expired(cx) => {
                this.closed = true;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

super::write_through!(IdleIo);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_reads_as_closed_after_the_limit() {
        let (client, server) = tokio::io::duplex(64);
        let activity = Activity::default();
        let mut io = IdleIo::new(server, activity, Duration::from_secs(5));
        let started = Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_secs(5));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_trickling_in_without_a_request_do_not_keep_it_open() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::default();
        let mut io = IdleIo::new(server, activity, Duration::from_secs(5));
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(700)).await;
                if client.write_all(b"x").await.is_err() {
                    break;
                }
            }
        });
        let mut buf = [0u8; 8];
        let mut read = 0;
        loop {
            match io.read(&mut buf).await.unwrap() {
                0 => break,
                n => read += n,
            }
        }
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(read, 7, "the bytes sent before the limit");
        writer.abort();
    }

    /// An HTTP/2 connection, idle after 5 s, whose preface the server has read.
    async fn http2_connection() -> (DuplexStream, IdleIo<DuplexStream>, Activity, Instant) {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::default();
        let mut io = IdleIo::new(server, activity.clone(), Duration::from_secs(5));
        let started = Instant::now();
        client.write_all(PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        let mut read = 0;
        while read < PREFACE.len() {
            read += io.read(&mut buf[read..]).await.unwrap();
        }
        (client, io, activity, started)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http2_connection_is_asked_for_goaway_then_closed_after_the_grace() {
        let (mut client, mut io, activity, started) = http2_connection().await;
        let mut buf = [0u8; 64];
        let wanted = tokio::spawn(activity.goaway_wanted());
        let reader = tokio::spawn(async move {
            let n = io.read(&mut buf).await.unwrap();
            (n, Instant::now())
        });
        wanted.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // The ping's answer, after GOAWAY: read, not cut off.
        client.write_all(b"pong").await.unwrap();
        let (n, _) = reader.await.unwrap();
        assert_eq!(n, 4);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http2_connection_that_does_not_close_reads_as_closed_after_the_grace() {
        let (_client, mut io, activity, started) = http2_connection().await;
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(started.elapsed(), Duration::from_secs(5) + GOAWAY_GRACE);
        assert!(activity.lock().goaway);
    }

    #[tokio::test(start_paused = true)]
    async fn http1_is_never_asked_for_goaway() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::default();
        let mut io = IdleIo::new(server, activity.clone(), Duration::from_secs(5));
        let started = Instant::now();
        client.write_all(b"PRI / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(io.read(&mut buf).await.unwrap() > 0);
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(!activity.lock().goaway);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_keeps_it_open_and_its_end_restarts_the_clock() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::default();
        let mut io = IdleIo::new(server, activity.clone(), Duration::from_secs(5));
        let busy = activity.begin();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let n = io.read(&mut buf).await.unwrap();
            let first = buf[..n].to_vec();
            let closed_at = {
                assert_eq!(io.read(&mut buf).await.unwrap(), 0);
                Instant::now()
            };
            (first, closed_at)
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let ended = Instant::now();
        drop(busy);
        let (first, closed_at) = reader.await.unwrap();
        assert_eq!(first, b"x");
        assert!(closed_at >= ended + Duration::from_secs(5));
    }
}
