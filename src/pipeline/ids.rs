//! Request ids and the ids of new traces and spans.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderValue};

use crate::observe::trace::Trace;
use crate::upstream::REQUEST_ID;

/// Request ids: the caller's `X-Request-Id` when it is a sane token,
/// otherwise a new random UUID; and the ids of a new trace or span.
#[derive(Debug, Default)]
pub(super) struct RequestIds {
    /// SipHash keyed once from the operating system's randomness, over a counter:
    /// ids no caller can predict, without asking the kernel for each one.
    keys: RandomState,
    next: AtomicU64,
}

impl RequestIds {
    pub(super) fn for_request(&self, headers: &HeaderMap) -> (HeaderValue, Trace) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Words 0 and 1 are the request id's.
        let mut word = 1u8;
        let trace = Trace::from_headers(headers, || {
            word += 1;
            self.keys.hash_one((n, word))
        });
        let request_id = headers
            .get(REQUEST_ID)
            .filter(|v| {
                let b = v.as_bytes();
                !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
            })
            .cloned()
            .unwrap_or_else(|| self.fresh(n));
        (request_id, trace)
    }

    fn fresh(&self, n: u64) -> HeaderValue {
        let high = u128::from(self.keys.hash_one((n, 0u8)));
        let low = u128::from(self.keys.hash_one((n, 1u8)));
        let uuid = uuid::Builder::from_random_bytes(((high << 64) | low).to_be_bytes()).into_uuid();
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        // A hyphenated UUID is always a valid header value.
        HeaderValue::from_bytes(uuid.hyphenated().encode_lower(&mut text).as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}
