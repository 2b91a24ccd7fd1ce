//! feishu-gate: a sidecar that receives Feishu's quick-approval callbacks,
//! proves they came from Feishu, opens the envelope, and hands the legacy
//! approval system a plain JSON POST, translating its answer (or silence) into
//! what Feishu shows the approver.
//!
//! A callback's path, one module per step: [`server`] listens (over TLS from
//! [`server_tls`] when configured), [`gateway`] routes and reads, [`verify`]
//! opens the [`envelope`] and checks the token, [`callback`] validates,
//! [`dedup`] (with [`redis_dedup`] across replicas) and [`limit`] guard, [`upstream`] forwards, and [`respond`]
//! decides what Feishu receives. [`trace`] carries W3C trace context to the
//! legacy system, and [`telemetry`] exports spans when asked to.

pub mod admin;
pub mod callback;
pub mod cli;
pub mod config;
pub mod dedup;
pub mod demo;
pub mod envelope;
pub mod gateway;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod redis_dedup;
pub mod respond;
pub mod secret;
pub mod send;
pub mod server;
pub mod server_tls;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod verify;
