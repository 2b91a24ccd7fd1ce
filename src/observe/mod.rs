//! What operators see: metrics, log lines, W3C trace context, and spans over OTLP.

pub mod logging;
pub mod metrics;
pub mod otlp;
pub mod trace;
