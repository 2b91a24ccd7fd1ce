//! The command line: `serve` (default), `check-config`, `demo`, `send`,
//! `encrypt`, `decrypt`. The process edge: environment, signals, exit codes.

mod crypt;
pub mod demo;
pub mod send;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
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
        ExitCode::from(EXIT_CONFIG)
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
        Command::Serve => serve::serve(),
        Command::CheckConfig => serve::check_config(),
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
