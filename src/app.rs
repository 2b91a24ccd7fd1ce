//! The one composition root: a [`Config`] becomes a running gateway here, and nowhere
//! else. `serve`, `check-config`, `demo` and the tests all build through [`App::build`],
//! so they refuse exactly the same configurations and run exactly the same parts.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsAcceptor;

use crate::callback::verify::Verifier;
use crate::config::{Config, ConfigErrors};
use crate::dedup::local::Dedup;
use crate::dedup::shared::{RedisSettings, SharedMemory};
use crate::observe::otlp::Telemetry;
use crate::openapi::OpenApi;
use crate::pipeline::{Gateway, Parts};
use crate::respond::Translator;
use crate::server::tls::{RELOAD_POLL, ServerTls};
use crate::server::{self, Listeners};
use crate::upstream::Upstream;

/// `UPSTREAM_HEADERS` values shorter than this (`X-Tenant=42`) are not looked for in the
/// legacy system's messages: no credential is that short, and ordinary text holds them.
const MIN_HEADER_SECRET_LEN: usize = 6;

/// Exit status for a configuration error (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// Exit status when a second signal cuts the drain short.
pub const EXIT_FORCED: u8 = 130;

/// Why the gateway could not start; each kind has its exit status, decided here.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration, or a file it names, is not usable.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A listener could not be bound, or the runtime or exporter could not start.
    #[error("{0}")]
    Io(String),
}

impl StartError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Config(_) => ExitCode::from(EXIT_CONFIG),
            Self::Io(_) => ExitCode::FAILURE,
        }
    }
}

/// The gateway, built and ready to serve.
pub struct App {
    /// Not shared until it serves, so that start-up can still add to it.
    gateway: Gateway,
    /// The callback listener's certificate, when `TLS_CERT` and `TLS_KEY` are set.
    tls: Option<ServerTls>,
    settings: server::Settings,
}

/// Where the callback listener's TLS comes from.
pub enum ListenerTls {
    /// The configured files, if any, read again this often so that a renewed pair is
    /// served without a restart.
    Files(Duration),
    /// An acceptor the caller made (tests make their own); the files are not followed.
    Given(TlsAcceptor),
}

impl App {
    /// Builds every part from `config`, reading every file it names; every problem is
    /// reported at once, naming its variable.
    pub fn build(config: &Config) -> Result<Self, ConfigErrors> {
        // In the order of the variables, so every bad file is reported, each once.
        let redis = redis(config);
        let shared = redis
            .map(|(redis, ttl)| shared_memory(redis, ttl))
            .transpose();
        let upstream = Upstream::new(&config.upstream);
        let tls = config.server.tls.as_ref().map(ServerTls::load).transpose();
        let openapi = config.openapi.as_ref().map(OpenApi::new).transpose();
        let (shared, upstream, tls, openapi) = match (shared, upstream, tls, openapi) {
            (Ok(shared), Ok(upstream), Ok(tls), Ok(openapi)) => (shared, upstream, tls, openapi),
            (shared, upstream, tls, openapi) => {
                let errors = [shared.err(), upstream.err(), tls.err(), openapi.err()];
                return Err(ConfigErrors(
                    errors.into_iter().flatten().flat_map(|e| e.0).collect(),
                ));
            }
        };
        let parts = Parts {
            verifier: config.callback.clone(),
            upstream,
            translator: Translator::new(config.lang, secrets(config, redis.map(|r| r.0)))
                .with_late_exchange(!config.pipeline.late_verdict.is_zero())
                .with_card_repair(openapi.is_some() && !config.pipeline.late_verdict.is_zero()),
            dedup: config.dedup.ttl.map(Dedup::new),
            shared,
            openapi: openapi.map(Arc::new),
        };
        Ok(Self {
            gateway: Gateway::new(&config.pipeline, parts),
            tls,
            settings: config.server.clone(),
        })
    }

    /// Exports a span for every callback through `telemetry`.
    pub fn with_telemetry(mut self, telemetry: Telemetry) -> Self {
        self.gateway = self.gateway.with_telemetry(telemetry);
        self
    }

    /// The gateway as built, before it serves.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Serves until `shutdown` completes, then drains, following the certificate files.
    pub async fn serve(self, listeners: Listeners, shutdown: impl Future<Output = ()>) {
        let (_, serving) = self.start(listeners, ListenerTls::Files(RELOAD_POLL), shutdown);
        serving.await;
    }

    /// The gateway, now shared, and the future that serves it until `shutdown`
    /// completes and then drains.
    pub fn start(
        self,
        listeners: Listeners,
        tls: ListenerTls,
        shutdown: impl Future<Output = ()>,
    ) -> (Arc<Gateway>, impl Future<Output = ()>) {
        let Self {
            gateway,
            tls: files,
            settings,
        } = self;
        let gateway = Arc::new(gateway);
        let (acceptor, reload) = match tls {
            ListenerTls::Given(acceptor) => (Some(acceptor), None),
            ListenerTls::Files(every) => match files {
                None => (None, None),
                Some(files) => (Some(files.acceptor()), Some((files, every))),
            },
        };
        let serving = {
            let gateway = gateway.clone();
            async move {
                let metrics = gateway.metrics.clone();
                let reload = reload.map(|(files, every)| tokio::spawn(files.watch(every, metrics)));
                let telemetry = gateway.telemetry().cloned();
                server::serve(gateway, listeners, acceptor, shutdown, settings).await;
                if let Some(reload) = reload {
                    reload.abort();
                }
                if let Some(telemetry) = telemetry {
                    // The exporter sends its last batch on this runtime while the
                    // flush blocks a thread of its own.
                    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
                }
            }
        };
        (gateway, serving)
    }
}

/// Redis and how long it remembers, when Redis is named and suppression is on.
fn redis(config: &Config) -> Option<(&RedisSettings, Duration)> {
    config.dedup.redis.as_ref().zip(config.dedup.ttl)
}

/// The memory shared with the other replicas.
fn shared_memory(redis: &RedisSettings, ttl: Duration) -> Result<SharedMemory, ConfigErrors> {
    SharedMemory::new(redis, ttl).map_err(ConfigErrors::from)
}

/// Every secret the legacy system's messages are searched for before an approver sees
/// them: the tokens, the keys, the upstream's header values, Redis's credentials.
fn secrets(config: &Config, redis: Option<&RedisSettings>) -> Vec<String> {
    let Verifier { tokens, keys, .. } = &config.callback;
    let mut secrets: Vec<String> = tokens.plain().to_vec();
    secrets.extend_from_slice(keys.plain());
    secrets.extend(config.upstream.headers.0.iter().flat_map(|(_, value)| {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        // `Bearer abc…`: an echo of the credentials alone gives away as much.
        let credentials = value
            .split_once(' ')
            .map(|(_, c)| c.trim().to_owned())
            .filter(|c| c.len() >= MIN_HEADER_SECRET_LEN);
        [Some(value), credentials]
            .into_iter()
            .flatten()
            .filter(|s| s.len() >= MIN_HEADER_SECRET_LEN)
    }));
    if let Some(redis) = redis {
        secrets.extend_from_slice(redis.url.secrets());
    }
    if let Some(openapi) = &config.openapi {
        secrets.push(openapi.app_secret.clone());
    }
    let encoded: Vec<String> = secrets.iter().flat_map(|s| encoded_forms(s)).collect();
    secrets.extend(encoded);
    secrets
}

/// How a system that echoes a credential may have written it: base64 (standard or URL-safe,
/// padded or not) and hex; and, for a header's `Basic` credentials, the `user:password`
/// they decode to and the password alone.
fn encoded_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let bytes = secret.as_bytes();
    let mut forms = vec![
        STANDARD.encode(bytes),
        STANDARD_NO_PAD.encode(bytes),
        URL_SAFE_NO_PAD.encode(bytes),
    ];
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    forms.push(hex.to_ascii_uppercase());
    forms.push(hex);
    let decoded = STANDARD
        .decode(secret)
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .filter(|d| d.contains(':'));
    if let Some(user_password) = decoded {
        if let Some((_, password)) = user_password.split_once(':') {
            forms.push(password.to_owned());
        }
        forms.push(user_password);
    }
    // Short forms would redact innocent words; the secret itself stays whatever its length.
    forms.retain(|f| f.len() >= MIN_HEADER_SECRET_LEN && f != secret);
    forms.sort();
    forms.dedup();
    forms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vars::*;

    fn problems(vars: &[(&str, &str)]) -> Vec<String> {
        let mut all = vec![(UPSTREAM_URL, "https://legacy.internal/"), (TOKEN, "t")];
        all.extend_from_slice(vars);
        let config = Config::from_vars(all.iter().copied()).unwrap().config;
        let Err(errors) = App::build(&config) else {
            panic!("{vars:?} builds")
        };
        errors.0.iter().map(ToString::to_string).collect()
    }

    /// Writes `text` to `name` in `dir` and gives the path as a variable holds it.
    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    }

    #[test]
    fn every_bad_file_is_reported_each_once_in_the_order_of_the_variables() {
        let dir = tempfile::tempdir().unwrap();
        let junk = &write(&dir, "junk.pem", "not PEM");
        let seen = problems(&[
            (REDIS_URL, "rediss://redis.internal:6379"),
            (REDIS_CA_FILE, junk),
            (UPSTREAM_CA_FILE, junk),
            (TLS_CERT, junk),
            (TLS_KEY, junk),
        ]);
        let variables: Vec<&str> = seen.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            variables,
            [REDIS_CA_FILE, UPSTREAM_CA_FILE, TLS_CERT, TLS_KEY],
            "{seen:#?}"
        );
    }

    #[test]
    fn a_client_certificate_that_does_not_match_its_key_is_blamed_on_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let params = rcgen::CertificateParams::new(vec!["client".to_owned()]).unwrap();
        let (key, other) = (
            rcgen::KeyPair::generate().unwrap(),
            rcgen::KeyPair::generate().unwrap(),
        );
        let cert = write(&dir, "client.crt", &params.self_signed(&key).unwrap().pem());
        let other = write(&dir, "other.key", &other.serialize_pem());
        let seen = problems(&[(UPSTREAM_CLIENT_CERT, &cert), (UPSTREAM_CLIENT_KEY, &other)]);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].starts_with(&format!("{UPSTREAM_CLIENT_CERT}: ")),
            "{seen:?}"
        );
        assert!(seen[0].contains("does not match"), "{seen:?}");
    }
}
