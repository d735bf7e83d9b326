//! Authentication middlewares. Each one turns a caller's request into an authorised upstream
//! request (headers rewritten) or an RFC-shaped refusal.
//!
//! One module per middleware (`client_credentials`, `introspection`, `jwt`,
//! `client_certificate`), each implementing [`AuthSettings`] for its settings and
//! [`Authenticate`] for the middleware; plus `bearer` (finding the caller's token), `claims`
//! (reading claims, the authorization expressions, writing claims onto the upstream request)
//! and `limits` (bounds on credentials, the miss budget).

pub mod bearer;
pub mod claims;
pub mod client_certificate;
pub mod client_credentials;
pub mod error;
pub mod introspection;
pub mod jwt;
pub mod limits;
#[cfg(test)]
pub mod require_header;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::request::Parts;

pub use client_certificate::{ClientCertificate, ClientCertificateConfig};
pub use client_credentials::{ClientCredentials, ClientCredentialsConfig};
pub use error::AuthError;
pub use introspection::{Introspection, IntrospectionConfig};
pub use jwt::{Jwt, JwtConfig};

use crate::lifecycle::TokenCache;
use crate::token::TokenKey;
use limits::Guards;

/// Realm announced in challenges when none is configured.
pub const DEFAULT_REALM: &str = "tokengate";

/// A future a middleware returns; boxed, since middlewares are called through `dyn`.
pub type Pending<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What an authentication middleware does with a request. One implementation per kind, in
/// the kind's module; the kinds themselves are listed once, in `config::middleware::KINDS`.
pub trait Authenticate: Send + Sync {
    /// The realm of its challenges.
    fn realm(&self) -> Arc<str>;

    /// Whether its refusals challenge `Basic` (callers present a client id and secret).
    fn challenges_basic(&self) -> bool {
        false
    }

    /// Authorises the request, rewriting `parts` for the upstream.
    fn apply<'a>(
        &'a self,
        parts: &'a mut Parts,
        caller: &'a Caller,
    ) -> Pending<'a, Result<Applied, AuthError>>;

    /// The upstream rejected a token this middleware attached: drops it fleet-wide if it may
    /// be the culprit. Whether it was dropped (and a retry with a fresh one makes sense). A
    /// middleware that passes the caller's own token on (or none) has nothing of its own to
    /// drop.
    fn reject_token<'a>(&'a self, _used: &'a UsedToken) -> Pending<'a, bool> {
        Box::pin(std::future::ready(false))
    }

    /// For a middleware that attaches a token of the gateway's: whether a request with
    /// `method` may be sent again with a fresh one after an upstream 401. `None` for the others.
    fn replays_after_401(&self, _method: &http::Method) -> Option<bool> {
        None
    }
}

/// A middleware's validated settings: what the configuration yields, what a reload compares,
/// and what builds the middleware.
pub trait AuthSettings: std::fmt::Debug + Send + Sync + std::any::Any + SameAs {
    /// Its kind, as the configuration spells it.
    fn kind(&self) -> &'static str;

    /// Builds the middleware named `name`. Fails only if the TLS library refuses the
    /// material of its HTTP client (the files were read when the configuration loaded).
    fn build(&self, name: &str, with: &Build<'_>) -> reqwest::Result<Box<dyn Authenticate>>;

    /// Whether it verifies tokens with the gateway issuer's keys (then a new issuer means a
    /// new middleware, even with equal settings).
    fn uses_issuer_keys(&self) -> bool {
        false
    }
}

/// Equality across settings of any kind (settings of different kinds are never equal).
pub trait SameAs {
    /// Whether `other` is of the same kind with equal settings.
    fn same_as(&self, other: &dyn std::any::Any) -> bool;
}

impl<T: PartialEq + std::any::Any> SameAs for T {
    fn same_as(&self, other: &dyn std::any::Any) -> bool {
        other.downcast_ref::<T>() == Some(self)
    }
}

impl PartialEq for dyn AuthSettings {
    fn eq(&self, other: &Self) -> bool {
        self.same_as(other as &dyn std::any::Any)
    }
}

impl dyn AuthSettings {
    /// The settings as their kind's type, if they are of that kind.
    pub fn downcast_ref<T: AuthSettings>(&self) -> Option<&T> {
        (self as &dyn std::any::Any).downcast_ref()
    }
}

/// Validated settings of a middleware of any kind.
pub type MiddlewareConfig = Arc<dyn AuthSettings>;

/// What middlewares are built with: the node's token cache, the edge's guards, and the
/// gateway issuer's keys when it runs one.
pub struct Build<'a> {
    /// The token cache (tokens, introspection answers, key sets, the IdP clients).
    pub cache: &'a Arc<TokenCache>,
    /// The caller limits and the miss budget.
    pub guards: &'a Guards,
    /// The gateway issuer's key set (JWKS), for `jwt: {gatewayIssuer: true}`.
    pub issuer_keys: Option<Arc<serde_json::Value>>,
}

/// A built authentication middleware.
pub struct Middleware {
    name: String,
    kind: &'static str,
    inner: Box<dyn Authenticate>,
}

impl Middleware {
    /// Builds the middleware named `name` from its settings.
    pub fn build(
        name: &str,
        settings: &dyn AuthSettings,
        with: &Build<'_>,
    ) -> reqwest::Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            kind: settings.kind(),
            inner: settings.build(name, with)?,
        })
    }

    /// The name it has in the configuration.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its kind, as the configuration spells it.
    pub fn kind(&self) -> &'static str {
        self.kind
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
                realm: self.inner.realm(),
                basic: self.inner.challenges_basic(),
                reason: "more than one Authorization header",
            });
        }
        self.inner.apply(parts, caller).await
    }

    /// See [`Authenticate::reject_token`].
    pub async fn reject_token(&self, used: &UsedToken) -> bool {
        self.inner.reject_token(used).await
    }

    /// See [`Authenticate::replays_after_401`].
    pub fn replays_after_401(&self, method: &http::Method) -> Option<bool> {
        self.inner.replays_after_401(method)
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
