//! TLS for HTTPS and WSS (rustls): from PEM files in the configuration, or a self-signed
//! certificate generated at start-up with `--dev-tls` for a LAN demo. The handshake itself is
//! run by the server's accept loop ([`crate::server`]) with the header timeout as its limit.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or parsing the certificate or key failed.
    #[error("loading certificate/key: {0}")]
    Load(String),
    /// Generating a self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

/// Installs the process-wide rustls crypto provider (ring) once.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn acceptor(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<TlsAcceptor, TlsError> {
    install_provider();
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Load(e.to_string()))?;
    // HTTP/1.1 only: WebSocket upgrades need it, and the server speaks no HTTP/2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TLS acceptor from PEM files (certificate chain, private key).
pub fn from_files(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let load = |what: &str, p: &Path, e: &dyn std::fmt::Display| {
        TlsError::Load(format!("{what} {}: {e}", p.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| load("certificate", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| load("certificate", cert, &e))?;
    if certs.is_empty() {
        return Err(load("certificate", cert, &"no certificate in the file"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| load("key", key, &e))?;
    acceptor(certs, key_der)
}

/// A self-signed certificate for the given names: (certificate PEM, key PEM).
pub fn self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// A TLS acceptor with a fresh self-signed certificate.
pub fn dev_config(names: &[String]) -> Result<TlsAcceptor, TlsError> {
    let (cert, key) = self_signed(names)?;
    let certs = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    acceptor(certs, key)
}
