//! PEM files: certificates and private keys, read the one way every component reads them.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A problem with TLS material, naming the file but never its contents.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{path}: no PEM certificate could be read")]
    NoCertificates { path: PathBuf },
    #[error("{path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) could be read")]
    NoKey { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Every certificate in PEM text, leaf first; `None` when there is none.
pub fn certs(pem: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    (!certs.is_empty()).then_some(certs)
}

/// The first private key in PEM text, in any of the encodings tools write.
pub fn key(pem: &[u8]) -> Option<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).ok()
}

/// Reads every certificate in a PEM file, leaf first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    std::fs::read(path)
        .ok()
        .and_then(|pem| certs(&pem))
        .ok_or_else(|| PemError::NoCertificates {
            path: path.to_owned(),
        })
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    std::fs::read(path)
        .ok()
        .and_then(|pem| key(&pem))
        .ok_or_else(|| PemError::NoKey {
            path: path.to_owned(),
        })
}
