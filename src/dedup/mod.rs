//! Duplicate memory: this replica's own ([`local`]), and the one shared with the other
//! replicas on Redis ([`shared`]).

use std::time::Duration;

pub mod local;
pub mod shared;

/// How long decisions are remembered, and where (`DEDUP_TTL_SECS`, `REDIS_*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `None`: suppression is off.
    pub ttl: Option<Duration>,
    /// `None`: the memory is this process's own.
    pub redis: Option<shared::RedisSettings>,
}
