//! `clientCertificate`: authorises callers by the certificate they presented on a TLS listener
//! with `clientAuth` (mutual TLS). The handshake already verified the certificate against the
//! configured CA; this middleware requires that there was one, checks its `claims` expression
//! against the certificate's claims document (subject, issuer, SANs, serial, validity: see
//! [`PeerCertificate::claims`](crate::http::tls::PeerCertificate)), and forwards chosen fields as
//! headers.

use std::sync::Arc;

use http::request::Parts;

use super::claims::ClaimsPolicy;
use super::{Applied, AuthError};
use crate::http::tls::TlsSession;

/// The `clientCertificate` middleware, validated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientCertificateConfig {
    /// The expression, forwarded headers and username claim, over the certificate's claims.
    pub policy: ClaimsPolicy,
}

/// A configured `clientCertificate` middleware.
pub struct ClientCertificate {
    cfg: ClientCertificateConfig,
    realm: Arc<str>,
}

impl super::AuthSettings for ClientCertificateConfig {
    fn kind(&self) -> &'static str {
        "clientCertificate"
    }

    fn build(
        &self,
        _: &str,
        _: &super::Build<'_>,
    ) -> reqwest::Result<Box<dyn super::Authenticate>> {
        Ok(Box::new(ClientCertificate::new(self.clone())))
    }
}

impl super::Authenticate for ClientCertificate {
    fn realm(&self) -> Arc<str> {
        Arc::clone(&self.realm)
    }

    fn apply<'a>(
        &'a self,
        parts: &'a mut Parts,
        caller: &'a super::Caller,
    ) -> super::Pending<'a, Result<Applied, AuthError>> {
        let _ = caller;
        Box::pin(std::future::ready(ClientCertificate::apply(self, parts)))
    }
}

impl ClientCertificate {
    /// Builds the middleware.
    pub fn new(cfg: ClientCertificateConfig) -> Self {
        Self {
            cfg,
            realm: Arc::from(super::DEFAULT_REALM),
        }
    }

    /// Authorises the request by the connection's verified client certificate.
    pub fn apply(&self, parts: &mut Parts) -> Result<Applied, AuthError> {
        let certificate = parts
            .extensions
            .get::<Arc<TlsSession>>()
            .and_then(|s| s.client_certificate.clone())
            .ok_or(AuthError::CertificateRequired)?;
        let claims = certificate.claims.as_object();
        let username = self
            .cfg
            .policy
            .enforce(&mut parts.headers, claims, &self.realm)
            .map_err(|_| AuthError::CertificateRefused)?;
        Ok(Applied {
            username,
            token: None,
            client: Some(certificate.subject.to_string()),
        })
    }
}
