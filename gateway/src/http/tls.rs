//! TLS on the proxy listener: certificates read from PEM files and chosen by SNI, re-read from
//! disk when they change (cert-manager and Kubernetes secret volumes replace them in place), and
//! optional verification of client certificates against a CA (mutual TLS callers).
//!
//! A certificate serves the DNS names of its `subjectAltName` (wildcards such as `*.example.com`
//! cover one label). A handshake naming no served host, or naming none at all (a caller dialling
//! an IP address), gets the first certificate, unless `sniStrict` refuses it. A replaced file
//! takes effect for new handshakes; established connections keep the session they negotiated.
//! A replacement that does not load (a key that does not match its certificate, a half-written
//! file) is logged once and the certificates in use stay.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

pub use super::peer::PeerCertificate;

/// How often certificate files are looked at when `tls.watchInterval` is not set: a rotated
/// certificate is served within this, and reading a few kilobytes this often costs nothing.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_secs(10);

/// The crypto provider of every TLS connection the gateway makes or accepts.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One served certificate's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM certificate chain, end-entity certificate first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The oldest protocol version a caller may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// Whether callers present certificates, and what is done with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// No certificate is asked for.
    None,
    /// A certificate is asked for; one that is presented must verify against `ca`.
    VerifyIfGiven(Vec<CertificateDer<'static>>),
    /// Every caller must present a certificate that verifies against `ca`.
    Require(Vec<CertificateDer<'static>>),
}

/// `tls` on the proxy listener, validated (the files were read and checked at load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Served certificates; the first is the default.
    pub certificates: Vec<CertificateFiles>,
    /// Oldest protocol version accepted.
    pub min_version: MinVersion,
    /// Refuse handshakes whose SNI names no served host (and those without SNI).
    pub sni_strict: bool,
    /// Client certificate verification.
    pub client_auth: ClientAuth,
    /// PEM certificate revocation lists client certificates are checked against (re-read
    /// when they change, with the certificates).
    pub crl_files: Vec<PathBuf>,
    /// How often the certificate files are looked at for changes.
    pub watch_interval: Duration,
}

/// Why certificates could not be loaded; names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Content {
        /// The file.
        path: String,
        /// What is wrong with it.
        what: String,
    },
}

/// A certificate ready to serve, with the names it answers for.
struct Served {
    key: Arc<CertifiedKey>,
    /// Lower-case DNS names; `*.example.com` is kept as is.
    names: Vec<String>,
    /// Seconds since the epoch when the end-entity certificate expires.
    not_after: i64,
}

impl Served {
    fn answers(&self, host: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            // A wildcard covers exactly one label (RFC 6125 §6.4.3).
            Some(parent) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => n == host,
        })
    }
}

/// Reads a PEM certificate chain.
pub fn read_chain(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read(path)?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| content(path, format!("not a PEM certificate list ({e})")))?;
    if chain.is_empty() {
        return Err(content(path, "holds no PEM certificate".into()));
    }
    Ok(chain)
}

/// Reads a PEM private key.
pub fn read_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|_| content(path, "holds no PEM private key".into()))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn content(path: &std::path::Path, what: String) -> TlsFileError {
    TlsFileError::Content {
        path: path.display().to_string(),
        what,
    }
}

/// Loads one certificate and its key, checking that they belong together.
fn load(files: &CertificateFiles, provider: &CryptoProvider) -> Result<Served, TlsFileError> {
    let chain = read_chain(&files.cert_file)?;
    let key = read_key(&files.key_file)?;
    let (names, not_after) = {
        let (_, cert) = X509Certificate::from_der(&chain[0])
            .map_err(|_| content(&files.cert_file, "is not an X.509 certificate".into()))?;
        let names = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        (names, cert.validity().not_after.timestamp())
    };
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        content(
            &files.key_file,
            format!("does not go with {} ({e})", files.cert_file.display()),
        )
    })?;
    Ok(Served {
        key: Arc::new(key),
        names,
        not_after,
    })
}

/// Checks that every certificate file loads (used when the configuration is validated).
pub fn check(files: &CertificateFiles) -> Result<(), TlsFileError> {
    load(files, &provider()).map(|_| ())
}

/// The served certificates, swapped whole when the files change.
pub struct Certificates {
    files: Vec<CertificateFiles>,
    sni_strict: bool,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Vec<Served>>>,
    /// The client certificate verifier, whose revocation lists are watched with the files.
    clients: std::sync::OnceLock<Arc<ClientVerifier>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Certificates {
    fn load(
        files: Vec<CertificateFiles>,
        sni_strict: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsFileError> {
        let served = load_all(&files, &provider)?;
        record_expiry(&served);
        Ok(Self {
            files,
            sni_strict,
            provider,
            current: RwLock::new(Arc::new(served)),
            clients: std::sync::OnceLock::new(),
        })
    }

    fn served(&self) -> Arc<Vec<Served>> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the files again and swaps them in if they all load; the certificates in use stay
    /// otherwise.
    fn reload(&self) -> Result<(), ServerTlsError> {
        let served = load_all(&self.files, &self.provider)?;
        if let Some(clients) = self.clients.get() {
            clients.reload()?;
        }
        record_expiry(&served);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(served);
        Ok(())
    }

    /// A digest of every file's bytes, to notice a change without parsing.
    fn fingerprint(&self) -> Option<[u8; 32]> {
        let mut h = Sha256::new();
        let crls = self.clients.get().map(|c| c.crl_files.as_slice());
        let paths = (self.files.iter())
            .flat_map(|f| [&f.cert_file, &f.key_file])
            .chain(crls.unwrap_or_default());
        for path in paths {
            let bytes = std::fs::read(path).ok()?;
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(&bytes);
        }
        Some(h.finalize().into())
    }

    /// Looks at the files every `interval` until `stop`, reloading them when their bytes
    /// change. A change that does not load is reported once, and looked at again when the
    /// bytes change once more.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let metrics = crate::telemetry::metrics::metrics();
        let mut seen = self.fingerprint();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.fingerprint();
            if now.is_none() || now == seen {
                // A file missing mid-rotation is looked at again on the next tick.
                continue;
            }
            seen = now;
            match self.reload() {
                Ok(()) => {
                    metrics.tls_reload(true);
                    tracing::info!(
                        certificates = self.files.len(),
                        "TLS certificates reloaded from disk"
                    );
                }
                Err(error) => {
                    metrics.tls_reload(false);
                    tracing::warn!(%error, "changed TLS certificate files do not load; the certificates in use stay");
                }
            }
        }
    }
}

fn load_all(
    files: &[CertificateFiles],
    provider: &CryptoProvider,
) -> Result<Vec<Served>, TlsFileError> {
    files.iter().map(|f| load(f, provider)).collect()
}

/// The earliest expiry among the served certificates, for alerting before it happens.
fn record_expiry(served: &[Served]) {
    if let Some(earliest) = served.iter().map(|s| s.not_after).min() {
        crate::telemetry::metrics::metrics()
            .tls_certificate_expiry
            .set(earliest);
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let served = self.served();
        let named = hello.server_name().map(str::to_ascii_lowercase);
        if let Some(host) = &named
            && let Some(s) = served.iter().find(|s| s.answers(host))
        {
            return Some(Arc::clone(&s.key));
        }
        if self.sni_strict {
            return None;
        }
        served.first().map(|s| Arc::clone(&s.key))
    }
}

/// Client certificates verified against the CA and, when given, the certificate revocation
/// lists of `crl_files`, read again when they change (a CA publishes a new list every few hours
/// or days; a revoked certificate is refused from the next handshake on).
pub struct ClientVerifier {
    roots: Arc<RootCertStore>,
    optional: bool,
    crl_files: Vec<PathBuf>,
    provider: Arc<CryptoProvider>,
    hints: Vec<rustls::DistinguishedName>,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("crl_files", &self.crl_files)
            .finish_non_exhaustive()
    }
}

/// Reads the certificate revocation lists of a PEM file.
pub fn read_crls(
    path: &std::path::Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsFileError> {
    let pem = read(path)?;
    let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| content(path, format!("not a PEM certificate revocation list ({e})")))?;
    if crls.is_empty() {
        return Err(content(
            path,
            "holds no PEM certificate revocation list".into(),
        ));
    }
    Ok(crls)
}

impl ClientVerifier {
    fn new(
        ca: &[CertificateDer<'static>],
        optional: bool,
        crl_files: Vec<PathBuf>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, ServerTlsError> {
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c.clone())?;
        }
        let roots = Arc::new(roots);
        let hints = roots.subjects();
        let current = RwLock::new(build_verifier(&roots, &provider, optional, &crl_files)?);
        Ok(Self {
            roots,
            optional,
            crl_files,
            provider,
            hints,
            current,
        })
    }

    fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the lists again and swaps them in if they all parse.
    fn reload(&self) -> Result<(), ServerTlsError> {
        let built = build_verifier(&self.roots, &self.provider, self.optional, &self.crl_files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = built;
        Ok(())
    }
}

/// A verifier over the CA `roots` and the lists of `crl_files` as they now read.
fn build_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    optional: bool,
    crl_files: &[PathBuf],
) -> Result<Arc<dyn ClientCertVerifier>, ServerTlsError> {
    let mut crls = Vec::new();
    for f in crl_files {
        crls.extend(read_crls(f)?);
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider));
    if !crls.is_empty() {
        // The lists are the CA's for the certificates it issued: a client certificate they do
        // not cover is refused (fail closed).
        builder = builder.with_crls(crls).only_check_end_entity_revocation();
    }
    if optional {
        builder = builder.allow_unauthenticated();
    }
    Ok(builder.build()?)
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        !self.optional
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

/// A TLS listener's server configuration, and its certificates (to watch).
pub struct ServerTls {
    /// What the acceptor uses.
    pub config: Arc<ServerConfig>,
    /// The served certificates.
    pub certificates: Arc<Certificates>,
}

impl ServerTls {
    /// Loads the certificates and builds the server configuration: ALPN `h2` and `http/1.1`,
    /// TLS 1.2 or 1.3 as configured, rustls' default (modern, forward-secret) cipher suites.
    pub fn new(cfg: &ListenerTls) -> Result<Self, ServerTlsError> {
        let provider = provider();
        let certificates = Arc::new(Certificates::load(
            cfg.certificates.clone(),
            cfg.sni_strict,
            Arc::clone(&provider),
        )?);
        let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)?;
        let builder = match &cfg.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::VerifyIfGiven(ca) | ClientAuth::Require(ca) => {
                let verifier = Arc::new(ClientVerifier::new(
                    ca,
                    matches!(cfg.client_auth, ClientAuth::VerifyIfGiven(_)),
                    cfg.crl_files.clone(),
                    provider,
                )?);
                // Watched with the certificates: a new revocation list applies at once.
                let _ = certificates.clients.set(Arc::clone(&verifier));
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&certificates) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            certificates,
        })
    }
}

/// Why a TLS listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// A certificate or key file.
    #[error(transparent)]
    File(#[from] TlsFileError),
    /// The TLS library refused the settings or a CA certificate.
    #[error("TLS settings refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA cannot verify certificates.
    #[error("client certificate authority refused: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// What a TLS connection tells the requests it carries; in their extensions.
#[derive(Debug)]
pub struct TlsSession {
    /// The caller's verified certificate, if it presented one.
    pub client_certificate: Option<Arc<PeerCertificate>>,
    /// The name the caller asked for in its handshake (SNI), lower-case.
    pub server_name: Option<Arc<str>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(names: &[&str]) -> Served {
        let cert = rcgen::generate_simple_self_signed(vec!["x.test".to_owned()]).unwrap();
        let key =
            PrivateKeyDer::from_pem_slice(cert.signing_key.serialize_pem().as_bytes()).unwrap();
        let key = CertifiedKey::from_der(vec![cert.cert.der().clone()], key, &provider()).unwrap();
        Served {
            key: Arc::new(key),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            not_after: 0,
        }
    }

    #[test]
    fn wildcards_cover_exactly_one_label() {
        let s = served(&["*.example.com", "api.test"]);
        assert!(s.answers("a.example.com"));
        assert!(s.answers("api.test"));
        assert!(!s.answers("example.com"));
        assert!(!s.answers("a.b.example.com"));
        assert!(!s.answers(".example.com"));
        assert!(!s.answers("aexample.com"));
    }
}
