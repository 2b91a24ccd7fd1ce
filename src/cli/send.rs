//! Playing Feishu: build a callback, seal it, POST it. Used by the `send`
//! smoke test and by the demo.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value};

use super::crypt::first_key;
use super::{EXIT_CONFIG, SendArgs, secret};

/// `send`'s status when nothing answered: the gateway is down, unreachable, or too slow.
pub const EXIT_UNANSWERED: u8 = 3;
use crate::callback::envelope::CallbackKey;
use crate::util::https::{self, Versions};

/// The fields of a callback to send.
#[derive(Debug, Clone)]
pub struct CallbackFields {
    pub action_type: String,
    pub user_id: String,
    pub approval_code: String,
    pub instance_id: Option<String>,
    pub task_id: Option<String>,
    /// Sent as a bare JSON number, as Feishu does.
    pub message_id: Option<u64>,
    pub reason: Option<String>,
    pub action_context: Option<String>,
}

impl CallbackFields {
    /// The callback's JSON text with `token` last, as Feishu's samples order it.
    pub fn to_json(&self, token: &str) -> String {
        let mut m = Map::new();
        m.insert("action_type".into(), self.action_type.clone().into());
        if let Some(v) = &self.action_context {
            m.insert("action_context".into(), v.clone().into());
        }
        m.insert("user_id".into(), self.user_id.clone().into());
        m.insert("approval_code".into(), self.approval_code.clone().into());
        if let Some(v) = &self.instance_id {
            m.insert("instance_id".into(), v.clone().into());
        }
        if let Some(v) = &self.task_id {
            m.insert("task_id".into(), v.clone().into());
        }
        if let Some(v) = self.message_id {
            m.insert("message_id".into(), v.into());
        }
        if let Some(v) = &self.reason {
            m.insert("reason".into(), v.clone().into());
        }
        m.insert("token".into(), token.into());
        // Serializing strings and integers cannot fail.
        serde_json::to_string(&Value::Object(m)).unwrap_or_default()
    }
}

/// Seals a plaintext callback into Feishu's `{"encrypt": ...}` body.
pub fn seal(key: &str, plaintext: &str) -> Result<String, getrandom::Error> {
    let encrypt = CallbackKey::new(key).encrypt(plaintext.as_bytes())?;
    Ok(serde_json::json!({ "encrypt": encrypt }).to_string())
}

/// Why a callback could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Setup(String),
    #[error("request failed: {0}")]
    Transport(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// What the gateway answered.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// POSTs `body` to `url` as Feishu would, with `request_id` as `X-Request-Id` when given.
pub async fn post(
    url: &Uri,
    body: String,
    request_id: Option<&str>,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<Answer, SendError> {
    let https = url.scheme() == Some(&http::uri::Scheme::HTTPS);
    let tls = https::client_config(https, ca_file, None)
        .map_err(|(_, e)| SendError::Setup(e.to_string()))?;
    let connector = https::connector(tls, Versions::Any, None);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(url.clone())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(id) = request_id {
        request = request.header(crate::upstream::REQUEST_ID, id);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| SendError::Setup(format!("--request-id: {e}")))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| SendError::Transport(crate::upstream::error_chain(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| SendError::Transport(e.to_string()))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| SendError::Timeout(timeout))?
}

/// `feishu-gate send`: seals the fields as Feishu would, posts them, prints the answer.
pub(super) async fn send_command(args: SendArgs) -> ExitCode {
    let token = match secret(args.token.as_deref(), args.token_file.as_deref(), "token") {
        Ok(Some(t)) => t,
        Ok(None) => {
            eprintln!(
                "feishu-gate: give the token with --token-file PATH, FEISHU_GATE_TOKEN_FILE, \
                 FEISHU_GATE_TOKEN or --token"
            );
            return ExitCode::from(EXIT_CONFIG);
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
        Some(key) => match seal(key, &plaintext) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("feishu-gate: no randomness for the IV: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let request_id = args.request_id.as_deref();
    match post(
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
            for (name, shown) in [
                (crate::upstream::REQUEST_ID, "X-Request-Id"),
                ("retry-after", "Retry-After"),
            ] {
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
        // 2 is a usage error (clap's): nothing answering gets a status of its own.
        Err(e) => {
            eprintln!("feishu-gate: POST {}: {e}", args.url);
            if let Some(hint) = hint(&e, &args.url) {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(EXIT_UNANSWERED)
        }
    }
}

/// What to try next after a failure the message alone does not explain.
fn hint(error: &SendError, url: &Uri) -> Option<String> {
    let SendError::Transport(text) = error else {
        return None;
    };
    let https = url.scheme() == Some(&http::uri::Scheme::HTTPS);
    let authority = url.authority().map_or("", |a| a.as_str());
    let hint = if text.contains("UnknownIssuer") {
        "the gateway's certificate is not signed by a CA this machine trusts: \
         give that CA with --ca-file PATH"
            .to_owned()
    } else if text.contains("NotValidForName") {
        format!("the gateway's certificate does not name {authority}: use a name it does")
    } else if text.contains("Expired") {
        "the gateway's certificate has expired, or this machine's clock is wrong".to_owned()
    } else if !https && text.contains("invalid HTTP version") {
        "the port answered with something other than HTTP: if the gateway serves TLS \
         (FEISHU_GATE_TLS_CERT), use https://"
            .to_owned()
    } else if https && (text.contains("InvalidContentType") || text.contains("corrupt message")) {
        "the port does not speak TLS: if the gateway serves plain HTTP, use http://".to_owned()
    } else if text.contains("Connection refused") {
        format!(
            "nothing listens on {authority}: is the gateway running, and is that its \
             FEISHU_GATE_LISTEN port?"
        )
    } else {
        return None;
    };
    Some(hint)
}
