//! The breaker for a legacy system that refuses connections for good.
//!
//! Retrying a refused connection is right for a restart, which takes seconds; for an
//! outage it makes every tap wait out its retries before "try again later". Once the
//! legacy system has refused every connection for longer than the retry budget
//! (`CONNECT_RETRY_MS`), the breaker opens: callbacks are answered at once, and one
//! attempt at a time is let through as a probe, whose first connection closes it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;

/// A change of the breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerChange {
    Opened,
    Closed,
}

/// What an attempt may do now.
#[derive(Debug)]
pub(super) enum Pass<'a> {
    /// The breaker is closed: attempts and retries as usual.
    Normal,
    /// The breaker is open and this is the one attempt let through: no retries.
    Probe(ProbeGuard<'a>),
    /// The breaker is open and a probe is under way: answer at once. The legacy system
    /// has refused connections since this long.
    Refused(Duration),
}

/// Held by the probe; lets the next one through when dropped.
#[derive(Debug)]
pub(super) struct ProbeGuard<'a>(&'a AtomicBool);

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[derive(Debug)]
pub struct Breaker {
    budget: Duration,
    /// Since when every connection was refused, and the last refusal; `None` once one
    /// connected.
    refusing: Mutex<Option<(Instant, Instant)>>,
    open: AtomicBool,
    probing: AtomicBool,
    /// Where the state goes as it changes: whether open, and how often it opened.
    report: OnceLock<(Gauge, Counter)>,
}

impl Breaker {
    /// A breaker that opens after `budget` of refusals; a zero budget never opens.
    pub fn new(budget: Duration) -> Self {
        Self {
            budget,
            refusing: Mutex::new(None),
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            report: OnceLock::new(),
        }
    }

    /// Sets the gauge and the counter each change of state is written to.
    pub fn report_to(&self, open: Gauge, openings: Counter) {
        let _ = self.report.set((open, openings));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Instant)>> {
        self.refusing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long a callback may go on retrying a refused connection.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn since(&self) -> Option<Instant> {
        self.lock().map(|(since, _)| since)
    }

    pub(super) fn pass(&self) -> Pass<'_> {
        if !self.is_open() {
            return Pass::Normal;
        }
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Pass::Probe(ProbeGuard(&self.probing));
        }
        let since = self.since().map_or(Duration::ZERO, |s| s.elapsed());
        Pass::Refused(since)
    }

    /// After an attempt whose connection was refused.
    pub(super) fn refused(&self) -> Option<BreakerChange> {
        let mut refusing = self.lock();
        let now = Instant::now();
        // Refusals count as one stretch while each follows the last within the budget:
        // one refused long ago, with no traffic since, starts a new one.
        let first = match *refusing {
            Some((since, last)) if now.duration_since(last) <= self.budget => since,
            _ => now,
        };
        *refusing = Some((first, now));
        if self.budget.is_zero() || now.duration_since(first) < self.budget || self.is_open() {
            return None;
        }
        self.open.store(true, Ordering::Release);
        if let Some((open, openings)) = self.report.get() {
            open.set(1);
            openings.inc();
        }
        tracing::warn!(
            refusing_ms = first.elapsed().as_millis() as u64,
            "the legacy system has refused every connection for longer than \
             CONNECT_RETRY_MS: callbacks are answered at once until a probe connects"
        );
        Some(BreakerChange::Opened)
    }

    /// After a connection was made, before anything is sent on it.
    pub(super) fn connected(&self) -> Option<BreakerChange> {
        if !self.is_open() && self.since().is_none() {
            return None;
        }
        let mut refusing = self.lock();
        let refused_for = refusing.take().map(|(since, _)| since.elapsed());
        if !self.open.swap(false, Ordering::AcqRel) {
            return None;
        }
        if let Some((open, _)) = self.report.get() {
            open.set(0);
        }
        tracing::info!(
            refused_ms = refused_for.map_or(0, |d| d.as_millis() as u64),
            "the legacy system accepts connections again: callbacks are delivered as usual"
        );
        Some(BreakerChange::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_budget_lets_one_probe_through_and_closes_on_a_connection() {
        let b = Breaker::new(Duration::from_secs(3));
        assert_eq!(b.refused(), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.refused(), None);
        assert!(matches!(b.pass(), Pass::Normal));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.refused(), Some(BreakerChange::Opened));
        assert_eq!(b.refused(), None, "opened once");

        let probe = b.pass();
        assert!(matches!(probe, Pass::Probe(_)));
        assert!(matches!(b.pass(), Pass::Refused(d) if d >= Duration::from_secs(3)));
        drop(probe);
        let probe = b.pass();
        assert!(matches!(probe, Pass::Probe(_)));
        assert_eq!(b.connected(), Some(BreakerChange::Closed));
        drop(probe);
        assert!(matches!(b.pass(), Pass::Normal));
        assert_eq!(b.connected(), None);

        // A connection between refusals starts the count again.
        assert_eq!(b.refused(), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.connected(), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.refused(), None);
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_long_ago_starts_no_stretch_and_changes_reach_the_metrics() {
        let b = Breaker::new(Duration::from_secs(3));
        let (open, openings) = (Gauge::default(), Counter::default());
        b.report_to(open.clone(), openings.clone());
        assert_eq!(b.refused(), None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(b.refused(), None, "a refusal an hour ago is not an outage");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.refused(), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.refused(), Some(BreakerChange::Opened));
        assert_eq!((open.get(), openings.get()), (1, 1));
        assert_eq!(b.connected(), Some(BreakerChange::Closed));
        assert_eq!((open.get(), openings.get()), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_budget_never_opens() {
        let b = Breaker::new(Duration::ZERO);
        b.refused();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(b.refused(), None);
        assert!(matches!(b.pass(), Pass::Normal));
    }
}
