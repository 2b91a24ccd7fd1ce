//! What the connection a request came on has shown: written by the connection's task and
//! the pipeline, read by the listener's table to choose whom to close to make room.

use std::sync::atomic::{AtomicU8, Ordering};

const HEARD: u8 = 1;
const BEGUN: u8 = 2;
const VERIFIED: u8 = 4;
const EVICTED: u8 = 8;

/// One connection's marks. Verified and given up exclude each other, decided by whichever
/// comes first, so a connection is never closed to make room once it carried a callback
/// that verified, and a callback is never delivered on a connection already given up.
#[derive(Debug, Default)]
pub struct Shown(AtomicU8);

impl Shown {
    /// Any byte arrived (a TLS ClientHello counts).
    pub fn heard(&self) {
        self.0.fetch_or(HEARD, Ordering::Relaxed);
    }

    /// A whole request head arrived.
    pub fn begun(&self) {
        if self.0.load(Ordering::Relaxed) & BEGUN == 0 {
            self.0.fetch_or(BEGUN, Ordering::Relaxed);
        }
    }

    /// A callback's token matched: `false` when the connection was given up first.
    pub fn verify(&self) -> bool {
        self.mark(VERIFIED, EVICTED)
    }

    /// Gives the connection up to make room: `false` when it carried a verified callback.
    pub fn evict(&self) -> bool {
        self.mark(EVICTED, VERIFIED)
    }

    fn mark(&self, set: u8, unless: u8) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & unless == 0).then_some(v | set)
            })
            .is_ok()
    }

    pub fn is_verified(&self) -> bool {
        self.0.load(Ordering::Acquire) & VERIFIED != 0
    }

    /// Lower goes first when room is made: silence, bytes, a head, a verified callback.
    pub fn rank(&self) -> u8 {
        let v = self.0.load(Ordering::Relaxed);
        [HEARD, BEGUN, VERIFIED]
            .into_iter()
            .map(|bit| u8::from(v & bit != 0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_and_given_up_exclude_each_other() {
        let s = Shown::default();
        assert_eq!(s.rank(), 0);
        s.heard();
        s.begun();
        assert_eq!(s.rank(), 2);
        assert!(s.verify());
        assert!(!s.evict());
        assert_eq!(s.rank(), 3);
        let t = Shown::default();
        assert!(t.evict());
        assert!(!t.verify());
        assert!(!t.is_verified());
    }
}
