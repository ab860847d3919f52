//! TLS for the uplink: rustls with the `ring` provider (no C toolchain needed), the broker's CA,
//! and optionally a client certificate and key (the broker can then map the certificate's
//! common name to the device for its ACLs). Files are read and checked before connecting, so a
//! wrong path or a key that does not match fails at start, not as an endless reconnect loop.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ClientConfig;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the TLS material lives.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// CA certificate(s) that signed the broker's certificate (PEM).
    pub ca: PathBuf,
    /// Client certificate chain (PEM), for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM), with `client_cert`.
    pub client_key: Option<PathBuf>,
}

fn certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// Builds the rustls client configuration, or says which file is wrong and why.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(&files.ca)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", files.ca.display()))?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
    let config = match (&files.client_cert, &files.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certs(cert)?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate and key: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("a client certificate needs its key, and a key its certificate".into()),
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_that_are_missing_or_not_pem_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TlsFiles {
            ca: dir.path().join("ca.pem"),
            client_cert: None,
            client_key: None,
        };
        let e = client_config(&missing).unwrap_err();
        assert!(e.contains("ca.pem"), "{e}");
        std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
        let e = client_config(&missing).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let half = TlsFiles {
            client_cert: Some(dir.path().join("c.pem")),
            ..missing
        };
        assert!(client_config(&half).is_err());
    }
}
