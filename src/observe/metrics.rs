//! Prometheus metrics, all named `feishu_gate_*`. Label values come from
//! fixed sets (outcome labels, error kinds), never from paths or ids.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

type Label = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Where a duplicate was recognised: this replica's memory or the shared one.
pub const DUPLICATE_STORES: &[&str] = &["local", "shared"];
/// How a duplicate was recognised.
pub const DUPLICATE_HOWS: &[&str] = &["in_flight", "remembered"];
/// Kinds of failed delivery.
pub const UPSTREAM_ERROR_KINDS: &[&str] = &["connect", "dropped", "timeout", "status", "not_ok"];
/// Operations on the shared duplicate memory.
pub const REDIS_OPS: &[&str] = &["claim", "wait", "remember", "release"];
/// How an operation on the shared memory ended.
pub const REDIS_RESULTS: &[&str] = &["ok", "error", "timeout"];

/// Latency buckets for Redis operations, in seconds: a loopback or same-zone
/// round trip is well under a millisecond, and [`crate::dedup::shared::OP_BUDGET`]
/// ends every operation by 0.3 s.
pub const REDIS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5,
];

/// Latency buckets in seconds. 3, 5 and 10 mark Feishu's deadlines (an older
/// Lark page says 5 s, and cards feel broken well before 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 9.0, 10.0, 15.0,
];

/// Counters of one labelled family already looked up, by label value, so
/// counting a callback takes neither the family's lock nor a hash of its
/// labels. Label values come from fixed sets smaller than the slots; a value
/// past them is counted through the family as before.
#[derive(Debug, Default)]
struct Resolved {
    slots: [OnceLock<(&'static str, Counter)>; 24],
}

impl Resolved {
    fn inc(&self, family: &Family<Label, Counter>, label: Label) {
        self.inc_by(family, label, 1);
    }

    fn inc_by(&self, family: &Family<Label, Counter>, label: Label, n: u64) {
        let value = label[0].1;
        for slot in &self.slots {
            let (v, counter) = slot.get_or_init(|| (value, family.get_or_create(&label).clone()));
            if *v == value {
                counter.inc_by(n);
                return;
            }
        }
        family.get_or_create(&label).inc_by(n);
    }
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub callbacks: Family<Label, Counter>,
    pub callback_duration: Histogram,
    pub upstream_duration: Histogram,
    pub in_flight: Gauge,
    pub duplicates: Family<Labels2, Counter>,
    pub rate_limited: Family<Label, Counter>,
    pub upstream_errors: Family<Label, Counter>,
    pub upstream_retries: Family<Label, Counter>,
    pub retried_deliveries: Family<Label, Counter>,
    pub tls_expiry: Gauge<f64, AtomicU64>,
    pub ready: Gauge,
    pub redis_operations: Family<Labels2, Counter>,
    pub redis_duration: Histogram,
    pub redis_fallback: Gauge,
    resolved: [Resolved; 6],
}

/// Names as exported, for documentation and the dashboard check.
pub const NAMES: &[&str] = &[
    "feishu_gate_callbacks_total",
    "feishu_gate_callback_duration_seconds",
    "feishu_gate_upstream_duration_seconds",
    "feishu_gate_callbacks_in_flight",
    "feishu_gate_duplicates_suppressed_total",
    "feishu_gate_rate_limited_total",
    "feishu_gate_upstream_errors_total",
    "feishu_gate_upstream_retries_total",
    "feishu_gate_retried_deliveries_total",
    "feishu_gate_tls_certificate_expiry_timestamp_seconds",
    "feishu_gate_ready",
    "feishu_gate_build_info",
    "feishu_gate_redis_operations_total",
    "feishu_gate_redis_operation_duration_seconds",
    "feishu_gate_redis_fallback",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("feishu_gate");
        let callbacks = Family::<Label, Counter>::default();
        registry.register(
            "callbacks",
            "Callbacks answered, by outcome",
            callbacks.clone(),
        );
        let callback_duration = Histogram::new(LATENCY_BUCKETS.iter().copied());
        registry.register_with_unit(
            "callback_duration",
            "Time from request to answer",
            Unit::Seconds,
            callback_duration.clone(),
        );
        let upstream_duration = Histogram::new(LATENCY_BUCKETS.iter().copied());
        registry.register_with_unit(
            "upstream_duration",
            "Time of the exchange with the legacy system",
            Unit::Seconds,
            upstream_duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "callbacks_in_flight",
            "Callbacks being processed",
            in_flight.clone(),
        );
        let duplicates = Family::<Labels2, Counter>::default();
        for how in DUPLICATE_HOWS {
            for store in DUPLICATE_STORES {
                drop(duplicates.get_or_create(&[("how", how), ("store", store)]));
            }
        }
        registry.register(
            "duplicates_suppressed",
            "Repeated decisions answered without a second delivery, by how (in_flight, remembered) and where they were found (local, shared)",
            duplicates.clone(),
        );
        let rate_limited = Family::<Label, Counter>::default();
        // Both scopes are exported from the start at 0, so an alert on their rate
        // has a series to read before the first refusal.
        for scope in ["global", "user"] {
            drop(rate_limited.get_or_create(&[("scope", scope)]));
        }
        registry.register(
            "rate_limited",
            "Callbacks refused by a rate limit, by scope (global, user)",
            rate_limited.clone(),
        );
        let upstream_errors = Family::<Label, Counter>::default();
        // Exported at 0 from the start: the alerts take `increase()` of the
        // connect, dropped and timeout kinds, which misses a series' first count.
        for kind in UPSTREAM_ERROR_KINDS {
            drop(upstream_errors.get_or_create(&[("kind", kind)]));
        }
        registry.register(
            "upstream_errors",
            "Failed deliveries, by kind (connect, dropped, timeout, status, not_ok)",
            upstream_errors.clone(),
        );
        let upstream_retries = Family::<Label, Counter>::default();
        // Exported at 0 from the start, like the rate limits, for the alerts.
        for reason in ["unsent", "unavailable"] {
            drop(upstream_retries.get_or_create(&[("reason", reason)]));
        }
        registry.register(
            "upstream_retries",
            "Requests to the legacy system tried again, by why it was safe (unsent: it never \
             reached the legacy system; unavailable: a 503 with Retry-After)",
            upstream_retries.clone(),
        );
        let retried_deliveries = Family::<Label, Counter>::default();
        registry.register(
            "retried_deliveries",
            "Callbacks whose delivery took more than one attempt, by the outcome it came to",
            retried_deliveries.clone(),
        );
        let tls_expiry = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "tls_certificate_expiry_timestamp",
            "Unix time when the serving certificate expires (0 without TLS)",
            Unit::Seconds,
            tls_expiry.clone(),
        );
        let ready = Gauge::default();
        registry.register("ready", "1 while ready to take callbacks", ready.clone());
        let build_info = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("build_info", "Build information", build_info);
        let redis_operations = Family::<Labels2, Counter>::default();
        // Exported at 0 from the start, so an alert on the error rate has a
        // series to read before the first failure.
        for op in REDIS_OPS {
            for result in REDIS_RESULTS {
                drop(redis_operations.get_or_create(&[("op", op), ("result", result)]));
            }
        }
        registry.register(
            "redis_operations",
            "Operations on the shared duplicate memory, by op (claim, wait, remember, release) and result (ok, error, timeout)",
            redis_operations.clone(),
        );
        let redis_duration = Histogram::new(REDIS_BUCKETS.iter().copied());
        registry.register_with_unit(
            "redis_operation_duration",
            "Time of one operation on the shared duplicate memory",
            Unit::Seconds,
            redis_duration.clone(),
        );
        let redis_fallback = Gauge::default();
        registry.register(
            "redis_fallback",
            "1 while the shared duplicate memory is unreachable and REDIS_FAILURE applies",
            redis_fallback.clone(),
        );
        Self {
            registry,
            callbacks,
            callback_duration,
            upstream_duration,
            in_flight,
            duplicates,
            rate_limited,
            upstream_errors,
            upstream_retries,
            retried_deliveries,
            tls_expiry,
            ready,
            redis_operations,
            redis_duration,
            redis_fallback,
            resolved: Default::default(),
        }
    }

    /// Counts a callback by outcome.
    pub fn count_callback(&self, outcome: &'static str) {
        self.resolved[0].inc(&self.callbacks, [("outcome", outcome)]);
    }

    /// Counts a suppressed duplicate by how and where it was recognised.
    /// Duplicates are rare enough to go through the family's lock.
    pub fn count_duplicate(&self, how: &'static str, store: &'static str) {
        self.duplicates
            .get_or_create(&[("how", how), ("store", store)])
            .inc();
    }

    /// Counts one operation on the shared memory and its latency.
    pub fn count_redis(&self, op: &'static str, result: &'static str, seconds: f64) {
        self.redis_operations
            .get_or_create(&[("op", op), ("result", result)])
            .inc();
        self.redis_duration.observe(seconds);
    }

    /// Counts a rate-limited callback by the limit's scope.
    pub fn count_rate_limited(&self, scope: &'static str) {
        self.resolved[2].inc(&self.rate_limited, [("scope", scope)]);
    }

    /// Counts a failed delivery by kind.
    pub fn count_upstream_error(&self, kind: &'static str) {
        self.resolved[3].inc(&self.upstream_errors, [("kind", kind)]);
    }

    /// Counts `n` retries made for one reason.
    pub fn count_retries(&self, reason: &'static str, n: u32) {
        if n > 0 {
            self.resolved[4].inc_by(&self.upstream_retries, [("reason", reason)], n.into());
        }
    }

    /// Counts a delivery that took more than one attempt, by its outcome.
    pub fn count_retried(&self, outcome: &'static str) {
        self.resolved[5].inc(&self.retried_deliveries, [("outcome", outcome)]);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a `String` cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_series_are_exported_from_the_start_at_zero() {
        let m = Metrics::new();
        let text = m.render();
        for name in [
            "feishu_gate_redis_operations",
            "feishu_gate_redis_operation_duration_seconds",
            "feishu_gate_redis_fallback",
            "feishu_gate_duplicates_suppressed",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}:\n{text}");
            let listed = NAMES.contains(&name) || NAMES.contains(&format!("{name}_total").as_str());
            assert!(listed, "{name} is not in NAMES");
        }
        for op in REDIS_OPS {
            for result in REDIS_RESULTS {
                let series = format!(
                    "feishu_gate_redis_operations_total{{op=\"{op}\",result=\"{result}\"}} 0"
                );
                assert!(text.contains(&series), "{series}");
            }
        }
        assert!(text.contains("feishu_gate_redis_fallback 0"));
        assert!(text.contains(
            "feishu_gate_duplicates_suppressed_total{how=\"remembered\",store=\"shared\"} 0"
        ));
    }
}
