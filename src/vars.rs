//! Every variable the gateway reads, as plain data: a named constant each, with its
//! meaning, and the lists `config` walks; and [`ConfigError`], a problem naming one. A
//! leaf: any component may name the variable one of its problems is about. What each
//! variable parses into is `config`'s business.

use std::fmt;

/// Prefix every variable of ours shares.
pub const PREFIX: &str = "FEISHU_GATE_";

/// Prefix of OpenTelemetry's standard variables, the only others read.
pub const OTEL_PREFIX: &str = "OTEL_";

/// Address Feishu's callbacks arrive on.
pub const LISTEN: &str = "FEISHU_GATE_LISTEN";
/// Address of `/livez`, `/readyz` and `/metrics`; never the callback port.
pub const ADMIN_LISTEN: &str = "FEISHU_GATE_ADMIN_LISTEN";
/// The one path that accepts callbacks.
pub const CALLBACK_PATH: &str = "FEISHU_GATE_CALLBACK_PATH";
/// The legacy system's endpoint.
pub const UPSTREAM_URL: &str = "FEISHU_GATE_UPSTREAM_URL";
/// Bound on the whole upstream exchange, in milliseconds.
pub const UPSTREAM_TIMEOUT_MS: &str = "FEISHU_GATE_UPSTREAM_TIMEOUT_MS";
/// The latest moment after a callback arrived by which its caller is
/// answered: Feishu's page waits 10 s, Lark's 5 s.
pub const ANSWER_WITHIN_MS: &str = "FEISHU_GATE_ANSWER_WITHIN_MS";
/// How long after a callback arrived the gateway keeps waiting for the legacy system's
/// answer once the caller was answered 504; `0` cuts the exchange at the upstream timeout.
pub const LATE_VERDICT_MS: &str = "FEISHU_GATE_LATE_VERDICT_MS";
/// Extra request headers for the legacy system, `name=value,name=value`
/// (values percent-encoded). Secret: they usually carry credentials.
pub const UPSTREAM_HEADERS: &str = "FEISHU_GATE_UPSTREAM_HEADERS";
/// Extra trust anchors (PEM) for an `https://` upstream.
pub const UPSTREAM_CA_FILE: &str = "FEISHU_GATE_UPSTREAM_CA_FILE";
/// Client certificate chain (PEM) for mutual TLS to the upstream.
pub const UPSTREAM_CLIENT_CERT: &str = "FEISHU_GATE_UPSTREAM_CLIENT_CERT";
/// Private key (PEM) for [`UPSTREAM_CLIENT_CERT`].
pub const UPSTREAM_CLIENT_KEY: &str = "FEISHU_GATE_UPSTREAM_CLIENT_KEY";
/// Business-success rule for a 2xx answer, `POINTER==VALUE`.
pub const UPSTREAM_OK: &str = "FEISHU_GATE_UPSTREAM_OK";
/// Send a request answered `503` with a fitting `Retry-After` again: only safe when
/// nothing in front of the legacy system answers 503 after passing the request on.
pub const RETRY_503: &str = "FEISHU_GATE_RETRY_503";
/// How long a refused connection to the legacy system is retried, and how long refusals
/// last before callbacks are answered at once; `0` leaves both to the answer bound.
pub const CONNECT_RETRY_MS: &str = "FEISHU_GATE_CONNECT_RETRY_MS";
/// Feishu's `action_callback_token`; comma-separated during rotation.
pub const TOKEN: &str = "FEISHU_GATE_TOKEN";
/// Feishu's `action_callback_key`; comma-separated during rotation.
pub const KEY: &str = "FEISHU_GATE_KEY";
/// With a key set, also accept unencrypted callbacks.
pub const ALLOW_PLAINTEXT: &str = "FEISHU_GATE_ALLOW_PLAINTEXT";
/// PEM certificate chain for the callback listener.
pub const TLS_CERT: &str = "FEISHU_GATE_TLS_CERT";
/// PEM private key for the callback listener.
pub const TLS_KEY: &str = "FEISHU_GATE_TLS_KEY";
/// Larger bodies are refused before they are read.
pub const MAX_BODY_BYTES: &str = "FEISHU_GATE_MAX_BODY_BYTES";
/// Callbacks per second, all approvers together; `0` turns the limit off.
pub const RATE_LIMIT_RPS: &str = "FEISHU_GATE_RATE_LIMIT_RPS";
/// Burst allowance of the global limit.
pub const RATE_LIMIT_BURST: &str = "FEISHU_GATE_RATE_LIMIT_BURST";
/// Callbacks per second per approver `user_id`; `0` (default) is off.
pub const USER_RATE_LIMIT_RPS: &str = "FEISHU_GATE_USER_RATE_LIMIT_RPS";
/// Burst allowance of the per-approver limit.
pub const USER_RATE_LIMIT_BURST: &str = "FEISHU_GATE_USER_RATE_LIMIT_BURST";
/// How long a delivered decision is remembered; `0` turns suppression off.
pub const DEDUP_TTL_SECS: &str = "FEISHU_GATE_DEDUP_TTL_SECS";
/// Forward `message_id` as a decimal string.
pub const MESSAGE_ID_AS_STRING: &str = "FEISHU_GATE_MESSAGE_ID_AS_STRING";
/// Language of the gateway's own messages to approvers.
pub const LANG: &str = "FEISHU_GATE_LANG";
/// `json` or `text`.
pub const LOG_FORMAT: &str = "FEISHU_GATE_LOG_FORMAT";
/// How long in-flight callbacks may finish after SIGTERM.
pub const SHUTDOWN_GRACE_MS: &str = "FEISHU_GATE_SHUTDOWN_GRACE_MS";
/// Callback connections served at once. At the cap the gateway stops
/// accepting: further clients wait in the kernel's listen backlog and are
/// served as soon as a connection closes, which an idle one does within
/// the server's head-read timeout.
pub const MAX_CONNECTIONS: &str = "FEISHU_GATE_MAX_CONNECTIONS";
/// Worker threads serving callback connections, each on its own event loop;
/// unset, one per CPU the process may use (a cgroup CPU limit included).
pub const WORKERS: &str = "FEISHU_GATE_WORKERS";
/// OpenTelemetry's standard variables that turn span export on: the base URL
/// (`/v1/traces` is appended) or the traces URL as it is. The exporter reads
/// the rest of its standard variables itself (`OTEL_EXPORTER_OTLP_HEADERS`,
/// `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`...).
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The traces URL as it is; see [`OTEL_EXPORTER_OTLP_ENDPOINT`].
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// Only `http/protobuf` is spoken; another protocol is a configuration error.
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// The traces protocol; see [`OTEL_EXPORTER_OTLP_PROTOCOL`].
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// The exported service's name; `feishu-gate` unless set.
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `true` turns export off whatever else is set.
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// Shown by `check-config`; the exporter reads it.
pub const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// The Feishu app's id, for the OpenAPI (card repair after a late verdict).
pub const APP_ID: &str = "FEISHU_GATE_APP_ID";
/// The Feishu app's secret. Secret.
pub const APP_SECRET: &str = "FEISHU_GATE_APP_SECRET";
/// Feishu's OpenAPI base URL; Lark's is `https://open.larksuite.com`.
pub const OPENAPI_URL: &str = "FEISHU_GATE_OPENAPI_URL";
/// PEM trust anchors added to the system's for the OpenAPI (a TLS-inspecting proxy).
pub const OPENAPI_CA_FILE: &str = "FEISHU_GATE_OPENAPI_CA_FILE";
/// `redis://` or `rediss://`: the duplicate memory shared by every replica
/// naming it. Secret: the URL usually carries a password.
pub const REDIS_URL: &str = "FEISHU_GATE_REDIS_URL";
/// Key prefix, so several gateways can share one Redis.
pub const REDIS_PREFIX: &str = "FEISHU_GATE_REDIS_PREFIX";
/// PEM trust anchors for a `rediss://` Redis, instead of the system's: a Redis
/// inside the cluster usually has a certificate from a private CA.
pub const REDIS_CA_FILE: &str = "FEISHU_GATE_REDIS_CA_FILE";
/// While Redis is unreachable: `open` keeps answering on local memory,
/// `closed` answers 503.
pub const REDIS_FAILURE: &str = "FEISHU_GATE_REDIS_FAILURE";

/// Every variable of ours, in `check-config`'s order (a test holds them together).
pub const VARIABLES: &[&str] = &[
    LISTEN,
    ADMIN_LISTEN,
    CALLBACK_PATH,
    UPSTREAM_URL,
    UPSTREAM_TIMEOUT_MS,
    ANSWER_WITHIN_MS,
    LATE_VERDICT_MS,
    UPSTREAM_HEADERS,
    UPSTREAM_CA_FILE,
    UPSTREAM_CLIENT_CERT,
    UPSTREAM_CLIENT_KEY,
    UPSTREAM_OK,
    RETRY_503,
    CONNECT_RETRY_MS,
    TOKEN,
    KEY,
    ALLOW_PLAINTEXT,
    TLS_CERT,
    TLS_KEY,
    MAX_BODY_BYTES,
    RATE_LIMIT_RPS,
    RATE_LIMIT_BURST,
    USER_RATE_LIMIT_RPS,
    USER_RATE_LIMIT_BURST,
    DEDUP_TTL_SECS,
    MESSAGE_ID_AS_STRING,
    LANG,
    LOG_FORMAT,
    SHUTDOWN_GRACE_MS,
    MAX_CONNECTIONS,
    WORKERS,
    REDIS_URL,
    REDIS_PREFIX,
    REDIS_CA_FILE,
    REDIS_FAILURE,
    APP_ID,
    APP_SECRET,
    OPENAPI_URL,
    OPENAPI_CA_FILE,
];

/// The variables that may instead be read from the file named by `<NAME>_FILE`.
pub const SECRET_VARIABLES: &[&str] = &[UPSTREAM_HEADERS, TOKEN, KEY, REDIS_URL, APP_SECRET];

/// OpenTelemetry's standard variables the gateway reads itself; the exporter reads the rest.
pub const OTEL_VARIABLES: &[&str] = &[
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_SERVICE_NAME,
    OTEL_SDK_DISABLED,
    OTEL_TRACES_SAMPLER,
];

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(variable: &str, problem: impl Into<String>) -> Self {
        Self {
            variable: variable.to_owned(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.problem)
    }
}

/// Every problem found, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_hold_each_name_once_under_its_prefix() {
        let mut all: Vec<&str> = VARIABLES.iter().chain(OTEL_VARIABLES).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), VARIABLES.len() + OTEL_VARIABLES.len());
        assert_eq!(VARIABLES.len(), 39);
        assert!(VARIABLES.iter().all(|v| v.starts_with(PREFIX)));
        assert!(OTEL_VARIABLES.iter().all(|v| v.starts_with(OTEL_PREFIX)));
        let mut secrets = SECRET_VARIABLES.to_vec();
        secrets.sort_unstable();
        assert_eq!(
            secrets,
            [APP_SECRET, KEY, REDIS_URL, TOKEN, UPSTREAM_HEADERS]
        );
    }

    /// A name declared above but missing from the lists would be read by the parser yet
    /// warned about at start as "not a feishu-gate setting".
    #[test]
    fn every_name_declared_here_is_in_a_list() {
        let declared: Vec<&str> = include_str!("vars.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub const ")?.split_once(": &str = \""))
            .map(|(_, value)| value.trim_end_matches("\";"))
            .filter(|v| *v != PREFIX && *v != OTEL_PREFIX)
            .collect();
        assert_eq!(declared.len(), VARIABLES.len() + OTEL_VARIABLES.len());
        for name in declared {
            assert!(
                VARIABLES.contains(&name) || OTEL_VARIABLES.contains(&name),
                "{name} is in no list"
            );
        }
    }
}
