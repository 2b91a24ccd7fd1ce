//! The command line: `serve` (default), `check-config`, `demo`, `send`,
//! `encrypt`, `decrypt`. The process edge: environment, signals, exit codes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use http::Uri;
use tokio::net::TcpListener;

use crate::config::{self, Config, ConfigErrors, EXIT_CONFIG, Loaded};
use crate::envelope::CallbackKey;
use crate::gateway::Gateway;
use crate::logging::{self, Sink};
use crate::send::{self, CallbackFields};
use crate::server::{self, Listeners};
use crate::server_tls::{RELOAD_POLL, ServerTls};
use crate::telemetry::Telemetry;
use crate::upstream::REQUEST_ID;

/// Exit status when a second signal cuts the drain short.
const EXIT_FORCED: u8 = 130;

#[derive(Debug, Parser)]
#[command(
    name = "feishu-gate",
    version,
    about = "Sidecar between Feishu's quick-approval callbacks and a legacy approval system",
    long_about = "Sidecar between Feishu's quick-approval callbacks and a legacy approval \
                  system.\n\n\
                  Configured by FEISHU_GATE_* environment variables; run \
                  `feishu-gate check-config` to see the effective settings."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway, configured from the environment (the default).
    Serve,
    /// Validate the environment and print the effective settings, secrets redacted.
    CheckConfig,
    /// Start the gateway and an example legacy system on loopback, send a sample
    /// encrypted callback through both, then keep serving until Ctrl-C.
    Demo(crate::demo::DemoArgs),
    /// Play Feishu against a running gateway: the smoke test after a deployment.
    Send(Box<SendArgs>),
    /// Seal stdin into Feishu's `{"encrypt": ...}` envelope.
    Encrypt(EncryptArgs),
    /// Open Feishu's envelope (a `{"encrypt": ...}` body or the bare base64) from stdin.
    Decrypt(DecryptArgs),
}

/// A secret for a debugging command: from its flag or variable, or from a file, so that it
/// need not appear in the process list or the shell's history.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Feishu's action_callback_key (a comma-separated list: tried in order).
    #[arg(
        long,
        env = "FEISHU_GATE_KEY",
        hide_env_values = true,
        conflicts_with = "key_file"
    )]
    pub key: Option<String>,
    /// A file holding the key, as a mounted Secret does.
    #[arg(long, env = "FEISHU_GATE_KEY_FILE", value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EncryptArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Print only the base64 value, not the JSON body.
    #[arg(long)]
    pub raw: bool,
    /// Seal stdin even when it is empty or not a JSON object (a callback is one).
    #[arg(long)]
    pub any_input: bool,
}

#[derive(Debug, Args)]
pub struct DecryptArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Print the callback's token instead of `<redacted>`.
    #[arg(long)]
    pub show_token: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The gateway's callback URL.
    #[arg(long, default_value = "http://127.0.0.1:8443/")]
    pub url: Uri,
    /// Feishu's action_callback_token (the first of a comma-separated list is used).
    #[arg(
        long,
        env = "FEISHU_GATE_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// A file holding the token, as a mounted Secret does.
    #[arg(long, env = "FEISHU_GATE_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Feishu's action_callback_key; when given, the callback is encrypted.
    #[command(flatten)]
    pub key: KeyArgs,
    /// APPROVE, REJECT, or a custom action key.
    #[arg(long, default_value = "APPROVE")]
    pub action: String,
    #[arg(long, default_value = "feishu-gate-smoke-test")]
    pub user_id: String,
    #[arg(long, default_value = "FEISHU-GATE-SMOKE-TEST")]
    pub approval_code: String,
    #[arg(long)]
    pub instance_id: Option<String>,
    #[arg(long)]
    pub task_id: Option<String>,
    #[arg(long)]
    pub message_id: Option<u64>,
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub action_context: Option<String>,
    /// Sent as `X-Request-Id`, to find this callback in the gateway's and the legacy
    /// system's logs.
    #[arg(long)]
    pub request_id: Option<String>,
    /// PEM file of a CA to trust for an https:// URL (besides the system's roots).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Give up after this long (Feishu waits 10 s).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

impl KeyArgs {
    fn get(&self) -> Result<Option<String>, ExitCode> {
        secret(self.key.as_deref(), self.key_file.as_deref(), "key")
    }

    fn required(&self) -> Result<String, ExitCode> {
        self.get()?.ok_or_else(|| {
            eprintln!(
                "feishu-gate: give the key with --key-file PATH, FEISHU_GATE_KEY_FILE, \
                 FEISHU_GATE_KEY or --key"
            );
            ExitCode::from(EXIT_CONFIG as u8)
        })
    }
}

/// The secret given directly, or read from `file` (its trailing newline dropped).
fn secret(
    direct: Option<&str>,
    file: Option<&Path>,
    what: &str,
) -> Result<Option<String>, ExitCode> {
    if let Some(value) = direct {
        return Ok(Some(value.to_owned()));
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let fail = |problem: String| {
        eprintln!(
            "feishu-gate: cannot read the {what} from {}: {problem}",
            path.display()
        );
        ExitCode::from(EXIT_CONFIG as u8)
    };
    match config::read_secret_file(&path.to_string_lossy()) {
        Ok(text) => Ok(Some(text)),
        Err(config::SecretFileError::Unreadable(problem)) => Err(fail(problem)),
        Err(config::SecretFileError::NotUtf8) => Err(fail("not valid UTF-8".to_owned())),
    }
}

/// Runs the command line and returns the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(),
        Command::CheckConfig => check_config(),
        Command::Demo(args) => run_async(crate::demo::run(args)),
        Command::Send(args) => run_async(send_command(*args)),
        Command::Encrypt(args) => encrypt(&args),
        Command::Decrypt(args) => decrypt(&args),
    };
    // Every return, early ones included (a listener that cannot bind), leaves through here:
    // the main thread's held-back lines are written before the process exits.
    logging::flush();
    code
}

fn run_async(f: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("feishu-gate: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config_failure(errors: &ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    ExitCode::from(EXIT_CONFIG as u8)
}

/// The configuration plus every check that needs the files it names, so that
/// `check-config` and `serve` refuse exactly the same things.
fn load() -> Result<(Loaded, Gateway, Option<ServerTls>), ConfigErrors> {
    let loaded = Config::from_env()?;
    let gateway = Gateway::new(&loaded.config);
    let tls = loaded.config.tls.as_ref().map(ServerTls::load).transpose();
    match (gateway, tls) {
        (Ok(gateway), Ok(tls)) => Ok((loaded, gateway, tls)),
        (gateway, tls) => Err(ConfigErrors(
            gateway
                .err()
                .into_iter()
                .chain(tls.err())
                .flat_map(|e| e.0)
                .collect(),
        )),
    }
}

fn check_config() -> ExitCode {
    let result = load();
    match result {
        Err(errors) => config_failure(&errors),
        Ok((loaded, _, _)) => {
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

fn serve() -> ExitCode {
    // Callbacks are served by the worker threads `server::serve` starts; this
    // thread only accepts connections, answers the admin port and waits for
    // signals, so it needs no pool of its own.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(logging::flush)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("feishu-gate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run_gateway())
}

/// The gateway's life on the accepting thread's runtime: configuration, listeners,
/// serving, drain.
async fn run_gateway() -> ExitCode {
    let (loaded, gateway, tls) = match load() {
        Ok(ok) => ok,
        Err(errors) => return config_failure(&errors),
    };
    let config = loaded.config;
    logging::init(config.log_format, Sink::Stdout);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    log_start(&config.describe());
    let listeners = match bind(&config).await {
        Ok(l) => l,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let gateway = match &config.traces {
        None => gateway,
        Some(traces) => match Telemetry::start(traces, &config.upstream_url) {
            Ok(telemetry) => {
                tracing::info!(
                    endpoint = %traces.endpoint,
                    service = %traces.service_name,
                    "exporting spans over OTLP/HTTP"
                );
                gateway.with_telemetry(telemetry)
            }
            Err(message) => {
                tracing::error!("{message}");
                eprintln!("{message}");
                return ExitCode::FAILURE;
            }
        },
    };
    let telemetry = gateway.telemetry().cloned();
    let shutdown = shutdown_signal();
    let acceptor = tls.as_ref().map(ServerTls::acceptor);
    let reload = tls.map(|tls| tokio::spawn(tls.watch(RELOAD_POLL, gateway.metrics.clone())));
    server::serve(
        Arc::new(gateway),
        listeners,
        acceptor,
        shutdown,
        config.shutdown_grace,
    )
    .await;
    if let Some(reload) = reload {
        reload.abort();
    }
    if let Some(telemetry) = telemetry {
        // The exporter sends its last batch on this runtime while the
        // flush blocks a thread of its own.
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    }
    ExitCode::SUCCESS
}

/// The start-up line: each effective setting a field of its own, named as its variable
/// without the prefix, in lower case (`upstream_timeout_ms`), secrets redacted. The
/// fields are those `config::variables!` marks `logged as`: tracing needs each name
/// written out where the event is.
fn log_start(settings: &[(&'static str, String)]) {
    let value = |name: &str| {
        settings
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    };
    macro_rules! starting {
        ($(
            $(#[$doc:meta])* $konst:ident = $name:literal $(, logged as $field:ident)?
            { $($entry:tt)* }
        )*) => {
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                $($($field = value(config::$konst),)?)*
                "starting"
            )
        };
    }
    config::variables!(starting);
}

async fn bind(config: &Config) -> Result<Listeners, String> {
    let callback = TcpListener::bind(config.listen).await.map_err(|e| {
        format!(
            "{}: cannot listen on {}: {e}",
            config::LISTEN,
            config.listen
        )
    })?;
    let admin = TcpListener::bind(config.admin_listen).await.map_err(|e| {
        format!(
            "{}: cannot listen on {}: {e}",
            config::ADMIN_LISTEN,
            config.admin_listen
        )
    })?;
    Ok(Listeners { callback, admin })
}

/// Completes on the first SIGTERM or SIGINT. A second one exits at once.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("signal received: draining (send it again to exit at once)");
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal: exiting without waiting for in-flight callbacks");
        logging::flush();
        std::process::exit(i32::from(EXIT_FORCED));
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the only way out is being killed; never resolve.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn read_stdin() -> Result<Vec<u8>, ExitCode> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).map_err(|e| {
        eprintln!("feishu-gate: cannot read stdin: {e}");
        ExitCode::FAILURE
    })?;
    Ok(input)
}

fn first_key(list: &str) -> &str {
    list.split(',')
        .map(str::trim)
        .find(|k| !k.is_empty())
        .unwrap_or(list)
}

fn encrypt(args: &EncryptArgs) -> ExitCode {
    let key = match args.key.required() {
        Ok(k) => k,
        Err(code) => return code,
    };
    let input = match read_stdin() {
        Ok(i) => i,
        Err(code) => return code,
    };
    // A shell's trailing newline is no part of the callback.
    let plaintext = input.strip_suffix(b"\n").unwrap_or(&input);
    if !args.any_input {
        let problem = if plaintext.iter().all(u8::is_ascii_whitespace) {
            Some("stdin is empty")
        } else if !serde_json::from_slice::<serde_json::Value>(plaintext)
            .is_ok_and(|v| v.is_object())
        {
            Some("stdin is not a JSON object, as a callback is")
        } else {
            None
        };
        if let Some(problem) = problem {
            eprintln!("feishu-gate: {problem}; --any-input seals it anyway");
            return ExitCode::FAILURE;
        }
    }
    let sealed = match CallbackKey::new(first_key(&key)).encrypt(plaintext) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("feishu-gate: no randomness for the IV: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = if args.raw {
        sealed
    } else {
        serde_json::json!({ "encrypt": sealed }).to_string()
    };
    println!("{out}");
    ExitCode::SUCCESS
}

fn decrypt(args: &DecryptArgs) -> ExitCode {
    let keys = match args.key.required() {
        Ok(k) => k,
        Err(code) => return code,
    };
    let input = match read_stdin() {
        Ok(i) => i,
        Err(code) => return code,
    };
    let text = String::from_utf8_lossy(&input);
    let text = text.trim();
    let encrypt = if text.starts_with('{') {
        match serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v.get("encrypt").and_then(|e| e.as_str()).map(str::to_owned))
        {
            Some(e) => e,
            None => {
                eprintln!("feishu-gate: the input is JSON without a string \"encrypt\" field");
                return ExitCode::FAILURE;
            }
        }
    } else {
        text.to_owned()
    };
    let mut last_error = None;
    for key in keys.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        match CallbackKey::new(key).decrypt(&encrypt) {
            Ok(plain) if serde_json::from_slice::<serde_json::Value>(&plain).is_ok() => {
                let shown = if args.show_token {
                    plain
                } else {
                    without_token(plain)
                };
                let mut out = std::io::stdout();
                let _ = out.write_all(&shown);
                let _ = out.write_all(b"\n");
                return ExitCode::SUCCESS;
            }
            Ok(_) => {
                last_error = Some("decrypts to something that is not JSON (wrong key?)".to_owned())
            }
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    eprintln!(
        "feishu-gate: cannot decrypt: {}",
        last_error.unwrap_or_else(|| "no key given".to_owned())
    );
    ExitCode::FAILURE
}

/// The opened callback with its token's value replaced by `<redacted>`, byte for byte
/// otherwise: what is pasted into a ticket or a chat should not carry the secret.
fn without_token(plain: Vec<u8>) -> Vec<u8> {
    let token = serde_json::from_slice::<serde_json::Value>(&plain)
        .ok()
        .and_then(|v| v.get("token").and_then(|t| t.as_str()).map(str::to_owned));
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return plain;
    };
    let Ok(text) = String::from_utf8(plain) else {
        return Vec::new();
    };
    // The token appears written as JSON writes it (Feishu's are plain letters and digits);
    // any other spelling of it is caught by writing the object out again.
    let quoted = serde_json::Value::String(token.clone()).to_string();
    if text.matches(quoted.as_str()).count() == 1 {
        return text.replacen(&quoted, r#""<redacted>""#, 1).into_bytes();
    }
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if let Some(t) = v.get_mut("token") {
        *t = serde_json::Value::String("<redacted>".to_owned());
    }
    v.to_string().into_bytes()
}

async fn send_command(args: SendArgs) -> ExitCode {
    let token = match secret(args.token.as_deref(), args.token_file.as_deref(), "token") {
        Ok(Some(t)) => t,
        Ok(None) => {
            eprintln!(
                "feishu-gate: give the token with --token-file PATH, FEISHU_GATE_TOKEN_FILE, \
                 FEISHU_GATE_TOKEN or --token"
            );
            return ExitCode::from(EXIT_CONFIG as u8);
        }
        Err(code) => return code,
    };
    let key = match args.key.get() {
        Ok(k) => k,
        Err(code) => return code,
    };
    let fields = CallbackFields {
        action_type: args.action,
        user_id: args.user_id,
        approval_code: args.approval_code,
        instance_id: args.instance_id,
        task_id: args.task_id,
        message_id: args.message_id,
        reason: args.reason,
        action_context: args.action_context,
    };
    let plaintext = fields.to_json(first_key(&token));
    let body = match key.as_deref().map(first_key) {
        None => plaintext,
        Some(key) => match send::seal(key, &plaintext) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("feishu-gate: no randomness for the IV: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let request_id = args.request_id.as_deref();
    match send::post(
        &args.url,
        body,
        request_id,
        args.ca_file.as_deref(),
        timeout,
    )
    .await
    {
        Ok(answer) => {
            println!(
                "{} {}",
                answer.status.as_u16(),
                String::from_utf8_lossy(&answer.body)
            );
            // What the operator needs next: the id to find the log lines by, and when
            // to try again.
            for (name, shown) in [(REQUEST_ID, "X-Request-Id"), ("retry-after", "Retry-After")] {
                if let Some(value) = answer.headers.get(name) {
                    println!("{shown}: {}", String::from_utf8_lossy(value.as_bytes()));
                }
            }
            if answer.status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("feishu-gate: {e}");
            ExitCode::from(2)
        }
    }
}
