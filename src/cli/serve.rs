//! `serve` and `check-config`: the configuration from the environment, through the
//! composition root, to listeners and a drain.

use std::process::ExitCode;

use crate::app::{App, StartError};
use crate::config::{self, Config, Loaded};
use crate::observe::logging::{self, Sink};
use crate::observe::otlp::Telemetry;
use crate::server::{self, Listeners};

/// The configuration plus every check that needs the files it names, so that
/// `check-config` and `serve` refuse exactly the same things.
fn load() -> Result<(Loaded, App), StartError> {
    let loaded = Config::from_env()?;
    let app = App::build(&loaded.config)?;
    Ok((loaded, app))
}

/// Reports a failure to start on stderr (and in the log, once logging is up) and gives
/// its exit status.
fn failed(error: &StartError) -> ExitCode {
    match error {
        StartError::Io(message) => tracing::error!("{message}"),
        // A misspelt name is often why a required setting is missing: its warning comes
        // first, not hidden by the error it causes.
        StartError::Config(_) => {
            for warning in Config::warnings_from_env() {
                eprintln!("warning: {warning}");
            }
        }
    }
    eprintln!("{error}");
    error.exit_code()
}

pub(super) fn check_config() -> ExitCode {
    match load() {
        Err(error) => failed(&error),
        Ok((loaded, _)) => {
            for warning in &loaded.warnings {
                eprintln!("warning: {warning}");
            }
            for (name, value) in loaded.config.describe() {
                println!("{name}={value}");
            }
            ExitCode::SUCCESS
        }
    }
}

/// Fetches a `tenant_access_token` with the configured app credentials and says whether
/// it worked, without showing the token: the operator's smoke test for card repair.
pub(super) fn openapi_check() -> ExitCode {
    let loaded = match load() {
        Err(error) => return failed(&error),
        Ok((loaded, _)) => loaded,
    };
    let Some(settings) = loaded.config.openapi else {
        eprintln!(
            "feishu-gate: {} and {} are not set: card repair is off, there is nothing to check",
            config::APP_ID,
            config::APP_SECRET
        );
        return ExitCode::from(crate::app::EXIT_CONFIG);
    };
    super::run_async(async move {
        let api = match crate::openapi::OpenApi::new(&settings) {
            Ok(api) => api,
            Err(errors) => return failed(&StartError::Config(errors)),
        };
        match api.fetch_token().await {
            Ok((_, lives)) => {
                println!(
                    "ok: {} gave app {} a tenant_access_token, valid for {} s; card repair can \
                     update approval cards if the app may use the approval API",
                    api.base(),
                    settings.app_id,
                    lives.as_secs()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                let what = if e.is_answer() {
                    "refused app"
                } else {
                    "could not be asked for a token for app"
                };
                eprintln!(
                    "feishu-gate: {} {what} {}: {e}",
                    api.base(),
                    settings.app_id
                );
                ExitCode::FAILURE
            }
        }
    })
}

pub(super) fn serve() -> ExitCode {
    // Callbacks are accepted and served by the worker threads `server::serve`
    // starts; this thread only answers the admin port and waits for signals,
    // so it needs no pool of its own.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(logging::flush)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return failed(&StartError::Io(format!(
                "feishu-gate: cannot start the runtime: {e}"
            )));
        }
    };
    match rt.block_on(run_gateway()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => failed(&error),
    }
}

/// The gateway's life on the main thread's runtime: configuration, listeners,
/// serving, drain.
async fn run_gateway() -> Result<(), StartError> {
    let (loaded, app) = load()?;
    let config = loaded.config;
    logging::init(config.log_format, Sink::Stdout);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    log_start(&config.describe());
    let listeners = bind(&config)?;
    let app = match &config.traces {
        None => app,
        Some(traces) => {
            let telemetry =
                Telemetry::start(traces, &config.upstream.url).map_err(StartError::Io)?;
            tracing::info!(
                endpoint = %crate::util::text::shown_url(&traces.endpoint),
                service = %traces.service_name,
                "exporting spans over OTLP/HTTP"
            );
            app.with_telemetry(telemetry)
        }
    };
    app.serve(listeners, super::shutdown_signal()).await;
    Ok(())
}

/// The start-up line: each setting `check-config` shows a field of its own, named as its
/// variable without the prefix, in lower case (`upstream_timeout_ms`), secrets redacted.
/// tracing needs each field's name written out where the event is; a test holds this
/// list to [`Config::describe`].
fn log_start(settings: &[(&'static str, String)]) {
    let value = |name: &str| {
        settings
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    use config::*;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = value(LISTEN),
        admin_listen = value(ADMIN_LISTEN),
        callback_path = value(CALLBACK_PATH),
        upstream_url = value(UPSTREAM_URL),
        upstream_timeout_ms = value(UPSTREAM_TIMEOUT_MS),
        answer_within_ms = value(ANSWER_WITHIN_MS),
        late_verdict_ms = value(LATE_VERDICT_MS),
        upstream_headers = value(UPSTREAM_HEADERS),
        upstream_ca_file = value(UPSTREAM_CA_FILE),
        upstream_client_cert = value(UPSTREAM_CLIENT_CERT),
        upstream_client_key = value(UPSTREAM_CLIENT_KEY),
        upstream_ok = value(UPSTREAM_OK),
        retry_503 = value(RETRY_503),
        connect_retry_ms = value(CONNECT_RETRY_MS),
        token = value(TOKEN),
        key = value(KEY),
        allow_plaintext = value(ALLOW_PLAINTEXT),
        tls_cert = value(TLS_CERT),
        tls_key = value(TLS_KEY),
        max_body_bytes = value(MAX_BODY_BYTES),
        rate_limit_rps = value(RATE_LIMIT_RPS),
        user_rate_limit_rps = value(USER_RATE_LIMIT_RPS),
        dedup_ttl_secs = value(DEDUP_TTL_SECS),
        message_id_as_string = value(MESSAGE_ID_AS_STRING),
        lang = value(LANG),
        log_format = value(LOG_FORMAT),
        shutdown_grace_ms = value(SHUTDOWN_GRACE_MS),
        max_connections = value(MAX_CONNECTIONS),
        workers = value(WORKERS),
        otel_exporter_otlp_traces_endpoint = value(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT),
        otel_service_name = value(OTEL_SERVICE_NAME),
        otel_traces_sampler = value(OTEL_TRACES_SAMPLER),
        redis_url = value(REDIS_URL),
        redis_prefix = value(REDIS_PREFIX),
        redis_ca_file = value(REDIS_CA_FILE),
        redis_failure = value(REDIS_FAILURE),
        app_id = value(APP_ID),
        app_secret = value(APP_SECRET),
        openapi_url = value(OPENAPI_URL),
        openapi_ca_file = value(OPENAPI_CA_FILE),
        "starting"
    );
}

fn bind(config: &Config) -> Result<Listeners, StartError> {
    let (listen, admin_listen) = (config.server.listen, config.server.admin_listen);
    let callback = server::listen(listen).map_err(|e| {
        StartError::Io(format!(
            "{}: cannot listen on {listen}: {e}",
            config::LISTEN
        ))
    })?;
    let admin = server::listen(admin_listen).map_err(|e| {
        StartError::Io(format!(
            "{}: cannot listen on {admin_listen}: {e}",
            config::ADMIN_LISTEN
        ))
    })?;
    Ok(Listeners { callback, admin })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    use super::*;

    /// Records the field names of every event.
    #[derive(Clone, Default)]
    struct FieldNames(Arc<Mutex<Vec<String>>>);

    impl Visit for FieldNames {
        fn record_debug(&mut self, field: &Field, _: &dyn std::fmt::Debug) {
            self.0.lock().unwrap().push(field.name().to_owned());
        }
    }

    impl Subscriber for FieldNames {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            event.record(&mut self.clone());
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn the_start_up_line_has_a_field_for_each_shown_setting_and_no_other() {
        let loaded = Config::from_vars([
            (config::UPSTREAM_URL, "http://127.0.0.1:8080/"),
            (config::TOKEN, "t"),
        ])
        .unwrap();
        let described = loaded.config.describe();
        let names = FieldNames::default();
        tracing::subscriber::with_default(names.clone(), || log_start(&described));
        let logged: Vec<String> = (names.0.lock().unwrap().iter())
            .filter(|name| *name != "message")
            .cloned()
            .collect();
        let mut expected = vec!["version".to_owned()];
        expected.extend(described.iter().map(|(name, _)| {
            name.strip_prefix(config::PREFIX)
                .unwrap_or(name)
                .to_ascii_lowercase()
        }));
        assert_eq!(logged, expected);
    }
}
