//! `requireHeader`, a middleware that exists only in the tests: it lets a request in when it
//! carries a given header. It is here to follow, once, the recipe ARCHITECTURE.md gives for a
//! new middleware kind (this module, its options in `config/middleware/require_header.rs`, one
//! line in `config::middleware::KINDS`), and to prove that the loader, the table and the proxy
//! take a kind they were never written for.

use std::sync::Arc;

use http::HeaderName;
use http::request::Parts;

use super::{Applied, AuthError, AuthSettings, Authenticate, Build, Caller, Pending};

/// The `requireHeader` middleware, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct RequireHeaderConfig {
    /// The header a request must carry.
    pub header: HeaderName,
}

/// A configured `requireHeader` middleware.
pub struct RequireHeader {
    header: HeaderName,
    realm: Arc<str>,
}

impl AuthSettings for RequireHeaderConfig {
    fn kind(&self) -> &'static str {
        "requireHeader"
    }

    fn build(&self, _: &str, _: &Build<'_>) -> reqwest::Result<Box<dyn Authenticate>> {
        Ok(Box::new(RequireHeader {
            header: self.header.clone(),
            realm: Arc::from(super::DEFAULT_REALM),
        }))
    }
}

impl Authenticate for RequireHeader {
    fn realm(&self) -> Arc<str> {
        Arc::clone(&self.realm)
    }

    fn apply<'a>(
        &'a self,
        parts: &'a mut Parts,
        _: &'a Caller,
    ) -> Pending<'a, Result<Applied, AuthError>> {
        let verdict = if parts.headers.contains_key(&self.header) {
            Ok(Applied::default())
        } else {
            Err(AuthError::MissingToken {
                realm: self.realm(),
            })
        };
        Box::pin(std::future::ready(verdict))
    }
}
