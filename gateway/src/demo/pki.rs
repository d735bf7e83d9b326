//! The demo's private CA: generated per run, it signs the echo upstream's certificate, and the
//! gateway reaches the upstream over HTTPS trusting only that CA (`serversTransports`), as it
//! would an internal service behind a company CA.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The CA's certificate on disk, and the upstream's server configuration.
pub struct DemoPki {
    /// Holds `ca.pem` for as long as the demo runs.
    pub dir: tempfile::TempDir,
    /// The upstream's TLS server configuration (certificate for 127.0.0.1).
    pub upstream: Arc<rustls::ServerConfig>,
}

impl DemoPki {
    /// Generates the CA and the upstream's certificate, writing the CA's to a temporary file.
    pub fn generate() -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tokengate demo CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "demo upstream");
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("ca.pem"), ca.pem())?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
        let mut upstream =
            rustls::ServerConfig::builder_with_provider(crate::http::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?;
        upstream.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            dir,
            upstream: Arc::new(upstream),
        })
    }

    /// The CA certificate's path.
    pub fn ca_file(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }
}
