//! What the integration tests share: the gateway in process on port 0, the real
//! binary, a real upstream, a raw TCP one for answers no server library would
//! send, one HTTP client, one metrics scraper, a real `redis-server`,
//! certificates made at test time, and the check of src/'s import graph.
//!
//! Every test binary compiles this module on its own and uses a different part
//! of it, hence the `allow`.
#![allow(dead_code, unused_imports)]

pub mod binary;
pub mod certs;
pub mod client;
pub mod gateway;
pub mod layering;
pub mod legacy;
pub mod metrics;
pub mod openapi;
pub mod otlp;
pub mod redis_server;
pub mod upstream;

use std::time::{Duration, Instant};

pub use binary::Binary;
pub use client::{Answer, Conn, Protocol, get, post, raw, request, try_get};
pub use gateway::Gate;
pub use legacy::{Act, RawLegacy, RawRequest};
pub use metrics::{duplicates, metric};
pub use upstream::{Received, Reply, Upstream};

pub const TOKEN: &str = "test-token-4f9a";
pub const KEY: &str = "test-key-7c1e";

/// A callback with every common field; `message_id` is above 2^53.
pub fn callback(token: &str) -> String {
    format!(
        r#"{{"action_type":"APPROVE","action_context":"ctx-1","user_id":"u-1","approval_code":"CODE-1","instance_id":"inst-1","task_id":"task-1","message_id":7250020197497765889,"reason":"好的 ok","token":"{token}"}}"#
    )
}

/// The same callback with one field replaced.
pub fn callback_with(token: &str, field: &str, value: &str) -> String {
    let mut v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&callback(token)).unwrap();
    v.insert(field.to_owned(), serde_json::from_str(value).unwrap());
    serde_json::to_string(&v).unwrap()
}

/// Seals a callback body the way Feishu does, with a fresh IV.
pub fn seal(key: &str, plaintext: &str) -> String {
    feishu_gate::testing::cli::send::seal(key, plaintext).unwrap()
}

/// Polls `ready` every 20 ms until it holds or `limit` passes; whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut ready: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if ready().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a signal (`TERM`, `STOP`, ...) to a process this test started.
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

// Strict JSON, checked independently of the gateway's parser; the fuzz targets
// assert the same property with the same code.
#[path = "../../fuzz/fuzz_targets/strict.rs"]
mod strict;
pub use strict::is_json as is_strict_json;
