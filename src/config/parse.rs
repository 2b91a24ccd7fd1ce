//! Each variable parsed into the settings type of the component it belongs to.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Uri};

use super::Config;
use super::rules::*;
use super::source::{SecretFileError, Source, Value, read_secret_file, shown};
use crate::callback::ForwardOptions;
use crate::callback::secrets::{KeySet, TokenSet};
use crate::callback::verify::Verifier;
use crate::dedup::Settings as DedupSettings;
use crate::dedup::shared::{FailureMode, RedisSettings, RedisUrl};
use crate::observe::logging::LogFormat;
use crate::observe::otlp::Traces;
use crate::pipeline::Settings as PipelineSettings;
use crate::pipeline::limit::RateLimit;
use crate::respond::Lang;
use crate::server::Settings as ServerSettings;
use crate::server::tls::TlsFiles;
use crate::upstream::answer::OkRule;
use crate::upstream::{ClientIdentity, Settings as UpstreamSettings, UpstreamHeaders};
use crate::util::text::percent_decode;
use crate::vars::*;

/// Reads variables one by one, collecting every problem instead of stopping at the first.
pub(super) struct Parser<'a> {
    vars: &'a Source,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl<'a> Parser<'a> {
    pub(super) fn new(vars: &'a Source) -> Self {
        Self {
            vars,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The problems found, and the warnings about variables that do nothing.
    pub(super) fn finish(self) -> (Vec<ConfigError>, Vec<String>) {
        (self.errors, self.warnings)
    }

    fn fail(&mut self, variable: &str, problem: impl Into<String>) {
        self.errors.push(ConfigError::new(variable, problem));
    }

    /// A plain variable; empty counts as unset so manifests can blank one out.
    fn raw(&mut self, name: &str) -> Option<String> {
        match self.vars.get(name) {
            Some(Value::NotUtf8) => {
                self.fail(name, "is not valid UTF-8");
                None
            }
            Some(Value::Text(v)) if v.trim().is_empty() => None,
            Some(Value::Text(v)) => Some(v.trim().to_owned()),
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
                Ok(text) if text.trim().is_empty() => {
                    self.fail(&file_var, format!("{} is empty", shown(&path)));
                    None
                }
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

    /// A whole number within `range`.
    fn number(&mut self, name: &str, range: RangeInclusive<u64>, default: u64) -> u64 {
        let (min, max) = range.into_inner();
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
                    self.fail(
                        name,
                        format!("{v:?} is not true or false (yes/no, on/off and 1/0 also do)"),
                    );
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
                    format!("cannot read {}: {}", shown(&p.to_string_lossy()), e),
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
        let rps = self.number(rps_var, RATES, default_rps);
        let burst = self.number(burst_var, BURSTS, rps.saturating_mul(2).max(1));
        let per_second = u32::try_from(rps).ok()?;
        let burst = u32::try_from(burst).ok()?;
        (per_second > 0).then_some(RateLimit { per_second, burst })
    }

    pub(super) fn config(&mut self) -> Option<Config> {
        let listen = self.parsed(LISTEN, default_addr(8443), "an address like 0.0.0.0:8443");
        let admin_listen = self.parsed(
            ADMIN_LISTEN,
            default_addr(9901),
            "an address like 0.0.0.0:9901",
        );
        // Port 0 asks the system for a free port, so two of them never collide. An
        // unspecified address (0.0.0.0, ::) takes the port on every address, so it
        // collides with any address on the same port.
        let overlapping = listen.ip() == admin_listen.ip()
            || listen.ip().is_unspecified()
            || admin_listen.ip().is_unspecified();
        if overlapping && listen.port() == admin_listen.port() && listen.port() != 0 {
            self.fail(
                ADMIN_LISTEN,
                format!("must not share a port with {LISTEN} ({listen})"),
            );
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
        let answer_within_ms = self.number(ANSWER_WITHIN_MS, ANSWER_MS, MAX_ANSWER_WITHIN_MS);
        let upstream_timeout_ms = self.number(
            UPSTREAM_TIMEOUT_MS,
            UPSTREAM_MS,
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
        let late_verdict_ms = self.number(LATE_VERDICT_MS, LATE_MS, 60_000);
        if late_verdict_ms != 0 && late_verdict_ms < answer_within_ms {
            self.fail(
                LATE_VERDICT_MS,
                format!(
                    "{late_verdict_ms} is below {ANSWER_WITHIN_MS} ({answer_within_ms}): \
                     it counts from the callback's arrival too; use 0 to cut the exchange \
                     at the upstream timeout"
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
        let max_body_bytes = self.number(MAX_BODY_BYTES, BODY_BYTES, 65_536);
        let rate_limit = self.rate(RATE_LIMIT_RPS, RATE_LIMIT_BURST, 200);
        let user_rate_limit = self.rate(USER_RATE_LIMIT_RPS, USER_RATE_LIMIT_BURST, 0);
        let dedup_secs = self.number(DEDUP_TTL_SECS, DEDUP_SECS, 600);
        let message_id_as_string = self.boolean(MESSAGE_ID_AS_STRING);
        let retry_503 = self.boolean(RETRY_503);
        let connect_retry_ms = self.number(CONNECT_RETRY_MS, 0..=9_000, 3_000);
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
        let shutdown_grace = Duration::from_millis(self.number(SHUTDOWN_GRACE_MS, GRACE_MS, 8_000));
        let max_connections = self.number(
            MAX_CONNECTIONS,
            CONNECTIONS,
            crate::server::MAX_CONNECTIONS as u64,
        );
        let workers = self
            .raw(WORKERS)
            .is_some()
            .then(|| self.number(WORKERS, WORKER_THREADS, 1));
        let traces = self.traces();
        let redis = self.redis(dedup_secs > 0);
        let openapi = self.openapi();

        Some(Config {
            server: ServerSettings {
                listen,
                admin_listen,
                tls,
                max_connections: usize::try_from(max_connections).ok()?,
                workers: workers.and_then(|n| usize::try_from(n).ok()),
                shutdown_grace,
            },
            pipeline: PipelineSettings {
                path: callback_path,
                max_body: usize::try_from(max_body_bytes).ok()?,
                answer_within,
                late_verdict: Duration::from_millis(late_verdict_ms),
                rate_limit,
                user_rate_limit,
            },
            callback: Verifier {
                tokens: TokenSet::new(tokens),
                keys: KeySet::new(keys),
                allow_plaintext,
                forward: ForwardOptions {
                    message_id_as_string,
                },
            },
            upstream: UpstreamSettings {
                url: upstream_url?,
                timeout: upstream_timeout,
                headers: upstream_headers,
                ca_file: upstream_ca_file,
                client: upstream_client,
                ok_rule: upstream_ok,
                retry_503,
                connect_retry: Duration::from_millis(connect_retry_ms),
            },
            dedup: DedupSettings {
                ttl: (dedup_secs > 0).then(|| Duration::from_secs(dedup_secs)),
                redis,
            },
            lang,
            log_format,
            traces,
            openapi,
        })
    }

    /// The Feishu app's credentials for card repair: both or neither.
    fn openapi(&mut self) -> Option<crate::openapi::Settings> {
        let app_id = self.raw(APP_ID);
        let app_secret = self.secret(APP_SECRET);
        let url = self.raw(OPENAPI_URL);
        let ca_file = self.path(OPENAPI_CA_FILE);
        let base = match url.as_deref() {
            None => Some(Uri::from_static("https://open.feishu.cn")),
            Some(text) => match text.parse::<Uri>() {
                // Plain http would carry the secret and the token in the clear: only to
                // this pod's loopback (a local relay, a test).
                Ok(uri)
                    if (uri.scheme_str() == Some("https")
                        || uri.scheme_str() == Some("http")
                            && uri.host().is_some_and(super::rules::is_loopback))
                        && uri.host().is_some()
                        && uri.query().is_none() =>
                {
                    Some(uri)
                }
                _ => {
                    self.fail(
                        OPENAPI_URL,
                        "is not an https:// base URL like https://open.feishu.cn (Lark: https://open.larksuite.com)",
                    );
                    None
                }
            },
        };
        match (app_id, app_secret) {
            (Some(app_id), Some(app_secret)) => Some(crate::openapi::Settings {
                base: base?,
                app_id,
                app_secret,
                ca_file,
            }),
            (Some(_), None) => {
                self.fail(APP_SECRET, format!("is required with {APP_ID}"));
                None
            }
            (None, Some(_)) => {
                self.fail(APP_ID, format!("is required with {APP_SECRET}"));
                None
            }
            (None, None) => {
                for name in [OPENAPI_URL, OPENAPI_CA_FILE] {
                    if self.raw(name).is_some() {
                        self.warnings.push(format!(
                            "{name} has no effect without {APP_ID} and {APP_SECRET}"
                        ));
                    }
                }
                None
            }
        }
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
        let mut spellings = Vec::new();
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
            if crate::upstream::RESERVED_HEADERS.contains(&header.as_str()) {
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
                    spellings.push(name.to_owned());
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
        UpstreamHeaders(headers, spellings)
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

fn default_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}
