//! `tls` (the proxy listener's certificates and client authentication) and `serversTransports`
//! (how upstreams are reached), with every file read and checked at load.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};

use super::raw::{RawCertificate, RawListenerTls, RawServersTransport};
use super::validate::Issues;
use crate::http::tls::{
    self, CertificateFiles, ClientAuth, DEFAULT_WATCH_INTERVAL, ListenerTls, MinVersion,
};
use crate::outbound::tls::ClientIdentity;
use crate::proxy::transport::ServersTransport;

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
