//! TLS for HTTPS and WSS (rustls): from PEM files in the configuration, or a self-signed
//! certificate generated at start-up with `--dev-tls` for a LAN demo.

use std::path::Path;

use axum_server::tls_rustls::RustlsConfig;

/// Errors setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or parsing the certificate or key failed.
    #[error("loading certificate/key: {0}")]
    Load(std::io::Error),
    /// Generating a self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

/// Installs the process-wide rustls crypto provider (ring) once.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS configuration from PEM files.
pub async fn from_files(cert: &Path, key: &Path) -> Result<RustlsConfig, TlsError> {
    install_provider();
    RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(TlsError::Load)
}

/// A self-signed certificate for the given names: (certificate PEM, key PEM).
pub fn self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// A TLS configuration with a fresh self-signed certificate.
pub async fn dev_config(names: &[String]) -> Result<RustlsConfig, TlsError> {
    install_provider();
    let (cert, key) = self_signed(names)?;
    RustlsConfig::from_pem(cert.into_bytes(), key.into_bytes())
        .await
        .map_err(TlsError::Load)
}
