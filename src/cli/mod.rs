//! The command line: `serve` (default), `check-config`, `demo`, `send`,
//! `encrypt`, `decrypt`. The process edge: environment, signals, exit codes.

mod crypt;
pub mod demo;
pub mod send;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use http::Uri;

use crate::app::{EXIT_CONFIG, EXIT_FORCED};
use crate::config;
use crate::observe::logging;

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
    /// Fetch a tenant_access_token with FEISHU_GATE_APP_ID and FEISHU_GATE_APP_SECRET and
    /// say whether they work (the token is not shown). Exit 0 when they do, 1 when Feishu
    /// refuses or cannot be reached, 64 for a configuration error.
    OpenapiCheck,
    /// Start the gateway and an example legacy system on loopback, send a sample
    /// encrypted callback through both, then keep serving until Ctrl-C.
    Demo(demo::DemoArgs),
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
    /// Feishu's action_callback_key. A comma-separated list: decrypt tries each in order;
    /// encrypt and send seal with the first.
    #[arg(
        long,
        env = "FEISHU_GATE_KEY",
        hide_env_values = true,
        conflicts_with = "key_file"
    )]
    pub key: Option<String>,
    /// A file holding the key, as a mounted Secret does.
    #[arg(
        long,
        env = "FEISHU_GATE_KEY_FILE",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EncryptArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Print only the base64 value, not the JSON body.
    #[arg(long)]
    pub raw: bool,
    /// Seal stdin even when it is empty or not a JSON object (a callback is one);
    /// `decrypt --any-output` opens what this seals.
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
    /// Print what the envelope holds even when it is not JSON (as `encrypt --any-input`
    /// may seal), as is; without it, such a result counts as a wrong key.
    #[arg(long)]
    pub any_output: bool,
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
    #[arg(
        long,
        env = "FEISHU_GATE_TOKEN_FILE",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub token_file: Option<PathBuf>,
    /// Feishu's action_callback_key; when given, the callback is encrypted.
    #[command(flatten)]
    pub key: KeyArgs,
    /// APPROVE, REJECT, or a custom action key.
    #[arg(long, default_value = "APPROVE")]
    pub action: String,
    /// The approver's `user_id`.
    #[arg(long, default_value = "feishu-gate-smoke-test")]
    pub user_id: String,
    /// The approval definition's `approval_code`.
    #[arg(long, default_value = "FEISHU-GATE-SMOKE-TEST")]
    pub approval_code: String,
    /// The approval instance's `instance_id` (left out when not given).
    #[arg(long)]
    pub instance_id: Option<String>,
    /// The task's `task_id` (left out when not given).
    #[arg(long)]
    pub task_id: Option<String>,
    /// The card's `message_id`, sent as a JSON number as Feishu does.
    #[arg(long)]
    pub message_id: Option<u64>,
    /// The approver's comment, `reason`.
    #[arg(long)]
    pub reason: Option<String>,
    /// `action_context`, as a custom action carries it.
    #[arg(long)]
    pub action_context: Option<String>,
    /// Sent as `X-Request-Id`, to find this callback in the gateway's and the legacy
    /// system's logs.
    #[arg(long)]
    pub request_id: Option<String>,
    /// PEM file of a CA to trust for an https:// URL (besides the system's roots).
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Give up after this long, in ms (Feishu waits 10 s).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
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
            ExitCode::from(EXIT_CONFIG)
        })
    }
}

/// The secret given directly, or read from `file` (its trailing newline dropped).
fn secret(
    direct: Option<&str>,
    file: Option<&Path>,
    what: &str,
) -> Result<Option<String>, ExitCode> {
    // An empty value counts as unset, as for the gateway's own variables.
    if let Some(value) = direct.filter(|v| !v.trim().is_empty()) {
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
        ExitCode::from(EXIT_CONFIG)
    };
    match config::read_secret_file(&path.to_string_lossy()) {
        Ok(text) if text.trim().is_empty() => Err(fail("the file is empty".to_owned())),
        Ok(text) => Ok(Some(text)),
        Err(config::SecretFileError::Unreadable(problem)) => Err(fail(problem)),
        Err(config::SecretFileError::NotUtf8) => Err(fail("not valid UTF-8".to_owned())),
    }
}

/// What `serve --help` and `check-config --help` add: every variable read, by name.
fn variables_help() -> String {
    let mut text = String::from(
        "Variables (README.md, \"Configuration\", says what each does and its default; \
         an empty one counts as unset):\n",
    );
    for name in config::VARIABLES {
        text.push_str("  ");
        text.push_str(name);
        if config::SECRET_VARIABLES.contains(name) {
            text.push_str("  (secret; or a file named by ");
            text.push_str(name);
            text.push_str("_FILE)");
        }
        text.push('\n');
    }
    text.push_str("OpenTelemetry's own, for traces:\n");
    for name in config::OTEL_VARIABLES {
        text.push_str("  ");
        text.push_str(name);
        text.push('\n');
    }
    text
}

/// Runs the command line and returns the process's exit status.
pub fn main() -> ExitCode {
    let variables = variables_help();
    let matches = Cli::command()
        .mut_subcommand("serve", |c| c.after_help(variables.clone()))
        .mut_subcommand("check-config", |c| c.after_help(variables))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let code = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve::serve(),
        Command::CheckConfig => serve::check_config(),
        Command::OpenapiCheck => serve::openapi_check(),
        Command::Demo(args) => run_async(demo::run(args)),
        Command::Send(args) => run_async(send::send_command(*args)),
        Command::Encrypt(args) => crypt::encrypt(&args),
        Command::Decrypt(args) => crypt::decrypt(&args),
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
