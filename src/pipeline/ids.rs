//! Request ids and the ids of new traces and spans.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderValue};

use crate::observe::trace::Trace;
use crate::upstream::REQUEST_ID;

/// Request ids: the caller's `X-Request-Id` when it is a conservative token,
/// otherwise a new random UUID; and the ids of a new trace or span.
#[derive(Debug, Default)]
pub(super) struct RequestIds {
    /// SipHash keyed once from the operating system's randomness, over a counter:
    /// ids no caller can predict, without asking the kernel for each one.
    keys: RandomState,
    next: AtomicU64,
}

/// A request's own random words, for the ids of a trace adopted later.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seed(u64);

impl RequestIds {
    /// The request's id, and a trace of its own: a caller's trace context is only adopted
    /// ([`Self::adopt`]) once its callback verified, so a stranger's trace id never reaches
    /// a span or the log line.
    pub(super) fn for_request(&self, headers: &HeaderMap) -> (HeaderValue, Trace, Seed) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // Words 0 and 1 are the request id's.
        let mut word = 1u8;
        let trace = Trace::from_headers(&HeaderMap::new(), || {
            word += 1;
            self.keys.hash_one((n, word))
        });
        let request_id = headers
            .get(REQUEST_ID)
            .filter(|v| is_request_id(v.as_bytes()))
            .cloned()
            .unwrap_or_else(|| self.fresh(n));
        (request_id, trace, Seed(n))
    }

    /// The trace `caller` (a `traceparent`, and any `tracestate`) continues, or `None`
    /// without a valid `traceparent`.
    pub(super) fn adopt(&self, seed: Seed, caller: &HeaderMap) -> Option<Trace> {
        // Words after those `for_request` took.
        let mut word = 7u8;
        let trace = Trace::from_headers(caller, || {
            word += 1;
            self.keys.hash_one((seed.0, word))
        });
        trace.parent.is_some().then_some(trace)
    }

    fn fresh(&self, n: u64) -> HeaderValue {
        let high = u128::from(self.keys.hash_one((n, 0u8)));
        let low = u128::from(self.keys.hash_one((n, 1u8)));
        let uuid = uuid::Builder::from_random_bytes(((high << 64) | low).to_be_bytes()).into_uuid();
        const LEN: usize = uuid::fmt::Hyphenated::LENGTH;
        /// Ids cut from each buffer: an allocation (and its count) every this many
        /// requests, not one each. A buffer is freed once the last id cut from it is.
        const PER_BUFFER: usize = 64;
        std::thread_local! {
            static BUFFER: std::cell::RefCell<bytes::BytesMut> =
                std::cell::RefCell::new(bytes::BytesMut::new());
        }
        let mut text = [0u8; LEN];
        uuid.hyphenated().encode_lower(&mut text);
        let id = BUFFER.with_borrow_mut(|buffer| {
            if buffer.capacity() - buffer.len() < LEN {
                *buffer = bytes::BytesMut::with_capacity(LEN * PER_BUFFER);
            }
            buffer.extend_from_slice(&text);
            buffer.split().freeze()
        });
        // A hyphenated UUID is always a valid header value.
        HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

/// Longest `X-Request-Id` taken from a caller.
const MAX_REQUEST_ID: usize = 128;

/// Whether a caller's `X-Request-Id` is kept: it is echoed, forwarded and logged, also for
/// a request refused as not from Feishu, so only letters, digits and `-_.:/+=@` (UUIDs,
/// hex, base64 and the ids proxies make), nothing a log viewer, a shell or a page would
/// read as markup or quoting.
fn is_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:/+=@".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callers_request_id_is_kept_only_when_conservative() {
        for kept in [
            "0f8e3c1a-7b2d-4e5f-9a6b-1c2d3e4f5a6b",
            "req_42",
            "Root=1-5759e988-bd862e3fe1be46a994272793",
            "a/b+c==",
        ] {
            assert!(is_request_id(kept.as_bytes()), "{kept}");
        }
        for replaced in [
            "",
            "\"quoted\"",
            "<script>",
            "a b",
            "a;b",
            "x'y",
            &"x".repeat(129),
        ] {
            assert!(!is_request_id(replaced.as_bytes()), "{replaced}");
        }
    }
}
