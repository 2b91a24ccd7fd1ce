//! Rate limits: one bucket for all callbacks, and optionally one per approver.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

/// Both limits; a missing one never refuses.
#[derive(Debug)]
pub struct Limits {
    global: Option<DefaultDirectRateLimiter>,
    per_user: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

fn quota(limit: RateLimit) -> Option<Quota> {
    let rate = NonZeroU32::new(limit.per_second)?;
    let burst = NonZeroU32::new(limit.burst)?;
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl Limits {
    pub fn new(global: Option<RateLimit>, per_user: Option<RateLimit>) -> Self {
        Self {
            global: global.and_then(quota).map(governor::RateLimiter::direct),
            per_user: per_user.and_then(quota).map(governor::RateLimiter::keyed),
            clock: DefaultClock::default(),
        }
    }

    /// `Err(retry_after_secs)` when the shared bucket is empty.
    pub fn check_global(&self) -> Result<(), u64> {
        match &self.global {
            Some(l) => l
                .check()
                .map_err(|n| self.retry_after(n.wait_time_from(self.clock.now()))),
            None => Ok(()),
        }
    }

    /// `Err(retry_after_secs)` when this approver's bucket is empty.
    pub fn check_user(&self, user_id: &str) -> Result<(), u64> {
        let Some(l) = &self.per_user else {
            return Ok(());
        };
        l.check_key(&user_id.to_owned())
            .map_err(|n| self.retry_after(n.wait_time_from(self.clock.now())))
    }

    /// Forgets approvers whose bucket is full again, so memory follows the number
    /// of recently active approvers, not every approver ever seen.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.per_user {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    fn retry_after(&self, wait: Duration) -> u64 {
        // Retry-After is whole seconds; rounding down would invite an early retry.
        wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
    }
}

/// A token bucket: sustained rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}
