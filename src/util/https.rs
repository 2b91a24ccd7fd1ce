//! The one HTTP(S) client stack every outbound call uses (the legacy system, the OTLP
//! collector, `send`): hyper's connector under rustls, with the system's trust roots
//! plus any private CA, and a client certificate when mutual TLS is asked for.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tower_service::Service;

use super::pem::{self, PemError};

/// A connector for `http://` and `https://` URLs alike.
pub type Connector = HttpsConnector<HttpConnector>;

/// Which file a [`PemError`] is about, so the caller can name the setting that named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustFile {
    Ca,
    ClientCert,
    ClientKey,
}

/// Trust and identity for a TLS client: the system's roots plus any private CA, and a
/// client certificate (chain, key) when mutual TLS is asked for.
///
/// `system_roots` is false for a plain `http://` peer: reading the system store is most
/// of start-up time and idle memory, and such a peer never needs it. The files named
/// are still read, so a bad one is reported either way.
pub fn client_config(
    system_roots: bool,
    ca_file: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, (TrustFile, PemError)> {
    let mut roots = RootCertStore::empty();
    // A missing or partly unreadable system store is normal in minimal images;
    // private CAs and the system's roots are simply added together.
    if system_roots {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    if let Some(path) = ca_file {
        let ca = |e| (TrustFile::Ca, e);
        for cert in pem::load_certs(path).map_err(ca)? {
            roots.add(cert).map_err(|e| {
                ca(PemError::Invalid {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
            })?;
        }
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let certs = pem::load_certs(cert).map_err(|e| (TrustFile::ClientCert, e))?;
            let private = pem::load_key(key).map_err(|e| (TrustFile::ClientKey, e))?;
            builder.with_client_auth_cert(certs, private).map_err(|e| {
                // Blamed on the certificate, as the listener's pair is: the key is
                // usually the file that was right.
                let reason = format!("does not match {}: {e}", cert.display());
                let path = key.to_owned();
                (TrustFile::ClientCert, PemError::Invalid { path, reason })
            })
        }
    }
}

/// What a connection speaks once made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    Http1,
    /// HTTP/2 where the server offers it over TLS, HTTP/1.1 otherwise.
    Any,
}

/// An HTTP proxy that tunnels (`CONNECT`) to the destination, from the standard
/// `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` variables.
#[derive(Clone)]
pub struct Proxy {
    pub uri: Uri,
    /// `Proxy-Authorization`, from the proxy URL's user and password.
    pub auth: Option<HeaderValue>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = self.uri.authority().map_or("-", |a| a.as_str());
        // The authority may carry credentials: only what follows them is shown.
        let shown = host.rsplit_once('@').map_or(host, |(_, h)| h);
        f.debug_struct("Proxy")
            .field("host", &shown)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// The proxy the environment names for `dst`, if any. `Err` names a proxy this
    /// client cannot use (only `http://` proxies tunnel).
    pub fn from_env(dst: &Uri) -> Result<Option<Self>, String> {
        let matcher = hyper_util::client::proxy::matcher::Matcher::from_env();
        let Some(intercept) = matcher.intercept(dst) else {
            return Ok(None);
        };
        if intercept.uri().scheme_str() != Some("http") {
            return Err("the proxy for it must be an http:// URL (a CONNECT tunnel)".to_owned());
        }
        Ok(Some(Self {
            uri: intercept.uri().clone(),
            auth: intercept.basic_auth().cloned(),
        }))
    }
}

/// How a connection reaches its host: directly, or through a proxy's tunnel.
#[derive(Clone)]
pub enum Route {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpConnector>),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for Route {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Self::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Self::Tunnel(t) => t.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Self::Direct(c) => {
                let connecting = c.call(dst);
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Self::Tunnel(t) => {
                let tunnelling = t.call(dst);
                Box::pin(async move { tunnelling.await.map_err(Into::into) })
            }
        }
    }
}

/// A connector for `https://` URLs reached directly or through `proxy`, speaking
/// HTTP/1.1, with `TCP_NODELAY` and a connect timeout.
pub fn routed_connector(
    tls: ClientConfig,
    proxy: Option<&Proxy>,
    connect_timeout: Duration,
) -> HttpsConnector<Route> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let route = match proxy {
        None => Route::Direct(http),
        Some(proxy) => {
            let tunnel = Tunnel::new(proxy.uri.clone(), http);
            Route::Tunnel(match &proxy.auth {
                Some(auth) => tunnel.with_auth(auth.clone()),
                None => tunnel,
            })
        }
    };
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(route)
}

/// The connector over `tls`, with `TCP_NODELAY` (a callback is one small write each way,
/// and Nagle's delay would cost it tens of milliseconds) and an optional connect timeout.
pub fn connector(
    tls: ClientConfig,
    versions: Versions,
    connect_timeout: Option<Duration>,
) -> Connector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(connect_timeout);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    match versions {
        Versions::Http1 => builder.enable_http1().wrap_connector(http),
        Versions::Any => builder.enable_all_versions().wrap_connector(http),
    }
}
