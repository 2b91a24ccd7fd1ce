//! feishu-gate: a sidecar that receives Feishu's quick-approval callbacks,
//! proves they came from Feishu, opens the envelope, and hands the legacy
//! approval system a plain JSON POST, translating its answer (or silence) into
//! what Feishu shows the approver.

#![forbid(unsafe_code)]

mod app;
mod callback;
mod cli;
mod config;
mod dedup;
mod observe;
mod openapi;
mod outcome;
mod pipeline;
mod respond;
mod server;
mod upstream;
mod util;
mod vars;

pub use cli::main;

/// What the crate's own integration tests, benchmarks and fuzz targets reach inside it,
/// item by item, so that anything else unused is still dead code to the compiler. Not a
/// stable interface.
#[doc(hidden)]
pub mod testing {
    pub mod app {
        pub use crate::app::{App, ListenerTls};
    }
    pub mod callback {
        pub use crate::callback::{ForwardOptions, idempotency_key, validate};
        pub mod envelope {
            pub use crate::callback::envelope::CallbackKey;
        }
        pub mod json {
            pub use crate::callback::json::Fields;
        }
        pub mod secrets {
            pub use crate::callback::secrets::{KeySet, TokenSet};
        }
        pub mod verify {
            pub use crate::callback::verify::Verifier;
        }
    }
    pub mod cli {
        pub mod send {
            pub use crate::cli::send::seal;
        }
    }
    pub mod config {
        pub use crate::config::Config;
        pub use crate::vars::*;
    }
    pub mod dedup {
        pub mod shared {
            pub use crate::dedup::shared::{
                Admission, FailureMode, Hold, LEASE, RedisSettings, RedisUrl, SharedMemory,
            };
        }
    }
    pub mod observe {
        pub mod metrics {
            pub use crate::observe::metrics::{LATENCY_BUCKETS, Metrics, NAMES};
        }
    }
    pub mod outcome {
        pub use crate::outcome::*;
    }
    pub mod pipeline {
        pub use crate::pipeline::{BODY_BUDGET_BYTES, BODY_READ_TIMEOUT, Gateway};
    }
    pub mod respond {
        pub use crate::respond::{Lang, Translator};
    }
    pub mod server {
        pub use crate::server::{
            ADMIN_MAX_CONNECTIONS, HEADER_READ_TIMEOUT, Listeners, MAX_HEAD_BYTES,
        };
        pub mod tls {
            pub use crate::server::tls::{Reload, ServerTls};
        }
    }
    pub mod upstream {
        pub mod answer {
            pub use crate::upstream::answer::message;
        }
    }
    pub mod util {
        pub mod text {
            pub use crate::util::text::{MAX_MESSAGE_CHARS, clean};
        }
    }
}
