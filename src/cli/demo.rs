//! `feishu-gate demo`: the gateway and an example legacy system on loopback,
//! one sample encrypted callback sent through both with every hop printed,
//! then both keep serving until Ctrl-C.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::app::App;
use crate::cli::send::{self, CallbackFields};
use crate::config::{self, Config};
use crate::observe::logging::LogFormat;
use crate::observe::logging::{self, Sink};
use crate::server::{self, Listeners};

/// `println!` that carries on when stdout is gone (`feishu-gate demo | head -2`): the demo
/// keeps serving whoever reads it or not, and a closed pipe is no reason to panic.
macro_rules! say {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The demo's shared secret, as it would be set in Feishu's approval definition.
pub const DEMO_TOKEN: &str = "demo-token-Zk3v9Qp2";
/// The demo's encryption key.
pub const DEMO_KEY: &str = "demo-key-7Hq2xLm4";

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Loopback port for callbacks (taken ports fall back to a free one).
    #[arg(long, default_value_t = 8443)]
    pub port: u16,
    /// Loopback port for /livez, /readyz and /metrics.
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// Send the sample callback, print the hops, and exit instead of serving on.
    #[arg(long)]
    pub once: bool,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with a self-signed certificate made
    /// at start, and send the sample callback over it.
    #[arg(long)]
    pub tls: bool,
}

/// The demo's self-signed certificate and key, in a fresh directory removed
/// when the demo ends.
struct DemoCert {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl DemoCert {
    fn create() -> Result<Self, Box<dyn std::error::Error>> {
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "feishu-gate demo");
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        // A new, unpredictable name: nothing placed in the shared temporary
        // directory beforehand can stand in for it.
        let dir = std::env::temp_dir().join(format!("feishu-gate-demo-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir)?;
        let demo = Self {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            dir,
        };
        std::fs::write(&demo.cert, cert.pem())?;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&demo.key)?
            .write_all(key.serialize_pem().as_bytes())?;
        Ok(demo)
    }
}

impl Drop for DemoCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bind_loopback(port: u16) -> std::io::Result<TcpListener> {
    server::listen(SocketAddr::from(([127, 0, 0, 1], port)))
        .or_else(|_| server::listen(SocketAddr::from(([127, 0, 0, 1], 0))))
}

pub async fn run(args: DemoArgs) -> ExitCode {
    logging::init(LogFormat::Text, Sink::Stderr);
    match demo(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("feishu-gate demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn demo(args: DemoArgs) -> Result<(), Box<dyn std::error::Error>> {
    let legacy = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let legacy_url = format!("http://{}/approvals", legacy.local_addr()?);
    tokio::spawn(serve_legacy(legacy));

    let callback = bind_loopback(args.port)?;
    let admin = bind_loopback(args.admin_port)?;
    let callback_addr = callback.local_addr()?;
    let admin_addr = admin.local_addr()?;
    let demo_cert = if args.tls {
        Some(DemoCert::create()?)
    } else {
        None
    };
    let mut vars = vec![
        (config::LISTEN, callback_addr.to_string()),
        (config::ADMIN_LISTEN, admin_addr.to_string()),
        (config::UPSTREAM_URL, legacy_url.clone()),
        (config::TOKEN, DEMO_TOKEN.to_owned()),
        (config::KEY, DEMO_KEY.to_owned()),
        (config::LANG, "en".to_owned()),
    ];
    if let Some(demo_cert) = &demo_cert {
        vars.push((config::TLS_CERT, demo_cert.cert.display().to_string()));
        vars.push((config::TLS_KEY, demo_cert.key.display().to_string()));
    }
    let loaded = Config::from_vars(vars)?;
    let config = loaded.config;
    let app = App::build(&config)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        tokio::select! {
            () = crate::cli::shutdown_signal() => {}
            _ = stopped => {}
        }
    };
    let server = tokio::spawn(app.serve(Listeners { callback, admin }, shutdown));

    let scheme = if demo_cert.is_some() { "https" } else { "http" };
    let url: Uri = format!("{scheme}://{callback_addr}/").parse()?;
    let ca_file = demo_cert.as_ref().map(|c| c.cert.as_path());
    // How `send` trusts the self-signed certificate, for the commands printed below.
    let ca_flag = ca_file.map_or_else(String::new, |path| format!(" --ca-file {}", path.display()));
    say!("feishu-gate demo");
    say!("  gateway        {url}  (token {DEMO_TOKEN:?}, key {DEMO_KEY:?})");
    if let Some(path) = ca_file {
        say!(
            "  certificate    {}  (self-signed, made for this run)",
            path.display()
        );
    }
    say!("  legacy system  {legacy_url}");
    say!("  admin          http://{admin_addr}/metrics");
    say!();

    let fields = CallbackFields {
        action_type: "APPROVE".into(),
        user_id: "b85s39b".into(),
        approval_code: "A3895051-9B16-4ABA-B785-AD2986177BB1".into(),
        instance_id: Some("people_1234".into()),
        task_id: Some("step1".into()),
        message_id: Some(7_250_020_197_497_765_889),
        reason: Some("Looks good".into()),
        action_context: Some("ctx-42".into()),
    };
    let plaintext = fields.to_json(DEMO_TOKEN);
    let body = send::seal(DEMO_KEY, &plaintext)?;
    say!("① Feishu → feishu-gate: POST {url}");
    say!("   {body}");
    say!("   (sealed with the key; inside: {plaintext})");
    say!();
    let send::Answer {
        status,
        body: answer,
        ..
    } = send::post(&url, body, None, ca_file, Duration::from_secs(10)).await?;
    say!(
        "④ feishu-gate → Feishu: {} {}",
        status.as_u16(),
        String::from_utf8_lossy(&answer)
    );
    say!();

    if args.once {
        let _ = stop.send(());
        server.await?;
        return if status == StatusCode::OK {
            Ok(())
        } else {
            Err("the sample callback was not answered 200".into())
        };
    }
    say!("Serving until Ctrl-C. Try a refusal the legacy system explains itself:");
    say!(
        "  {} send --url {url}{ca_flag} --token {DEMO_TOKEN} --key {DEMO_KEY} --action REJECT --task-id step2",
        invoked_as()
    );
    say!();
    server.await?;
    drop(stop);
    Ok(())
}

/// The example legacy system: records approvals, refuses a rejection that
/// gives no reason, and prints what it receives and answers.
async fn serve_legacy(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(|request: Request<Incoming>| async move {
                Ok::<_, Infallible>(legacy_answer(request).await)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn legacy_answer(request: Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (request_id, key, agent) = (
        header("x-request-id"),
        header("idempotency-key"),
        header("user-agent"),
    );
    let path = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    say!("② feishu-gate → legacy system: POST {path}");
    say!("   X-Request-Id: {request_id}");
    say!("   Idempotency-Key: {key}");
    say!("   User-Agent: {agent}");
    say!("   {}", String::from_utf8_lossy(&body));
    let decision: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let (status, answer) = if decision["action_type"] == "REJECT"
        && decision["reason"].as_str().unwrap_or("").is_empty()
    {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"code":1001,"message":"A rejection needs a reason: please add a comment."}"#,
        )
    } else {
        (StatusCode::OK, r#"{"code":0,"msg":"recorded"}"#)
    };
    say!(
        "③ legacy system → feishu-gate: {} {answer}",
        status.as_u16()
    );
    let mut response = Response::new(Full::new(Bytes::from_static(answer.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// The command that runs this binary the way it was started: through cargo, or as the
/// path it was called by.
fn invoked_as() -> String {
    if std::env::var_os("CARGO_MANIFEST_DIR").is_some() {
        return "cargo run --release --".to_owned();
    }
    std::env::args_os()
        .next()
        .map(|arg0| arg0.to_string_lossy().into_owned())
        .filter(|arg0| !arg0.is_empty())
        .unwrap_or_else(|| "feishu-gate".to_owned())
}
