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
mod outcome;
mod pipeline;
mod respond;
mod server;
mod upstream;
mod util;
mod vars;

pub use cli::main;

/// The crate's insides, for its own integration tests, benchmarks and fuzz targets only:
/// nothing here is a stable interface.
#[doc(hidden)]
pub mod testing {
    pub mod app {
        pub use crate::app::*;
    }
    pub mod callback {
        pub use crate::callback::*;
    }
    pub mod cli {
        pub use crate::cli::*;
    }
    pub mod dedup {
        pub use crate::dedup::*;
    }
    pub mod config {
        pub use crate::config::*;
    }
    pub mod observe {
        pub use crate::observe::*;
    }
    pub mod outcome {
        pub use crate::outcome::*;
    }
    pub mod pipeline {
        pub use crate::pipeline::*;
    }
    pub mod respond {
        pub use crate::respond::*;
    }
    pub mod server {
        pub use crate::server::*;
    }
    pub mod upstream {
        pub use crate::upstream::*;
    }
    pub mod util {
        pub use crate::util::*;
    }
}
