//! TLS end to end on real sockets, with certificates made at test time: the
//! callback listener over HTTP/1.1 and HTTP/2, certificate rotation the way
//! the kubelet performs it, broken updates, hostile clients, `https://`
//! upstreams with a private CA and mutual TLS, and through the real binary:
//! start-up errors, a Secret followed by `serve`, and `demo --tls`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use feishu_gate::config::{self, Config};
use feishu_gate::gateway::Gateway;
use feishu_gate::server::{self, Listeners};
use feishu_gate::server_tls::{Reload, ServerTls};

const TOKEN: &str = "tls-test-token-8d2f";

/// Bounds every wait for something that happens in the background; generous
/// so a loaded machine never fails a correct build.
const PATIENCE: Duration = Duration::from_secs(30);

/// How often the tests' gateways read their certificate files again.
const TEST_POLL: Duration = Duration::from_millis(100);

/// A 2048-bit RSA key used only by these tests, for the RSA encodings (ring,
/// which generates the other keys here, cannot generate RSA keys). It
/// protects nothing.
const TEST_RSA_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQClqbuDtTlqAqzE
ERP3O0VQyrihlRoKLqTzadEd4ttphZje56oivUiYXcs3/953XJ3LqiyWKaptacN4
ijEomoHs73VzBcHlP6/pMNYF8055scNv3UlkFzjPc3dloeSnBzBUvT46R8G5SRcy
kKg/jbeNT51QhgUr3Lf4OeK9Gp8XhpbaH9cugD/iyJXDvUGx+wmTWzBA2zX1ZHG6
tu864W5mN+TAkA/1rWv2hDhmDdMYfzKKB3yumI8dj7THkpGfMTkP9odeis3i82s2
fdtAO/6mzSzcEMt6zng16frka6xodgTXynJLu3mRTQ+QMgeCYWwBAe68pZCR6Q73
jw8Yrij9AgMBAAECggEATglLzumVv5W9+2gODyaI6ttrqJXbW9OIGS+N9bWQ5L6t
eccIEnA2m6uHGHx7t59Vp4Qkl6HN6ddp4ES8jmNl844DNekO4qYi/8Zk8w2fOF0f
8nh7Y147ASHjqujdlD6jKi+w+fQmUdkXx9Zzouhnf/XyZWWUVwqUUKY35Bt/uK0H
RYCEF9Ox3BN7+D11PMzsrWtcc0YfXQ+CRE1zRj1UTkTPj+ROEHCP5DY8gaKwji8D
QVRboydV7iIPt/dTNKNOX+50LW1gq750ABbGrME/g5hagNHR9GLXdGx4TgJCQc6K
HIJFeoxDpmPGjXw0IM0qX019VYJ8yE9819d/gc7gswKBgQDitbxhqZAOKHaY/Kht
TR0G3s5YQuf0rQ4puXRVlEiurxoZIJOezbZZUbD+fKJEZBAyKHaPHaqblfXJVA/n
zSBYsdUefvbops4ky0D/vFiSB4zvPBlccQZ8LDzMhENUA3RABPH5Vah0ACCokBe2
ttduUlLbbnDRPt0S6EvxGNgWywKBgQC7EOpdIe2lnMV+Dg6TzVRyjyJmH44B4Zc0
Rk4q4gk4Bnt7Cp+yE1ldT5LZp3w/oAI+FiIN4bTUAInJu+LtySOWlXFHAg2WDsfi
NFXZRIbIeXz/pEBEohPg0/764kciBk8XpNkxrUGi0+c/f0kzOnTMVZZBSG19dqCf
Avc/LMP+VwKBgG+usZ+25WVkH5CcHujBbUQ+LI6kXxpUyj5ZwuqJwwhy8DtipfY8
RtFXggbMJS/lz2i2MDmulqZQyKUmiTNbBM1Mxb1hNIdF7RWJH3scMNG3cIFGLQQy
FczECiuCGJzhmroS9ZUr0nFawrvnSBdVmWkamwDINkGOY1/2GbsqzwDjAoGAA3iM
4K2Ae1ItV+lq29Mzfeyp9rsfJ2nIJHApgyIuiZuVLvNDg0pYniKb1u4EoCmX4Q8I
ErndYRGhfNy/mSniPykGsQqYtfAQRWIzNZTP62hVqWiiyKM5OzKzyHPqXfdAAHBO
l11fmmXUJJl4AjtTb3cnEo8FeQ56bHjhnYp3GIECgYEArEhZ3bB3hu9wjZ4bqAVV
SGapXG5DBMViAKU+B1ll1awdTfkknwJYdwJeRDQMuGiFpzItGsJzDMzMOZ3Z3MKR
SUn8Qxz/hwz5Wb5w5Y6v5WEDM5j6cKSMYdNeDAS/lhoJJjRxx+Z//s4VfwWa7nf4
bxPvP/TDEXkKdXdDqmvp6/I=
-----END PRIVATE KEY-----";

// ---- certificates ----------------------------------------------------------

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority, root or intermediate.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    /// What a leaf's chain file carries after the leaf: intermediates only.
    chain_pem: String,
}

impl Ca {
    fn root(name: &str) -> Self {
        let (params, key) = ca_params(name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            chain_pem: String::new(),
        }
    }

    fn intermediate(&self, name: &str) -> Self {
        let (params, key) = ca_params(name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Self {
            der: cert.der().clone(),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            issuer: Issuer::new(params, key),
        }
    }

    fn server_leaf(&self, name: &str) -> Leaf {
        self.leaf(
            name,
            KeyPair::generate().unwrap(),
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn leaf(&self, name: &str, key: KeyPair, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        roots
    }
}

fn ca_params(name: &str) -> (CertificateParams, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params, KeyPair::generate().unwrap())
}

/// A leaf certificate with its chain and key, as PEM files hold them.
struct Leaf {
    chain_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Leaf {
    fn not_after(&self) -> i64 {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.der).unwrap();
        cert.validity().not_after.timestamp()
    }

    fn rustls_chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn rustls_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The content of the DER element at the start of `der`, and what follows it.
fn der_element(der: &[u8]) -> (u8, &[u8], &[u8]) {
    let (len, header) = match der[1] {
        n if n < 0x80 => (usize::from(n), 2),
        0x81 => (usize::from(der[2]), 3),
        0x82 => (usize::from(der[2]) << 8 | usize::from(der[3]), 4),
        other => panic!("unexpected DER length byte {other:#x}"),
    };
    (der[0], &der[header..header + len], &der[header + len..])
}

/// PKCS#8 carries the algorithm's own encoding (PKCS#1 for RSA, SEC1 for EC)
/// in an OCTET STRING after the version and the algorithm identifier.
fn unwrap_pkcs8(key: &KeyPair) -> Vec<u8> {
    let (_, info, _) = der_element(key.serialized_der());
    let (_, _version, rest) = der_element(info);
    let (_, _algorithm, rest) = der_element(rest);
    let (tag, inner, _) = der_element(rest);
    assert_eq!(tag, 0x04, "PKCS#8 privateKey is an OCTET STRING");
    inner.to_vec()
}

// ---- files -----------------------------------------------------------------

/// A Secret volume as the kubelet lays it out and updates it: the data in a
/// timestamped directory, a `..data` symlink to it swapped by rename, and the
/// visible names symlinks through `..data`.
struct SecretVolume {
    dir: tempfile::TempDir,
    current: Option<String>,
    generation: u32,
}

impl SecretVolume {
    fn new(cert: &str, key: &str) -> Self {
        let mut volume = Self {
            dir: tempfile::tempdir().unwrap(),
            current: None,
            generation: 0,
        };
        volume.update(cert, key);
        for name in ["tls.crt", "tls.key"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir.path().join(name))
                .unwrap();
        }
        volume
    }

    /// The kubelet's atomic update: write a new timestamped directory, point
    /// a temporary symlink at it, rename that over `..data`, remove the old
    /// directory.
    fn update(&mut self, cert: &str, key: &str) {
        let root = self.dir.path();
        let name = format!(
            "..2026_11_23_10_{:02}_00.{:03}",
            self.generation,
            (self.generation * 137 + 123) % 1000
        );
        self.generation += 1;
        std::fs::create_dir(root.join(&name)).unwrap();
        std::fs::write(root.join(&name).join("tls.crt"), cert).unwrap();
        std::fs::write(root.join(&name).join("tls.key"), key).unwrap();
        std::os::unix::fs::symlink(&name, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        if let Some(old) = self.current.replace(name) {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            (config::TLS_CERT, self.cert().display().to_string()),
            (config::TLS_KEY, self.key().display().to_string()),
        ]
    }
}

fn write_file(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

// ---- the legacy system -----------------------------------------------------

/// A real upstream: records every body it receives and answers 200.
struct Upstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<String>>>,
}

impl Upstream {
    async fn start(tls: Option<ServerConfig>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tls.map(|c| TlsAcceptor::from(Arc::new(c)));
        let log = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, log) = (acceptor.clone(), log.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => serve_upstream(tcp, log).await,
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(tcp).await {
                                serve_upstream(tls, log).await;
                            }
                        }
                    }
                });
            }
        });
        Self { addr, received }
    }

    fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}/approvals", self.addr.port())
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

async fn serve_upstream<I>(io: I, log: Arc<Mutex<Vec<String>>>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let log = log.clone();
        async move {
            let body = request.into_body().collect().await?.to_bytes();
            log.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let mut response = Response::new(Full::new(Bytes::from_static(br#"{"code":0}"#)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            Ok::<_, hyper::Error>(response)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

fn upstream_server_config(
    leaf: &Leaf,
    client_ca: Option<&Ca>,
    version: &'static rustls::SupportedProtocolVersion,
) -> ServerConfig {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[version])
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()), provider())
                .build()
                .unwrap(),
        ),
    };
    builder
        .with_single_cert(leaf.rustls_chain(), leaf.rustls_key())
        .unwrap()
}

// ---- the gateway -----------------------------------------------------------

fn gateway_config(upstream_url: &str, extra: Vec<(&'static str, String)>) -> Config {
    let mut vars = vec![
        (config::TOKEN, TOKEN.to_owned()),
        (config::UPSTREAM_URL, upstream_url.to_owned()),
        (config::UPSTREAM_TIMEOUT_MS, "5000".to_owned()),
    ];
    vars.extend(extra);
    Config::from_vars(vars).unwrap().config
}

/// The gateway on real sockets; stops when dropped.
struct Gate {
    addr: SocketAddr,
    admin: SocketAddr,
    gateway: Arc<Gateway>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Gate {
    async fn start(config: &Config, tls: Option<TlsAcceptor>) -> Self {
        let gateway = Arc::new(Gateway::new(config).unwrap());
        let callback = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, admin_addr) = (callback.local_addr().unwrap(), admin.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::serve(
            gateway.clone(),
            Listeners { callback, admin },
            tls,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        ));
        Self {
            addr,
            admin: admin_addr,
            gateway,
            _stop: stop,
        }
    }

    /// A gateway serving TLS from `volume`, following its changes.
    async fn with_watched_tls(upstream: &str, volume: &SecretVolume) -> Self {
        let config = gateway_config(upstream, volume.vars());
        let tls = ServerTls::load(config.tls.as_ref().unwrap()).unwrap();
        let gate = Self::start(&config, Some(tls.acceptor())).await;
        tokio::spawn(tls.watch(TEST_POLL, gate.gateway.metrics.clone()));
        gate
    }

    fn expiry_metric(&self) -> f64 {
        let text = self.gateway.metrics.render();
        text.lines()
            .find_map(|line| {
                line.strip_prefix("feishu_gate_tls_certificate_expiry_timestamp_seconds ")
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no expiry metric in:\n{text}"))
    }
}

/// `feishu_gate_upstream_errors_total` for one kind.
fn upstream_errors(gate: &Gate, kind: &str) -> u64 {
    let text = gate.gateway.metrics.render();
    let prefix = format!("feishu_gate_upstream_errors_total{{kind=\"{kind}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn callback_body(task: &str) -> String {
    format!(
        r#"{{"action_type":"APPROVE","user_id":"u1","approval_code":"C1","instance_id":"i1","task_id":"{task}","token":"{TOKEN}"}}"#
    )
}

// ---- clients ---------------------------------------------------------------

fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // A resumed session reports the certificate of the session it resumes;
    // every handshake here must show what the server presents now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    TlsConnector::from(config).connect(name, tcp).await
}

fn served_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// An open HTTP/1.1 connection, kept for several requests.
struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl H1 {
    async fn open<I>(io: I) -> Self
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(connection);
        Self { sender }
    }

    async fn send(
        &mut self,
        method: &str,
        body: &str,
    ) -> Result<(StatusCode, Version, String), hyper::Error> {
        self.sender.ready().await?;
        let request = Request::builder()
            .method(method)
            .uri("/")
            .header(header::HOST, "127.0.0.1")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap();
        let response = self.sender.send_request(request).await?;
        let (status, version) = (response.status(), response.version());
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, version, String::from_utf8_lossy(&body).into_owned()))
    }
}

async fn post_plain(addr: SocketAddr, body: &str) -> (StatusCode, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (status, _, body) = H1::open(tcp).await.send("POST", body).await.unwrap();
    (status, body)
}

async fn get_plain(addr: SocketAddr, path: &str) -> StatusCode {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    sender.send_request(request).await.unwrap().status()
}

/// Keeps handshaking until `wanted` is served, touching `open` each round so
/// it never idles out; panics after [`PATIENCE`].
async fn wait_for_leaf(
    addr: SocketAddr,
    client: &Arc<ClientConfig>,
    wanted: &CertificateDer<'static>,
    open: &mut H1,
) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stream = connect(addr, client.clone()).await.unwrap();
        if served_leaf(&stream) == *wanted {
            return;
        }
        // A callback, not a refused request: a refusal would close the connection.
        let (status, _, body) = open.send("POST", &callback_body("ping")).await.unwrap();
        assert!(matches!(status.as_u16(), 200 | 502), "{status}: {body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- the callback listener -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_over_http1_and_http2_reach_the_upstream_through_tls() {
    let root = Ca::root("test root");
    let intermediate = root.intermediate("test intermediate");
    let leaf = intermediate.server_leaf("gateway");
    let volume = SecretVolume::new(&leaf.chain_pem, &leaf.key_pem);
    let upstream = Upstream::start(None).await;
    let gate = Gate::with_watched_tls(&upstream.url("http"), &volume).await;

    // The client trusts only the root: the handshake succeeds only if the
    // intermediate is served along with the leaf.
    let stream = connect(gate.addr, client_config(root.roots(), &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(stream.get_ref().1.peer_certificates().unwrap().len(), 2);
    let (status, version, body) = H1::open(stream)
        .await
        .send("POST", &callback_body("t-h1"))
        .await
        .unwrap();
    assert_eq!(
        (status, version),
        (StatusCode::OK, Version::HTTP_11),
        "{body}"
    );
    assert_eq!(body, r#"{"code":0,"msg":"success"}"#);

    let stream = connect(gate.addr, client_config(root.roots(), &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::post(format!("https://127.0.0.1:{}/", gate.addr.port()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(callback_body("t-h2"))))
        .unwrap();
    let response = h2.send_request(request).await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);

    // A client offering both gets HTTP/2, and TLS 1.2 is still spoken.
    let stream = connect(
        gate.addr,
        client_config(root.roots(), &[b"http/1.1", b"h2"]),
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut tls12 = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(root.roots())
        .with_no_client_auth();
    tls12.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = connect(gate.addr, Arc::new(tls12)).await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let (status, _, _) = H1::open(stream)
        .await
        .send("POST", &callback_body("t-tls12"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    let received = upstream.received();
    assert_eq!(received.len(), 3, "{received:?}");
    assert!(received[0].contains(r#""task_id":"t-h1""#));
    assert!(received[1].contains(r#""task_id":"t-h2""#));
    assert!(received.iter().all(|b| !b.contains(TOKEN)));

    assert_eq!(get_plain(gate.admin, "/readyz").await, StatusCode::OK);
    // Unix seconds are integers well inside f64's exact range.
    assert_eq!(gate.expiry_metric(), leaf.not_after() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_encoding_is_served() {
    let root = Ca::root("key formats root");
    let rsa = || KeyPair::from_pem(TEST_RSA_PKCS8).unwrap();
    let p256 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem();
    let p256 = || KeyPair::from_pem(&p256).unwrap();
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let ed25519 = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let keys: Vec<(&str, String, KeyPair)> = vec![
        ("PKCS#8 RSA", rsa().serialize_pem(), rsa()),
        (
            "PKCS#1 RSA",
            pem("RSA PRIVATE KEY", &unwrap_pkcs8(&rsa())),
            rsa(),
        ),
        ("PKCS#8 P-256", p256().serialize_pem(), p256()),
        (
            "SEC1 P-256",
            pem("EC PRIVATE KEY", &unwrap_pkcs8(&p256())),
            p256(),
        ),
        ("PKCS#8 P-384", p384.serialize_pem(), p384),
        ("PKCS#8 Ed25519", ed25519.serialize_pem(), ed25519),
    ];
    for (what, key_pem, key) in keys {
        let leaf = root.leaf(what, key, ExtendedKeyUsagePurpose::ServerAuth);
        let volume = SecretVolume::new(&leaf.chain_pem, &key_pem);
        let config = gateway_config("http://127.0.0.1:9/", volume.vars());
        let tls =
            ServerTls::load(config.tls.as_ref().unwrap()).unwrap_or_else(|e| panic!("{what}: {e}"));
        let gate = Gate::start(&config, Some(tls.acceptor())).await;
        let stream = connect(gate.addr, client_config(root.roots(), &[b"http/1.1"]))
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(served_leaf(&stream), leaf.der, "{what}");
        let (status, _, _) = H1::open(stream).await.send("GET", "").await.unwrap();
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
    }
}

// ---- rotation --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_style_rotation_is_served_without_restart() {
    let root = Ca::root("rotation root");
    let old = root.server_leaf("before rotation");
    let mut volume = SecretVolume::new(&old.chain_pem, &old.key_pem);
    let upstream = Upstream::start(None).await;
    let gate = Gate::with_watched_tls(&upstream.url("http"), &volume).await;
    let client = client_config(root.roots(), &[b"http/1.1"]);

    let stream = connect(gate.addr, client.clone()).await.unwrap();
    assert_eq!(served_leaf(&stream), old.der);
    let mut open = H1::open(stream).await;
    let (status, _, _) = open.send("POST", &callback_body("before")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gate.expiry_metric(), old.not_after() as f64);

    let new = {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "after rotation");
        params.not_after = rcgen::date_time_ymd(2031, 1, 1);
        let cert = params.signed_by(&key, &root.issuer).unwrap();
        Leaf {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    };
    volume.update(&new.chain_pem, &new.key_pem);
    wait_for_leaf(gate.addr, &client, &new.der, &mut open).await;

    // The connection opened before the rotation goes on, on its old session.
    let (status, _, body) = open.send("POST", &callback_body("after")).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    // What kept the connection busy meanwhile were callbacks too; the two that matter
    // came first and last.
    let received = upstream.received();
    assert!(
        received
            .first()
            .is_some_and(|b| b.contains(r#""task_id":"before""#)),
        "{received:?}"
    );
    assert!(
        received
            .last()
            .is_some_and(|b| b.contains(r#""task_id":"after""#)),
        "{received:?}"
    );
    assert_eq!(gate.expiry_metric(), new.not_after() as f64);
    assert_ne!(new.not_after(), old.not_after());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_update_is_ignored_and_the_last_good_certificate_stays() {
    let root = Ca::root("broken update root");
    let good = root.server_leaf("good");
    let mut volume = SecretVolume::new(&good.chain_pem, &good.key_pem);
    let config = gateway_config("http://127.0.0.1:9/", volume.vars());
    let mut tls = ServerTls::load(config.tls.as_ref().unwrap()).unwrap();
    let gate = Gate::start(&config, Some(tls.acceptor())).await;
    let client = client_config(root.roots(), &[b"http/1.1"]);
    let other = root.server_leaf("other");

    let broken = [
        (
            "garbage certificate",
            "not a certificate".to_owned(),
            good.key_pem.clone(),
            config::TLS_CERT,
        ),
        (
            "garbage key",
            good.chain_pem.clone(),
            "not a key".to_owned(),
            config::TLS_KEY,
        ),
        (
            "key of another certificate",
            good.chain_pem.clone(),
            other.key_pem.clone(),
            config::TLS_CERT,
        ),
        (
            "empty files",
            String::new(),
            String::new(),
            config::TLS_CERT,
        ),
    ];
    for (what, cert, key, blamed) in broken {
        volume.update(&cert, &key);
        let refused = settle(&mut tls).await;
        let Reload::Refused(errors) = refused else {
            panic!("{what}: expected a refusal, got {refused:?}");
        };
        assert_eq!(errors[0].variable, blamed, "{what}");
        for e in &errors {
            let text = e.to_string();
            assert!(
                !text.contains("BEGIN") && !text.contains(&other.key_pem[40..80]),
                "{what}: {text}"
            );
        }
        let stream = connect(gate.addr, client.clone()).await.unwrap();
        assert_eq!(served_leaf(&stream), good.der, "{what}");
        let (status, _, _) = H1::open(stream).await.send("GET", "").await.unwrap();
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
    }

    // A good update after broken ones is taken.
    volume.update(&other.chain_pem, &other.key_pem);
    assert!(matches!(settle(&mut tls).await, Reload::Reloaded(_)));
    let stream = connect(gate.addr, client.clone()).await.unwrap();
    assert_eq!(served_leaf(&stream), other.der);
}

/// Reads the files until the change is applied or refused.
async fn settle(tls: &mut ServerTls) -> Reload {
    for _ in 0..10 {
        match tls.reload().await {
            Reload::Unchanged | Reload::Settling => {}
            done => return done,
        }
    }
    panic!("the change never settled");
}

// ---- hostile clients -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_cost_one_connection_each() {
    let root = Ca::root("hostile root");
    let leaf = root.server_leaf("gateway");
    let volume = SecretVolume::new(&leaf.chain_pem, &leaf.key_pem);
    let upstream = Upstream::start(None).await;
    let gate = Gate::with_watched_tls(&upstream.url("http"), &volume).await;
    let client = client_config(root.roots(), &[b"h2", b"http/1.1"]);

    // Clients that connect and never say anything.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(TcpStream::connect(gate.addr).await.unwrap());
    }
    // One that stops in the middle of its ClientHello.
    let mut half = TcpStream::connect(gate.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();

    // Plain HTTP to the TLS port is never answered in HTTP, and closed.
    let mut plain = TcpStream::connect(gate.addr).await.unwrap();
    plain
        .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut answer))
        .await
        .expect("plain HTTP is closed");
    assert!(!answer.starts_with(b"HTTP/"));

    // A client that does not trust the certificate fails its own handshake.
    let stranger = Ca::root("stranger");
    assert!(
        connect(gate.addr, client_config(stranger.roots(), &[]))
            .await
            .is_err()
    );

    // Meanwhile everyone else is served.
    let stream = connect(gate.addr, client.clone()).await.unwrap();
    let (status, _, _) = H1::open(stream)
        .await
        .send("POST", &callback_body("meanwhile"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    // The silent ones are closed once the handshake timeout passes.
    stalled.push(half);
    for mut tcp in stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
            .await
            .expect("a stalled handshake is closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let stream = connect(gate.addr, client).await.unwrap();
    assert_eq!(served_leaf(&stream), leaf.der);
}

// ---- https upstreams -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_a_private_ca_needs_the_ca_file() {
    let private = Ca::root("private upstream CA");
    let upstream = Upstream::start(Some(upstream_server_config(
        &private.server_leaf("legacy"),
        None,
        &rustls::version::TLS13,
    )))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "ca.pem", &private.pem());

    let untrusting = Gate::start(&gateway_config(&upstream.url("https"), vec![]), None).await;
    let (status, body) = post_plain(untrusting.addr, &callback_body("no-ca")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("without_prefix"), "{body}");
    assert!(upstream.received().is_empty());
    assert_eq!(upstream_errors(&untrusting, "connect"), 1);

    let trusting = Gate::start(
        &gateway_config(
            &upstream.url("https"),
            vec![(config::UPSTREAM_CA_FILE, ca_file)],
        ),
        None,
    )
    .await;
    let (status, body) = post_plain(trusting.addr, &callback_body("with-ca")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(upstream.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_requiring_a_client_certificate_accepts_only_the_configured_one() {
    let server_ca = Ca::root("upstream server CA");
    let client_ca = Ca::root("upstream client CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "ca.pem", &server_ca.pem());
    let identity = client_ca.leaf(
        "feishu-gate",
        KeyPair::generate().unwrap(),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let stranger = Ca::root("someone else").leaf(
        "intruder",
        KeyPair::generate().unwrap(),
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let with_identity = |leaf: Option<&Leaf>, name: &str| {
        let mut vars = vec![(config::UPSTREAM_CA_FILE, ca_file.clone())];
        if let Some(leaf) = leaf {
            vars.push((
                config::UPSTREAM_CLIENT_CERT,
                write_file(dir.path(), &format!("{name}.crt"), &leaf.chain_pem),
            ));
            vars.push((
                config::UPSTREAM_CLIENT_KEY,
                write_file(dir.path(), &format!("{name}.key"), &leaf.key_pem),
            ));
        }
        vars
    };

    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let upstream = Upstream::start(Some(upstream_server_config(
            &server_ca.server_leaf("legacy"),
            Some(&client_ca),
            version,
        )))
        .await;
        let url = upstream.url("https");
        for (who, identity) in [("anonymous", None), ("impostor", Some(&stranger))] {
            let gate = Gate::start(&gateway_config(&url, with_identity(identity, who)), None).await;
            let (status, body) = post_plain(gate.addr, &callback_body(who)).await;
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{who} {version:?}: {body}");
            assert!(body.contains("without_prefix"), "{body}");
            let (connect, dropped) = (
                upstream_errors(&gate, "connect"),
                upstream_errors(&gate, "dropped"),
            );
            if version.version == rustls::ProtocolVersion::TLSv1_2 {
                assert_eq!((connect, dropped), (1, 0), "{who} {version:?}");
            } else {
                // Under TLS 1.3 the refusal arrives after the client's half of
                // the handshake; it is told apart when its alert is read, and
                // a close that overtakes the alert leaves it a dropped exchange.
                assert_eq!(connect + dropped, 1, "{who} {version:?}");
            }
        }
        assert!(upstream.received().is_empty(), "{version:?}");

        let gate = Gate::start(
            &gateway_config(&url, with_identity(Some(&identity), "own")),
            None,
        )
        .await;
        let (status, body) = post_plain(gate.addr, &callback_body("identified")).await;
        assert_eq!(status, StatusCode::OK, "{version:?}: {body}");
        assert_eq!(upstream.received().len(), 1, "{version:?}");
    }
}

// ---- start-up, through the real binary -------------------------------------

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_feishu-gate"));
    command
        .env_clear()
        .env(config::TOKEN, TOKEN)
        .env(config::UPSTREAM_URL, "http://127.0.0.1:9/approvals")
        .env(config::LISTEN, "127.0.0.1:0")
        // A different address: the two listeners may not share one.
        .env(config::ADMIN_LISTEN, "127.0.0.2:0");
    command
}

fn check_config(vars: &[(&str, &str)]) -> Output {
    binary()
        .arg("check-config")
        .envs(vars.iter().copied())
        .output()
        .unwrap()
}

/// Runs `serve`, which must refuse to start; kills it if it starts anyway.
fn serve_refusing(vars: &[(&str, &str)]) -> Output {
    let mut child = binary()
        .arg("serve")
        .envs(vars.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve started despite a bad configuration");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// What is wrong, the variables set, and what the error must say.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [&'a str]);

#[test]
fn bad_certificate_files_stop_start_up_naming_the_variable() {
    let root = Ca::root("start-up root");
    let (a, b) = (root.server_leaf("a"), root.server_leaf("b"));
    let dir = tempfile::tempdir().unwrap();
    let cert = write_file(dir.path(), "a.crt", &a.chain_pem);
    let key = write_file(dir.path(), "a.key", &a.key_pem);
    let wrong_key = write_file(dir.path(), "b.key", &b.key_pem);
    let garbage = write_file(dir.path(), "garbage.pem", "this is not PEM\n");
    let missing = dir.path().join("missing.pem").display().to_string();

    let ok = check_config(&[(config::TLS_CERT, &cert), (config::TLS_KEY, &key)]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let cases: [Case; 6] = [
        (
            "mismatched key",
            vec![(config::TLS_CERT, &cert), (config::TLS_KEY, &wrong_key)],
            &[
                "FEISHU_GATE_TLS_CERT: ",
                "does not match",
                "FEISHU_GATE_TLS_KEY",
            ],
        ),
        (
            "garbage certificate",
            vec![(config::TLS_CERT, &garbage), (config::TLS_KEY, &key)],
            &["FEISHU_GATE_TLS_CERT: ", "no PEM certificate"],
        ),
        (
            "garbage key",
            vec![(config::TLS_CERT, &cert), (config::TLS_KEY, &garbage)],
            &["FEISHU_GATE_TLS_KEY: ", "no PEM private key"],
        ),
        (
            "missing certificate",
            vec![(config::TLS_CERT, &missing), (config::TLS_KEY, &key)],
            &["FEISHU_GATE_TLS_CERT: ", "cannot read"],
        ),
        (
            "only the certificate",
            vec![(config::TLS_CERT, &cert)],
            &["FEISHU_GATE_TLS_KEY: "],
        ),
        (
            "only the key",
            vec![(config::TLS_KEY, &key)],
            &["FEISHU_GATE_TLS_CERT: "],
        ),
    ];
    for (what, vars, expected) in cases {
        for output in [check_config(&vars), serve_refusing(&vars)] {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(64), "{what}: {stderr}");
            for text in expected {
                assert!(stderr.contains(text), "{what}: {text:?} not in {stderr}");
            }
            assert!(!stderr.contains("PRIVATE KEY-----"), "{what}: {stderr}");
            assert!(!stderr.contains(&a.key_pem[40..80]), "{what}: {stderr}");
            assert!(!stderr.contains(&b.key_pem[40..80]), "{what}: {stderr}");
        }
    }

    // Problems with the listener's files and the upstream's are reported together.
    let together = check_config(&[
        (config::TLS_CERT, &garbage),
        (config::TLS_KEY, &garbage),
        (config::UPSTREAM_CA_FILE, &garbage),
    ]);
    let stderr = String::from_utf8_lossy(&together.stderr);
    assert_eq!(together.status.code(), Some(64), "{stderr}");
    for variable in [config::TLS_CERT, config::TLS_KEY, config::UPSTREAM_CA_FILE] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&format!("{variable}: "))),
            "{variable} not in {stderr}"
        );
    }
}

/// JSON log lines of a child process, one by one, waiting at most [`PATIENCE`].
struct LogLines(std::sync::mpsc::Receiver<serde_json::Value>);

impl LogLines {
    fn follow(out: impl std::io::Read + Send + 'static) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let Ok(value) = serde_json::from_str(&line) else {
                    continue;
                };
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        Self(rx)
    }

    /// The next line whose message is `message`.
    fn until(&self, message: &str) -> serde_json::Value {
        loop {
            let line = self
                .0
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|_| panic!("no {message:?} logged"));
            if line["message"] == message {
                return line;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_tls_and_follows_the_secret() {
    let root = Ca::root("binary root");
    let (first, second, third) = (
        root.server_leaf("first"),
        root.server_leaf("second"),
        root.server_leaf("third"),
    );
    let mut volume = SecretVolume::new(&first.chain_pem, &first.key_pem);
    let mut gateway = Reaped(
        binary()
            .arg("serve")
            .envs(volume.vars())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let logs = LogLines::follow(gateway.0.stdout.take().unwrap());
    let serving = logs.until("serving TLS certificate");
    assert_eq!(serving["subject"], "CN=first");
    let addr: SocketAddr = logs.until("serving callbacks")["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let client = client_config(root.roots(), &[b"h2", b"http/1.1"]);
    let stream = connect(addr, client.clone()).await.unwrap();
    assert_eq!(served_leaf(&stream), first.der);
    let mut open = H1::open(stream).await;

    // A key that belongs to another certificate: refused, logged without contents.
    volume.update(&first.chain_pem, &second.key_pem);
    let refused = logs.until(
        "TLS certificate files changed but are not usable; still serving the previous certificate",
    );
    assert_eq!(refused["level"], "WARN");
    assert_eq!(refused["variable"], config::TLS_CERT);
    assert!(
        refused["problem"]
            .as_str()
            .unwrap()
            .contains("does not match")
    );
    let text = refused.to_string();
    assert!(!text.contains("BEGIN") && !text.contains(&second.key_pem[40..80]));
    let stream = connect(addr, client.clone()).await.unwrap();
    assert_eq!(served_leaf(&stream), first.der);

    volume.update(&third.chain_pem, &third.key_pem);
    let reloaded = logs.until("TLS certificate reloaded");
    let (_, parsed) = x509_parser::parse_x509_certificate(&third.der).unwrap();
    assert_eq!(reloaded["serial"], parsed.raw_serial_as_string());
    assert_eq!(reloaded["expires"], parsed.validity().not_after.to_string());
    wait_for_leaf(addr, &client, &third.der, &mut open).await;
    let (status, _, body) = open.send("POST", &callback_body("last")).await.unwrap();
    assert!(matches!(status.as_u16(), 200 | 502), "{status}: {body}");

    let terminated = Command::new("kill")
        .args(["-TERM", &gateway.0.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    assert!(wait_for_exit(&mut gateway).success());
}

/// Waits for a child to exit, at most [`PATIENCE`].
fn wait_for_exit(child: &mut Reaped) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the process did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- demo --tls ------------------------------------------------------------

/// A child process that a failing test does not leave running.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn demo_tls_serves_https_and_prints_a_send_command_that_works() {
    let mut demo = Reaped(
        Command::new(env!("CARGO_BIN_EXE_feishu-gate"))
            .args(["demo", "--tls", "--port", "0", "--admin-port", "0"])
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = demo.0.stdout.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let command = loop {
        let Ok(line) = lines.recv_timeout(PATIENCE) else {
            panic!("the demo never printed a send command: {seen:#?}");
        };
        if let Some((_, args)) = line.split_once(" -- send ") {
            break format!("send {args}");
        }
        seen.push(line);
    };
    let printed = seen.join("\n");
    assert!(printed.contains("https://127.0.0.1:"), "{printed}");
    assert!(printed.contains("④ feishu-gate → Feishu: 200"), "{printed}");
    assert!(command.contains("--ca-file "), "{command}");
    let cert_dir = command
        .split_whitespace()
        .skip_while(|a| *a != "--ca-file")
        .nth(1)
        .map(|p| Path::new(p).parent().unwrap().to_owned())
        .unwrap();

    // The printed command, as a user would paste it (the demo's REJECT
    // without a reason is refused by its legacy system: a 422 relayed).
    let sent = Command::new(env!("CARGO_BIN_EXE_feishu-gate"))
        .args(command.split_whitespace())
        .env_clear()
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&sent.stdout);
    let problem = String::from_utf8_lossy(&sent.stderr);
    assert!(answer.starts_with("422 "), "{answer} {problem}");
    let approve = command.replace("--action REJECT", "--action APPROVE");
    let sent = Command::new(env!("CARGO_BIN_EXE_feishu-gate"))
        .args(approve.split_whitespace())
        .env_clear()
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    // SIGTERM to the demo this test started: it drains and removes its certificate.
    let terminated = Command::new("kill")
        .args(["-TERM", &demo.0.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let status = wait_for_exit(&mut demo);
    assert!(status.success());
    assert!(!cert_dir.exists(), "{} was left behind", cert_dir.display());
}

/// Over TLS too, an HTTP/2 connection left idle after a callback is sent
/// GOAWAY before it closes: hyper's client sees its connection end cleanly,
/// where a bare close_notify would leave it a broken pipe.
#[tokio::test]
async fn an_idle_http2_connection_over_tls_ends_with_goaway() {
    let root = Ca::root("test root");
    let leaf = root.server_leaf("gateway");
    let volume = SecretVolume::new(&leaf.chain_pem, &leaf.key_pem);
    let upstream = Upstream::start(None).await;
    let gate = Gate::with_watched_tls(&upstream.url("http"), &volume).await;
    let stream = connect(gate.addr, client_config(root.roots(), &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let driver = tokio::spawn(connection);
    let request = Request::post(format!("https://127.0.0.1:{}/", gate.addr.port()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(callback_body("t-h2-idle"))))
        .unwrap();
    let response = h2.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let _ = response.into_body().collect().await;
    let idle_from = std::time::Instant::now();
    let limit = server::HEADER_READ_TIMEOUT + Duration::from_secs(6);
    let ended = tokio::time::timeout(limit, driver)
        .await
        .unwrap_or_else(|_| panic!("still open after {limit:?}"))
        .unwrap();
    assert!(ended.is_ok(), "the connection broke: {ended:?}");
    assert!(
        idle_from.elapsed() >= server::HEADER_READ_TIMEOUT - Duration::from_millis(500),
        "closed after only {:?}",
        idle_from.elapsed()
    );
}
