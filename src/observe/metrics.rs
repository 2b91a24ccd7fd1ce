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

/// A label's values as an enum: callers can only count what is exported, every value is
/// exported at 0 from the start (alerts take `increase()`, which misses a series' first
/// count), and counting indexes an array instead of hashing labels.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// How many values there are: the length of the arrays counting them.
            pub const COUNT: usize = [$(Self::$variant),+].len();
        }

        impl LabelValue for $name {
            const ALL: &[Self] = &[$(Self::$variant),+];

            fn label(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }
    };
}

label_values!(
    /// How a duplicate was recognised.
    How { InFlight = "in_flight", Remembered = "remembered" }
);
label_values!(
    /// Where a duplicate was recognised: this replica's memory or the shared one.
    Store { Local = "local", Shared = "shared" }
);
label_values!(
    /// Which rate limit refused a callback.
    Scope { Global = "global", User = "user" }
);
label_values!(
    /// Kinds of failed delivery.
    UpstreamErrorKind {
        Connect = "connect",
        Dropped = "dropped",
        Timeout = "timeout",
        Status = "status",
        NotOk = "not_ok",
    }
);
label_values!(
    /// Why a request to the legacy system could be tried again.
    RetryReason { Unsent = "unsent", Unavailable = "unavailable" }
);
label_values!(
    /// Operations on the shared duplicate memory.
    RedisOp {
        Claim = "claim",
        Wait = "wait",
        Send = "send",
        Renew = "renew",
        Remember = "remember",
        Release = "release",
    }
);
label_values!(
    /// How an operation on the shared memory ended.
    RedisResult { Ok = "ok", Error = "error", Timeout = "timeout", Skipped = "skipped" }
);

label_values!(
    /// How an exchange that outlived its callback's answer ended.
    Verdict { Accepted = "accepted", Refused = "refused", Unanswered = "unanswered" }
);

label_values!(
    /// What became of a card to repair after a late verdict.
    CardRepair {
        Repaired = "repaired",
        Failed = "failed",
        SkippedNoMessageId = "skipped_no_message_id",
        SkippedAction = "skipped_action",
        SkippedNotAccepted = "skipped_not_accepted",
    }
);

/// The values of one label, in the order of their discriminants.
pub trait LabelValue: Copy + Sized + 'static {
    const ALL: &[Self];
    fn label(self) -> &'static str;
}

/// Registers a counter family labelled `label` by `E`, with its counter for every value
/// looked up once, so each exists (at 0) from the start.
fn by_label<E: LabelValue, const N: usize>(
    registry: &mut Registry,
    (name, help): (&str, &str),
    label: &'static str,
) -> [Counter; N] {
    const { assert!(N == E::ALL.len()) };
    let family = Family::<Label, Counter>::default();
    registry.register(name, help, family.clone());
    std::array::from_fn(|i| family.get_or_create(&[(label, E::ALL[i].label())]).clone())
}

/// [`by_label`] for a family of two labels, with a counter for every pair of values.
fn by_labels<A: LabelValue, B: LabelValue, const N: usize, const M: usize>(
    registry: &mut Registry,
    (name, help): (&str, &str),
    (a, b): (&'static str, &'static str),
) -> [[Counter; M]; N] {
    const { assert!(N == A::ALL.len() && M == B::ALL.len()) };
    let family = Family::<Labels2, Counter>::default();
    registry.register(name, help, family.clone());
    std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let labels = [(a, A::ALL[i].label()), (b, B::ALL[j].label())];
            family.get_or_create(&labels).clone()
        })
    })
}

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
    pub retried_deliveries: Family<Label, Counter>,
    pub tls_expiry: Gauge<f64, AtomicU64>,
    pub ready: Gauge,
    pub redis_duration: Histogram,
    pub redis_fallback: Gauge,
    /// Outcomes waiting to be written to the shared memory after their callback was
    /// answered, because Redis did not take them in time.
    pub redis_records_pending: Gauge,
    /// 1 while the legacy system's connections are refused past `CONNECT_RETRY_MS`.
    pub upstream_breaker_open: Gauge,
    pub upstream_breaker_openings: Counter,
    /// `callbacks` and `retried_deliveries`, by outcome.
    resolved: [Resolved; 2],
    duplicates_by: [[Counter; Store::COUNT]; How::COUNT],
    rate_limited_by: [Counter; Scope::COUNT],
    upstream_errors_by: [Counter; UpstreamErrorKind::COUNT],
    upstream_retries_by: [Counter; RetryReason::COUNT],
    redis_by: [[Counter; RedisResult::COUNT]; RedisOp::COUNT],
    late_verdicts_by: [Counter; Verdict::COUNT],
    card_repairs_by: [Counter; CardRepair::COUNT],
    redis_records_deferred: Counter,
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
    "feishu_gate_late_verdicts_total",
    "feishu_gate_redis_records_pending",
    "feishu_gate_redis_records_deferred_total",
    "feishu_gate_card_repairs_total",
    "feishu_gate_upstream_breaker_open",
    "feishu_gate_upstream_breaker_openings_total",
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
        let duplicates_by = by_labels::<How, Store, _, _>(
            &mut registry,
            (
                "duplicates_suppressed",
                "Repeated decisions answered without a second delivery, by how (in_flight, \
                 remembered) and where they were found (local, shared)",
            ),
            ("how", "store"),
        );
        let rate_limited_by = by_label::<Scope, _>(
            &mut registry,
            (
                "rate_limited",
                "Callbacks refused by a rate limit, by scope (global, user)",
            ),
            "scope",
        );
        let upstream_errors_by = by_label::<UpstreamErrorKind, _>(
            &mut registry,
            (
                "upstream_errors",
                "Failed deliveries, by kind (connect, dropped, timeout, status, not_ok)",
            ),
            "kind",
        );
        let upstream_retries_by = by_label::<RetryReason, _>(
            &mut registry,
            (
                "upstream_retries",
                "Requests to the legacy system tried again, by why it was safe (unsent: it \
                 never reached the legacy system; unavailable: a 503 with Retry-After)",
            ),
            "reason",
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
        let redis_by = by_labels::<RedisOp, RedisResult, _, _>(
            &mut registry,
            (
                "redis_operations",
                "Operations on the shared duplicate memory, by op (claim, wait, send, renew, \
                 remember, release) and result (ok, error, timeout; skipped: a new decision \
                 answered by REDIS_FAILURE during an outage without asking)",
            ),
            ("op", "result"),
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
        let late_verdicts_by = by_label::<Verdict, _>(
            &mut registry,
            (
                "late_verdicts",
                "Exchanges with the legacy system that outlived the callback's 504 \
                 (LATE_VERDICT_MS), by how they ended (accepted, refused, unanswered)",
            ),
            "verdict",
        );
        let card_repairs_by = by_label::<CardRepair, _>(
            &mut registry,
            (
                "card_repairs",
                "Approvers' cards after a late verdict (with APP_ID), by result: repaired, \
                 failed, skipped_no_message_id, skipped_action (not APPROVE or REJECT), \
                 skipped_not_accepted (a late refusal leaves the card)",
            ),
            "result",
        );
        let redis_records_pending = Gauge::default();
        registry.register(
            "redis_records_pending",
            "Outcomes still to be written to the shared memory, retried until Redis takes them",
            redis_records_pending.clone(),
        );
        let redis_records_deferred = Counter::default();
        registry.register(
            "redis_records_deferred",
            "Outcomes Redis did not take before their callback was answered, retried in the \
             background",
            redis_records_deferred.clone(),
        );
        let upstream_breaker_open = Gauge::default();
        registry.register(
            "upstream_breaker_open",
            "1 while the legacy system has refused every connection for longer than \
             CONNECT_RETRY_MS and callbacks are answered at once",
            upstream_breaker_open.clone(),
        );
        let upstream_breaker_openings = Counter::default();
        registry.register(
            "upstream_breaker_openings",
            "Times the legacy system's refusals outlasted CONNECT_RETRY_MS",
            upstream_breaker_openings.clone(),
        );
        Self {
            registry,
            upstream_breaker_open,
            upstream_breaker_openings,
            redis_records_pending,
            late_verdicts_by,
            card_repairs_by,
            redis_records_deferred,
            callbacks,
            callback_duration,
            upstream_duration,
            in_flight,
            retried_deliveries,
            tls_expiry,
            ready,
            redis_duration,
            redis_fallback,
            resolved: Default::default(),
            duplicates_by,
            rate_limited_by,
            upstream_errors_by,
            upstream_retries_by,
            redis_by,
        }
    }

    /// Counts a callback by outcome.
    pub fn count_callback(&self, outcome: &'static str) {
        self.resolved[0].inc(&self.callbacks, [("outcome", outcome)]);
    }

    /// Counts a suppressed duplicate by how and where it was recognised.
    pub fn count_duplicate(&self, how: How, store: Store) {
        self.duplicates_by[how as usize][store as usize].inc();
    }

    /// Counts one operation on the shared memory and its latency.
    pub fn count_redis(&self, op: RedisOp, result: RedisResult, seconds: f64) {
        self.redis_by[op as usize][result as usize].inc();
        self.redis_duration.observe(seconds);
    }

    /// Counts an exchange that ended after its callback was answered.
    pub fn count_late_verdict(&self, verdict: Verdict) {
        self.late_verdicts_by[verdict as usize].inc();
    }

    /// Counts a card repair by what became of it.
    pub fn count_card_repair(&self, result: CardRepair) {
        self.card_repairs_by[result as usize].inc();
    }

    /// Counts an outcome whose record goes on after its callback was answered.
    pub fn count_deferred_record(&self) {
        self.redis_records_deferred.inc();
    }

    /// Counts a rate-limited callback by the limit's scope.
    pub fn count_rate_limited(&self, scope: Scope) {
        self.rate_limited_by[scope as usize].inc();
    }

    /// Counts a failed delivery by kind.
    pub fn count_upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors_by[kind as usize].inc();
    }

    /// Counts `n` retries made for one reason.
    pub fn count_retries(&self, reason: RetryReason, n: u32) {
        self.upstream_retries_by[reason as usize].inc_by(n.into());
    }

    /// Counts a delivery that took more than one attempt, by its outcome.
    pub fn count_retried(&self, outcome: &'static str) {
        self.resolved[1].inc(&self.retried_deliveries, [("outcome", outcome)]);
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
        for op in RedisOp::ALL.iter().map(|o| o.label()) {
            for result in RedisResult::ALL.iter().map(|r| r.label()) {
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

    /// Counting by enum indexes an array: each value must land on its own series. Each
    /// is counted a different number of times, so a mix-up shows as a wrong count.
    #[test]
    fn each_label_value_counts_on_its_own_series() {
        let m = Metrics::new();
        let mut expected = Vec::new();
        let mut times = 0;
        let mut count = |series: String, f: &dyn Fn()| {
            times += 1;
            (0..times).for_each(|_| f());
            expected.push(format!("{series} {times}\n"));
        };
        for &kind in UpstreamErrorKind::ALL {
            let series = format!("upstream_errors_total{{kind=\"{}\"}}", kind.label());
            count(series, &|| m.count_upstream_error(kind));
        }
        for &scope in Scope::ALL {
            let series = format!("rate_limited_total{{scope=\"{}\"}}", scope.label());
            count(series, &|| m.count_rate_limited(scope));
        }
        for &reason in RetryReason::ALL {
            let series = format!("upstream_retries_total{{reason=\"{}\"}}", reason.label());
            count(series, &|| m.count_retries(reason, 1));
        }
        for &result in CardRepair::ALL {
            let series = format!("card_repairs_total{{result=\"{}\"}}", result.label());
            count(series, &|| m.count_card_repair(result));
        }
        for &verdict in Verdict::ALL {
            let series = format!("late_verdicts_total{{verdict=\"{}\"}}", verdict.label());
            count(series, &|| m.count_late_verdict(verdict));
        }
        for (&how, &store) in How::ALL
            .iter()
            .flat_map(|h| Store::ALL.iter().map(move |s| (h, s)))
        {
            let (h, s) = (how.label(), store.label());
            let series = format!("duplicates_suppressed_total{{how=\"{h}\",store=\"{s}\"}}");
            count(series, &|| m.count_duplicate(how, store));
        }
        for (&op, &result) in RedisOp::ALL
            .iter()
            .flat_map(|o| RedisResult::ALL.iter().map(move |r| (o, r)))
        {
            let (o, r) = (op.label(), result.label());
            let series = format!("redis_operations_total{{op=\"{o}\",result=\"{r}\"}}");
            count(series, &|| m.count_redis(op, result, 0.0));
        }
        let text = m.render();
        let pairs = How::COUNT * Store::COUNT + RedisOp::COUNT * RedisResult::COUNT;
        let singles = UpstreamErrorKind::COUNT
            + Scope::COUNT
            + RetryReason::COUNT
            + Verdict::COUNT
            + CardRepair::COUNT;
        assert_eq!(expected.len(), singles + pairs);
        for series in expected {
            assert!(
                text.contains(&format!("feishu_gate_{series}")),
                "{series}\n{text}"
            );
        }
    }
}
