//! The numbers the settings must respect, their defaults where one follows another, and
//! the advice about settings that work but mislead.

use std::ops::RangeInclusive;

use super::Config;
use crate::vars::*;

/// The longest upstream timeout that still leaves the request read and the
/// answer inside Feishu's 10 s.
pub const MAX_UPSTREAM_TIMEOUT_MS: u64 = 9_000;
/// Feishu gives up after 10 s; answering by 9.5 s leaves room for the
/// network. Also the most `ANSWER_WITHIN_MS` may be.
pub const MAX_ANSWER_WITHIN_MS: u64 = 9_500;
/// Below this the gateway could not read, verify and forward a callback.
pub const MIN_ANSWER_WITHIN_MS: u64 = 500;
/// What the default upstream timeout leaves, out of `ANSWER_WITHIN_MS`, for
/// reading the request, a retry's backoff and writing the answer.
const ANSWER_MARGIN_MS: u64 = 1_500;

/// The upstream timeout when `UPSTREAM_TIMEOUT_MS` is unset: 8 s under the
/// default 9.5 s bound, 3 s under Lark's 4.5 s, never under half the bound.
pub fn default_upstream_timeout_ms(answer_within_ms: u64) -> u64 {
    answer_within_ms
        .saturating_sub(ANSWER_MARGIN_MS)
        .max(answer_within_ms / 2)
        .min(MAX_UPSTREAM_TIMEOUT_MS)
}

/// The whole numbers each numeric variable accepts.
pub const ANSWER_MS: RangeInclusive<u64> = MIN_ANSWER_WITHIN_MS..=MAX_ANSWER_WITHIN_MS;
pub const UPSTREAM_MS: RangeInclusive<u64> = 1..=MAX_UPSTREAM_TIMEOUT_MS;
pub const BODY_BYTES: RangeInclusive<u64> = 1_024..=16 * 1024 * 1024;
/// Callbacks per second, for either limit: `0` turns it off.
pub const RATES: RangeInclusive<u64> = 0..=1_000_000;
pub const BURSTS: RangeInclusive<u64> = 1..=10_000_000;
/// How long a delivered decision may be remembered: a week at most.
pub const DEDUP_SECS: RangeInclusive<u64> = 0..=7 * 24 * 3600;
/// Ten minutes: a legacy system slower than that is down, not late.
pub const LATE_MS: RangeInclusive<u64> = 0..=600_000;
pub const GRACE_MS: RangeInclusive<u64> = 0..=3_600_000;
pub const CONNECTIONS: RangeInclusive<u64> = 1..=1_000_000;
/// More worker threads than 1,024 is a typo, not a machine.
pub const WORKER_THREADS: RangeInclusive<u64> = 1..=1_024;

/// Settings that work but are probably not what the operator meant.
pub(super) fn advice(config: &Config) -> Vec<String> {
    let mut advice = Vec::new();
    let (callback, upstream) = (&config.callback, &config.upstream);
    if callback.allow_plaintext && callback.keys.is_empty() {
        advice.push(format!(
            "{ALLOW_PLAINTEXT} has no effect without {KEY}: with no key every callback is plaintext"
        ));
    }
    if upstream.ok_rule.is_none() {
        advice.push(format!(
            "{UPSTREAM_OK} is not set: any 2xx answer counts as acceptance, whatever its body \
             (a login page included); set it to the legacy system's success field, e.g. /code==0"
        ));
    }
    if upstream.timeout > config.server.shutdown_grace {
        advice.push(format!(
            "{UPSTREAM_TIMEOUT_MS} ({} ms) is longer than {SHUTDOWN_GRACE_MS} ({} ms): \
             a delivery still waiting when the drain ends is cut off with its outcome unknown",
            upstream.timeout.as_millis(),
            config.server.shutdown_grace.as_millis()
        ));
    }
    if config.server.tls.is_none() && callback.keys.is_empty() {
        advice.push(format!(
            "neither TLS ({TLS_CERT} and {TLS_KEY}) nor callback encryption ({KEY}) is set: \
             the token and the decision cross the network in the clear unless TLS ends in \
             front of the gateway"
        ));
    }
    if upstream.url.scheme_str() == Some("http") && !upstream.url.host().is_some_and(is_loopback) {
        advice.push(format!(
            "{UPSTREAM_URL} is http:// to a host other than this pod's loopback: \
             decisions and {UPSTREAM_HEADERS} travel unencrypted; use https:// across machines"
        ));
    }
    if let Some(redis) = &config.dedup.redis
        && redis.url.has_password()
        && !redis.url.is_tls()
        && !is_loopback(redis.url.host())
    {
        advice.push(format!(
            "{REDIS_URL} is redis:// with a password to a host other than this pod's \
             loopback: the password and the decisions' keys travel unencrypted; use rediss:// \
             across machines"
        ));
    }
    advice
}

pub(super) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
