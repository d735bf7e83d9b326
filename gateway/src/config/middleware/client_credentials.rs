//! The `clientCredentials` middleware's options.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::issues::Issues;
use crate::auth::client_credentials::{
    ClientCredentialsConfig, DEFAULT_NEGATIVE_CACHE_TTL, DEFAULT_REJECTED_TOKEN_MIN_AGE,
    DEFAULT_TOKEN_LIFETIME,
};
use crate::outbound::{ClientKey, DEFAULT_IDP_RETRIES, DEFAULT_IDP_TIMEOUT, HttpTls};
use crate::token::AuthMethod;

use super::{policy, realm};
use crate::config::StringOrList;
use crate::config::tls::RawTls;
use serde::Deserialize;

impl super::Options for RawClientCredentials {
    fn declare(self, issues: &mut Issues, path: &str) -> Option<super::Declared> {
        client_credentials(issues, path, self).map(super::Declared::auth)
    }
}

fn client_credentials(
    issues: &mut Issues,
    path: &str,
    cc: RawClientCredentials,
) -> Option<ClientCredentialsConfig> {
    let before = issues.0.len();
    let token_url = issues.http_url(&format!("{path}.url"), &cc.url);
    let auth_method = match cc.auth_method.as_deref() {
        None | Some("client_secret_basic") => AuthMethod::ClientSecretBasic,
        Some("client_secret_post") => AuthMethod::ClientSecretPost,
        Some("client_secret_jwt") => AuthMethod::ClientSecretJwt,
        Some("private_key_jwt") => AuthMethod::PrivateKeyJwt,
        Some("tls_client_auth") => AuthMethod::TlsClientAuth,
        Some(other) => {
            issues.push(
                format!("{path}.authMethod"),
                format!(
                    "must be client_secret_basic, client_secret_post, client_secret_jwt, private_key_jwt or tls_client_auth, not {other:?}"
                ),
            );
            AuthMethod::ClientSecretBasic
        }
    };
    let method = cc.auth_method.as_deref().unwrap_or("client_secret_basic");
    for (set, name) in [
        (cc.client_private_key.is_some(), "clientPrivateKey"),
        (cc.client_key_id.is_some(), "clientKeyId"),
    ] {
        if set && auth_method != AuthMethod::PrivateKeyJwt {
            issues.push(
                format!("{path}.{name}"),
                "is used by authMethod private_key_jwt only",
            );
        }
    }
    let id_given = cc.client_id.is_some();
    let client_id = cc.client_id.and_then(|id| {
        if id.is_empty() {
            issues.push(format!("{path}.clientId"), "is empty");
        }
        issues.maybe_reference(&format!("{path}.clientId"), &id)
    });
    let mut client_key = None;
    let credentials = match auth_method {
        AuthMethod::PrivateKeyJwt | AuthMethod::TlsClientAuth => {
            // The gateway's own key or certificate: it never vouches for a caller's client id.
            if cc.client_secret.is_some() {
                issues.push(
                    format!("{path}.clientSecret"),
                    format!("is not sent with authMethod {method}; remove it"),
                );
            }
            if !id_given {
                issues.push(
                    format!("{path}.clientId"),
                    format!(
                        "is required with authMethod {method} (the gateway's own key or certificate authenticates; it never vouches for a caller)"
                    ),
                );
            }
            if auth_method == AuthMethod::PrivateKeyJwt {
                client_key = client_key_of(issues, path, &cc.client_private_key, cc.client_key_id);
            }
            client_id.map(|id| (id, crate::secret::Secret::new("")))
        }
        _ => match (id_given, cc.client_secret) {
            (false, None) => None,
            (true, Some(secret)) => {
                let secret = issues.secret(&format!("{path}.clientSecret"), &secret);
                client_id.zip(secret)
            }
            (true, None) => {
                issues.push(
                    format!("{path}.clientSecret"),
                    "is required when clientId is set",
                );
                None
            }
            (false, Some(_)) => {
                issues.push(
                    format!("{path}.clientId"),
                    "is required when clientSecret is set",
                );
                None
            }
        },
    };
    let mut scopes = cc.scopes;
    for (i, s) in scopes.iter().enumerate() {
        // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
        {
            issues.push(
                format!("{path}.scopes[{i}]"),
                "not a valid scope token (RFC 6749 §3.3)",
            );
        }
    }
    scopes.sort();
    scopes.dedup();
    let mut endpoint_params = Vec::new();
    for (k, v) in cc.endpoint_params {
        if matches!(
            k.as_str(),
            "grant_type"
                | "client_id"
                | "client_secret"
                | "client_assertion"
                | "client_assertion_type"
                | "scope"
                | "audience"
        ) {
            issues.push(
                format!("{path}.endpointParams.{k}"),
                "is set by the middleware itself; use the dedicated option",
            );
        }
        match v {
            StringOrList::One(v) => endpoint_params.push((k, v)),
            StringOrList::Many(vs) => {
                endpoint_params.extend(vs.into_iter().map(|v| (k.clone(), v)))
            }
        }
    }
    endpoint_params.sort();
    let policy = policy(
        issues,
        path,
        cc.claims,
        cc.forward_headers,
        cc.username_claim,
    );
    let default_token_lifetime = cc.default_token_lifetime.unwrap_or(DEFAULT_TOKEN_LIFETIME);
    if default_token_lifetime.as_secs() < 1 {
        issues.push(
            format!("{path}.defaultTokenLifetime"),
            "must be at least 1s",
        );
    }
    let realm = realm(issues, path, cc.realm);
    let tls = cc.client_config.tls.map_or_else(HttpTls::default, |t| {
        super::http_client::http_tls(issues, &format!("{path}.clientConfig.tls"), t)
    });
    if auth_method == AuthMethod::TlsClientAuth
        && tls.identity.is_none()
        && issues.reads_key_material()
    {
        issues.push(
            format!("{path}.clientConfig.tls"),
            "authMethod tls_client_auth needs certFile and keyFile (the client certificate)",
        );
    }
    if issues.0.len() != before {
        return None;
    }
    Some(ClientCredentialsConfig {
        token_url: token_url?,
        credentials,
        auth_method,
        client_key,
        audience: cc.audience,
        scopes,
        endpoint_params,
        policy,
        default_token_lifetime,
        realm,
        negative_cache_ttl: cc.negative_cache_ttl.unwrap_or(DEFAULT_NEGATIVE_CACHE_TTL),
        rejected_token_min_age: cc
            .rejected_token_min_age
            .unwrap_or(DEFAULT_REJECTED_TOKEN_MIN_AGE),
        replay_non_idempotent: cc.replay_non_idempotent,
        idp_timeout: cc.client_config.timeout.unwrap_or(DEFAULT_IDP_TIMEOUT),
        idp_retries: cc.client_config.retries.unwrap_or(DEFAULT_IDP_RETRIES),
        tls,
    })
}

/// `private_key_jwt`'s key, read and checked (not under `check-config --no-secrets`).
fn client_key_of(
    issues: &mut Issues,
    path: &str,
    reference: &Option<String>,
    kid: Option<String>,
) -> Option<ClientKey> {
    let at = format!("{path}.clientPrivateKey");
    let Some(reference) = reference else {
        issues.push(&at, "is required with authMethod private_key_jwt");
        return None;
    };
    let pem = issues.secret(&at, reference)?;
    if !issues.reads_key_material() {
        return None;
    }
    ClientKey::from_pem(pem.expose().as_bytes(), kid)
        .map_err(|e| issues.push(&at, e))
        .ok()
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

/// Traefik Hub's `oAuthClientCredentials` options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawClientCredentials {
    /// The IdP token endpoint.
    pub url: String,
    /// Gateway level: the gateway's own client id. Omitted: application level.
    #[serde(default, alias = "clientID")]
    pub client_id: Option<String>,
    /// Secret reference for `clientId`.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub auth_method: Option<String>,
    /// `private_key_jwt`: the PEM private key (secret reference).
    #[serde(default)]
    pub client_private_key: Option<String>,
    /// `private_key_jwt`: the `kid` of the assertions' header.
    #[serde(default)]
    pub client_key_id: Option<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Extra form parameters sent to the token endpoint (e.g. `resource`).
    #[serde(default)]
    pub endpoint_params: BTreeMap<String, StringOrList>,
    /// Claim naming the user in the access log.
    #[serde(default)]
    pub username_claim: Option<String>,
    /// Header name -> claim; the header always replaces a caller-sent one.
    #[serde(default)]
    pub forward_headers: BTreeMap<String, String>,
    /// Authorization expression the claims must satisfy (403 otherwise).
    #[serde(default)]
    pub claims: Option<String>,
    /// Lifetime assumed when the IdP sends neither `expires_in` nor a JWT `exp`.
    #[serde(default, with = "humantime_serde")]
    pub default_token_lifetime: Option<Duration>,
    /// `Basic` realm announced on 401.
    #[serde(default)]
    pub realm: Option<String>,
    /// How long an `invalid_client` answer is remembered.
    #[serde(default, with = "humantime_serde")]
    pub negative_cache_ttl: Option<Duration>,
    /// Tokens younger than this are kept when an upstream answers 401 to them.
    #[serde(default, with = "humantime_serde")]
    pub rejected_token_min_age: Option<Duration>,
    /// Whether a request with a non-idempotent method is sent again after an upstream 401.
    #[serde(default)]
    pub replay_non_idempotent: bool,
    #[serde(default)]
    pub client_config: RawClientConfig,
}

/// HTTP client options towards the IdP.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawClientConfig {
    /// Timeout of one attempt.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Retries after the first attempt, on transport errors, 5xx and 429 only.
    #[serde(default)]
    pub retries: Option<u32>,
    /// TLS towards the token endpoint.
    #[serde(default)]
    pub tls: Option<RawTls>,
}
