//! The gateway's TLS: the operator's certificate, or a self-signed one for
//! `*.{ingress_domain}` made at first start and kept in the state directory.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Certificate and key files: the operator's, or made in `dir` (kept across restarts).
pub fn certificate_files(
    operator: Option<(&Path, &Path)>,
    dir: &Path,
    domain: &str,
) -> Result<(PathBuf, PathBuf), TlsError> {
    if let Some((cert, key)) = operator {
        return Ok((cert.to_owned(), key.to_owned()));
    }
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let file_err = |path: &Path| {
        let path = path.to_owned();
        move |e: std::io::Error| TlsError::File {
            path,
            message: e.to_string(),
        }
    };
    crate::private_files::create_dir(dir).map_err(file_err(dir))?;
    let names = vec![
        format!("*.{domain}"),
        domain.to_owned(),
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    let made =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    // The key is written 0600 from its first byte.
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .and_then(|mut f| f.write_all(made.signing_key.serialize_pem().as_bytes()))
        .map_err(file_err(&key))?;
    crate::private_files::write(&cert, made.cert.pem().as_bytes()).map_err(file_err(&cert))?;
    tracing::info!(
        "made a self-signed ingress certificate for *.{domain}: {}",
        cert.display()
    );
    Ok((cert, key))
}

/// A server configuration offering `alpn` (empty: none).
pub fn server_config(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let bad = |path: &Path| {
        let path = path.to_owned();
        move |e: rustls::pki_types::pem::Error| TlsError::File {
            path,
            message: e.to_string(),
        }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(bad(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad(cert))?;
    if chain.is_empty() {
        return Err(TlsError::File {
            path: cert.to_owned(),
            message: "no certificate in it".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(bad(key))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
