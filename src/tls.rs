//! TLS material: the upstream client's trust and identity.

use std::path::{Path, PathBuf};

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{self, ClientIdentity, ConfigError, ConfigErrors};

/// A problem with TLS material, naming the file but never its contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: no PEM certificate could be read")]
    NoCertificates { path: PathBuf },
    #[error("{path}: no PEM private key (PKCS#8, PKCS#1 or SEC1) could be read")]
    NoKey { path: PathBuf },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Reads every certificate in a PEM file, leaf first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|_| TlsError::NoCertificates {
            path: path.to_owned(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::NoCertificates {
            path: path.to_owned(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|_| TlsError::NoKey {
        path: path.to_owned(),
    })
}

/// Trust and identity for an `https://` upstream: the system's roots plus any
/// private CA, and a client certificate when mutual TLS is asked for. Errors
/// name the variable that pointed at the bad file.
///
/// `system_roots` is false for a plain `http://` peer: reading the system store
/// is most of start-up time and idle memory, and such a peer never needs it.
/// The files named are still read, so a bad one is reported either way.
pub fn client_config(
    system_roots: bool,
    ca_file: Option<&Path>,
    identity: Option<&ClientIdentity>,
) -> Result<ClientConfig, ConfigErrors> {
    let ca_error = |e: TlsError| blame(config::UPSTREAM_CA_FILE, &e);
    let id_error = |e: TlsError| match &e {
        TlsError::NoKey { .. } => blame(config::UPSTREAM_CLIENT_KEY, &e),
        _ => blame(config::UPSTREAM_CLIENT_CERT, &e),
    };
    let mut roots = RootCertStore::empty();
    // A missing or partly unreadable system store is normal in minimal images;
    // private CAs and the system's roots are simply added together.
    if system_roots {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    }
    if let Some(path) = ca_file {
        for cert in load_certs(path).map_err(ca_error)? {
            roots.add(cert).map_err(|e| {
                ca_error(TlsError::Invalid {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
            })?;
        }
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => {
            let certs = load_certs(&id.cert).map_err(id_error)?;
            let key = load_key(&id.key).map_err(id_error)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                id_error(TlsError::Invalid {
                    path: id.key.clone(),
                    reason: format!("does not match {}: {e}", id.cert.display()),
                })
            })
        }
    }
}

fn blame(variable: &str, e: &TlsError) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        variable: variable.to_owned(),
        problem: e.to_string(),
    }])
}
