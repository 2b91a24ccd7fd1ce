//! Configuration: every `FEISHU_GATE_*` variable, parsed once into [`Config`].
//!
//! All variables are read and every problem is collected before anything
//! binds, so an operator sees the whole list at once. The rest of the code
//! never reads the environment; tests pass a map.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use crate::secret::{KeySet, TokenSet};
use crate::upstream::answer::OkRule;

/// Prefix every variable shares.
pub const PREFIX: &str = "FEISHU_GATE_";

/// Every variable the gateway reads, each declared once: its name constant with the
/// doc comment, its start-up log field (`logged as`: the name without [`PREFIX`], in
/// lower case), and its [`Variable`] entry. The list is handed to the macro named
/// `$then`, so `check-config`, the unknown-variable warning, the `_FILE` forms and the
/// start-up line (`cli::log_start`, where tracing needs each field name written out)
/// all follow from it; `Parser::config` reads each variable into [`Config`].
///
/// The list is ordered as `check-config` prints it.
macro_rules! variables {
    ($then:ident) => {
        $then! {
            /// Address Feishu's callbacks arrive on.
            LISTEN = "FEISHU_GATE_LISTEN", logged as listen {
                shown: Some(|c| c.listen.to_string()),
            }
            /// Address of `/livez`, `/readyz` and `/metrics`; never the callback port.
            ADMIN_LISTEN = "FEISHU_GATE_ADMIN_LISTEN", logged as admin_listen {
                shown: Some(|c| c.admin_listen.to_string()),
            }
            /// The one path that accepts callbacks.
            CALLBACK_PATH = "FEISHU_GATE_CALLBACK_PATH", logged as callback_path {
                shown: Some(|c| c.callback_path.clone()),
            }
            /// The legacy system's endpoint.
            UPSTREAM_URL = "FEISHU_GATE_UPSTREAM_URL", logged as upstream_url {
                shown: Some(|c| c.upstream_url.to_string()),
            }
            /// Bound on the whole upstream exchange, in milliseconds.
            UPSTREAM_TIMEOUT_MS = "FEISHU_GATE_UPSTREAM_TIMEOUT_MS",
            logged as upstream_timeout_ms {
                range: Some(1..=MAX_UPSTREAM_TIMEOUT_MS),
                shown: Some(|c| c.upstream_timeout.as_millis().to_string()),
            }
            /// The latest moment after a callback arrived by which its caller is
            /// answered: Feishu's page waits 10 s, Lark's 5 s.
            ANSWER_WITHIN_MS = "FEISHU_GATE_ANSWER_WITHIN_MS", logged as answer_within_ms {
                range: Some(MIN_ANSWER_WITHIN_MS..=MAX_ANSWER_WITHIN_MS),
                shown: Some(|c| c.answer_within.as_millis().to_string()),
            }
            /// Extra request headers for the legacy system, `name=value,name=value`
            /// (values percent-encoded). Secret: they usually carry credentials.
            UPSTREAM_HEADERS = "FEISHU_GATE_UPSTREAM_HEADERS", logged as upstream_headers {
                secret: true,
                shown: Some(|c| shown_headers(&c.upstream_headers)),
            }
            /// Extra trust anchors (PEM) for an `https://` upstream.
            UPSTREAM_CA_FILE = "FEISHU_GATE_UPSTREAM_CA_FILE", logged as upstream_ca_file {
                shown: Some(|c| shown_path(c.upstream_ca_file.as_ref())),
            }
            /// Client certificate chain (PEM) for mutual TLS to the upstream.
            UPSTREAM_CLIENT_CERT = "FEISHU_GATE_UPSTREAM_CLIENT_CERT",
            logged as upstream_client_cert {
                shown: Some(|c| shown_path(c.upstream_client.as_ref().map(|i| &i.cert))),
            }
            /// Private key (PEM) for [`UPSTREAM_CLIENT_CERT`].
            UPSTREAM_CLIENT_KEY = "FEISHU_GATE_UPSTREAM_CLIENT_KEY",
            logged as upstream_client_key {
                shown: Some(|c| shown_path(c.upstream_client.as_ref().map(|i| &i.key))),
            }
            /// Business-success rule for a 2xx answer, `POINTER==VALUE`.
            UPSTREAM_OK = "FEISHU_GATE_UPSTREAM_OK", logged as upstream_ok {
                shown: Some(|c| c.upstream_ok.as_ref().map_or_else(none, ToString::to_string)),
            }
            /// Feishu's `action_callback_token`; comma-separated during rotation.
            TOKEN = "FEISHU_GATE_TOKEN", logged as token {
                secret: true,
                shown: Some(|c| format!("<redacted: {}>", c.tokens.len())),
            }
            /// Feishu's `action_callback_key`; comma-separated during rotation.
            KEY = "FEISHU_GATE_KEY", logged as key {
                secret: true,
                shown: Some(|c| match c.keys.len() {
                    0 => none(),
                    n => format!("<redacted: {n}>"),
                }),
            }
            /// With a key set, also accept unencrypted callbacks.
            ALLOW_PLAINTEXT = "FEISHU_GATE_ALLOW_PLAINTEXT", logged as allow_plaintext {
                shown: Some(|c| c.allow_plaintext.to_string()),
            }
            /// PEM certificate chain for the callback listener.
            TLS_CERT = "FEISHU_GATE_TLS_CERT", logged as tls_cert {
                shown: Some(|c| shown_path(c.tls.as_ref().map(|t| &t.cert))),
            }
            /// PEM private key for the callback listener.
            TLS_KEY = "FEISHU_GATE_TLS_KEY", logged as tls_key {
                shown: Some(|c| shown_path(c.tls.as_ref().map(|t| &t.key))),
            }
            /// Larger bodies are refused before they are read.
            MAX_BODY_BYTES = "FEISHU_GATE_MAX_BODY_BYTES", logged as max_body_bytes {
                range: Some(1_024..=16 * 1024 * 1024),
                shown: Some(|c| c.max_body_bytes.to_string()),
            }
            /// Callbacks per second, all approvers together; `0` turns the limit off.
            RATE_LIMIT_RPS = "FEISHU_GATE_RATE_LIMIT_RPS", logged as rate_limit_rps {
                range: Some(0..=1_000_000),
                shown: Some(|c| shown_limit(c.rate_limit)),
            }
            /// Burst allowance of the global limit.
            RATE_LIMIT_BURST = "FEISHU_GATE_RATE_LIMIT_BURST" {
                range: Some(1..=10_000_000),
            }
            /// Callbacks per second per approver `user_id`; `0` (default) is off.
            USER_RATE_LIMIT_RPS = "FEISHU_GATE_USER_RATE_LIMIT_RPS",
            logged as user_rate_limit_rps {
                range: Some(0..=1_000_000),
                shown: Some(|c| shown_limit(c.user_rate_limit)),
            }
            /// Burst allowance of the per-approver limit.
            USER_RATE_LIMIT_BURST = "FEISHU_GATE_USER_RATE_LIMIT_BURST" {
                range: Some(1..=10_000_000),
            }
            /// How long a delivered decision is remembered; `0` turns suppression off.
            DEDUP_TTL_SECS = "FEISHU_GATE_DEDUP_TTL_SECS", logged as dedup_ttl_secs {
                range: Some(0..=7 * 24 * 3600),
                shown: Some(|c| c.dedup_ttl.map_or_else(off, |d| d.as_secs().to_string())),
            }
            /// Forward `message_id` as a decimal string.
            MESSAGE_ID_AS_STRING = "FEISHU_GATE_MESSAGE_ID_AS_STRING",
            logged as message_id_as_string {
                shown: Some(|c| c.message_id_as_string.to_string()),
            }
            /// Language of the gateway's own messages to approvers.
            LANG = "FEISHU_GATE_LANG", logged as lang {
                shown: Some(|c| match c.lang {
                    Lang::Zh => "zh".to_owned(),
                    Lang::En => "en".to_owned(),
                }),
            }
            /// `json` or `text`.
            LOG_FORMAT = "FEISHU_GATE_LOG_FORMAT", logged as log_format {
                shown: Some(|c| match c.log_format {
                    LogFormat::Json => "json".to_owned(),
                    LogFormat::Text => "text".to_owned(),
                }),
            }
            /// How long in-flight callbacks may finish after SIGTERM.
            SHUTDOWN_GRACE_MS = "FEISHU_GATE_SHUTDOWN_GRACE_MS", logged as shutdown_grace_ms {
                range: Some(0..=3_600_000),
                shown: Some(|c| c.shutdown_grace.as_millis().to_string()),
            }
            /// Callback connections served at once. At the cap the gateway stops
            /// accepting: further clients wait in the kernel's listen backlog and are
            /// served as soon as a connection closes, which an idle one does within
            /// [`crate::server::HEADER_READ_TIMEOUT`].
            MAX_CONNECTIONS = "FEISHU_GATE_MAX_CONNECTIONS", logged as max_connections {
                range: Some(1..=1_000_000),
                shown: Some(|c| c.max_connections.to_string()),
            }
            /// Worker threads serving callback connections, each on its own event loop;
            /// unset, one per CPU the process may use (a cgroup CPU limit included).
            WORKERS = "FEISHU_GATE_WORKERS", logged as workers {
                range: Some(1..=MAX_WORKERS),
                shown: Some(|c| c.workers.map_or_else(|| "auto".to_owned(), |n| n.to_string())),
            }
            /// OpenTelemetry's standard variables that turn span export on: the base URL
            /// (`/v1/traces` is appended) or the traces URL as it is. The exporter reads
            /// the rest of its standard variables itself (`OTEL_EXPORTER_OTLP_HEADERS`,
            /// `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`...).
            OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT" {}
            /// The traces URL as it is; see [`OTEL_EXPORTER_OTLP_ENDPOINT`].
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            logged as otel_exporter_otlp_traces_endpoint {
                shown: Some(|c| {
                    c.traces.as_ref().map_or_else(off, |t| shown_endpoint(&t.endpoint))
                }),
            }
            /// Only `http/protobuf` is spoken; another protocol is a configuration error.
            OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL" {}
            /// The traces protocol; see [`OTEL_EXPORTER_OTLP_PROTOCOL`].
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" {}
            /// The exported service's name; `feishu-gate` unless set.
            OTEL_SERVICE_NAME = "OTEL_SERVICE_NAME", logged as otel_service_name {
                shown: Some(|c| c.traces.as_ref().map_or_else(off, |t| t.service_name.clone())),
            }
            /// `true` turns export off whatever else is set.
            OTEL_SDK_DISABLED = "OTEL_SDK_DISABLED" {}
            /// Shown by `check-config`; the exporter reads it.
            OTEL_TRACES_SAMPLER = "OTEL_TRACES_SAMPLER", logged as otel_traces_sampler {
                shown: Some(|c| c.traces.as_ref().map_or_else(off, |t| t.sampler.clone())),
            }
            /// `redis://` or `rediss://`: the duplicate memory shared by every replica
            /// naming it. Secret: the URL usually carries a password.
            REDIS_URL = "FEISHU_GATE_REDIS_URL", logged as redis_url {
                secret: true,
                shown: Some(|c| c.redis.as_ref().map_or_else(none, |r| r.url.shown().to_owned())),
            }
            /// Key prefix, so several gateways can share one Redis.
            REDIS_PREFIX = "FEISHU_GATE_REDIS_PREFIX", logged as redis_prefix {
                shown: Some(|c| c.redis.as_ref().map_or_else(unused, |r| r.prefix.clone())),
            }
            /// PEM trust anchors for a `rediss://` Redis, instead of the system's: a Redis
            /// inside the cluster usually has a certificate from a private CA.
            REDIS_CA_FILE = "FEISHU_GATE_REDIS_CA_FILE", logged as redis_ca_file {
                shown: Some(|c| match &c.redis {
                    Some(r) if r.url.is_tls() => r.ca_file.as_ref().map_or_else(
                        || "system roots".to_owned(),
                        |p| p.display().to_string(),
                    ),
                    _ => unused(),
                }),
            }
            /// While Redis is unreachable: `open` keeps answering on local memory,
            /// `closed` answers 503.
            REDIS_FAILURE = "FEISHU_GATE_REDIS_FAILURE", logged as redis_failure {
                shown: Some(|c| {
                    c.redis.as_ref().map_or_else(unused, |r| r.failure.label().to_owned())
                }),
            }
        }
    };
}
pub(crate) use variables;

/// Expands [`variables!`] into the name constants and [`TABLE`].
macro_rules! declare {
    ($(
        $(#[$doc:meta])* $konst:ident = $name:literal $(, logged as $field:ident)?
        { $($key:ident: $value:expr),* $(,)? }
    )*) => {
        $($(#[$doc])* pub const $konst: &str = $name;)*

        /// What the gateway knows of each variable, in `check-config`'s order.
        const TABLE: &[Variable] = &[$(Variable { name: $konst, $($key: $value,)* ..PLAIN }),*];
    };
}
variables!(declare);

/// One variable, as [`variables!`] declares it.
struct Variable {
    name: &'static str,
    /// May instead be read from the file named by `<NAME>_FILE`.
    secret: bool,
    /// The whole numbers `Parser::number` accepts for it.
    range: Option<RangeInclusive<u64>>,
    /// Its value in `check-config`'s output and the start-up line. `None` for a
    /// variable shown in another's line (a burst beside its rate) or that only
    /// steers another (the OTLP base URL and protocol).
    shown: Option<fn(&Config) -> String>,
}

/// What an entry of [`variables!`] leaves out.
const PLAIN: Variable = Variable {
    name: "",
    secret: false,
    range: None,
    shown: None,
};

const OTEL_PREFIX: &str = "OTEL_";

/// Every variable of ours the gateway reads (secrets also have a `_FILE` form).
pub const VARIABLES: &[&str] = &names::<{ count(Pick::Ours) }>(Pick::Ours);

/// Variables that may instead be read from the file named by `<NAME>_FILE`.
pub const SECRET_VARIABLES: &[&str] = &names::<{ count(Pick::Secret) }>(Pick::Secret);

/// Which names of [`TABLE`] a list holds.
#[derive(Clone, Copy)]
enum Pick {
    /// Those under [`PREFIX`], not OpenTelemetry's.
    Ours,
    Secret,
}

const fn picks(pick: Pick, variable: &Variable) -> bool {
    match pick {
        Pick::Ours => {
            let (name, prefix) = (variable.name.as_bytes(), PREFIX.as_bytes());
            let mut i = 0;
            while i < prefix.len() {
                if i >= name.len() || name[i] != prefix[i] {
                    return false;
                }
                i += 1;
            }
            true
        }
        Pick::Secret => variable.secret,
    }
}

const fn count(pick: Pick) -> usize {
    let (mut n, mut i) = (0, 0);
    while i < TABLE.len() {
        if picks(pick, &TABLE[i]) {
            n += 1;
        }
        i += 1;
    }
    n
}

/// The names `pick` selects, in [`TABLE`]'s order; `N` is their [`count`].
const fn names<const N: usize>(pick: Pick) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut n, mut i) = (0, 0);
    while i < TABLE.len() {
        if picks(pick, &TABLE[i]) {
            out[n] = TABLE[i].name;
            n += 1;
        }
        i += 1;
    }
    out
}

fn none() -> String {
    "none".to_owned()
}

fn off() -> String {
    "off".to_owned()
}

/// A Redis setting while no Redis is configured.
fn unused() -> String {
    "-".to_owned()
}

fn shown_path(path: Option<&PathBuf>) -> String {
    path.map_or_else(none, |p| p.display().to_string())
}

fn shown_limit(limit: Option<RateLimit>) -> String {
    limit.map_or_else(off, |l| format!("{}/s burst {}", l.per_second, l.burst))
}

/// Header names only: the values are credentials.
fn shown_headers(headers: &UpstreamHeaders) -> String {
    if headers.0.is_empty() {
        return none();
    }
    let names: Vec<String> = headers
        .0
        .iter()
        .map(|(n, _)| format!("{n}=<redacted>"))
        .collect();
    names.join(",")
}

/// Feishu stops waiting for an answer after this long.
pub const FEISHU_DEADLINE: Duration = Duration::from_secs(10);
/// The longest upstream timeout that still leaves the request read and the
/// answer inside [`FEISHU_DEADLINE`].
pub const MAX_UPSTREAM_TIMEOUT_MS: u64 = 9_000;
/// Feishu gives up after 10 s; answering by 9.5 s leaves room for the
/// network. Also the most `ANSWER_WITHIN_MS` may be.
pub const MAX_ANSWER_WITHIN_MS: u64 = 9_500;
/// Below this the gateway could not read, verify and forward a callback.
pub const MIN_ANSWER_WITHIN_MS: u64 = 500;
/// What the default upstream timeout leaves, out of `ANSWER_WITHIN_MS`, for
/// reading the request, a retry's backoff and writing the answer.
const ANSWER_MARGIN_MS: u64 = 1_500;

/// The upstream timeout when `UPSTREAM_TIMEOUT_MS` is unset: 8 s under the
/// default 9.5 s bound, 3 s under Lark's 4.5 s, never under half the bound.
pub fn default_upstream_timeout_ms(answer_within_ms: u64) -> u64 {
    answer_within_ms
        .saturating_sub(ANSWER_MARGIN_MS)
        .max(answer_within_ms / 2)
        .min(MAX_UPSTREAM_TIMEOUT_MS)
}

/// More worker threads than this is a typo, not a machine.
pub const MAX_WORKERS: u64 = 1_024;

/// Exit status for a configuration error (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Language of the gateway's own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// A token bucket: sustained rate and burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// The certificate and key files of the callback listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Client certificate for mutual TLS to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Extra headers for the upstream. Values are secret; `Debug` shows names only.
#[derive(Clone, Default)]
pub struct UpstreamHeaders(pub Vec<(HeaderName, HeaderValue)>);

impl fmt::Debug for UpstreamHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(n, _)| (n.as_str(), "<redacted>")))
            .finish()
    }
}

/// What the gateway does while the shared duplicate memory cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// Keep answering: this replica's own memory still suppresses its duplicates,
    /// and the `Idempotency-Key` lets the legacy system recognise the rest.
    Open,
    /// Answer 503 rather than risk a second delivery through another replica.
    Closed,
}

impl FailureMode {
    pub fn label(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

/// A Redis URL. It usually carries a password, so only [`RedisUrl::shown`],
/// with the credentials replaced, ever leaves this type.
#[derive(Clone)]
pub struct RedisUrl {
    url: String,
    shown: String,
    /// The user name and password as written and decoded, for scrubbing
    /// messages that might repeat them.
    secrets: Vec<String>,
}

impl RedisUrl {
    /// Parses `redis://` and `rediss://` URLs. Problems never quote the URL.
    pub fn parse(text: &str) -> Result<Self, String> {
        let scheme = text.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("redis" | "rediss")) {
            return Err("must start with redis:// or rediss://".to_owned());
        }
        let url = redis::parse_redis_url(text).ok_or_else(|| "is not a valid URL".to_owned())?;
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err("has no host".to_owned());
        };
        if let Err(e) = redis::Client::open(text) {
            // redis-rs names what it refused (a database that is not a number, an
            // unsupported option) without repeating the URL.
            let why = e
                .detail()
                .map(str::to_owned)
                .unwrap_or_else(|| e.category().to_owned());
            return Err(format!("is not usable: {why}"));
        }
        let mut secrets = Vec::new();
        for raw in [url.username(), url.password().unwrap_or_default()] {
            if raw.is_empty() {
                continue;
            }
            secrets.push(raw.to_owned());
            if let Some(decoded) = percent_decode(raw).and_then(|b| String::from_utf8(b).ok())
                && decoded != raw
            {
                secrets.push(decoded);
            }
        }
        let mut shown = format!("{}://", url.scheme());
        if !secrets.is_empty() {
            shown.push_str("<redacted>@");
        }
        shown.push_str(host);
        if let Some(port) = url.port() {
            shown.push_str(&format!(":{port}"));
        }
        shown.push_str(url.path());
        Ok(Self {
            url: text.to_owned(),
            shown,
            secrets,
        })
    }

    /// The URL to connect with. Never log or print it.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The URL with its credentials replaced, fit for logs and `check-config`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// `text` with every occurrence of the URL's credentials replaced.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.replace(self.url.as_str(), self.shown.as_str());
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), "<redacted>");
        }
        out
    }

    pub(crate) fn secrets(&self) -> &[String] {
        &self.secrets
    }

    pub fn is_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.shown)
    }
}

/// The shared duplicate memory (`REDIS_*`).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: RedisUrl,
    /// `None`: the system's trust roots.
    pub ca_file: Option<PathBuf>,
    pub prefix: String,
    pub failure: FailureMode,
}

/// Headers the gateway itself owns on the upstream request.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "expect",
    "user-agent",
    "x-request-id",
    "idempotency-key",
    "traceparent",
    "tracestate",
];

/// Span export over OTLP/HTTP, when OpenTelemetry's variables ask for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traces {
    /// Where spans are POSTed, `/v1/traces` included.
    pub endpoint: Uri,
    pub service_name: String,
    /// `OTEL_TRACES_SAMPLER` as set, for `check-config`.
    pub sampler: String,
}

/// The gateway's whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub callback_path: String,
    pub upstream_url: Uri,
    pub upstream_timeout: Duration,
    /// By when after its arrival every callback is answered.
    pub answer_within: Duration,
    pub upstream_headers: UpstreamHeaders,
    pub upstream_ca_file: Option<PathBuf>,
    pub upstream_client: Option<ClientIdentity>,
    pub upstream_ok: Option<OkRule>,
    pub tokens: TokenSet,
    pub keys: KeySet,
    pub allow_plaintext: bool,
    pub tls: Option<TlsFiles>,
    pub max_body_bytes: usize,
    pub rate_limit: Option<RateLimit>,
    pub user_rate_limit: Option<RateLimit>,
    pub dedup_ttl: Option<Duration>,
    pub message_id_as_string: bool,
    pub lang: Lang,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    /// `None`: one per available CPU, decided when serving starts.
    pub workers: Option<usize>,
    /// `None`: no exporter, and tracing costs a callback only its `traceparent`.
    pub traces: Option<Traces>,
    /// `None`: the duplicate memory is this process's own.
    pub redis: Option<RedisSettings>,
}

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: String,
    pub problem: String,
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

/// A parsed configuration and the warnings worth logging about it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

impl Config {
    /// Parses the process environment.
    pub fn from_env() -> Result<Loaded, ConfigErrors> {
        Self::from_vars(std::env::vars_os().filter_map(|(k, v)| {
            // A non-UTF-8 value of ours is reported as such; other variables are not our business.
            let k = k.into_string().ok()?;
            let v = v.into_string().unwrap_or_else(|_| NOT_UTF8.to_owned());
            Some((k, v))
        }))
    }

    /// Parses variables from any source (tests pass a map).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Loaded, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: HashMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(k, _)| k.starts_with(PREFIX) || k.starts_with(OTEL_PREFIX))
            .collect();
        let mut p = Parser {
            vars: &vars,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let config = p.config();
        let mut warnings = unknown_variables(&vars);
        warnings.extend(p.warnings);
        match config {
            Some(config) if p.errors.is_empty() => {
                warnings.extend(advice(&config));
                Ok(Loaded { config, warnings })
            }
            _ => Err(ConfigErrors(p.errors)),
        }
    }

    /// The effective settings, one `NAME=value` per entry, secrets redacted.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        TABLE
            .iter()
            .filter_map(|v| Some((v.name, (v.shown?)(self))))
            .collect()
    }
}

const NOT_UTF8: &str = "\u{0}not-utf8";

/// An endpoint as shown: whatever precedes `@` in its authority is a credential.
fn shown_endpoint(endpoint: &Uri) -> String {
    let text = endpoint.to_string();
    match endpoint.authority() {
        Some(a) if a.as_str().contains('@') => {
            let host = a.as_str().rsplit('@').next().unwrap_or_default();
            text.replacen(a.as_str(), &format!("<redacted>@{host}"), 1)
        }
        _ => text,
    }
}

/// `FEISHU_GATE_*` names that are not ours: likely typos, worth a warning.
/// Kubernetes injects `<SERVICE>_SERVICE_HOST`, `<SERVICE>_PORT` and
/// `<SERVICE>_PORT_<n>_TCP*` for every Service in the namespace; a Service
/// named `feishu-gate` or `feishu-gate-<anything>` produces names under our
/// prefix, and those are expected.
fn unknown_variables(vars: &HashMap<String, String>) -> Vec<String> {
    let mut unknown: Vec<String> = vars
        .keys()
        .filter(|k| k.starts_with(PREFIX))
        .filter(|k| {
            let known = TABLE.iter().any(|v| {
                k.as_str() == v.name || (v.secret && k.strip_suffix("_FILE") == Some(v.name))
            });
            !known && !is_service_link(k)
        })
        .map(|k| format!("{k} is not a feishu-gate setting and is ignored"))
        .collect();
    unknown.sort();
    unknown
}

/// Settings that work but are probably not what the operator meant.
fn advice(config: &Config) -> Vec<String> {
    let mut advice = Vec::new();
    if config.allow_plaintext && config.keys.is_empty() {
        advice.push(format!(
            "{ALLOW_PLAINTEXT} has no effect without {KEY}: with no key every callback is plaintext"
        ));
    }
    if config.upstream_ok.is_none() {
        advice.push(format!(
            "{UPSTREAM_OK} is not set: any 2xx answer counts as acceptance, whatever its body \
             (a login page included); set it to the legacy system's success field, e.g. /code==0"
        ));
    }
    if config.upstream_timeout > config.shutdown_grace {
        advice.push(format!(
            "{UPSTREAM_TIMEOUT_MS} ({} ms) is longer than {SHUTDOWN_GRACE_MS} ({} ms): \
             a delivery still waiting when the drain ends is cut off with its outcome unknown",
            config.upstream_timeout.as_millis(),
            config.shutdown_grace.as_millis()
        ));
    }
    if config.tls.is_none() && config.keys.is_empty() {
        advice.push(format!(
            "neither {TLS_CERT} nor {KEY} is set: the token and the decision cross the network \
             in the clear unless TLS ends in front of the gateway"
        ));
    }
    if config.upstream_url.scheme_str() == Some("http")
        && !config.upstream_url.host().is_some_and(is_loopback)
    {
        advice.push(format!(
            "{UPSTREAM_URL} is http:// to a host other than this pod's loopback: \
             decisions and {UPSTREAM_HEADERS} travel unencrypted; use https:// across machines"
        ));
    }
    advice
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_service_link(name: &str) -> bool {
    name.contains("_SERVICE_HOST")
        || name.contains("_SERVICE_PORT")
        || name.ends_with("_PORT")
        || name
            .split_once("_PORT_")
            .is_some_and(|(_, rest)| rest.starts_with(|c: char| c.is_ascii_digit()))
}

struct Parser<'a> {
    vars: &'a HashMap<String, String>,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Parser<'_> {
    fn fail(&mut self, variable: &str, problem: impl Into<String>) {
        self.errors.push(ConfigError {
            variable: variable.to_owned(),
            problem: problem.into(),
        });
    }

    /// A plain variable; empty counts as unset so manifests can blank one out.
    fn raw(&mut self, name: &str) -> Option<String> {
        match self.vars.get(name) {
            Some(v) if v == NOT_UTF8 => {
                self.fail(name, "is not valid UTF-8");
                None
            }
            Some(v) if v.trim().is_empty() => None,
            Some(v) => Some(v.trim().to_owned()),
            None => None,
        }
    }

    /// A secret, from the variable or from the file `<NAME>_FILE` names.
    fn secret(&mut self, name: &str) -> Option<String> {
        let file_var = format!("{name}_FILE");
        let direct = self.raw(name);
        let file = self.raw(&file_var);
        match (direct, file) {
            (Some(_), Some(_)) => {
                self.fail(name, format!("set either {name} or {file_var}, not both"));
                None
            }
            (Some(v), None) => Some(v),
            (None, Some(path)) => match read_secret_file(&path) {
                Ok(text) => Some(text),
                Err(SecretFileError::NotUtf8) => {
                    self.fail(&file_var, format!("{} is not valid UTF-8", shown(&path)));
                    None
                }
                Err(SecretFileError::Unreadable(problem)) => {
                    self.fail(
                        &file_var,
                        format!("cannot read {}: {problem}", shown(&path)),
                    );
                    None
                }
            },
            (None, None) => None,
        }
    }

    fn list(&mut self, name: &str) -> Vec<String> {
        self.secret(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn parsed<T: std::str::FromStr>(&mut self, name: &str, default: T, what: &str) -> T {
        match self.raw(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                self.fail(name, format!("{v:?} is not {what}"));
                default
            }),
        }
    }

    /// A whole number in the range [`TABLE`] gives the variable.
    fn number(&mut self, name: &str, default: u64) -> u64 {
        let Some((min, max)) = TABLE
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.range.clone())
            .map(RangeInclusive::into_inner)
        else {
            // Only a variable added without its range gets here, and then every
            // configuration fails, so the omission cannot go unnoticed.
            self.fail(name, "has no range in the variable table");
            return default;
        };
        let what = format!("a whole number from {min} to {max}");
        let n = self.parsed(name, default, &what);
        if (min..=max).contains(&n) {
            n
        } else {
            self.fail(name, format!("{n} is out of range: must be {what}"));
            default
        }
    }

    fn boolean(&mut self, name: &str) -> bool {
        match self.raw(name).map(|v| v.to_ascii_lowercase()) {
            None => false,
            Some(v) => match v.as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    self.fail(name, format!("{v:?} is not true or false"));
                    false
                }
            },
        }
    }

    fn path(&mut self, name: &str) -> Option<PathBuf> {
        let p = PathBuf::from(self.raw(name)?);
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => Some(p),
            Ok(_) => {
                self.fail(
                    name,
                    format!("{} is not a file", shown(&p.to_string_lossy())),
                );
                None
            }
            Err(e) => {
                self.fail(
                    name,
                    format!("cannot read {}: {}", shown(&p.to_string_lossy()), e.kind()),
                );
                None
            }
        }
    }

    fn pair(&mut self, a: &str, b: &str) -> Option<(PathBuf, PathBuf)> {
        let (set_a, set_b) = (self.raw(a).is_some(), self.raw(b).is_some());
        match (set_a, set_b) {
            (true, true) => {
                // Both are checked, so two bad files are two problems reported at once.
                let (a, b) = (self.path(a), self.path(b));
                Some((a?, b?))
            }
            (false, false) => None,
            (true, false) => {
                self.fail(b, format!("must be set together with {a}"));
                None
            }
            (false, true) => {
                self.fail(a, format!("must be set together with {b}"));
                None
            }
        }
    }

    fn rate(&mut self, rps_var: &str, burst_var: &str, default_rps: u64) -> Option<RateLimit> {
        let rps = self.number(rps_var, default_rps);
        let burst = self.number(burst_var, rps.saturating_mul(2).max(1));
        let per_second = u32::try_from(rps).ok()?;
        let burst = u32::try_from(burst).ok()?;
        (per_second > 0).then_some(RateLimit { per_second, burst })
    }

    fn config(&mut self) -> Option<Config> {
        let listen = self.parsed(LISTEN, default_addr(8443), "an address like 0.0.0.0:8443");
        let admin_listen = self.parsed(
            ADMIN_LISTEN,
            default_addr(9901),
            "an address like 0.0.0.0:9901",
        );
        // Port 0 asks the system for a free port, so two of them never collide.
        if listen == admin_listen && listen.port() != 0 {
            self.fail(ADMIN_LISTEN, format!("must differ from {LISTEN}"));
        }
        let callback_path = self.raw(CALLBACK_PATH).unwrap_or_else(|| "/".to_owned());
        if !callback_path.starts_with('/')
            || callback_path.contains(['?', '#'])
            || callback_path.parse::<Uri>().is_err()
        {
            self.fail(
                CALLBACK_PATH,
                format!("{callback_path:?} is not a path like /feishu/callback"),
            );
        }
        let upstream_url = self.upstream_url();
        let answer_within_ms = self.number(ANSWER_WITHIN_MS, MAX_ANSWER_WITHIN_MS);
        let upstream_timeout_ms = self.number(
            UPSTREAM_TIMEOUT_MS,
            default_upstream_timeout_ms(answer_within_ms),
        );
        // Only an explicit timeout can exceed the bound: the default follows it.
        if upstream_timeout_ms > answer_within_ms {
            self.fail(
                UPSTREAM_TIMEOUT_MS,
                format!(
                    "{upstream_timeout_ms} is above {ANSWER_WITHIN_MS} ({answer_within_ms}): \
                     the caller would be answered before the legacy system's time is up"
                ),
            );
        }
        let upstream_timeout = Duration::from_millis(upstream_timeout_ms);
        let answer_within = Duration::from_millis(answer_within_ms);
        let upstream_headers = self.upstream_headers();
        let upstream_ca_file = self.path(UPSTREAM_CA_FILE);
        let upstream_client = self
            .pair(UPSTREAM_CLIENT_CERT, UPSTREAM_CLIENT_KEY)
            .map(|(cert, key)| ClientIdentity { cert, key });
        let upstream_ok = self.raw(UPSTREAM_OK).and_then(|v| {
            OkRule::parse(&v)
                .map_err(|e| self.fail(UPSTREAM_OK, e))
                .ok()
        });
        let tokens = self.list(TOKEN);
        if tokens.is_empty() && !self.errors.iter().any(|e| e.variable.starts_with(TOKEN)) {
            self.fail(TOKEN, "is required (Feishu's action_callback_token)");
        }
        let keys = self.list(KEY);
        let allow_plaintext = self.boolean(ALLOW_PLAINTEXT);
        let tls = self
            .pair(TLS_CERT, TLS_KEY)
            .map(|(cert, key)| TlsFiles { cert, key });
        let max_body_bytes = self.number(MAX_BODY_BYTES, 65_536);
        let rate_limit = self.rate(RATE_LIMIT_RPS, RATE_LIMIT_BURST, 200);
        let user_rate_limit = self.rate(USER_RATE_LIMIT_RPS, USER_RATE_LIMIT_BURST, 0);
        let dedup_secs = self.number(DEDUP_TTL_SECS, 600);
        let message_id_as_string = self.boolean(MESSAGE_ID_AS_STRING);
        let lang = self.raw(LANG).map_or(Lang::Zh, |v| {
            // `zh_CN.UTF-8`, `zh-Hans`, `EN_us`: what a locale variable holds is accepted too.
            let language = v.split(['_', '-', '.', '@']).next().unwrap_or_default();
            match language.to_ascii_lowercase().as_str() {
                "zh" => Lang::Zh,
                "en" => Lang::En,
                _ => {
                    self.fail(
                        LANG,
                        format!("{v:?} is not zh or en (zh_CN and en_US also do)"),
                    );
                    Lang::Zh
                }
            }
        });
        let log_format = self.raw(LOG_FORMAT).map_or(LogFormat::Json, |v| {
            match v.to_ascii_lowercase().as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                _ => {
                    self.fail(LOG_FORMAT, format!("{v:?} is not json or text"));
                    LogFormat::Json
                }
            }
        });
        let shutdown_grace = Duration::from_millis(self.number(SHUTDOWN_GRACE_MS, 8_000));
        let max_connections = self.number(MAX_CONNECTIONS, crate::server::MAX_CONNECTIONS as u64);
        let workers = self.raw(WORKERS).is_some().then(|| self.number(WORKERS, 1));
        let traces = self.traces();
        let redis = self.redis(dedup_secs > 0);

        Some(Config {
            listen,
            admin_listen,
            callback_path,
            upstream_url: upstream_url?,
            upstream_timeout,
            answer_within,
            upstream_headers,
            upstream_ca_file,
            upstream_client,
            upstream_ok,
            tokens: TokenSet::new(tokens),
            keys: KeySet::new(keys),
            allow_plaintext,
            tls,
            max_body_bytes: usize::try_from(max_body_bytes).ok()?,
            rate_limit,
            user_rate_limit,
            dedup_ttl: (dedup_secs > 0).then(|| Duration::from_secs(dedup_secs)),
            message_id_as_string,
            lang,
            log_format,
            shutdown_grace,
            max_connections: usize::try_from(max_connections).ok()?,
            workers: workers.and_then(|n| usize::try_from(n).ok()),
            traces,
            redis,
        })
    }

    /// Span export: on when an OTLP endpoint is set (and the SDK not disabled).
    fn traces(&mut self) -> Option<Traces> {
        if self
            .raw(OTEL_SDK_DISABLED)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return None;
        }
        let (variable, endpoint) = match (
            self.raw(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
            self.raw(OTEL_EXPORTER_OTLP_ENDPOINT),
        ) {
            (Some(url), _) => (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, url),
            // The base URL: the signal's path goes after whatever path it has.
            (None, Some(base)) => (
                OTEL_EXPORTER_OTLP_ENDPOINT,
                format!("{}/v1/traces", base.trim_end_matches('/')),
            ),
            (None, None) => return None,
        };
        for protocol in [
            OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
            OTEL_EXPORTER_OTLP_PROTOCOL,
        ] {
            if let Some(p) = self.raw(protocol)
                && p != "http/protobuf"
            {
                self.fail(
                    protocol,
                    format!("{p:?} is not supported: spans are exported as http/protobuf"),
                );
            }
        }
        let endpoint = match endpoint.parse::<Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some_and(|h| !h.is_empty()) =>
            {
                uri
            }
            _ => {
                self.fail(variable, "is not an http:// or https:// URL");
                return None;
            }
        };
        Some(Traces {
            endpoint,
            service_name: self
                .raw(OTEL_SERVICE_NAME)
                .unwrap_or_else(|| "feishu-gate".to_owned()),
            sampler: self
                .raw(OTEL_TRACES_SAMPLER)
                .unwrap_or_else(|| "parentbased_always_on".to_owned()),
        })
    }

    fn redis(&mut self, dedup_on: bool) -> Option<RedisSettings> {
        let url = self.secret(REDIS_URL);
        let prefix = self.raw(REDIS_PREFIX);
        let ca_file = self.path(REDIS_CA_FILE);
        let failure = match self.raw(REDIS_FAILURE) {
            None => FailureMode::Open,
            Some(v) if v.eq_ignore_ascii_case("open") => FailureMode::Open,
            Some(v) if v.eq_ignore_ascii_case("closed") => FailureMode::Closed,
            Some(other) => {
                self.fail(REDIS_FAILURE, format!("{other:?} is not open or closed"));
                FailureMode::Open
            }
        };
        if let Some(prefix) = &prefix
            && (prefix.len() > 128 || prefix.chars().any(|c| c.is_control()))
        {
            self.fail(
                REDIS_PREFIX,
                "must be at most 128 characters, without control characters",
            );
        }
        let Some(text) = url else {
            for name in [REDIS_PREFIX, REDIS_CA_FILE, REDIS_FAILURE] {
                if self.raw(name).is_some() {
                    self.warnings
                        .push(format!("{name} has no effect without {REDIS_URL}"));
                }
            }
            return None;
        };
        let url = match RedisUrl::parse(&text) {
            Ok(url) => url,
            Err(problem) => {
                self.fail(REDIS_URL, problem);
                return None;
            }
        };
        if ca_file.is_some() && !url.is_tls() {
            self.fail(REDIS_CA_FILE, format!("needs a rediss:// {REDIS_URL}"));
        }
        if !dedup_on {
            self.warnings.push(format!(
                "{REDIS_URL} has no effect while {DEDUP_TTL_SECS} is 0 (duplicate suppression off)"
            ));
        }
        Some(RedisSettings {
            url,
            ca_file,
            prefix: prefix.unwrap_or_else(|| "feishu-gate:".to_owned()),
            failure,
        })
    }

    fn upstream_url(&mut self) -> Option<Uri> {
        let Some(text) = self.raw(UPSTREAM_URL) else {
            self.fail(
                UPSTREAM_URL,
                "is required (the legacy system's endpoint, http:// or https://)",
            );
            return None;
        };
        // The URL itself is never echoed: one pasted with credentials in it would be.
        let problem = if !text.contains("://") {
            "has no scheme: write it in full, e.g. http://127.0.0.1:8080/approve"
        } else {
            match text.parse::<Uri>() {
                Err(_) => "is not a valid URL",
                Ok(uri) => match (uri.scheme_str(), uri.authority()) {
                    (Some("http" | "https"), Some(a)) if a.as_str().contains('@') => {
                        "must not carry credentials; send them with FEISHU_GATE_UPSTREAM_HEADERS"
                    }
                    (Some("http" | "https"), Some(a)) if a.host().is_empty() => "has no host",
                    // `http` keeps a port it cannot read as a number from 1 to 65535 in the
                    // authority's text but reports none, which would connect to the default.
                    (Some("http" | "https"), Some(a))
                        if a.port_u16() == Some(0)
                            || (a.port_u16().is_none() && has_port_text(a.as_str())) =>
                    {
                        "has a port out of range: it must be from 1 to 65535"
                    }
                    (Some("http" | "https"), Some(_)) => return Some(uri),
                    (Some("http" | "https"), None) => "has no host",
                    _ => "must start with http:// or https://",
                },
            }
        };
        self.fail(UPSTREAM_URL, problem);
        None
    }

    fn upstream_headers(&mut self) -> UpstreamHeaders {
        let Some(text) = self.secret(UPSTREAM_HEADERS) else {
            return UpstreamHeaders::default();
        };
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        let items = text.split(',').map(str::trim).filter(|s| !s.is_empty());
        for (position, item) in (1..).zip(items) {
            // Problems name the header, never its value: values are credentials. An
            // entry whose name cannot be read is named by its position only, since
            // whatever it holds may be a pasted credential (`Bearer abc==`).
            let Some((name, value)) = split_header(item) else {
                self.fail(
                    UPSTREAM_HEADERS,
                    format!("entry {position} is not name=value (or Name: value)"),
                );
                continue;
            };
            let Ok(header) = HeaderName::from_bytes(name.as_bytes()) else {
                self.fail(
                    UPSTREAM_HEADERS,
                    format!("entry {position} does not start with a header name"),
                );
                continue;
            };
            if RESERVED_HEADERS.contains(&header.as_str()) {
                self.fail(
                    UPSTREAM_HEADERS,
                    format!("{header} is set by the gateway itself"),
                );
                continue;
            }
            if headers.iter().any(|(n, _)| *n == header) {
                self.fail(UPSTREAM_HEADERS, format!("{header} is given twice"));
                continue;
            }
            // `a=1;b=2` would otherwise go out as one header `a` with the value `1;b=2`.
            if value.contains(';') {
                self.fail(
                    UPSTREAM_HEADERS,
                    format!(
                        "the value of {header} holds a ';': separate headers with ',', \
                         and write a ';' that belongs to a value as %3B"
                    ),
                );
                continue;
            }
            let Some(value) = percent_decode(value) else {
                self.fail(
                    UPSTREAM_HEADERS,
                    format!(
                        "the value of {header} has a % not followed by two hex digits \
                         (write a literal % as %25)"
                    ),
                );
                continue;
            };
            match HeaderValue::from_bytes(&value) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    headers.push((header, v));
                }
                Err(_) => self.fail(
                    UPSTREAM_HEADERS,
                    format!(
                        "the value of {header} holds a character a header cannot carry \
                         (a line break or other control character)"
                    ),
                ),
            }
        }
        UpstreamHeaders(headers)
    }
}

/// One `UPSTREAM_HEADERS` entry as name and value: `name=value`, or `Name: value` as curl
/// and HTTP write it. Whichever of `=` and `:` comes first separates them, so a value may
/// hold the other (`X-Time=12:30`, `Authorization: Basic dXNlcg==`).
fn split_header(item: &str) -> Option<(&str, &str)> {
    let at = item.find(['=', ':'])?;
    let (name, value) = (item[..at].trim(), item[at + 1..].trim());
    (!name.is_empty()).then_some((name, value))
}

/// Whether an authority (`host[:port]`, the host possibly `[v6]`) has a `:port` part.
fn has_port_text(authority: &str) -> bool {
    let after_host = match authority.rfind(']') {
        Some(end) => &authority[end..],
        None => authority,
    };
    after_host.contains(':')
}

/// Secrets are a few dozen bytes; a file much larger is the wrong file.
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Why a secret file could not be used.
#[derive(Debug)]
pub(crate) enum SecretFileError {
    Unreadable(String),
    NotUtf8,
}

/// Reads a secret file, refusing anything but a regular file of sane size:
/// `/dev/stdin` would block start-up and `/dev/zero` would never end. Secrets
/// written with `echo` or an editor end in a newline that is no part of them.
pub(crate) fn read_secret_file(path: &str) -> Result<String, SecretFileError> {
    use std::io::Read as _;
    let unreadable = |e: std::io::Error| SecretFileError::Unreadable(e.kind().to_string());
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(SecretFileError::Unreadable("not a regular file".to_owned()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretFileError::Unreadable(format!(
            "larger than {MAX_SECRET_FILE_BYTES} bytes"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| SecretFileError::NotUtf8)?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// A path as shown in a problem: control characters escaped, so every
/// problem stays on one line.
fn shown(path: &str) -> String {
    path.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn default_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// `%XX` decoding, so values may hold commas (`%2C`) and other separators.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Vec<(String, String)> {
        vec![
            (UPSTREAM_URL.into(), "http://127.0.0.1:8080/approve".into()),
            (TOKEN.into(), "tok".into()),
        ]
    }

    fn with(extra: &[(&str, &str)]) -> Result<Loaded, ConfigErrors> {
        let mut vars = minimal();
        for (k, v) in extra {
            vars.retain(|(name, _)| name != k);
            vars.push(((*k).into(), (*v).into()));
        }
        Config::from_vars(vars)
    }

    fn errors(extra: &[(&str, &str)]) -> Vec<String> {
        with(extra)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn each_shown_variable_is_logged_under_its_lower_case_name() {
        macro_rules! logged {
            ($(
                $(#[$doc:meta])* $konst:ident = $name:literal $(, logged as $field:ident)?
                { $($entry:tt)* }
            )*) => {
                [$(($name, &[$(stringify!($field))?][..])),*]
            };
        }
        let logged = variables!(logged);
        assert_eq!(logged.len(), TABLE.len());
        for ((name, field), v) in logged.into_iter().zip(TABLE) {
            let field = field.first().copied();
            assert_eq!(name, v.name);
            let lower = name
                .strip_prefix(PREFIX)
                .unwrap_or(name)
                .to_ascii_lowercase();
            assert_eq!(field, v.shown.is_some().then_some(lower.as_str()), "{name}");
        }
    }

    #[test]
    fn the_name_lists_follow_the_table() {
        assert_eq!(VARIABLES.len(), 32);
        assert!(VARIABLES.iter().all(|v| v.starts_with(PREFIX)));
        assert_eq!(
            TABLE
                .iter()
                .filter(|v| v.name.starts_with(OTEL_PREFIX))
                .count()
                + VARIABLES.len(),
            TABLE.len()
        );
        let mut secrets = SECRET_VARIABLES.to_vec();
        secrets.sort_unstable();
        assert_eq!(secrets, [KEY, REDIS_URL, TOKEN, UPSTREAM_HEADERS]);
        let described: Vec<&str> = with(&[])
            .unwrap()
            .config
            .describe()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        let shown: Vec<&str> = TABLE
            .iter()
            .filter(|v| v.shown.is_some())
            .map(|v| v.name)
            .collect();
        assert_eq!(described, shown);
    }

    #[test]
    fn every_secret_and_only_a_secret_is_read_from_its_file() {
        for v in TABLE.iter().filter(|v| v.name.starts_with(PREFIX)) {
            let file = format!("{}_FILE", v.name);
            let mut vars = minimal();
            // Set both ways, a secret is refused before its file is read.
            vars.retain(|(name, _)| !(v.secret && name == v.name));
            vars.push((file.clone(), "/no/such/secret".to_owned()));
            let loaded = Config::from_vars(vars);
            if v.secret {
                let e = loaded.unwrap_err().to_string();
                assert_eq!(
                    e,
                    format!("{file}: cannot read /no/such/secret: entity not found")
                );
            } else {
                let w = loaded.unwrap().warnings;
                let unknown = format!("{file} is not a feishu-gate setting and is ignored");
                assert!(w.contains(&unknown), "{w:?}");
            }
        }
    }

    #[test]
    fn every_number_is_read_within_the_range_of_its_entry() {
        for v in TABLE {
            let Some(range) = v.range.clone() else {
                continue;
            };
            let (min, max) = range.into_inner();
            let outside = [min.checked_sub(1), max.checked_add(1)];
            for n in outside.into_iter().flatten() {
                let e = errors(&[(v.name, &n.to_string())]);
                assert_eq!(
                    e,
                    vec![format!(
                        "{}: {n} is out of range: must be a whole number from {min} to {max}",
                        v.name
                    )]
                );
            }
        }
    }

    #[test]
    fn defaults_follow_the_product_table() {
        let c = with(&[]).unwrap().config;
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9901");
        assert_eq!(c.callback_path, "/");
        assert_eq!(c.upstream_timeout, Duration::from_millis(8000));
        assert_eq!(c.answer_within, Duration::from_millis(9500));
        assert_eq!(c.max_body_bytes, 65536);
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                per_second: 200,
                burst: 400
            })
        );
        assert_eq!(c.user_rate_limit, None);
        assert_eq!(c.dedup_ttl, Some(Duration::from_secs(600)));
        assert_eq!(c.lang, Lang::Zh);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.shutdown_grace, Duration::from_millis(8000));
        assert_eq!(c.max_connections, 1024);
        assert!(c.keys.is_empty() && !c.allow_plaintext && c.tls.is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_the_variable() {
        let errs = Config::from_vars([
            (LISTEN, "nowhere"),
            (UPSTREAM_TIMEOUT_MS, "9500"),
            (LANG, "fr"),
            (TLS_CERT, "/x.pem"),
            (UPSTREAM_OK, "code=0"),
            (RATE_LIMIT_RPS, "-1"),
        ])
        .unwrap_err()
        .0;
        let vars: Vec<&str> = errs.iter().map(|e| e.variable.as_str()).collect();
        for expected in [
            LISTEN,
            UPSTREAM_URL,
            UPSTREAM_TIMEOUT_MS,
            TOKEN,
            LANG,
            TLS_KEY,
            UPSTREAM_OK,
            RATE_LIMIT_RPS,
        ] {
            assert!(vars.contains(&expected), "{expected} missing from {vars:?}");
        }
        let shown = ConfigErrors(errs).to_string();
        assert!(shown.lines().all(|l| l.starts_with(PREFIX)), "{shown}");
    }

    #[test]
    fn upstream_timeout_must_leave_time_to_answer_feishu() {
        assert!(with(&[(UPSTREAM_TIMEOUT_MS, "9000")]).is_ok());
        assert!(errors(&[(UPSTREAM_TIMEOUT_MS, "9001")])[0].starts_with(UPSTREAM_TIMEOUT_MS));
        assert!(errors(&[(UPSTREAM_TIMEOUT_MS, "0")])[0].starts_with(UPSTREAM_TIMEOUT_MS));
    }

    #[test]
    fn the_answer_bound_alone_is_enough_for_lark() {
        let c = with(&[(ANSWER_WITHIN_MS, "4500")]).unwrap().config;
        assert_eq!(c.answer_within, Duration::from_millis(4500));
        assert_eq!(c.upstream_timeout, Duration::from_millis(3000));
        let c = with(&[(ANSWER_WITHIN_MS, "4500"), (UPSTREAM_TIMEOUT_MS, "4500")])
            .unwrap()
            .config;
        assert_eq!(c.upstream_timeout, Duration::from_millis(4500));
        let e = errors(&[(ANSWER_WITHIN_MS, "4500"), (UPSTREAM_TIMEOUT_MS, "4501")]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with(UPSTREAM_TIMEOUT_MS), "{e:?}");
        assert!(e[0].contains(ANSWER_WITHIN_MS), "{e:?}");
        assert!(errors(&[(ANSWER_WITHIN_MS, "9501")])[0].starts_with(ANSWER_WITHIN_MS));
        assert!(errors(&[(ANSWER_WITHIN_MS, "499")])[0].starts_with(ANSWER_WITHIN_MS));
        let c = with(&[(ANSWER_WITHIN_MS, "500")]).unwrap().config;
        assert_eq!(c.upstream_timeout, Duration::from_millis(250));
        assert_eq!(default_upstream_timeout_ms(MAX_ANSWER_WITHIN_MS), 8000);
        let shown = c.describe();
        assert!(
            shown.contains(&(ANSWER_WITHIN_MS, "500".to_owned())),
            "{shown:?}"
        );
    }

    #[test]
    fn spans_are_exported_only_when_an_otlp_endpoint_is_set() {
        assert_eq!(with(&[]).unwrap().config.traces, None);
        let c = with(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318/")])
            .unwrap()
            .config;
        let t = c.traces.unwrap();
        assert_eq!(t.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(t.service_name, "feishu-gate");
        let c = with(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318"),
            (
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                "https://traces.example/otlp",
            ),
            (OTEL_SERVICE_NAME, "approvals-gate"),
        ])
        .unwrap()
        .config;
        let t = c.traces.as_ref().unwrap();
        assert_eq!(t.endpoint, "https://traces.example/otlp");
        assert_eq!(t.service_name, "approvals-gate");
        let shown = c.describe();
        assert!(shown.contains(&(OTEL_SERVICE_NAME, "approvals-gate".to_owned())));
        let disabled = with(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318"),
            (OTEL_SDK_DISABLED, "true"),
        ]);
        assert_eq!(disabled.unwrap().config.traces, None);
        let e = errors(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "collector:4318")]);
        assert!(e[0].starts_with(OTEL_EXPORTER_OTLP_ENDPOINT), "{e:?}");
        let e = errors(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4317"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
        ]);
        assert!(e[0].starts_with(OTEL_EXPORTER_OTLP_PROTOCOL), "{e:?}");
        // Not our prefix: never reported as an unknown setting.
        let w = with(&[(OTEL_EXPORTER_OTLP_HEADERS_FOR_TEST, "x=1")])
            .unwrap()
            .warnings;
        assert!(w.iter().all(|w| !w.contains("OTEL_")), "{w:?}");
        let c = with(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://user:pw@collector:4318")])
            .unwrap()
            .config;
        let shown = format!("{:?}", c.describe());
        assert!(!shown.contains("pw"), "{shown}");
    }

    const OTEL_EXPORTER_OTLP_HEADERS_FOR_TEST: &str = "OTEL_EXPORTER_OTLP_HEADERS";

    #[test]
    fn upstream_url_must_be_http_or_https_without_credentials() {
        for bad in [
            "ftp://x/",
            "127.0.0.1:80",
            "http://user:pw@host/",
            "not a url",
        ] {
            let e = errors(&[(UPSTREAM_URL, bad)]);
            assert!(e[0].starts_with(UPSTREAM_URL), "{bad}: {e:?}");
            assert!(!e[0].contains("pw"), "{e:?}");
        }
        assert!(with(&[(UPSTREAM_URL, "https://legacy.internal:8443/cb?x=1")]).is_ok());
    }

    #[test]
    fn secrets_from_files_and_rotation_lists() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "new-token,old-token\n").unwrap();
        let tf = token.to_str().unwrap();
        let c = Config::from_vars([
            (UPSTREAM_URL, "http://u/"),
            ("FEISHU_GATE_TOKEN_FILE", tf),
            (KEY, " k1 , k2 "),
        ])
        .unwrap()
        .config;
        assert!(c.tokens.accepts("new-token") && c.tokens.accepts("old-token"));
        assert!(!c.tokens.accepts("new-token\n"));
        assert_eq!(c.keys.len(), 2);

        let e = errors(&[("FEISHU_GATE_TOKEN_FILE", tf)]);
        assert_eq!(
            e,
            vec![format!(
                "{TOKEN}: set either {TOKEN} or {TOKEN}_FILE, not both"
            )]
        );
        let e = Config::from_vars([
            (UPSTREAM_URL, "http://u/"),
            ("FEISHU_GATE_TOKEN_FILE", "/nonexistent/t"),
        ])
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "FEISHU_GATE_TOKEN_FILE: cannot read /nonexistent/t: entity not found"
        );
    }

    #[test]
    fn every_problem_stays_on_one_line_whatever_the_path() {
        let e = errors(&[
            ("FEISHU_GATE_KEY_FILE", "/no\nsuch\r/key"),
            (UPSTREAM_CA_FILE, "/etc\u{7}/ca.pem"),
        ]);
        assert_eq!(e.len(), 2, "{e:?}");
        for line in &e {
            assert!(!line.contains(['\n', '\r', '\u{7}']), "{line:?}");
        }
        assert_eq!(
            e[1],
            "FEISHU_GATE_KEY_FILE: cannot read /no\\nsuch\\r/key: entity not found"
        );
    }

    #[test]
    fn both_files_of_a_pair_are_checked() {
        let e = errors(&[(TLS_CERT, "/no/cert.pem"), (TLS_KEY, "/no/key.pem")]);
        assert_eq!(
            e,
            vec![
                format!("{TLS_CERT}: cannot read /no/cert.pem: entity not found"),
                format!("{TLS_KEY}: cannot read /no/key.pem: entity not found"),
            ]
        );
    }

    #[test]
    fn secret_files_must_be_regular_files_of_sane_size() {
        for (path, problem) in [
            ("/dev/zero", "not a regular file"),
            ("/", "not a regular file"),
        ] {
            let e = errors(&[("FEISHU_GATE_KEY_FILE", path)]);
            assert_eq!(
                e,
                vec![format!(
                    "FEISHU_GATE_KEY_FILE: cannot read {path}: {problem}"
                )]
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'k'; 64 * 1024 + 1]).unwrap();
        let e = errors(&[("FEISHU_GATE_KEY_FILE", big.to_str().unwrap())]);
        assert!(e[0].ends_with("larger than 65536 bytes"), "{e:?}");
        let fits = dir.path().join("fits");
        std::fs::write(&fits, vec![b'k'; 64 * 1024]).unwrap();
        assert!(with(&[("FEISHU_GATE_KEY_FILE", fits.to_str().unwrap())]).is_ok());
    }

    #[test]
    fn upstream_headers_are_parsed_and_redacted() {
        let c = with(&[(
            UPSTREAM_HEADERS,
            "Authorization=Bearer%20s3cr3t, X-Tenant=a%2Cb",
        )])
        .unwrap()
        .config;
        let h = &c.upstream_headers.0;
        assert_eq!(h[0].0, "authorization");
        assert_eq!(h[0].1, "Bearer s3cr3t");
        assert_eq!(h[1].1, "a,b");
        let shown = format!("{c:?}{:?}", c.describe());
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("tok\""),
            "{shown}"
        );
        let e = errors(&[(UPSTREAM_HEADERS, "Host=x,bad header=1,X-Ok=zz")]);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e.iter().all(|l| !l.contains("zz")), "{e:?}");
        // A credential pasted without a name is not echoed either.
        let e = errors(&[(UPSTREAM_HEADERS, "X-Ok=1,s3cr3t-t0ken,Bearer c2VjcmV0==")]);
        assert_eq!(
            e,
            vec![
                format!("{UPSTREAM_HEADERS}: entry 2 is not name=value (or Name: value)"),
                format!("{UPSTREAM_HEADERS}: entry 3 does not start with a header name"),
            ]
        );
    }

    #[test]
    fn upstream_headers_may_be_written_as_curl_writes_them() {
        let c = with(&[(
            UPSTREAM_HEADERS,
            "Authorization: Basic dXNlcjpwYXNz==, X-Time=12:30, X-Tenant:acme",
        )])
        .unwrap()
        .config;
        let h: Vec<(&str, &[u8])> = c
            .upstream_headers
            .0
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        assert_eq!(
            h,
            vec![
                ("authorization", &b"Basic dXNlcjpwYXNz=="[..]),
                ("x-time", b"12:30"),
                ("x-tenant", b"acme"),
            ]
        );
    }

    #[test]
    fn upstream_header_mistakes_are_named_without_their_values() {
        for (value, problem) in [
            (
                "X-A=s3cr3t;X-B=2",
                "the value of x-a holds a ';': separate headers with ',', and write a ';' \
                 that belongs to a value as %3B",
            ),
            ("X-A=1,x-a=s3cr3t", "x-a is given twice"),
            (
                "X-A=s3cr3t%zz",
                "the value of x-a has a % not followed by two hex digits (write a literal % as %25)",
            ),
            (
                "X-A=s3cr3t%0A",
                "the value of x-a holds a character a header cannot carry \
                 (a line break or other control character)",
            ),
        ] {
            assert_eq!(
                errors(&[(UPSTREAM_HEADERS, value)]),
                vec![format!("{UPSTREAM_HEADERS}: {problem}")],
                "{value}"
            );
        }
        let c = with(&[(UPSTREAM_HEADERS, "Cookie=a=1%3B b=2,X-Pct=100%25")])
            .unwrap()
            .config;
        assert_eq!(c.upstream_headers.0[0].1, "a=1; b=2");
        assert_eq!(c.upstream_headers.0[1].1, "100%");
    }

    #[test]
    fn upstream_url_mistakes_get_their_own_message() {
        for (url, problem) in [
            (
                "http://127.0.0.1:80800/",
                "has a port out of range: it must be from 1 to 65535",
            ),
            (
                "http://[::1]:65536/",
                "has a port out of range: it must be from 1 to 65535",
            ),
            (
                "http://127.0.0.1:0/",
                "has a port out of range: it must be from 1 to 65535",
            ),
            (
                "127.0.0.1:8080/approve",
                "has no scheme: write it in full, e.g. http://127.0.0.1:8080/approve",
            ),
            (
                "legacy.internal/approve",
                "has no scheme: write it in full, e.g. http://127.0.0.1:8080/approve",
            ),
            (
                "ftp://legacy/approve",
                "must start with http:// or https://",
            ),
        ] {
            assert_eq!(
                errors(&[(UPSTREAM_URL, url)]),
                vec![format!("{UPSTREAM_URL}: {problem}")],
                "{url}"
            );
        }
        assert!(with(&[(UPSTREAM_URL, "http://[::1]:65535/")]).is_ok());
    }

    #[test]
    fn enumerations_ignore_case_and_take_locale_names() {
        for (value, lang) in [
            ("ZH", Lang::Zh),
            ("zh_CN", Lang::Zh),
            ("zh-Hans", Lang::Zh),
            ("zh_CN.UTF-8", Lang::Zh),
            ("En", Lang::En),
            ("en_US.UTF-8", Lang::En),
            ("en-GB", Lang::En),
        ] {
            assert_eq!(with(&[(LANG, value)]).unwrap().config.lang, lang, "{value}");
        }
        assert_eq!(
            errors(&[(LANG, "fr_FR")]),
            vec![format!(
                "{LANG}: \"fr_FR\" is not zh or en (zh_CN and en_US also do)"
            )]
        );
        assert_eq!(
            with(&[(LOG_FORMAT, "TEXT")]).unwrap().config.log_format,
            LogFormat::Text
        );
        assert_eq!(
            with(&[(LOG_FORMAT, "Json")]).unwrap().config.log_format,
            LogFormat::Json
        );
    }

    #[test]
    fn settings_that_work_but_mislead_are_warned_about() {
        let warned = |extra: &[(&str, &str)], about: &str| {
            with(extra)
                .unwrap()
                .warnings
                .iter()
                .any(|w| w.starts_with(about))
        };
        let secure = [
            (UPSTREAM_OK, "/code==0"),
            (KEY, "k"),
            (UPSTREAM_URL, "http://127.0.0.1:8080/"),
        ];
        assert!(with(&secure).unwrap().warnings.is_empty());
        assert!(warned(&[(ALLOW_PLAINTEXT, "true")], ALLOW_PLAINTEXT));
        assert!(!warned(
            &[(ALLOW_PLAINTEXT, "true"), (KEY, "k")],
            ALLOW_PLAINTEXT
        ));
        assert!(warned(&[], UPSTREAM_OK));
        assert!(warned(
            &[(UPSTREAM_TIMEOUT_MS, "9000"), (SHUTDOWN_GRACE_MS, "5000")],
            UPSTREAM_TIMEOUT_MS
        ));
        assert!(!warned(
            &[(UPSTREAM_TIMEOUT_MS, "5000")],
            UPSTREAM_TIMEOUT_MS
        ));
        assert!(warned(&[], "neither"));
        assert!(!warned(&[(KEY, "k")], "neither"));
        for (url, warns) in [
            ("http://legacy.internal/", true),
            ("http://10.0.0.5:8080/", true),
            ("https://legacy.internal/", false),
            ("http://localhost:8080/", false),
            ("http://[::1]:8080/", false),
        ] {
            assert_eq!(warned(&[(UPSTREAM_URL, url)], UPSTREAM_URL), warns, "{url}");
        }
    }

    #[test]
    fn unknown_variables_warn_but_kubernetes_service_links_do_not() {
        let mut vars = minimal();
        vars.push(("FEISHU_GATE_UPSTREM_URL".into(), "x".into()));
        vars.push(("FEISHU_GATE_PORT".into(), "tcp://10.0.0.1:8443".into()));
        vars.push(("FEISHU_GATE_SERVICE_HOST".into(), "10.0.0.1".into()));
        vars.push((
            "FEISHU_GATE_METRICS_SERVICE_PORT_ADMIN".into(),
            "9901".into(),
        ));
        vars.push((
            "FEISHU_GATE_METRICS_PORT".into(),
            "tcp://10.0.0.2:9901".into(),
        ));
        vars.push((
            "FEISHU_GATE_METRICS_PORT_9901_TCP_ADDR".into(),
            "10.0.0.2".into(),
        ));
        let mut w = Config::from_vars(vars).unwrap().warnings;
        w.retain(|w| w.contains("is not a feishu-gate setting"));
        assert_eq!(
            w,
            vec!["FEISHU_GATE_UPSTREM_URL is not a feishu-gate setting and is ignored"]
        );
    }

    #[test]
    fn redis_is_off_by_default_and_its_url_never_shown() {
        let c = with(&[]).unwrap().config;
        assert!(c.redis.is_none());
        let loaded = with(&[
            (REDIS_URL, "redis://gate:p%40ss-w0rd@redis.internal:6380/2"),
            (REDIS_FAILURE, "closed"),
        ])
        .unwrap();
        let r = loaded.config.redis.clone().unwrap();
        assert_eq!(r.prefix, "feishu-gate:");
        assert_eq!(r.failure, FailureMode::Closed);
        assert_eq!(r.url.shown(), "redis://<redacted>@redis.internal:6380/2");
        let shown = format!("{:?}{:?}", loaded.config, loaded.config.describe());
        for secret in ["p%40ss-w0rd", "p@ss-w0rd", "gate:p"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert_eq!(
            r.url.scrub("NOAUTH for gate with p@ss-w0rd"),
            "NOAUTH for <redacted> with <redacted>"
        );
        let r = with(&[
            (REDIS_URL, "rediss://redis.internal"),
            (REDIS_PREFIX, "approvals:"),
        ])
        .unwrap()
        .config
        .redis
        .unwrap();
        assert_eq!(r.url.shown(), "rediss://redis.internal");
        assert_eq!(r.prefix, "approvals:");
        assert!(r.ca_file.is_none());
        let described = with(&[(REDIS_URL, "rediss://r")])
            .unwrap()
            .config
            .describe();
        assert!(described.contains(&(REDIS_CA_FILE, "system roots".to_owned())));
        let e = errors(&[(REDIS_URL, "rediss://r"), (REDIS_CA_FILE, "/no/ca.pem")]);
        assert_eq!(
            e,
            vec![format!(
                "{REDIS_CA_FILE}: cannot read /no/ca.pem: entity not found"
            )]
        );
    }

    #[test]
    fn redis_settings_are_checked_without_echoing_the_url() {
        for bad in [
            "http://:hunter2@redis/",
            "hunter2",
            "redis://:hunter2@/",
            "redis://:hunter2@redis/notadb",
        ] {
            let e = errors(&[(REDIS_URL, bad)]);
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert!(e[0].starts_with(REDIS_URL), "{e:?}");
            assert!(!e[0].contains("hunter2"), "{e:?}");
        }
        assert!(
            errors(&[(REDIS_URL, "redis://r"), (REDIS_FAILURE, "maybe")])[0]
                .starts_with(REDIS_FAILURE)
        );
        let redis_only = |w: Vec<String>| -> Vec<String> {
            w.into_iter().filter(|w| w.contains("REDIS")).collect()
        };
        let w = redis_only(with(&[(REDIS_FAILURE, "closed")]).unwrap().warnings);
        assert_eq!(
            w,
            vec![format!("{REDIS_FAILURE} has no effect without {REDIS_URL}")]
        );
        let w = redis_only(
            with(&[(REDIS_URL, "redis://r"), (DEDUP_TTL_SECS, "0")])
                .unwrap()
                .warnings,
        );
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn redis_url_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("redis-url");
        std::fs::write(&file, "redis://:s3cret@10.0.0.9:6379\n").unwrap();
        let f = file.to_str().unwrap();
        let c = with(&[("FEISHU_GATE_REDIS_URL_FILE", f)]).unwrap().config;
        let r = c.redis.unwrap();
        assert_eq!(r.url.expose(), "redis://:s3cret@10.0.0.9:6379");
        assert_eq!(r.url.shown(), "redis://<redacted>@10.0.0.9:6379");
        let e = errors(&[("FEISHU_GATE_REDIS_URL_FILE", f), (REDIS_URL, "redis://x")]);
        assert_eq!(
            e,
            vec![format!(
                "{REDIS_URL}: set either {REDIS_URL} or {REDIS_URL}_FILE, not both"
            )]
        );
    }

    #[test]
    fn misc_validation() {
        assert!(errors(&[(CALLBACK_PATH, "feishu")])[0].starts_with(CALLBACK_PATH));
        assert!(errors(&[(ADMIN_LISTEN, "0.0.0.0:8443")])[0].starts_with(ADMIN_LISTEN));
        assert!(with(&[(LISTEN, "127.0.0.1:0"), (ADMIN_LISTEN, "127.0.0.1:0")]).is_ok());
        assert!(errors(&[(ALLOW_PLAINTEXT, "maybe")])[0].starts_with(ALLOW_PLAINTEXT));
        assert!(errors(&[(MAX_BODY_BYTES, "10")])[0].starts_with(MAX_BODY_BYTES));
        assert!(errors(&[(MAX_CONNECTIONS, "0")])[0].starts_with(MAX_CONNECTIONS));
        assert_eq!(
            with(&[(MAX_CONNECTIONS, "8")])
                .unwrap()
                .config
                .max_connections,
            8
        );
        assert!(errors(&[(WORKERS, "0")])[0].starts_with(WORKERS));
        assert!(errors(&[(WORKERS, "1025")])[0].starts_with(WORKERS));
        assert_eq!(with(&[(WORKERS, "3")]).unwrap().config.workers, Some(3));
        assert_eq!(with(&[]).unwrap().config.workers, None);
        let c = with(&[
            (RATE_LIMIT_RPS, "0"),
            (USER_RATE_LIMIT_RPS, "2"),
            (DEDUP_TTL_SECS, "0"),
            (LANG, "en"),
        ])
        .unwrap()
        .config;
        assert_eq!(c.rate_limit, None);
        assert_eq!(
            c.user_rate_limit,
            Some(RateLimit {
                per_second: 2,
                burst: 4
            })
        );
        assert_eq!(c.dedup_ttl, None);
        assert_eq!(c.lang, Lang::En);
    }
}
