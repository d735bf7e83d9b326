//! TLS material of the gateway's outbound connections, with the files already read and parsed
//! at load: towards IdP endpoints ([`HttpTls`]), towards the shared store, Redis or the cache
//! service ([`StoreTls`]), and the rustls client configuration of upstream connections
//! ([`rustls_client`]).

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::secret::Secret;

/// TLS options of an HTTP client, with the files already read and parsed.
#[derive(Debug, Clone, Default)]
pub struct HttpTls {
    /// Extra trusted CA certificates (added to the system roots).
    pub ca: Vec<reqwest::Certificate>,
    /// Client certificate and key (mutual TLS).
    pub identity: Option<reqwest::Identity>,
    /// Skip server verification. For tests only.
    pub insecure_skip_verify: bool,
    /// Names these settings without revealing them: a digest of the CA and client
    /// certificates (public material, never the key) and the verification flag. `None` when
    /// nothing is configured.
    pub profile: Option<String>,
}

/// Settings are the same when their profiles are: the same CA and client certificates (a key
/// belongs to its certificate) and the same verification.
impl PartialEq for HttpTls {
    fn eq(&self, other: &Self) -> bool {
        self.profile == other.profile && self.insecure_skip_verify == other.insecure_skip_verify
    }
}

impl HttpTls {
    /// The profile name of settings made of these PEM files' bytes.
    pub fn profile_of(ca: Option<&[u8]>, cert: Option<&[u8]>, insecure: bool) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [ca, cert] {
            let bytes = part.unwrap_or_default();
            h.update((part.is_some() as u8).to_be_bytes());
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        }
        h.update([insecure as u8]);
        let digest = h.finalize();
        digest[..12].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An HTTP client towards an IdP endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpClientConfig {
    /// One attempt's timeout.
    pub timeout: Duration,
    /// Retries after the first attempt (transport errors, 5xx, 429).
    pub retries: u32,
    /// TLS options.
    pub tls: HttpTls,
}

impl HttpClientConfig {
    /// Builds the client. Fails only on TLS material the TLS library rejects at build time.
    pub fn build(&self) -> reqwest::Result<reqwest::Client> {
        let mut b =
            super::client_builder().danger_accept_invalid_certs(self.tls.insecure_skip_verify);
        for ca in &self.tls.ca {
            b = b.add_root_certificate(ca.clone());
        }
        if let Some(id) = &self.tls.identity {
            b = b.identity(id.clone());
        }
        b.build()
    }
}

/// TLS towards the store (Redis, or the cache service's nodes), with the files already read.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreTls {
    /// PEM CA bundle; `None` trusts the system roots.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate and key, for mutual TLS.
    pub client: Option<(Vec<u8>, Secret)>,
    /// Skip server certificate verification.
    pub insecure_skip_verify: bool,
}

impl fmt::Debug for StoreTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreTls")
            .field("custom_ca", &self.ca.is_some())
            .field("client_certificate", &self.client.is_some())
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}

/// A client certificate and its key, presented for mutual TLS.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate chain, end-entity certificate first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: Arc<PrivateKeyDer<'static>>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl PartialEq for ClientIdentity {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain && self.key.secret_der() == other.key.secret_der()
    }
}

/// The system's trusted roots, read once (a few hundred files on a typical distribution).
pub fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: LazyLock<Vec<CertificateDer<'static>>> = LazyLock::new(|| {
        let found = rustls_native_certs::load_native_certs();
        if found.certs.is_empty() {
            tracing::warn!(
                errors = found.errors.len(),
                "no system CA certificates found: HTTPS upstreams verify only against configured rootCAs, IdPs against caFile and the built-in roots"
            );
        }
        found.certs
    });
    &ROOTS
}

/// A rustls client configuration: the system roots plus `extra_roots`, `identity` presented
/// when the server asks for a certificate, and the server's certificate not verified at all
/// only when `insecure_skip_verify` (which configuration refuses unless explicitly allowed).
pub fn rustls_client(
    extra_roots: &[CertificateDer<'static>],
    identity: Option<&ClientIdentity>,
    insecure_skip_verify: bool,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = crate::http::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?;
    let builder = if insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(system_roots().iter().cloned());
        for ca in extra_roots {
            roots.add(ca.clone())?;
        }
        builder.with_root_certificates(roots)
    };
    match identity {
        Some(id) => builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key()),
        None => Ok(builder.with_no_client_auth()),
    }
}

/// `insecureSkipVerify`: any certificate is accepted; the handshake's signatures are still
/// checked, so the session is encrypted, but to whoever answered.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
