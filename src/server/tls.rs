//! The callback listener's TLS: the certificate chain and key named by
//! `TLS_CERT` and `TLS_KEY`, loaded at start and swapped in when the files
//! change, so a renewed certificate is served without a restart.
//!
//! Kubernetes updates a mounted Secret by repointing a `..data` symlink inside
//! the mounted directory; a watch on the files themselves never fires for
//! that, so the files are read again every [`RELOAD_POLL`] and compared by
//! content. A change is applied once two reads in a row agree, so a writer
//! that replaces the certificate and the key one after the other is never
//! caught half-way; an update that still does not make a usable pair is
//! logged and ignored, and the last good certificate stays in service.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls::{InconsistentKeys, ServerConfig};
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::observe::metrics::Metrics;
use crate::util::pem;
use crate::vars::{self, ConfigError, ConfigErrors};

/// How often the certificate files are read again. A rotation is served
/// within about two of these (one to see it, one to see it settled).
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// Offered in this order; the connection builder serves both on one port.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// One problem with the certificate files, naming the variable and the file
/// but never their contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError {
    pub variable: &'static str,
    pub path: PathBuf,
    pub problem: String,
}

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.variable,
            self.path.display(),
            self.problem
        )
    }
}

impl From<CertError> for ConfigError {
    fn from(e: CertError) -> Self {
        ConfigError::new(e.variable, format!("{}: {}", e.path.display(), e.problem))
    }
}

/// What the served leaf certificate says about itself: public facts only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub serial: String,
    /// `notAfter` in Unix seconds.
    pub not_after: i64,
    /// `notAfter` for people.
    pub expires: String,
}

impl CertInfo {
    fn has_expired(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.not_after < now
    }
}

/// A usable certificate chain and key, checked to belong together.
struct Material {
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

/// Hands every handshake the certificate currently in service. Swapping it
/// never touches the acceptor, so open connections are left alone.
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl CurrentCert {
    fn get(&self) -> Arc<CertifiedKey> {
        // Only whole `Arc`s are ever stored, so a poisoned lock still holds a good one.
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = key;
    }
}

impl fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurrentCert").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// The listener's TLS: an acceptor whose certificate follows the files.
pub struct ServerTls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: Arc<CurrentCert>,
    info: CertInfo,
    acceptor: TlsAcceptor,
    /// Digest of the files as last considered, applied or refused.
    seen: [u8; 32],
    /// Digest of a change seen once, waiting for a second read to agree.
    pending: Option<[u8; 32]>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// What one look at the files came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last considered.
    Unchanged,
    /// The files changed; they are applied once the next read agrees.
    Settling,
    /// A new certificate is in service.
    Reloaded(CertInfo),
    /// The new files are not a usable pair; the previous certificate stays.
    Refused(Vec<CertError>),
}

impl ServerTls {
    /// Reads and checks the files; every problem is a configuration error
    /// naming its variable.
    pub fn load(files: &TlsFiles) -> Result<Self, ConfigErrors> {
        let provider = Arc::new(provider());
        let (cert_pem, key_pem) = (std::fs::read(&files.cert), std::fs::read(&files.key));
        let seen = digest(&cert_pem, &key_pem);
        let material = parse(files, cert_pem, key_pem, &provider)
            .map_err(|errors| ConfigErrors(errors.into_iter().map(Into::into).collect()))?;
        let current = Arc::new(CurrentCert(RwLock::new(material.key)));
        let config = server_config(provider.clone(), current.clone())
            .map_err(|e| ConfigError::new(vars::TLS_CERT, format!("cannot set up TLS: {e}")))?;
        Ok(Self {
            files: files.clone(),
            provider,
            current,
            info: material.info,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            seen,
            pending: None,
        })
    }

    /// The acceptor for the callback listener; it keeps following reloads.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Reads the files and applies them if they changed and settled.
    pub async fn reload(&mut self) -> Reload {
        let (cert_pem, key_pem) = (
            tokio::fs::read(&self.files.cert).await,
            tokio::fs::read(&self.files.key).await,
        );
        self.consider(cert_pem, key_pem)
    }

    fn consider(&mut self, cert_pem: io::Result<Vec<u8>>, key_pem: io::Result<Vec<u8>>) -> Reload {
        let now = digest(&cert_pem, &key_pem);
        if now == self.seen {
            self.pending = None;
            return Reload::Unchanged;
        }
        if self.pending != Some(now) {
            self.pending = Some(now);
            return Reload::Settling;
        }
        self.pending = None;
        self.seen = now;
        match parse(&self.files, cert_pem, key_pem, &self.provider) {
            Ok(material) => {
                self.current.set(material.key);
                self.info = material.info.clone();
                Reload::Reloaded(material.info)
            }
            Err(errors) => Reload::Refused(errors),
        }
    }

    /// Records and logs the certificate in service at once, then returns the
    /// future that follows the files every `every` for as long as it runs,
    /// keeping the expiry metric current and logging each change. Meant to be
    /// spawned next to the server and aborted when it stops.
    pub fn watch(
        mut self,
        every: Duration,
        metrics: Arc<Metrics>,
    ) -> impl Future<Output = ()> + Send + 'static {
        record(&self.info, &metrics);
        tracing::info!(
            subject = %self.info.subject,
            serial = %self.info.serial,
            expires = %self.info.expires,
            cert = %self.files.cert.display(),
            "serving TLS certificate"
        );
        warn_if_expired(&self.info);
        async move { self.follow(every, &metrics).await }
    }

    async fn follow(&mut self, every: Duration, metrics: &Metrics) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate and the files were just read.
        tick.tick().await;
        loop {
            tick.tick().await;
            match self.reload().await {
                Reload::Unchanged | Reload::Settling => {}
                Reload::Reloaded(info) => {
                    record(&info, metrics);
                    tracing::info!(
                        subject = %info.subject,
                        serial = %info.serial,
                        expires = %info.expires,
                        "TLS certificate reloaded"
                    );
                    warn_if_expired(&info);
                }
                Reload::Refused(errors) => {
                    for e in errors {
                        tracing::warn!(
                            variable = e.variable,
                            path = %e.path.display(),
                            problem = %e.problem,
                            "TLS certificate files changed but are not usable; still serving the previous certificate"
                        );
                    }
                }
            }
        }
    }
}

fn record(info: &CertInfo, metrics: &Metrics) {
    // Unix seconds fit an f64 exactly for the next few hundred million years.
    metrics.tls_expiry.set(info.not_after as f64);
}

fn warn_if_expired(info: &CertInfo) {
    if info.has_expired() {
        tracing::warn!(expires = %info.expires, "the TLS certificate in service has expired");
    }
}

/// The provider's suites with AES-128-GCM over SHA-256 first. OpenSSL clients list AES-256-GCM
/// over SHA-384 first, and SHA-384 costs a handshake about 28 µs more on a CPU without
/// SHA-512 instructions, for no strength a callback needs: the server's order decides.
fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.sort_by_key(|suite| {
        !matches!(
            suite.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    provider
}

fn server_config(
    provider: Arc<CryptoProvider>,
    current: Arc<CurrentCert>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(current);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.ignore_client_order = true;
    Ok(config)
}

/// Tells apart any two contents of the files, or reasons they could not be read.
fn digest(cert_pem: &io::Result<Vec<u8>>, key_pem: &io::Result<Vec<u8>>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for part in [cert_pem, key_pem] {
        match part {
            Ok(bytes) => {
                hash.update([1]);
                hash.update((bytes.len() as u64).to_be_bytes());
                hash.update(bytes);
            }
            Err(e) => {
                hash.update([0]);
                hash.update(e.to_string().as_bytes());
                hash.update([0]);
            }
        }
    }
    hash.finalize().into()
}

/// Turns the files' contents into a checked chain and key, or every reason
/// they are not one.
fn parse(
    files: &TlsFiles,
    cert_pem: io::Result<Vec<u8>>,
    key_pem: io::Result<Vec<u8>>,
    provider: &CryptoProvider,
) -> Result<Material, Vec<CertError>> {
    let cert_error = |problem: String| CertError {
        variable: vars::TLS_CERT,
        path: files.cert.clone(),
        problem,
    };
    let key_error = |problem: String| CertError {
        variable: vars::TLS_KEY,
        path: files.key.clone(),
        problem,
    };
    let chain = cert_pem
        .map_err(|e| cannot_read(&e))
        .and_then(|pem| parse_chain(&pem))
        .map_err(cert_error);
    let key = key_pem
        .map_err(|e| cannot_read(&e))
        .and_then(|pem| parse_key(&pem, provider))
        .map_err(key_error);
    let ((chain, info), key) = match (chain, key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (chain, key) => return Err(chain.err().into_iter().chain(key.err()).collect()),
    };
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        // The ring provider always knows its keys' public halves; should
        // another one not, the handshake is the check.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(vec![cert_error(format!(
                "the certificate does not match the private key in {} ({})",
                vars::TLS_KEY,
                files.key.display()
            ))]);
        }
        Err(e) => return Err(vec![cert_error(format!("unusable certificate: {e}"))]),
    }
    Ok(Material {
        key: Arc::new(certified),
        info,
    })
}

fn cannot_read(e: &io::Error) -> String {
    format!("cannot read: {e}")
}

/// The PEM certificates, leaf first, and what the leaf says about itself.
fn parse_chain(pem: &[u8]) -> Result<(Vec<CertificateDer<'static>>, CertInfo), String> {
    let none = || "no PEM certificate could be read".to_owned();
    let chain = pem::certs(pem).ok_or_else(none)?;
    let leaf = chain.first().ok_or_else(none)?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| format!("the first certificate is not valid X.509: {e}"))?;
    let not_after = parsed.validity().not_after;
    let info = CertInfo {
        subject: parsed.subject().to_string(),
        serial: parsed.raw_serial_as_string(),
        not_after: not_after.timestamp(),
        expires: not_after.to_string(),
    };
    Ok((chain, info))
}

/// The first PEM private key, in any of the encodings tools write.
fn parse_key(pem: &[u8], provider: &CryptoProvider) -> Result<Arc<dyn SigningKey>, String> {
    let der = pem::key(pem)
        .ok_or_else(|| "no PEM private key (PKCS#8, PKCS#1 or SEC1) could be read".to_owned())?;
    provider.key_provider.load_private_key(der).map_err(|_| {
        "the private key is not a supported RSA, ECDSA (P-256, P-384) or Ed25519 key".to_owned()
    })
}

/// The certificate and key files of the callback listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn pair(name: &str) -> Pair {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("rcgen");
        Pair {
            cert: ck.cert.pem(),
            key: ck.signing_key.serialize_pem(),
        }
    }

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    fn write(dir: &Path, cert: &str, key: &str) {
        std::fs::write(dir.join("tls.crt"), cert).expect("write cert");
        std::fs::write(dir.join("tls.key"), key).expect("write key");
    }

    fn served_leaf(tls: &ServerTls) -> Vec<u8> {
        tls.current.get().cert[0].to_vec()
    }

    /// Certificate `a` loaded from a directory, `b` ready to replace it.
    struct Serving {
        dir: tempfile::TempDir,
        a: Pair,
        b: Pair,
        tls: ServerTls,
        before: Vec<u8>,
    }

    fn serving_a() -> Serving {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (pair("a.example"), pair("b.example"));
        write(dir.path(), &a.cert, &a.key);
        let tls = ServerTls::load(&files(dir.path())).expect("load");
        let before = served_leaf(&tls);
        Serving {
            dir,
            a,
            b,
            tls,
            before,
        }
    }

    #[tokio::test]
    async fn applies_a_change_once_two_reads_agree() {
        let Serving {
            dir,
            b,
            mut tls,
            before,
            ..
        } = serving_a();
        assert_eq!(tls.reload().await, Reload::Unchanged);

        // A writer that replaces the certificate first and the key later.
        std::fs::write(dir.path().join("tls.crt"), &b.cert).expect("write");
        assert_eq!(tls.reload().await, Reload::Settling);
        std::fs::write(dir.path().join("tls.key"), &b.key).expect("write");
        assert_eq!(tls.reload().await, Reload::Settling);
        assert_eq!(served_leaf(&tls), before);
        assert!(matches!(tls.reload().await, Reload::Reloaded(_)));
        assert_ne!(served_leaf(&tls), before);
        assert_eq!(tls.reload().await, Reload::Unchanged);
    }

    #[tokio::test]
    async fn refuses_a_broken_update_once_and_keeps_serving() {
        let Serving {
            dir,
            a,
            b,
            mut tls,
            before,
        } = serving_a();

        write(dir.path(), &a.cert, &b.key);
        assert_eq!(tls.reload().await, Reload::Settling);
        let Reload::Refused(errors) = tls.reload().await else {
            panic!("a mismatched key must be refused");
        };
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].variable, vars::TLS_CERT);
        assert!(!errors[0].problem.contains("PRIVATE KEY"));
        // Refused once, not again every poll.
        assert_eq!(tls.reload().await, Reload::Unchanged);
        assert_eq!(served_leaf(&tls), before);

        // Going back to a good pair is a change like any other.
        write(dir.path(), &b.cert, &b.key);
        assert_eq!(tls.reload().await, Reload::Settling);
        assert!(matches!(tls.reload().await, Reload::Reloaded(_)));
    }

    #[test]
    fn start_up_errors_name_each_variable() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "garbage", "more garbage");
        let errors = ServerTls::load(&files(dir.path())).expect_err("garbage");
        let variables: Vec<_> = errors.0.iter().map(|e| e.variable.as_str()).collect();
        assert_eq!(variables, [vars::TLS_CERT, vars::TLS_KEY]);

        let missing = TlsFiles {
            cert: dir.path().join("absent.crt"),
            key: dir.path().join("tls.key"),
        };
        let errors = ServerTls::load(&missing).expect_err("missing");
        assert_eq!(errors.0[0].variable, vars::TLS_CERT);
        assert!(errors.0[0].problem.contains("cannot read"));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = pair("a.example");
        write(dir.path(), &a.cert, &a.key);
        let tls = ServerTls::load(&files(dir.path())).expect("load");
        let text = format!("{tls:?}");
        assert!(text.contains("tls.crt"));
        assert!(!text.contains("PRIVATE") && !text.contains(a.key.lines().nth(1).unwrap_or("-")));
    }
}
