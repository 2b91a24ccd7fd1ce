//! One worker's kept-alive connections to the legacy system, the one used last used next.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1;
use tokio::time::Instant;

/// Idle pooled connections are dropped before common servers drop them
/// (Node.js closes after 5 s), so a reused connection is rarely found dead
/// mid-request, which would leave the decision's fate unknown.
pub(super) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

pub(super) type Sender = http1::SendRequest<Full<Bytes>>;

/// How many pooled connections a request tries that turn out to have been
/// closed before it could be written, before it opens a new one.
pub(super) const STALE_TRIES: usize = 4;

/// One worker's kept-alive connections, the most recently used last.
#[derive(Default)]
pub(super) struct Pool {
    idle: Mutex<Vec<(Sender, Instant)>>,
}

impl Pool {
    pub(super) fn checkout(&self, now: Instant) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((sender, since)) = idle.pop() {
            if now.saturating_duration_since(since) >= POOL_IDLE_TIMEOUT {
                // The rest were idle longer still.
                idle.clear();
                return None;
            }
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    pub(super) fn checkin(&self, sender: Sender, now: Instant) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push((sender, now));
        }
    }

    pub(super) fn close_idle(&self, now: Instant) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|(sender, since)| {
                !sender.is_closed() && now.saturating_duration_since(*since) < POOL_IDLE_TIMEOUT
            });
        }
    }
}
