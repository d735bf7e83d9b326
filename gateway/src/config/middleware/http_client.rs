//! `clientConfig`: the HTTP client towards an IdP endpoint, and its TLS files.

use std::time::Duration;

use super::super::issues::Issues;
use crate::config::tls::RawTls;
use crate::outbound::{DEFAULT_IDP_RETRIES, DEFAULT_IDP_TIMEOUT, HttpClientConfig, HttpTls};
use serde::Deserialize;

/// The HTTP client that fetches keys (`clientConfig` under `path`).
pub(in crate::config) fn key_client(
    issues: &mut Issues,
    path: &str,
    raw: Option<RawHttpClient>,
) -> HttpClientConfig {
    match raw {
        None => http_client(issues, path, None, None, None),
        Some(RawHttpClient {
            timeout,
            retries,
            tls,
        }) => http_client(
            issues,
            &format!("{path}.clientConfig"),
            timeout,
            retries,
            tls,
        ),
    }
}

pub(super) fn http_client(
    issues: &mut Issues,
    path: &str,
    timeout: Option<Duration>,
    retries: Option<u32>,
    tls: Option<RawTls>,
) -> HttpClientConfig {
    let timeout = timeout.unwrap_or(DEFAULT_IDP_TIMEOUT);
    if timeout.is_zero() {
        issues.push(format!("{path}.timeout"), "must be greater than zero");
    }
    HttpClientConfig {
        timeout,
        retries: retries.unwrap_or(DEFAULT_IDP_RETRIES),
        tls: tls.map_or_else(HttpTls::default, |t| {
            http_tls(issues, &format!("{path}.tls"), t)
        }),
    }
}

pub(super) fn http_tls(issues: &mut Issues, path: &str, t: RawTls) -> HttpTls {
    let mut read = |key: &str, file: &Option<String>| {
        file.as_ref().and_then(|f| {
            issues.source(f);
            if !issues.reads_key_material() {
                return None;
            }
            std::fs::read(f)
                .map_err(|e| issues.push(format!("{path}.{key}"), format!("cannot read {f}: {e}")))
                .ok()
        })
    };
    let ca = read("caFile", &t.ca_file);
    let cert = read("certFile", &t.cert_file);
    let key = read("keyFile", &t.key_file);
    let profile = Some(HttpTls::profile_of(
        ca.as_deref(),
        cert.as_deref(),
        t.insecure_skip_verify,
    ));
    let ca = ca.map_or_else(
        Vec::new,
        |pem| match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certs) if !certs.is_empty() => certs,
            _ => {
                issues.push(format!("{path}.caFile"), "holds no PEM certificate");
                Vec::new()
            }
        },
    );
    let identity = match (t.cert_file.is_some(), t.key_file.is_some()) {
        (false, false) => None,
        (true, true) => {
            let (Some(mut pem), Some(key)) = (cert, key) else {
                return HttpTls::default();
            };
            pem.push(b'\n');
            pem.extend_from_slice(&key);
            reqwest::Identity::from_pem(&pem)
                .map_err(|_| {
                    issues.push(
                        format!("{path}.certFile"),
                        "certificate and key do not form a PEM identity",
                    )
                })
                .ok()
        }
        _ => {
            issues.push(path, "certFile and keyFile go together");
            None
        }
    };
    if t.insecure_skip_verify {
        issues.insecure(format!("{path}.insecureSkipVerify"));
    }
    HttpTls {
        ca,
        identity,
        insecure_skip_verify: t.insecure_skip_verify,
        profile,
    }
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

/// HTTP client options for fetching keys.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHttpClient {
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub tls: Option<RawTls>,
}
