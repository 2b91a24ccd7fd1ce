//! What deliveries are under way, for the drain to name what it abandons; and the
//! fencing tokens of deliveries made without the shared memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::callback::{Decision, idempotency_key};

/// What a delivery under way is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Asking the shared memory, or exchanging with the legacy system.
    Exchange,
    /// The exchange is over; its outcome is still to be written to the shared memory.
    Record,
}

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Self::Exchange => "exchange",
            Self::Record => "record",
        }
    }
}

/// The deliveries under way.
#[derive(Debug, Default)]
pub struct Running {
    next: AtomicU64,
    entries: Mutex<HashMap<u64, (Decision, Stage)>>,
}

/// One delivery's place in [`Running`], given up when dropped.
#[derive(Debug)]
pub struct Entry {
    running: Arc<Running>,
    id: u64,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Decision, Stage)>> {
        // Every mutation completes before it could unwind.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn enter(self: &Arc<Self>, decision: Decision) -> Entry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, (decision, Stage::Exchange));
        Entry {
            running: Arc::clone(self),
            id,
        }
    }

    /// The idempotency key and stage of every delivery still under way.
    pub fn under_way(&self) -> Vec<(String, Stage)> {
        let mut all: Vec<_> = self
            .lock()
            .values()
            .map(|(decision, stage)| {
                let key = String::from_utf8_lossy(&idempotency_key(decision)).into_owned();
                (key, *stage)
            })
            .collect();
        all.sort();
        all
    }
}

impl Entry {
    pub fn reached(&self, stage: Stage) {
        if let Some(entry) = self.running.lock().get_mut(&self.id) {
            entry.1 = stage;
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.running.lock().remove(&self.id);
    }
}

/// Fencing tokens for deliveries made on this replica's memory alone: each larger than
/// the last, and, starting from the clock in milliseconds, larger than those of a
/// process before this one.
#[derive(Debug, Default)]
pub struct Fences {
    last: AtomicU64,
}

impl Fences {
    pub fn next(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_only_grow_and_start_from_the_clock() {
        let fences = Fences::default();
        let first = fences.next();
        assert!(first > 1_700_000_000_000, "{first}");
        let mut last = first;
        for _ in 0..10_000 {
            let next = fences.next();
            assert!(next > last);
            last = next;
        }
    }

    #[test]
    fn the_registry_names_what_is_under_way_until_it_ends() {
        let running = Arc::new(Running::default());
        let a = running.enter([1; 32]);
        let b = running.enter([2; 32]);
        b.reached(Stage::Record);
        let under_way = running.under_way();
        assert_eq!(under_way.len(), 2);
        assert!(under_way.contains(&("01".repeat(32), Stage::Exchange)));
        assert!(under_way.contains(&("02".repeat(32), Stage::Record)));
        drop(a);
        assert_eq!(running.under_way(), vec![("02".repeat(32), Stage::Record)]);
    }
}
