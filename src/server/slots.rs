//! Who holds a listener's connections, and whom to close to make room.
//!
//! A full table used to stop the accept loop: newcomers waited in the kernel's backlog
//! behind clients that had shown nothing, and a few hundred of those (silent, or sending a
//! head and never its body) kept Feishu waiting seconds. Now a newcomer at the cap takes
//! the slot of the connection that has shown least: a silent one first, then one that
//! sent bytes but no whole request head, then one with a head but no verified callback,
//! the longest held first. A connection that carried a verified callback is never closed
//! to make room, nor one within its grace ([`Policy`]), so that a newcomer has the time to
//! say what it wants before the next newcomer takes its slot. When none may be closed, a
//! newcomer waits until one may, or until one ends.
//!
//! The graces bound how many newcomers a second a table kept full by clients that
//! reconnect as soon as they are closed admits: each newcomer waits in the listen backlog
//! behind the rest, so they are as short as real clients allow.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a connection keeps its slot, by what it has shown: nothing, bytes, a head.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    graces: [Duration; 3],
    /// Whether a connection that carried a verified callback is kept whatever comes.
    keep_verified: bool,
}

impl Policy {
    /// The callback port. Any real client speaks first (its TLS ClientHello or its
    /// request) in the same flight as the handshake's last ACK, so silence is soon
    /// telling; a TLS handshake across a continent takes a few round trips before the
    /// head; a head is followed by its body at once.
    pub const CALLBACKS: Self = Self {
        graces: [
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_millis(500),
        ],
        keep_verified: true,
    };

    /// The admin port: probes and scrapes come from the node and the cluster, and send
    /// their request as they connect.
    pub const ADMIN: Self = Self {
        graces: [Duration::from_millis(100); 3],
        keep_verified: false,
    };

    fn grace(&self, rank: u8) -> Duration {
        self.graces[usize::from(rank).min(self.graces.len() - 1)]
    }
}

/// How often a newcomer waiting for a slot looks again for one that may be closed.
const LOOK_AGAIN: Duration = Duration::from_millis(100);

/// What one connection has shown so far (see [`Shown`]).
pub use crate::pipeline::Shown as Seen;

struct Entry {
    accepted: Instant,
    seen: Arc<Seen>,
    close: CancellationToken,
}

/// One listener's connections, at most `cap` at once.
pub struct Slots {
    permits: Arc<Semaphore>,
    held: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
    /// Newcomers waiting for a slot: each may have one connection closing for it. Every
    /// worker accepts, so several may wait at once, and one closing for all of them would
    /// leave the rest to look again after [`LOOK_AGAIN`].
    waiting: AtomicUsize,
    policy: Policy,
}

/// Counts a newcomer among those waiting for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slots {
    pub fn new(cap: usize, policy: Policy) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(cap)),
            held: Mutex::default(),
            next: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            policy,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // Every update completes before it could unwind.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection just accepted: a free one, or the one a connection that
    /// has shown least gives up (it is told to close, and its slot comes free as it does);
    /// otherwise waits for one to free. `None` once the table is closed.
    pub async fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut waiting = None;
        let permit = loop {
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => break permit,
                Err(tokio::sync::TryAcquireError::Closed) => return None,
                Err(tokio::sync::TryAcquireError::NoPermits) => {}
            }
            waiting.get_or_insert_with(|| Waiting::enter(&self.waiting));
            self.evict_one();
            match tokio::time::timeout(LOOK_AGAIN, self.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => break permit,
                Ok(Err(_)) => return None,
                Err(_) => {}
            }
        };
        drop(waiting);
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let seen = Arc::new(Seen::default());
        let close = CancellationToken::new();
        self.lock().insert(
            id,
            Entry {
                accepted: Instant::now(),
                seen: seen.clone(),
                close: close.clone(),
            },
        );
        Some(Slot {
            slots: self.clone(),
            id,
            seen,
            close,
            _permit: permit,
        })
    }

    /// Tells the connection that has shown least to close, if any may be and fewer are
    /// closing already than newcomers wait.
    fn evict_one(&self) {
        let held = self.lock();
        let closing = held.values().filter(|e| e.close.is_cancelled()).count();
        if closing >= self.waiting.load(Ordering::Relaxed).max(1) {
            return;
        }
        let now = Instant::now();
        let victim = held
            .values()
            .filter(|e| !e.close.is_cancelled())
            .filter(|e| now.duration_since(e.accepted) >= self.policy.grace(e.seen.rank()))
            .filter(|e| !(self.policy.keep_verified && e.seen.is_verified()))
            .min_by_key(|e| (e.seen.rank(), e.accepted));
        // A callback may verify between the look and the mark: the mark decides, and a
        // newcomer that lost that race looks again a moment later.
        if let Some(victim) = victim.filter(|e| !self.policy.keep_verified || e.seen.evict()) {
            victim.close.cancel();
        }
    }

    /// Connections held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A connection's transport that notes in its [`Seen`] when the first byte arrives.
pub struct HeardIo<I> {
    io: I,
    seen: Option<Arc<Seen>>,
}

impl<I> HeardIo<I> {
    pub fn new(io: I, seen: Arc<Seen>) -> Self {
        Self {
            io,
            seen: Some(seen),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for HeardIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let filled = buf.filled().len();
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > filled
            && let Some(seen) = self.seen.take()
        {
            seen.heard();
        }
        read
    }
}

super::write_through!(HeardIo);

/// A connection's place in the table, given up when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    pub seen: Arc<Seen>,
    close: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// Completes when the table needs this slot for a newcomer.
    pub async fn evicted(&self) {
        self.close.cancelled().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Admits a newcomer in a task of its own, as the accept loop would wait for it.
    fn newcomer(slots: &Arc<Slots>) -> tokio::task::JoinHandle<Option<Slot>> {
        let slots = slots.clone();
        tokio::spawn(async move { slots.admit().await })
    }

    async fn closes(slot: &Slot) {
        tokio::time::timeout(Duration::from_secs(3), slot.evicted())
            .await
            .expect("told to close");
    }

    #[tokio::test(start_paused = true)]
    async fn a_newcomer_at_the_cap_takes_the_slot_of_whoever_showed_least() {
        let slots = Slots::new(3, Policy::CALLBACKS);
        let silent = slots.admit().await.unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        let headed = slots.admit().await.unwrap();
        headed.seen.heard();
        headed.seen.begun();
        let feishu = slots.admit().await.unwrap();
        feishu.seen.begun();
        assert!(feishu.seen.verify());

        // Nobody is older than the grace yet: the newcomer waits.
        let first = newcomer(&slots);
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(!first.is_finished() && !silent.close.is_cancelled());
        // Then the silent one goes first, though it is not the newest.
        closes(&silent).await;
        assert!(!headed.close.is_cancelled());
        drop(silent);
        let first = first.await.unwrap().unwrap();
        assert_eq!(slots.len(), 3);
        first.seen.heard();

        // Then the one with a head but no verified callback: the newcomer has spoken and
        // is within its grace, and the verified one is never closed.
        let second = newcomer(&slots);
        closes(&headed).await;
        assert!(!first.close.is_cancelled() && !feishu.close.is_cancelled());
        drop(headed);
        let second = second.await.unwrap().unwrap();
        for slot in [&first, &second] {
            slot.seen.begun();
            assert!(slot.seen.verify());
        }

        // All verified: a newcomer waits for one to end.
        let third = newcomer(&slots);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!third.is_finished());
        drop(feishu);
        assert!(third.await.unwrap().is_some());
        assert!(!first.close.is_cancelled() && !second.close.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn newcomers_waiting_at_once_each_have_a_connection_closed_for_them() {
        let slots = Slots::new(2, Policy::CALLBACKS);
        let held = [slots.admit().await.unwrap(), slots.admit().await.unwrap()];
        tokio::time::advance(Duration::from_millis(200)).await;
        let newcomers = [newcomer(&slots), newcomer(&slots)];
        // Both are told at once, not the second a `LOOK_AGAIN` after the first.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(held.iter().all(|slot| slot.close.is_cancelled()));
        drop(held);
        for newcomer in newcomers {
            assert!(newcomer.await.unwrap().is_some());
        }
        assert_eq!(slots.waiting.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_verified_connections_the_longest_held_busy_one_makes_room() {
        let slots = Slots::new(2, Policy::ADMIN);
        let old = slots.admit().await.unwrap();
        old.seen.begun();
        tokio::time::advance(Duration::from_millis(10)).await;
        let young = slots.admit().await.unwrap();
        young.seen.begun();
        tokio::time::advance(Duration::from_millis(120)).await;
        let probe = newcomer(&slots);
        closes(&old).await;
        drop(old);
        assert!(probe.await.unwrap().is_some());
        assert!(!young.close.is_cancelled());
    }
}
