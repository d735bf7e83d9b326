//! The `jwt` middleware's options, and the signature algorithms a key set may be used with.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderName;
use jsonwebtoken::Algorithm;

use super::super::issues::Issues;
use crate::auth::jwt::{
    DEFAULT_JWKS_MAX_STALENESS, DEFAULT_JWKS_MIN_REFRESH_INTERVAL, DEFAULT_JWKS_REFRESH_INTERVAL,
    DEFAULT_LEEWAY, GATEWAY_TOKEN_HEADER, JwksSource, JwtConfig,
};

use super::http_client::key_client;
use super::{policy, realm, token_source};
use crate::config::StringOrList;
use crate::config::middleware::RawTokenSource;
use crate::config::middleware::http_client::RawHttpClient;
use serde::Deserialize;

/// Algorithms accepted when none are configured: every asymmetric one. Symmetric (HS*) ones
/// are never accepted: a published key set holds public keys, and an HMAC "verified" with a
/// public key proves nothing (the RS256/HS256 confusion attack).
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl super::Options for RawJwt {
    fn declare(self, issues: &mut Issues, path: &str) -> Option<super::Declared> {
        jwt(issues, path, self).map(super::Declared::auth)
    }
}

fn jwt(issues: &mut Issues, path: &str, j: RawJwt) -> Option<JwtConfig> {
    let before = issues.0.len();
    let mut token_source = token_source(issues, path, j.token_source);
    if j.gateway_issuer {
        // Octelium-style: the gateway's own tokens are also accepted in its own header.
        let own = HeaderName::from_static(GATEWAY_TOKEN_HEADER);
        if !token_source.headers.iter().any(|(h, _)| *h == own) {
            token_source.headers.push((own, None));
        }
    }
    let keys = match (&j.jwks_url, &j.issuer) {
        _ if j.gateway_issuer => {
            if j.jwks_url.is_some() || j.issuer.is_some() {
                issues.push(
                    format!("{path}.gatewayIssuer"),
                    "takes its keys and issuer from the top-level issuer; drop jwksUrl and issuer",
                );
            }
            if issues.1.gateway_issuer.is_none() {
                issues.push(
                    format!("{path}.gatewayIssuer"),
                    "needs the top-level issuer section",
                );
            }
            Some(JwksSource::Gateway)
        }
        (Some(u), _) => issues
            .http_url(&format!("{path}.jwksUrl"), u)
            .map(JwksSource::Url),
        (None, Some(iss)) => issues
            .http_url(&format!("{path}.issuer"), iss)
            .map(JwksSource::Discovery),
        (None, None) => {
            issues.push(
                path,
                "needs jwksUrl, or issuer (keys found by OpenID Connect discovery)",
            );
            None
        }
    };
    let audience = match j.audience {
        None => Vec::new(),
        Some(StringOrList::One(a)) => vec![a],
        Some(StringOrList::Many(a)) => a,
    };
    // A token of any issuer, or meant for any service, is a token of the wrong one: both are
    // required unless the operator says, in so many words, that any will do.
    if j.issuer.is_none() && !j.gateway_issuer && !j.allow_any_issuer {
        issues.push(
            format!("{path}.issuer"),
            "is required (the expected iss); set allowAnyIssuer: true to accept any",
        );
    }
    if audience.is_empty() && !j.allow_any_audience {
        issues.push(
            format!("{path}.audience"),
            "is required (the aud values this route accepts); set allowAnyAudience: true to accept any",
        );
    }
    let jwks_max_staleness = j.jwks_max_staleness.unwrap_or(DEFAULT_JWKS_MAX_STALENESS);
    let algorithms = algorithms(issues, path, j.algorithms);
    let http = key_client(issues, path, j.client_config);
    let jwks_min_refresh_interval = j
        .jwks_min_refresh_interval
        .unwrap_or(DEFAULT_JWKS_MIN_REFRESH_INTERVAL);
    let jwks_refresh_interval = j
        .jwks_refresh_interval
        .unwrap_or(DEFAULT_JWKS_REFRESH_INTERVAL);
    if jwks_refresh_interval < jwks_min_refresh_interval {
        issues.push(
            format!("{path}.jwksRefreshInterval"),
            "must be at least jwksMinRefreshInterval",
        );
    }
    if jwks_max_staleness < jwks_refresh_interval {
        issues.push(
            format!("{path}.jwksMaxStaleness"),
            "must be at least jwksRefreshInterval",
        );
    }
    let policy = policy(issues, path, j.claims, j.forward_headers, j.username_claim);
    let realm = realm(issues, path, j.realm);
    if issues.0.len() != before {
        return None;
    }
    Some(JwtConfig {
        token_source,
        keys: keys?,
        issuer: if j.gateway_issuer {
            issues.1.gateway_issuer.clone()
        } else {
            j.issuer
        },
        audience,
        algorithms,
        leeway: j.leeway.unwrap_or(DEFAULT_LEEWAY),
        forward_authorization: j.forward_authorization,
        policy,
        jwks_refresh_interval,
        jwks_min_refresh_interval,
        jwks_max_staleness,
        http,
        realm,
        access_token_type: j.gateway_issuer,
    })
}

/// The accepted signature algorithms: every asymmetric one unless `names` narrows them.
pub(in crate::config) fn algorithms(
    issues: &mut Issues,
    path: &str,
    names: Option<Vec<String>>,
) -> Vec<Algorithm> {
    match names {
        None => ASYMMETRIC.to_vec(),
        Some(names) => {
            if names.is_empty() {
                issues.push(format!("{path}.algorithms"), "must name at least one");
            }
            names
                .iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    let p = format!("{path}.algorithms[{i}]");
                    match n.parse::<Algorithm>() {
                        Ok(a) if ASYMMETRIC.contains(&a) => Some(a),
                        Ok(_) => {
                            issues.push(
                                p,
                                "symmetric (HS*) algorithms are not accepted: keys come from a public key set",
                            );
                            None
                        }
                        Err(_) => {
                            issues.push(p, format!("unknown algorithm {n:?}"));
                            None
                        }
                    }
                })
                .collect()
        }
    }
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

/// Local JWT validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawJwt {
    #[serde(default)]
    pub token_source: Option<RawTokenSource>,
    /// Where the keys are. Without it, found by OIDC discovery from `issuer`.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Required `iss`; also the discovery base when `jwksUrl` is absent.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Accepted audiences (`aud` must contain one).
    #[serde(default)]
    pub audience: Option<StringOrList>,
    /// Accepted signature algorithms.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Clock skew tolerated on `exp`, `nbf`, `iat`.
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
    /// Keep the caller's token on the upstream request (default: removed).
    #[serde(default)]
    pub forward_authorization: bool,
    /// Claim naming the user in the access log.
    #[serde(default)]
    pub username_claim: Option<String>,
    /// Header name -> claim; the header always replaces a caller-sent one.
    #[serde(default)]
    pub forward_headers: BTreeMap<String, String>,
    /// Authorization expression the claims must satisfy (403 otherwise).
    #[serde(default)]
    pub claims: Option<String>,
    /// How old the cached key set may get before it is fetched again.
    #[serde(default, with = "humantime_serde")]
    pub jwks_refresh_interval: Option<Duration>,
    /// Least time between two fetches caused by unknown `kid`s.
    #[serde(default, with = "humantime_serde")]
    pub jwks_min_refresh_interval: Option<Duration>,
    /// A key set not refreshed for this long stops verifying (503).
    #[serde(default, with = "humantime_serde")]
    pub jwks_max_staleness: Option<Duration>,
    /// Accept tokens of any `iss` (no `issuer` configured).
    #[serde(default)]
    pub allow_any_issuer: bool,
    /// Accept tokens of any `aud` (no `audience` configured).
    #[serde(default)]
    pub allow_any_audience: bool,
    #[serde(default)]
    pub client_config: Option<RawHttpClient>,
    #[serde(default)]
    pub realm: Option<String>,
    /// Validate tokens of this gateway's own `issuer` (keys, `iss` and `typ: at+jwt` implied;
    /// the token is also accepted in `X-Tokengate-Auth`).
    #[serde(default)]
    pub gateway_issuer: bool,
}
