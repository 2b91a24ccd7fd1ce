//! Duplicate suppression: the same approval decision is delivered once.
//!
//! Keyed by the decision's idempotency key, derived from the decrypted fields
//! (the ciphertext differs on every send). A copy that arrives while the first
//! is in flight, late exchange included, waits for the first's outcome; one that
//! arrives after a successful delivery, within the TTL, is answered from memory, as
//! is one whose first was sent and never answered (uncertain), until its late window
//! ends. Refusals and requests never sent are not remembered, so a retry goes through.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::HeaderValue;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::callback::Decision;
use crate::outcome::{Fate, Outcome};

/// The most decisions remembered at once; the oldest are forgotten first.
pub const MAX_REMEMBERED: usize = 100_000;

enum Entry {
    InFlight(watch::Receiver<Option<Outcome>>, HeaderValue),
    Delivered,
    /// Sent, never answered: not delivered again before this.
    Uncertain(Instant),
}

#[derive(Default)]
struct Table {
    /// Keyed by the 32-byte digest, not its hex form: a full table holds
    /// [`MAX_REMEMBERED`] of them.
    entries: HashMap<Decision, Entry>,
    /// Delivered keys in the order they expire (the TTL is the same for all).
    expiry: VecDeque<(Instant, Decision)>,
    /// Uncertain keys, in about the order they expire (each late window counts from its
    /// decision's arrival, and exchanges end out of order).
    uncertain: VecDeque<(Instant, Decision)>,
}

/// The decisions seen recently. Cloning shares the table.
#[derive(Clone)]
pub struct Dedup {
    ttl: Duration,
    cap: usize,
    table: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("ttl", &self.ttl)
            .field("len", &self.len())
            .finish()
    }
}

/// What to do with a callback.
pub enum Admission {
    /// First of its kind: deliver, then report through the ticket.
    Deliver(Ticket),
    /// Already delivered within the TTL.
    AlreadyDelivered,
    /// Sent before and never answered, within its late window.
    Uncertain,
    /// A copy is being delivered now, by the request with this id: wait for its outcome.
    Wait(watch::Receiver<Option<Outcome>>, HeaderValue),
}

/// Proof that this callback is the one delivering its decision. Dropping it
/// without [`Ticket::finish`] (a cancelled request) counts as a failure.
pub struct Ticket {
    dedup: Dedup,
    key: Option<Decision>,
    tx: watch::Sender<Option<Outcome>>,
}

impl Dedup {
    pub fn new(ttl: Duration) -> Self {
        Self::with_capacity(ttl, MAX_REMEMBERED)
    }

    fn with_capacity(ttl: Duration, cap: usize) -> Self {
        Self {
            ttl,
            cap: cap.max(1),
            table: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a consistent table: every
        // mutation below completes before it could unwind.
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// `request_id` is the asking request's, named to the copies that wait for it.
    pub fn admit(&self, key: &Decision, request_id: &HeaderValue) -> Admission {
        let now = Instant::now();
        let mut table = self.lock();
        expire(&mut table, now);
        match table.entries.get(key) {
            Some(Entry::Delivered) => return Admission::AlreadyDelivered,
            Some(Entry::InFlight(rx, first)) => {
                return Admission::Wait(rx.clone(), first.clone());
            }
            Some(Entry::Uncertain(until)) if *until > now => return Admission::Uncertain,
            Some(Entry::Uncertain(_)) | None => {}
        }
        let (tx, rx) = watch::channel(None);
        table
            .entries
            .insert(*key, Entry::InFlight(rx, request_id.clone()));
        Admission::Deliver(Ticket {
            dedup: self.clone(),
            key: Some(*key),
            tx,
        })
    }

    fn settle(&self, key: Decision, fate: Fate, uncertain_until: Instant) {
        let now = Instant::now();
        let mut table = self.lock();
        match fate {
            Fate::Delivered => {
                while table.expiry.len() >= self.cap {
                    if let Some((_, old)) = table.expiry.pop_front() {
                        table.entries.remove(&old);
                    }
                }
                table.expiry.push_back((now + self.ttl, key));
                table.entries.insert(key, Entry::Delivered);
            }
            Fate::Uncertain if uncertain_until > now => {
                while table.uncertain.len() >= self.cap {
                    if let Some((_, old)) = table.uncertain.pop_front()
                        && matches!(table.entries.get(&old), Some(Entry::Uncertain(_)))
                    {
                        table.entries.remove(&old);
                    }
                }
                table.uncertain.push_back((uncertain_until, key));
                table.entries.insert(key, Entry::Uncertain(uncertain_until));
            }
            Fate::Uncertain | Fate::Free => {
                table.entries.remove(&key);
            }
        }
    }
}

fn expire(table: &mut Table, now: Instant) {
    while let Some((at, _)) = table.expiry.front() {
        if *at > now {
            break;
        }
        if let Some((_, key)) = table.expiry.pop_front()
            && matches!(table.entries.get(&key), Some(Entry::Delivered))
        {
            table.entries.remove(&key);
        }
    }
    while let Some((at, _)) = table.uncertain.front() {
        if *at > now {
            break;
        }
        if let Some((_, key)) = table.uncertain.pop_front()
            && matches!(table.entries.get(&key), Some(Entry::Uncertain(until)) if *until <= now)
        {
            table.entries.remove(&key);
        }
    }
}

impl Ticket {
    /// Records what the exchange left of the decision and wakes every copy waiting on
    /// it: they are told `outcome`, or [`Outcome::Uncertain`] when that is its fate,
    /// which holds until `uncertain_until`.
    pub fn finish(mut self, outcome: &Outcome, fate: Fate, uncertain_until: Instant) {
        if let Some(key) = self.key.take() {
            self.dedup.settle(key, fate, uncertain_until);
        }
        let told = match fate {
            Fate::Uncertain => Outcome::Uncertain,
            Fate::Delivered | Fate::Free => outcome.clone(),
        };
        self.tx.send_replace(Some(told));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.dedup.settle(key, Fate::Free, Instant::now());
            // Waiters see the sender close and fall back to their own deadline.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: HeaderValue = HeaderValue::from_static("req-1");

    const K: Decision = [7; 32];

    fn id(n: u8) -> Decision {
        [n; 32]
    }

    #[tokio::test(start_paused = true)]
    async fn remembers_successes_for_the_ttl_only() {
        let d = Dedup::new(Duration::from_secs(60));
        let Admission::Deliver(t) = d.admit(&K, &ID) else {
            panic!("first is delivered")
        };
        assert!(matches!(d.admit(&K, &ID), Admission::Wait(_, _)));
        t.finish(&Outcome::Delivered, Fate::Delivered, Instant::now());
        assert!(matches!(d.admit(&K, &ID), Admission::AlreadyDelivered));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(d.admit(&K, &ID), Admission::Deliver(_)));
    }

    /// The ticket of the first copy of `K`, which is the one to deliver.
    fn deliver(d: &Dedup) -> Ticket {
        let Admission::Deliver(t) = d.admit(&K, &ID) else {
            panic!("the first copy is delivered")
        };
        t
    }

    #[tokio::test]
    async fn failures_are_forgotten_and_waiters_told() {
        let d = Dedup::new(Duration::from_secs(60));
        let t = deliver(&d);
        let Admission::Wait(mut rx, _) = d.admit(&K, &ID) else {
            panic!()
        };
        let refused = Outcome::UpstreamUnreachable(crate::outcome::UpstreamError::Connect);
        t.finish(&refused, Fate::Free, Instant::now());
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), Some(refused));
        assert!(matches!(d.admit(&K, &ID), Admission::Deliver(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_uncertain_decision_is_held_until_its_window_ends() {
        let d = Dedup::new(Duration::from_secs(600));
        let t = deliver(&d);
        let Admission::Wait(mut rx, _) = d.admit(&K, &ID) else {
            panic!("a copy joins the exchange")
        };
        let until = Instant::now() + Duration::from_secs(60);
        t.finish(&Outcome::UpstreamTimedOut, Fate::Uncertain, until);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow(), Some(Outcome::Uncertain));
        assert!(matches!(d.admit(&K, &ID), Admission::Uncertain));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(matches!(d.admit(&K, &ID), Admission::Uncertain));
        tokio::time::advance(Duration::from_secs(1)).await;
        let Admission::Deliver(_again) = d.admit(&K, &ID) else {
            panic!("the window is over: delivered again")
        };
        assert_eq!(d.len(), 1, "the expired mark made way for the new exchange");
    }

    #[tokio::test]
    async fn a_dropped_ticket_frees_the_key() {
        let d = Dedup::new(Duration::from_secs(60));
        let t = deliver(&d);
        drop(t);
        assert_eq!(d.len(), 0);
    }

    #[tokio::test]
    async fn memory_is_capped() {
        let d = Dedup::with_capacity(Duration::from_secs(600), 3);
        for i in 0..10 {
            let Admission::Deliver(t) = d.admit(&id(i), &ID) else {
                panic!()
            };
            t.finish(&Outcome::Delivered, Fate::Delivered, Instant::now());
        }
        assert_eq!(d.len(), 3);
        assert!(matches!(d.admit(&id(9), &ID), Admission::AlreadyDelivered));
        assert!(matches!(d.admit(&id(0), &ID), Admission::Deliver(_)));
    }
}
