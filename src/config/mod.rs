//! Configuration: every `FEISHU_GATE_*` variable, parsed once into [`Config`], which
//! composes each component's own settings.
//!
//! All variables are read and every problem is collected before anything binds, so an
//! operator sees the whole list at once. The rest of the code never reads the
//! environment; tests pass a map. The variables are read from the
//! environment or a secret file in [`source`], parsed in [`parse`], checked against each
//! other in [`rules`], and shown by `check-config` through [`describe`]. The names
//! themselves, and the error that cites one, are [`crate::vars`], a leaf every component
//! may use to name the variable a problem is about.

use crate::callback::verify::Verifier;
use crate::dedup::Settings as DedupSettings;
use crate::observe::logging::LogFormat;
use crate::observe::otlp::Traces;
use crate::pipeline::Settings as PipelineSettings;
use crate::respond::Lang;
use crate::server::Settings as ServerSettings;
use crate::upstream::Settings as UpstreamSettings;

mod describe;
mod parse;
mod rules;
mod source;

#[cfg(test)]
mod tests;

pub use crate::vars::*;
pub use source::{SecretFileError, read_secret_file};

/// The gateway's whole configuration: each component's settings, as that component
/// defines them.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listeners, their TLS, connection limits and the drain.
    pub server: ServerSettings,
    /// The callback path, the body's bound, the answer deadline and the rate limits.
    pub pipeline: PipelineSettings,
    /// Tokens, keys, and what is forwarded.
    pub callback: Verifier,
    /// The legacy system: where, how long, with what trust and headers.
    pub upstream: UpstreamSettings,
    /// How long decisions are remembered, and the Redis that shares the memory.
    pub dedup: DedupSettings,
    /// The language of the gateway's own messages.
    pub lang: Lang,
    pub log_format: LogFormat,
    /// `None`: no exporter, and tracing costs a callback only its `traceparent`.
    pub traces: Option<Traces>,
    /// `None`: no OpenAPI call is ever made.
    pub openapi: Option<crate::openapi::Settings>,
}

/// A parsed configuration and the warnings worth logging about it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Parses the process environment.
    pub fn from_env() -> Result<Loaded, ConfigErrors> {
        Self::load(source::Source::from_env())
    }

    /// The warnings about the environment that need no valid configuration (names not
    /// ours, with the likely one meant, and what the parser noticed), for showing beside
    /// configuration errors, which would otherwise hide them.
    pub fn warnings_from_env() -> Vec<String> {
        let source = source::Source::from_env();
        let mut parser = parse::Parser::new(&source);
        let _ = parser.config();
        let (_, parse_warnings) = parser.finish();
        let mut warnings = source.unknown_variables();
        warnings.extend(parse_warnings);
        warnings
    }

    /// Parses variables from any source (tests pass a map).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Loaded, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::load(source::Source::from_vars(vars))
    }

    fn load(source: source::Source) -> Result<Loaded, ConfigErrors> {
        let mut p = parse::Parser::new(&source);
        let config = p.config();
        let (errors, parse_warnings) = p.finish();
        let mut warnings = source.unknown_variables();
        warnings.extend(parse_warnings);
        match config {
            Some(config) if errors.is_empty() => {
                warnings.extend(rules::advice(&config));
                Ok(Loaded { config, warnings })
            }
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// The effective settings, one `NAME=value` per entry, secrets redacted.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        describe::describe(self)
    }
}
