//! Claims: reading them from a token's JSON payload, and the authorization expressions that
//! test them ([`ClaimsExpr`]).

mod expr;
mod forward;

pub use expr::{Check, ClaimsExpr, ExprError};

use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use serde_json::{Map, Value};

use super::AuthError;

/// What a middleware does with verified claims; the same options on every middleware.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClaimsPolicy {
    /// Authorization expression; `None` allows every verified caller.
    pub claims: Option<ClaimsExpr>,
    /// Header -> claim, replacing caller-sent headers of the same name.
    pub forward_headers: Vec<(HeaderName, String)>,
    /// Claim naming the user in the access log.
    pub username_claim: Option<String>,
}

impl ClaimsPolicy {
    /// Whether [`Self::enforce`] looks at the claims at all (a check, forwarded headers or a
    /// username claim).
    pub fn reads_claims(&self) -> bool {
        self.claims.is_some() || !self.forward_headers.is_empty() || self.username_claim.is_some()
    }

    /// Applies the policy to verified `claims`: the `claims` expression must hold (403
    /// otherwise), then the claim headers replace caller-sent ones. Returns the user named by
    /// `usernameClaim`. `None` claims (an opaque token) satisfy no expression.
    pub fn enforce(
        &self,
        headers: &mut HeaderMap,
        claims: Option<&Map<String, Value>>,
        realm: &Arc<str>,
    ) -> Result<Option<String>, AuthError> {
        if let Some(expr) = &self.claims
            && !claims.is_some_and(|c| expr.allows(c))
        {
            return Err(AuthError::InsufficientScope {
                realm: Arc::clone(realm),
            });
        }
        forward::forward_claims(headers, &self.forward_headers, claims);
        Ok(self
            .username_claim
            .as_deref()
            .and_then(|c| claims.and_then(|m| lookup(m, c)))
            .and_then(as_text))
    }
}

/// The claim at `path`; dots descend into objects (`realm.roles`), as in Traefik Hub.
/// A claim whose own name contains a dot is found first by its full name.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

/// A claim as header text: strings as they are, numbers and booleans printed, arrays of
/// scalars joined with `,`, objects as JSON. `None` for null.
pub fn as_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(as_text).collect();
            Some(parts.join(","))
        }
        Value::Object(_) => Some(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_dotted_claims_resolve() {
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"a":{"b":"deep"},"x.y":"flat","n":3,"l":["p","q"]}"#).unwrap();
        assert_eq!(
            lookup(&claims, "a.b").and_then(as_text).as_deref(),
            Some("deep")
        );
        assert_eq!(
            lookup(&claims, "x.y").and_then(as_text).as_deref(),
            Some("flat")
        );
        assert_eq!(lookup(&claims, "n").and_then(as_text).as_deref(), Some("3"));
        assert_eq!(
            lookup(&claims, "l").and_then(as_text).as_deref(),
            Some("p,q")
        );
        assert!(lookup(&claims, "a.c").is_none());
    }
}
