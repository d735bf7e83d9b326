//! The `introspection` middleware's options (RFC 7662), and how the gateway authenticates at
//! the endpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

use super::super::issues::Issues;
use crate::auth::introspection::{
    DEFAULT_INACTIVE_CACHE_TTL, DEFAULT_MAX_CACHE_TTL, EndpointAuth, IntrospectionConfig,
};
use crate::outbound::ClientKey;
use crate::secret::Secret;
use crate::token::AuthMethod;

use super::http_client::http_client;
use super::{is_reserved_header, policy, realm, token_source};
use crate::config::middleware::RawTokenSource;
use crate::config::tls::RawTls;
use serde::Deserialize;

impl super::Options for RawIntrospection {
    fn declare(self, issues: &mut Issues, path: &str) -> Option<super::Declared> {
        introspection(issues, path, self).map(super::Declared::auth)
    }
}

fn introspection(
    issues: &mut Issues,
    path: &str,
    i: RawIntrospection,
) -> Option<IntrospectionConfig> {
    let before = issues.0.len();
    let token_source = token_source(issues, path, i.token_source);
    let cc = i.client_config;
    let cpath = format!("{path}.clientConfig");
    let url = issues.http_url(&format!("{cpath}.url"), &cc.url);
    let mut auth = match cc.auth {
        None => EndpointAuth::None,
        Some(a) => endpoint_auth(issues, &format!("{cpath}.auth"), a),
    };
    let mut headers = Vec::new();
    for (name, value) in cc.headers {
        let hpath = format!("{cpath}.headers.{name}");
        // Traefik Hub's documents authenticate to the endpoint with a literal header: it is
        // the client authentication it says it is, kept by the gateway like `auth`.
        if name.eq_ignore_ascii_case("authorization") {
            match (&auth, header_auth(issues, &hpath, &value)) {
                (_, None) => {}
                (EndpointAuth::None, Some(from_header)) => auth = from_header,
                (_, Some(_)) => issues.push(
                    hpath,
                    "authenticates the gateway a second time beside clientConfig.auth; keep one",
                ),
            }
            continue;
        }
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            (Ok(n), Ok(v)) if !is_reserved_header(&n) && n != http::header::CONTENT_TYPE => {
                headers.push((n, v));
            }
            (Ok(_), Ok(_)) => issues.push(hpath, "is managed by the gateway"),
            (Err(_), _) => issues.push(hpath, "not a valid header name"),
            (_, Err(_)) => issues.push(hpath, "not a valid header value"),
        }
    }
    if let Some(hint) = &cc.token_type_hint
        && (hint.is_empty() || hint.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        issues.push(
            format!("{cpath}.tokenTypeHint"),
            "must be a token type such as access_token",
        );
    }
    let http = http_client(issues, &cpath, cc.timeout, cc.retries, cc.tls);
    if matches!(
        auth,
        EndpointAuth::Client {
            method: AuthMethod::TlsClientAuth,
            ..
        }
    ) && http.tls.identity.is_none()
        && issues.reads_key_material()
    {
        issues.push(
            format!("{cpath}.tls"),
            "auth kind TlsClientAuth needs certFile and keyFile (the client certificate)",
        );
    }
    let policy = policy(issues, path, i.claims, i.forward_headers, i.username_claim);
    let realm = realm(issues, path, i.realm);
    if issues.0.len() != before {
        return None;
    }
    Some(IntrospectionConfig {
        token_source,
        url: url?,
        auth,
        headers,
        token_type_hint: cc.token_type_hint,
        http,
        forward_authorization: i.forward_authorization,
        policy,
        max_cache_ttl: i.max_cache_ttl.unwrap_or(DEFAULT_MAX_CACHE_TTL),
        inactive_cache_ttl: i.inactive_cache_ttl.unwrap_or(DEFAULT_INACTIVE_CACHE_TTL),
        realm,
    })
}

/// `clientConfig.headers.Authorization` as the client authentication it carries, sent as
/// written: `Basic` credentials (base64 of `client-id:secret`) or a `Bearer` token. The value
/// may be a secret reference; written inline it is a warning, like any inline secret.
fn header_auth(issues: &mut Issues, path: &str, value: &str) -> Option<EndpointAuth> {
    let value = issues.secret(path, value)?;
    let (scheme, credentials) = value.expose().trim().split_once(' ').unwrap_or_default();
    let credentials = credentials.trim();
    let client_id = if scheme.eq_ignore_ascii_case("bearer") && !credentials.is_empty() {
        Some(String::new())
    } else if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()
            .and_then(|d| String::from_utf8(d).ok());
        let id = decoded
            .as_deref()
            .and_then(|d| d.split_once(':'))
            .map(|(id, _)| id.to_owned())
            .filter(|id| !id.is_empty());
        if id.is_none() {
            issues.push(path, "Basic credentials must be base64 of client-id:secret");
            return None;
        }
        id
    } else {
        None
    };
    let Some(client_id) = client_id else {
        issues.push(
            path,
            "is taken as the client authentication: Basic or Bearer credentials (or use clientConfig.auth)",
        );
        return None;
    };
    let value = Secret::new(value.expose().trim());
    if HeaderValue::try_from(value.expose()).is_err() {
        issues.push(path, "not a valid header value");
        return None;
    }
    Some(EndpointAuth::Header { client_id, value })
}

pub(super) fn endpoint_auth(issues: &mut Issues, path: &str, a: RawEndpointAuth) -> EndpointAuth {
    let kind = a.kind.as_str();
    let id = match a.client_id.as_deref() {
        Some(id) if !id.is_empty() => issues.maybe_reference(&format!("{path}.clientId"), id),
        _ if kind == "Bearer" => None,
        _ if matches!(
            kind,
            "Basic" | "Post" | "ClientSecretJwt" | "PrivateKeyJwt" | "TlsClientAuth"
        ) =>
        {
            issues.push(
                format!("{path}.clientId"),
                format!("is required by kind {kind}"),
            );
            None
        }
        _ => None,
    };
    let secret = |issues: &mut Issues| match &a.client_secret {
        Some(s) => issues.secret(&format!("{path}.clientSecret"), s),
        None => {
            issues.push(
                format!("{path}.clientSecret"),
                format!("is required by kind {kind}"),
            );
            None
        }
    };
    let with_secret = |issues: &mut Issues, method| {
        let secret = secret(issues);
        id.clone()
            .zip(secret)
            .map_or(EndpointAuth::None, |(client_id, secret)| {
                EndpointAuth::Client {
                    method,
                    client_id,
                    secret,
                }
            })
    };
    for (set, name) in [
        (a.private_key.is_some(), "privateKey"),
        (a.key_id.is_some(), "keyId"),
    ] {
        if set && kind != "PrivateKeyJwt" {
            issues.push(
                format!("{path}.{name}"),
                "is used by kind PrivateKeyJwt only",
            );
        }
    }
    if a.client_secret.is_some() && matches!(kind, "PrivateKeyJwt" | "TlsClientAuth" | "Bearer") {
        issues.push(
            format!("{path}.clientSecret"),
            format!("is not sent with kind {kind}; remove it"),
        );
    }
    match kind {
        "Basic" => with_secret(issues, AuthMethod::ClientSecretBasic),
        "Post" => with_secret(issues, AuthMethod::ClientSecretPost),
        "ClientSecretJwt" => with_secret(issues, AuthMethod::ClientSecretJwt),
        "TlsClientAuth" => id.map_or(EndpointAuth::None, |client_id| EndpointAuth::Client {
            method: AuthMethod::TlsClientAuth,
            client_id,
            secret: crate::secret::Secret::new(""),
        }),
        "PrivateKeyJwt" => {
            let at = format!("{path}.privateKey");
            let key = match &a.private_key {
                None => {
                    issues.push(&at, "is required by kind PrivateKeyJwt");
                    None
                }
                Some(reference) => issues
                    .secret(&at, reference)
                    .filter(|_| issues.reads_key_material())
                    .and_then(|pem| {
                        ClientKey::from_pem(pem.expose().as_bytes(), a.key_id.clone())
                            .map_err(|e| issues.push(&at, e))
                            .ok()
                    }),
            };
            id.zip(key)
                .map_or(EndpointAuth::None, |(client_id, key)| EndpointAuth::Key {
                    client_id,
                    key,
                })
        }
        "Bearer" => match &a.token {
            Some(t) => issues
                .secret(&format!("{path}.token"), t)
                .map_or(EndpointAuth::None, EndpointAuth::Bearer),
            None => {
                issues.push(path, "kind Bearer needs token");
                EndpointAuth::None
            }
        },
        other => {
            issues.push(
                format!("{path}.kind"),
                format!(
                    "must be Basic, Post, ClientSecretJwt, PrivateKeyJwt, TlsClientAuth or Bearer, not {other:?}"
                ),
            );
            EndpointAuth::None
        }
    }
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

/// Traefik Hub's `oAuthIntrospection` options (RFC 7662).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawIntrospection {
    #[serde(default)]
    pub token_source: Option<RawTokenSource>,
    pub client_config: RawIntrospectionClient,
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
    /// Upper bound on how long an active result is reused (never past the token's `exp`).
    #[serde(default, with = "humantime_serde")]
    pub max_cache_ttl: Option<Duration>,
    /// How long an inactive result is remembered.
    #[serde(default, with = "humantime_serde")]
    pub inactive_cache_ttl: Option<Duration>,
    /// `Bearer` realm announced on 401.
    #[serde(default)]
    pub realm: Option<String>,
}

/// How the gateway reaches the introspection endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawIntrospectionClient {
    pub url: String,
    #[serde(default)]
    pub auth: Option<RawEndpointAuth>,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// RFC 7662 `token_type_hint`.
    #[serde(default)]
    pub token_type_hint: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub tls: Option<RawTls>,
}

/// How the gateway authenticates at an endpoint it calls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEndpointAuth {
    /// `Basic` (client_secret_basic), `Post` (client_secret_post), `ClientSecretJwt`,
    /// `PrivateKeyJwt`, `TlsClientAuth` or `Bearer`.
    pub kind: String,
    #[serde(default, alias = "clientID")]
    pub client_id: Option<String>,
    /// Secret reference (Basic, Post).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Secret reference (Bearer).
    #[serde(default)]
    pub token: Option<String>,
    /// Secret reference to a PEM private key (PrivateKeyJwt).
    #[serde(default)]
    pub private_key: Option<String>,
    /// The `kid` of the assertions' header (PrivateKeyJwt).
    #[serde(default)]
    pub key_id: Option<String>,
}
