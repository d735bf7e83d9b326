//! `tls` (the proxy listener's certificates and client authentication) and `serversTransports`
//! (how upstreams are reached), with every file read and checked at load.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};

use super::issues::Issues;
use crate::config::route::RawForwardingTimeouts;
use crate::http::tls::{
    self, CertificateFiles, ClientAuth, DEFAULT_WATCH_INTERVAL, ListenerTls, MinVersion,
};
use crate::outbound::tls::ClientIdentity;
use crate::proxy::transport::ServersTransport;
use serde::Deserialize;

/// Validates `tls`.
pub(super) fn listener_tls(issues: &mut Issues, raw: RawListenerTls) -> Option<ListenerTls> {
    let before = issues.0.len();
    if raw.certificates.is_empty() {
        issues.push("tls.certificates", "needs at least one certificate");
    }
    let certificates: Vec<CertificateFiles> = raw
        .certificates
        .into_iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let files = CertificateFiles {
                cert_file: PathBuf::from(c.cert_file),
                key_file: PathBuf::from(c.key_file),
            };
            if !issues.reads_key_material() {
                return Some(files);
            }
            tls::check(&files)
                .map_err(|e| issues.push(format!("tls.certificates[{i}]"), e.to_string()))
                .ok()
                .map(|()| files)
        })
        .collect();
    let min_version = match raw.options.min_version.as_deref() {
        None | Some("VersionTLS12") => MinVersion::Tls12,
        Some("VersionTLS13") => MinVersion::Tls13,
        Some(other) => {
            issues.push(
                "tls.options.minVersion",
                format!("must be VersionTLS12 or VersionTLS13, not {other:?}"),
            );
            MinVersion::Tls12
        }
    };
    let mut crl_files = Vec::new();
    let client_auth = match raw.options.client_auth {
        None => ClientAuth::None,
        Some(ca) => {
            const PATH: &str = "tls.options.clientAuth";
            for (i, f) in ca.crl_files.iter().enumerate() {
                if issues.reads_key_material()
                    && let Err(e) = tls::read_crls(f.as_ref())
                {
                    issues.push(format!("{PATH}.crlFiles[{i}]"), e.to_string());
                }
                crl_files.push(std::path::PathBuf::from(f));
            }
            if !ca.crl_files.is_empty() && ca.ca_files.is_empty() {
                issues.push(
                    format!("{PATH}.crlFiles"),
                    "needs caFiles: the lists are checked against the CA that signed them",
                );
            }
            let roots: Vec<CertificateDer<'static>> = ca
                .ca_files
                .iter()
                .enumerate()
                .flat_map(|(i, f)| {
                    if !issues.reads_key_material() {
                        return Vec::new();
                    }
                    tls::read_chain(f.as_ref())
                        .map_err(|e| issues.push(format!("{PATH}.caFiles[{i}]"), e.to_string()))
                        .unwrap_or_default()
                })
                .collect();
            let kind = ca.client_auth_type.as_deref();
            if ca.ca_files.is_empty() && !matches!(kind, Some("NoClientCert")) {
                issues.push(
                    format!("{PATH}.caFiles"),
                    "is required to verify client certificates",
                );
            }
            match kind {
                Some("NoClientCert") => ClientAuth::None,
                Some("VerifyClientCertIfGiven") => ClientAuth::VerifyIfGiven(roots),
                None | Some("RequireAndVerifyClientCert") => ClientAuth::Require(roots),
                Some(unverified @ ("RequestClientCert" | "RequireAnyClientCert")) => {
                    issues.push(
                        format!("{PATH}.clientAuthType"),
                        format!("{unverified} accepts certificates nobody verified; use VerifyClientCertIfGiven or RequireAndVerifyClientCert"),
                    );
                    ClientAuth::None
                }
                Some(other) => {
                    issues.push(
                        format!("{PATH}.clientAuthType"),
                        format!("must be NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert, not {other:?}"),
                    );
                    ClientAuth::None
                }
            }
        }
    };
    let watch_interval = raw.watch_interval.unwrap_or(DEFAULT_WATCH_INTERVAL);
    if watch_interval.is_zero() {
        issues.push("tls.watchInterval", "must be greater than zero");
    }
    (issues.0.len() == before).then_some(ListenerTls {
        certificates,
        min_version,
        sni_strict: raw.options.sni_strict,
        client_auth,
        crl_files,
        watch_interval,
    })
}

/// Validates `serversTransports`.
pub(super) fn servers_transports(
    issues: &mut Issues,
    raw: BTreeMap<String, RawServersTransport>,
) -> BTreeMap<String, Arc<ServersTransport>> {
    raw.into_iter()
        .filter_map(|(name, t)| {
            let path = format!("serversTransports.{name}");
            servers_transport(issues, &path, t).map(|t| (name, Arc::new(t)))
        })
        .collect()
}

fn servers_transport(
    issues: &mut Issues,
    path: &str,
    t: RawServersTransport,
) -> Option<ServersTransport> {
    let before = issues.0.len();
    let server_name = t.server_name.and_then(|n| {
        ServerName::try_from(n)
            .map_err(|_| issues.push(format!("{path}.serverName"), "not a DNS name or IP address"))
            .ok()
    });
    let root_cas = t
        .root_cas
        .iter()
        .enumerate()
        .flat_map(|(i, f)| {
            issues.source(f);
            if !issues.reads_key_material() {
                return Vec::new();
            }
            tls::read_chain(f.as_ref())
                .map_err(|e| issues.push(format!("{path}.rootCAs[{i}]"), e.to_string()))
                .unwrap_or_default()
        })
        .collect();
    let client_certificate = match t.certificates.as_slice() {
        [] => None,
        [one] => client_identity(issues, &format!("{path}.certificates[0]"), one),
        _ => {
            issues.push(
                format!("{path}.certificates"),
                "one client certificate per transport; declare another transport for another",
            );
            None
        }
    };
    if t.insecure_skip_verify {
        issues.insecure(format!("{path}.insecureSkipVerify"));
    }
    let timeouts = t.forwarding_timeouts.map_or_else(Default::default, |raw| {
        super::route::forwarding_timeouts(
            issues,
            &format!("{path}.forwardingTimeouts"),
            raw,
            Default::default(),
        )
    });
    (issues.0.len() == before).then_some(ServersTransport {
        server_name,
        root_cas,
        client_certificate,
        insecure_skip_verify: t.insecure_skip_verify,
        disable_http2: t.disable_http2,
        timeouts,
    })
}

/// A client certificate and key, checked to belong together.
pub(super) fn client_identity(
    issues: &mut Issues,
    path: &str,
    c: &RawCertificate,
) -> Option<ClientIdentity> {
    let files = CertificateFiles {
        cert_file: PathBuf::from(&c.cert_file),
        key_file: PathBuf::from(&c.key_file),
    };
    issues.source(&files.cert_file);
    issues.source(&files.key_file);
    if !issues.reads_key_material() {
        return None;
    }
    let loaded = tls::check(&files).and_then(|()| {
        Ok(ClientIdentity {
            chain: tls::read_chain(&files.cert_file)?,
            key: Arc::new(tls::read_key(&files.key_file)?),
        })
    });
    loaded.map_err(|e| issues.push(path, e.to_string())).ok()
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

/// `tls`: the proxy listener speaks TLS (Traefik's `tls.certificates` and `tls.options`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawListenerTls {
    /// Served certificates; the first is the default.
    pub certificates: Vec<RawCertificate>,
    #[serde(default)]
    pub options: RawTlsOptions,
    /// How often the files are looked at for changes.
    #[serde(default, with = "humantime_serde")]
    pub watch_interval: Option<Duration>,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCertificate {
    pub cert_file: String,
    pub key_file: String,
}

/// `tls.options` (Traefik's TLS options).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTlsOptions {
    /// `VersionTLS12` (default) or `VersionTLS13`.
    #[serde(default)]
    pub min_version: Option<String>,
    /// Refuse handshakes that name no served host.
    #[serde(default)]
    pub sni_strict: bool,
    #[serde(default)]
    pub client_auth: Option<RawClientAuth>,
}

/// `tls.options.clientAuth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawClientAuth {
    /// PEM CA bundles client certificates must chain to.
    #[serde(default)]
    pub ca_files: Vec<String>,
    /// `NoClientCert`, `VerifyClientCertIfGiven` or `RequireAndVerifyClientCert` (default when
    /// `caFiles` is set).
    #[serde(default)]
    pub client_auth_type: Option<String>,
    /// PEM certificate revocation lists of that CA.
    #[serde(default)]
    pub crl_files: Vec<String>,
}

/// A `serversTransports` entry (Traefik's `ServersTransport`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawServersTransport {
    /// SNI and verified name; default: the upstream URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// PEM CA bundles trusted in addition to the system's roots.
    #[serde(default, rename = "rootCAs")]
    pub root_cas: Vec<String>,
    /// The client certificate presented to upstreams (one).
    #[serde(default)]
    pub certificates: Vec<RawCertificate>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default, rename = "disableHTTP2")]
    pub disable_http2: bool,
    #[serde(default)]
    pub forwarding_timeouts: Option<RawForwardingTimeouts>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTls {
    /// PEM CA bundle to trust instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// PEM client certificate (mutual TLS).
    #[serde(default)]
    pub cert_file: Option<String>,
    /// PEM private key of the client certificate.
    #[serde(default)]
    pub key_file: Option<String>,
    /// Skip server certificate verification. For tests only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}
