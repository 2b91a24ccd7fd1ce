//! Certificates made at test time with rcgen: authorities, leaves, their PEM
//! files, and a Secret volume laid out and updated the way the kubelet does it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use feishu_gate::testing::config;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate authority, root or intermediate.
pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    pub der: CertificateDer<'static>,
    /// What a leaf's chain file carries after the leaf: intermediates only.
    chain_pem: String,
}

impl Ca {
    pub fn root(name: &str) -> Self {
        let (params, key) = ca_params(name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            chain_pem: String::new(),
        }
    }

    pub fn intermediate(&self, name: &str) -> Self {
        let (params, key) = ca_params(name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Self {
            der: cert.der().clone(),
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `127.0.0.1` and `localhost`.
    pub fn server_leaf(&self, name: &str) -> Leaf {
        self.leaf(
            name,
            KeyPair::generate().unwrap(),
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    pub fn leaf(&self, name: &str, key: KeyPair, usage: ExtendedKeyUsagePurpose) -> Leaf {
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

    pub fn pem(&self) -> String {
        pem("CERTIFICATE", &self.der)
    }

    pub fn roots(&self) -> RootCertStore {
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
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    pub fn not_after(&self) -> i64 {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.der).unwrap();
        cert.validity().not_after.timestamp()
    }

    pub fn rustls_chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    pub fn rustls_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }

    /// A server configuration presenting this leaf over `version` only,
    /// asking for a client certificate from `client_ca` when given.
    pub fn server_config(
        &self,
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
            .with_single_cert(self.rustls_chain(), self.rustls_key())
            .unwrap()
    }
}

/// The leaf certificate the server presented on `stream`.
pub fn served_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

pub fn pem(label: &str, der: &[u8]) -> String {
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
pub fn unwrap_pkcs8(key: &KeyPair) -> Vec<u8> {
    let (_, info, _) = der_element(key.serialized_der());
    let (_, _version, rest) = der_element(info);
    let (_, _algorithm, rest) = der_element(rest);
    let (tag, inner, _) = der_element(rest);
    assert_eq!(tag, 0x04, "PKCS#8 privateKey is an OCTET STRING");
    inner.to_vec()
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

/// A Secret volume as the kubelet lays it out and updates it: the data in a
/// timestamped directory, a `..data` symlink to it swapped by rename, and the
/// visible names symlinks through `..data`.
pub struct SecretVolume {
    dir: tempfile::TempDir,
    current: Option<String>,
    generation: u32,
    cert: String,
    key: String,
}

impl SecretVolume {
    pub fn new(cert: &str, key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let (cert_path, key_path) = (path("tls.crt"), path("tls.key"));
        let mut volume = Self {
            dir,
            current: None,
            generation: 0,
            cert: cert_path,
            key: key_path,
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
    pub fn update(&mut self, cert: &str, key: &str) {
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

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// `TLS_CERT` and `TLS_KEY` naming the volume's files.
    pub fn vars(&self) -> [(&'static str, &str); 2] {
        [(config::TLS_CERT, &self.cert), (config::TLS_KEY, &self.key)]
    }
}
