//! Authentication middlewares. Each one turns a caller's request into an authorised upstream
//! request (headers rewritten) or an RFC-shaped refusal.
//!
//! One module per middleware (`client_credentials`, `introspection`, `jwt`,
//! `client_certificate`), plus `bearer`
//! (finding the caller's token), `claims` (reading claims and the authorization expressions) and
//! `headers` (writing claims onto the upstream request).

pub mod bearer;
pub mod claims;
pub mod client_certificate;
pub mod client_credentials;
pub mod error;
pub mod introspection;
pub mod jwt;
pub mod limits;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::request::Parts;

pub use client_certificate::{ClientCertificate, ClientCertificateConfig};
pub use client_credentials::{ClientCredentials, ClientCredentialsConfig};
pub use error::AuthError;
pub use introspection::{Introspection, IntrospectionConfig};
pub use jwt::{Jwt, JwtConfig};

use crate::token::TokenKey;

/// Realm announced in challenges when none is configured.
pub const DEFAULT_REALM: &str = "tokengate";

/// A configured middleware.
#[derive(Debug, Clone, PartialEq)]
pub enum MiddlewareConfig {
    /// OAuth2 client credentials (RFC 6749 §4.4).
    ClientCredentials(ClientCredentialsConfig),
    /// Token introspection (RFC 7662).
    Introspection(IntrospectionConfig),
    /// Local JWT validation.
    Jwt(JwtConfig),
    /// The caller's verified TLS client certificate.
    ClientCertificate(ClientCertificateConfig),
}

/// A configured middleware instance.
pub enum Middleware {
    /// OAuth2 client credentials.
    ClientCredentials(ClientCredentials),
    /// RFC 7662 token introspection.
    Introspection(Introspection),
    /// Local JWT validation.
    Jwt(Jwt),
    /// The caller's verified TLS client certificate.
    ClientCertificate(ClientCertificate),
}

impl Middleware {
    /// The name it has in the configuration.
    pub fn name(&self) -> &str {
        match self {
            Self::ClientCredentials(m) => m.name(),
            Self::Introspection(m) => m.name(),
            Self::Jwt(m) => m.name(),
            Self::ClientCertificate(m) => m.name(),
        }
    }

    /// Its kind, as the configuration spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ClientCredentials(_) => "clientCredentials",
            Self::Introspection(_) => "introspection",
            Self::Jwt(_) => "jwt",
            Self::ClientCertificate(_) => "clientCertificate",
        }
    }

    /// Authorises the request, rewriting `parts` for the upstream.
    ///
    /// A request with more than one `Authorization` field is refused whatever the middleware:
    /// the field is a singleton (RFC 9110 §11.6.2), and a second copy is exactly how an
    /// unverified credential would ride along with a verified one (RFC 6750 §2, §3.1).
    pub async fn apply(&self, parts: &mut Parts, caller: &Caller) -> Result<Applied, AuthError> {
        let mut authorization = parts.headers.get_all(AUTHORIZATION).iter();
        if authorization.next().is_some() && authorization.next().is_some() {
            return Err(AuthError::InvalidRequest {
                realm: self.realm(),
                basic: matches!(self, Self::ClientCredentials(_)),
                reason: "more than one Authorization header",
            });
        }
        match self {
            Self::ClientCredentials(m) => m.apply(&mut parts.headers, caller).await,
            Self::Introspection(m) => m.apply(parts, caller).await,
            Self::Jwt(m) => m.apply(parts).await,
            Self::ClientCertificate(m) => m.apply(parts),
        }
    }

    fn realm(&self) -> Arc<str> {
        match self {
            Self::ClientCredentials(m) => m.realm(),
            Self::Introspection(m) => m.realm(),
            Self::Jwt(m) => m.realm(),
            Self::ClientCertificate(m) => m.realm(),
        }
    }

    /// The upstream rejected the token this middleware attached: drops it fleet-wide if it may
    /// be the culprit. Whether it was dropped (and a retry with a fresh one makes sense).
    pub async fn reject_token(&self, used: &UsedToken) -> bool {
        match self {
            Self::ClientCredentials(m) => m.reject_token(used).await,
            // These pass the caller's own token on (or none): nothing of ours to drop.
            Self::Introspection(_) | Self::Jwt(_) | Self::ClientCertificate(_) => false,
        }
    }
}

/// Who is calling, as far as the edge could tell: the address is the peer's, or the one a
/// trusted proxy named (`forwardedHeaders.trustedIPs`).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The caller's address; miss budgets are kept per address.
    pub address: IpAddr,
}

/// What a middleware did to a request.
#[derive(Debug, Default)]
pub struct Applied {
    /// The user named by `usernameClaim`, for the access log.
    pub username: Option<String>,
    /// The token attached, so that an upstream 401 can evict exactly it.
    pub token: Option<UsedToken>,
    /// The caller's client identity, when the middleware established one (rate limits'
    /// `clientId`): the client id it authenticated with, the token's `client_id` (RFC 7662
    /// §2.2, RFC 9068 §2.2; else `azp`, else `sub`), or the certificate's subject.
    pub client: Option<String>,
}

/// The client a token's claims name: `client_id`, else `azp`, else `sub`.
pub fn client_of(claims: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    ["client_id", "azp", "sub"]
        .iter()
        .find_map(|c| claims.get(*c)?.as_str())
        .map(str::to_owned)
}

/// A token a middleware attached.
#[derive(Debug, Clone, Copy)]
pub struct UsedToken {
    /// Its cache key.
    pub key: TokenKey,
    /// Its version.
    pub version: u64,
    /// When the IdP issued it (ms since the epoch).
    pub issued_at: u64,
}
