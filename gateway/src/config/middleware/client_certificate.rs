//! The `clientCertificate` middleware's options: authorisation by the caller's verified TLS
//! client certificate.

use std::collections::BTreeMap;

use super::super::issues::Issues;
use super::{Declared, Options, policy};
use crate::auth::ClientCertificateConfig;
use serde::Deserialize;

impl Options for RawClientCertificate {
    fn declare(self, issues: &mut Issues, path: &str) -> Option<Declared> {
        let policy = policy(
            issues,
            path,
            self.claims,
            self.forward_headers,
            self.username_claim,
        );
        Some(Declared::auth(ClientCertificateConfig { policy }))
    }
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

/// `clientCertificate`: authorisation by the caller's verified TLS client certificate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawClientCertificate {
    /// Expression over the certificate's claims (`subject.commonName`, `sans.uri`, ...).
    #[serde(default)]
    pub claims: Option<String>,
    /// Header name -> certificate claim.
    #[serde(default)]
    pub forward_headers: BTreeMap<String, String>,
    /// Claim naming the caller in the access log.
    #[serde(default)]
    pub username_claim: Option<String>,
}
