//! TLS for `rediss://` URLs, with the system's roots or a private CA (`--redis-ca-cert`).
//!
//! fred only speaks TLS when built with a TLS feature; without one it logs a warning and
//! connects in plaintext. This crate always enables rustls and [`crate::connect`] builds the
//! connector itself, so a `rediss://` URL is TLS or an error, never plaintext.

use std::{path::Path, sync::Arc};

use fred::types::config::TlsConnector;
use rustls::{ClientConfig, RootCertStore};

use crate::StoreError;

/// A connector trusting the certificates in `ca_cert` (PEM), or the system's roots.
pub(crate) fn connector(ca_cert: Option<&Path>) -> Result<TlsConnector, StoreError> {
    let mut roots = RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let failed = |why: String| StoreError::Tls(format!("{}: {why}", path.display()));
            let pem = std::fs::read(path).map_err(|err| failed(err.to_string()))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|err| failed(err.to_string()))?;
                roots.add(cert).map_err(|err| failed(err.to_string()))?;
            }
            if roots.is_empty() {
                return Err(failed("no PEM certificate in the file".into()));
            }
        }
        None => {
            // Unreadable system certificates are skipped: the handshake fails later, clearly,
            // if the server's chain needed them.
            let (added, _ignored) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            tracing::debug!(added, "trusting the system's root certificates for Redis");
        }
    }
    // One named provider: `ClientConfig::builder()` panics when a dependency enables a second.
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|err| StoreError::Tls(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(config))
}
