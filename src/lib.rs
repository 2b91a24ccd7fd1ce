//! feishu-gate: a sidecar that receives Feishu's quick-approval callbacks,
//! proves they came from Feishu, opens the envelope, and hands the legacy
//! approval system a plain JSON POST, translating its answer (or silence) into
//! what Feishu shows the approver.
//!
//! The types every step shares come first: [`outcome`] (how a callback ended, and who
//! said no) and [`text`] (what the approver's card and the log line may hold).
//!
//! A callback's path, one module per step: [`server`] listens (over TLS from
//! [`server_tls`] and [`tls`]), [`gateway`] routes and reads the body, [`verify`] opens
//! the [`envelope`] and checks the token against the [`secret`]s, [`json`] reads the
//! object and [`callback`] applies Feishu's rules to it, [`limit`] and [`dedup`] (with
//! [`redis_dedup`] across replicas) guard, [`upstream`] forwards and its
//! [`upstream::answer`] judges what the legacy system said, and [`respond`] decides what
//! Feishu receives. Beside the path: [`config`] and [`cli`] at the edge, [`admin`] for
//! probes and [`metrics`], [`logging`], [`trace`] (W3C trace context for the legacy
//! system) and [`telemetry`] (spans, when asked for), and the [`demo`] and [`send`]
//! commands.

pub mod admin;
pub mod callback;
pub mod cli;
pub mod config;
pub mod dedup;
pub mod demo;
pub mod envelope;
pub mod gateway;
pub mod json;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod redis_dedup;
pub mod respond;
pub mod secret;
pub mod send;
pub mod server;
pub mod server_tls;
pub mod telemetry;
pub mod text;
pub mod tls;
pub mod trace;
pub mod upstream;
pub mod verify;
