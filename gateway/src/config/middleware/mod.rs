//! The `middlewares` section: each kind's options, validated into typed values (claims
//! expressions compiled, secrets resolved, TLS files read) with every problem named by its key
//! path.

use std::collections::BTreeMap;

use http::HeaderName;

use super::issues::Issues;
use crate::auth::DEFAULT_REALM;
use crate::auth::bearer::TokenSource;
use crate::auth::claims::{ClaimsExpr, ClaimsPolicy};
use crate::auth::{ClientCertificateConfig, MiddlewareConfig};
use crate::proxy::middleware::HttpMiddleware;

mod client_credentials;
pub(super) mod http_client;
mod introspection;
mod jwt;
mod shaping;

use crate::config::middleware::client_credentials::RawClientCredentials;
use crate::config::middleware::introspection::RawIntrospection;
use crate::config::middleware::jwt::RawJwt;
use crate::config::middleware::shaping::{
    RawAddPrefix, RawHeaders, RawRateLimit, RawReplacePath, RawReplacePathRegex, RawRetry,
    RawStripPrefix,
};
use client_credentials::client_credentials;
pub(super) use http_client::key_client;
use introspection::introspection;
pub(super) use jwt::algorithms;
use jwt::jwt;
use serde::Deserialize;

/// A validated middleware: one that authenticates, or one that shapes traffic.
pub(super) enum Declared {
    /// `clientCredentials`, `introspection`, `jwt`, `clientCertificate`.
    Auth(Box<MiddlewareConfig>),
    /// `stripPrefix`, `addPrefix`, `replacePath`, `replacePathRegex`, `headers`, `retry`,
    /// `rateLimit`.
    Http(HttpMiddleware),
}

/// Validates one named middleware.
pub(super) fn middleware(issues: &mut Issues, name: &str, m: RawMiddleware) -> Option<Declared> {
    let base = format!("middlewares.{name}");
    let RawMiddleware {
        client_credentials: cc,
        introspection: intro,
        jwt: j,
        client_certificate,
        strip_prefix,
        add_prefix,
        replace_path,
        replace_path_regex,
        headers,
        retry,
        rate_limit,
    } = m;
    let kinds = [
        cc.is_some(),
        intro.is_some(),
        j.is_some(),
        client_certificate.is_some(),
        strip_prefix.is_some(),
        add_prefix.is_some(),
        replace_path.is_some(),
        replace_path_regex.is_some(),
        headers.is_some(),
        retry.is_some(),
        rate_limit.is_some(),
    ]
    .into_iter()
    .filter(|k| *k)
    .count();
    if kinds > 1 {
        issues.push(
            base,
            "names more than one middleware kind; declare one per name",
        );
        return None;
    }
    let before = issues.0.len();
    if let Some(raw) = retry {
        let m = shaping::retry(issues, &format!("{base}.retry"), raw);
        return (issues.0.len() == before).then_some(Declared::Http(m));
    }
    if let Some(raw) = rate_limit {
        let m = shaping::rate_limit(issues, &format!("{base}.rateLimit"), raw);
        return (issues.0.len() == before).then_some(Declared::Http(m));
    }
    let shaped = match (
        strip_prefix,
        add_prefix,
        replace_path,
        replace_path_regex,
        headers,
    ) {
        (Some(raw), ..) => Some(shaping::strip_prefix(
            issues,
            &format!("{base}.stripPrefix"),
            raw,
        )),
        (_, Some(raw), ..) => Some(shaping::add_prefix(
            issues,
            &format!("{base}.addPrefix"),
            raw,
        )),
        (_, _, Some(raw), ..) => Some(shaping::replace_path(
            issues,
            &format!("{base}.replacePath"),
            raw,
        )),
        (_, _, _, Some(raw), _) => {
            shaping::replace_path_regex(issues, &format!("{base}.replacePathRegex"), raw)
        }
        (_, _, _, _, Some(raw)) => Some(shaping::headers(issues, &format!("{base}.headers"), raw)),
        _ => {
            return auth(issues, &base, cc, intro, j, client_certificate)
                .map(|m| Declared::Auth(Box::new(m)));
        }
    };
    shaped
        .filter(|_| issues.0.len() == before)
        .map(Declared::Http)
}

/// Validates an authentication middleware of one of the four kinds (at most one is given).
fn auth(
    issues: &mut Issues,
    base: &str,
    cc: Option<RawClientCredentials>,
    intro: Option<RawIntrospection>,
    j: Option<RawJwt>,
    client_certificate: Option<RawClientCertificate>,
) -> Option<MiddlewareConfig> {
    if let Some(cc) = cc {
        return client_credentials(issues, &format!("{base}.clientCredentials"), cc)
            .map(MiddlewareConfig::ClientCredentials);
    }
    if let Some(i) = intro {
        return introspection(issues, &format!("{base}.introspection"), i)
            .map(MiddlewareConfig::Introspection);
    }
    if let Some(j) = j {
        return jwt(issues, &format!("{base}.jwt"), j).map(MiddlewareConfig::Jwt);
    }
    if let Some(c) = client_certificate {
        let path = format!("{base}.clientCertificate");
        let before = issues.0.len();
        let policy = policy(issues, &path, c.claims, c.forward_headers, c.username_claim);
        return (issues.0.len() == before).then_some(MiddlewareConfig::ClientCertificate(
            ClientCertificateConfig { policy },
        ));
    }
    issues.push(
        base,
        "names no middleware kind (expected clientCredentials, introspection, jwt, clientCertificate, stripPrefix, addPrefix, replacePath, replacePathRegex, headers, retry or rateLimit)",
    );
    None
}

pub(super) fn policy(
    issues: &mut Issues,
    path: &str,
    claims: Option<String>,
    forward: BTreeMap<String, String>,
    username_claim: Option<String>,
) -> ClaimsPolicy {
    let claims = claims.and_then(|text| {
        ClaimsExpr::parse(&text)
            .map_err(|e| issues.push(format!("{path}.claims"), e.to_string()))
            .ok()
    });
    let mut forward_headers = Vec::new();
    for (header, claim) in forward {
        match HeaderName::from_bytes(header.as_bytes()) {
            Ok(h) if !is_reserved_header(&h) => forward_headers.push((h, claim)),
            Ok(_) => issues.push(
                format!("{path}.forwardHeaders.{header}"),
                "cannot be set from a claim (it is managed by the gateway)",
            ),
            Err(_) => issues.push(
                format!("{path}.forwardHeaders.{header}"),
                "not a valid header name",
            ),
        }
    }
    ClaimsPolicy {
        claims,
        forward_headers,
        username_claim,
    }
}

pub(super) fn token_source(
    issues: &mut Issues,
    path: &str,
    raw: Option<RawTokenSource>,
) -> TokenSource {
    let Some(raw) = raw else {
        return TokenSource::default();
    };
    let path = format!("{path}.tokenSource");
    if raw.header.is_none() && raw.query.is_none() && raw.cookie.is_none() {
        issues.push(&path, "names no source (expected header, query or cookie)");
    }
    if raw.header.is_none() && raw.header_auth_scheme.is_some() {
        issues.push(format!("{path}.headerAuthScheme"), "needs header");
    }
    let header = raw.header.and_then(|h| {
        HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| issues.push(format!("{path}.header"), "not a valid header name"))
            .ok()
    });
    if let Some(scheme) = &raw.header_auth_scheme
        && (scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._~+/".contains(c)))
    {
        issues.push(
            format!("{path}.headerAuthScheme"),
            "must be an auth scheme such as Bearer",
        );
    }
    for (name, value) in [("query", &raw.query), ("cookie", &raw.cookie)] {
        if value.as_deref().is_some_and(str::is_empty) {
            issues.push(format!("{path}.{name}"), "is empty");
        }
    }
    TokenSource {
        headers: header
            .map(|h| (h, raw.header_auth_scheme))
            .into_iter()
            .collect(),
        query: raw.query,
        cookie: raw.cookie,
    }
}

pub(super) fn realm(issues: &mut Issues, path: &str, realm: Option<String>) -> String {
    let realm = realm.unwrap_or_else(|| DEFAULT_REALM.into());
    if realm.contains(['"', '\\']) || realm.chars().any(char::is_control) {
        issues.push(
            format!("{path}.realm"),
            "must not contain quotes, backslashes or control characters",
        );
    }
    realm
}

/// Headers that a claim must never set: the gateway owns them.
pub(super) fn is_reserved_header(h: &HeaderName) -> bool {
    use http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
    [
        AUTHORIZATION,
        HOST,
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
    ]
    .contains(h)
        || h.as_str().starts_with("x-forwarded-")
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

/// A named middleware: exactly one kind per entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMiddleware {
    #[serde(default)]
    pub client_credentials: Option<RawClientCredentials>,
    #[serde(default)]
    pub introspection: Option<RawIntrospection>,
    #[serde(default)]
    pub jwt: Option<RawJwt>,
    #[serde(default)]
    pub client_certificate: Option<RawClientCertificate>,
    #[serde(default)]
    pub strip_prefix: Option<RawStripPrefix>,
    #[serde(default)]
    pub add_prefix: Option<RawAddPrefix>,
    #[serde(default)]
    pub replace_path: Option<RawReplacePath>,
    #[serde(default)]
    pub replace_path_regex: Option<RawReplacePathRegex>,
    #[serde(default)]
    pub headers: Option<RawHeaders>,
    #[serde(default)]
    pub retry: Option<RawRetry>,
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
}

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

/// Where the caller's token is looked for: header, then query, then cookie.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTokenSource {
    #[serde(default)]
    pub header: Option<String>,
    /// Scheme expected before the token in `header` (e.g. `Bearer`); none: the whole value.
    #[serde(default)]
    pub header_auth_scheme: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
}

#[cfg(test)]
mod tests {
    use crate::auth::MiddlewareConfig;
    use crate::auth::jwt::JwksSource;
    use crate::config::{Config, ConfigError};

    fn load(middleware: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(&format!(
            r#"
listen: 127.0.0.1:8080
admin: {{ listen: 127.0.0.1:9090 }}
middlewares:
  m:
{middleware}
routes:
  - name: r
    match: {{ pathPrefix: / }}
    middlewares: [m]
    upstream: {{ urls: [http://127.0.0.1:8081] }}
"#
        ))
    }

    fn issues(middleware: &str) -> Vec<String> {
        match load(middleware) {
            Err(ConfigError::Invalid(issues)) => issues.iter().map(ToString::to_string).collect(),
            other => panic!("expected value errors, got {other:?}"),
        }
    }

    #[test]
    fn a_claims_syntax_error_names_the_middleware_and_the_column() {
        let got = issues(
            "    jwt:\n      jwksUrl: http://idp/jwks\n      issuer: http://idp\n      audience: api\n      claims: Equals(`grp`, `admin`) && Prefx(`iss`, `x`)",
        );
        assert_eq!(
            got,
            [
                "middlewares.m.jwt.claims: column 27: unknown function `Prefx` (expected Equals, Prefix, Contains, SplitContains or OneOf)"
            ]
        );
    }

    #[test]
    fn symmetric_and_unknown_algorithms_are_refused() {
        let got = issues(
            "    jwt:\n      jwksUrl: http://idp/jwks\n      allowAnyIssuer: true\n      allowAnyAudience: true\n      algorithms: [RS256, HS256, none]",
        );
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("middlewares.m.jwt.algorithms[1]: symmetric"));
        assert!(got[1].starts_with("middlewares.m.jwt.algorithms[2]: unknown algorithm"));
    }

    #[test]
    fn jwt_keys_come_from_a_url_or_discovery() {
        let by_issuer =
            load("    jwt:\n      issuer: https://idp.example/realms/x\n      audience: api")
                .unwrap();
        let MiddlewareConfig::Jwt(j) = &by_issuer.middlewares["m"] else {
            panic!()
        };
        assert_eq!(
            j.keys,
            JwksSource::Discovery("https://idp.example/realms/x".parse().unwrap())
        );
        assert!(
            j.algorithms
                .iter()
                .all(|a| !format!("{a:?}").starts_with("HS"))
        );
        assert_eq!(
            issues(
                "    jwt:\n      leeway: 1s\n      allowAnyIssuer: true\n      allowAnyAudience: true"
            ),
            [
                "middlewares.m.jwt: needs jwksUrl, or issuer (keys found by OpenID Connect discovery)"
            ]
        );
    }

    #[test]
    fn jwt_needs_an_issuer_and_an_audience_unless_told_any_will_do() {
        assert_eq!(
            issues("    jwt:\n      jwksUrl: http://idp/jwks"),
            [
                "middlewares.m.jwt.issuer: is required (the expected iss); set allowAnyIssuer: true to accept any",
                "middlewares.m.jwt.audience: is required (the aud values this route accepts); set allowAnyAudience: true to accept any",
            ]
        );
        let open = load(
            "    jwt:\n      jwksUrl: http://idp/jwks\n      allowAnyIssuer: true\n      allowAnyAudience: true",
        )
        .unwrap();
        let MiddlewareConfig::Jwt(j) = &open.middlewares["m"] else {
            panic!()
        };
        assert!(j.issuer.is_none() && j.audience.is_empty());
        assert_eq!(
            issues(
                "    jwt:\n      issuer: http://idp\n      audience: a\n      jwksMaxStaleness: 1m"
            ),
            ["middlewares.m.jwt.jwksMaxStaleness: must be at least jwksRefreshInterval"]
        );
    }

    #[test]
    fn introspection_options_are_checked_together() {
        let got = issues(
            r#"    introspection:
      tokenSource: { headerAuthScheme: Bearer }
      clientConfig:
        url: not-a-url
        auth: { kind: Digest }
        headers: { Authorization: x }
        tls: { certFile: /nonexistent/cert.pem }
      forwardHeaders: { Host: sub }"#,
        );
        assert_eq!(
            got,
            [
                "middlewares.m.introspection.tokenSource: names no source (expected header, query or cookie)",
                "middlewares.m.introspection.tokenSource.headerAuthScheme: needs header",
                "middlewares.m.introspection.clientConfig.url: not an http(s) URL",
                "middlewares.m.introspection.clientConfig.auth.kind: must be Basic, Post or Bearer, not \"Digest\"",
                "middlewares.m.introspection.clientConfig.headers.Authorization: is managed by the gateway",
                "middlewares.m.introspection.clientConfig.tls.certFile: cannot read /nonexistent/cert.pem: No such file or directory (os error 2)",
                "middlewares.m.introspection.clientConfig.tls: certFile and keyFile go together",
                "middlewares.m.introspection.forwardHeaders.Host: cannot be set from a claim (it is managed by the gateway)",
            ]
        );
    }

    #[test]
    fn two_kinds_under_one_name_are_refused() {
        let got = issues(
            "    jwt: { jwksUrl: http://idp/jwks }\n    clientCredentials: { url: http://idp/token }",
        );
        assert_eq!(
            got,
            ["middlewares.m: names more than one middleware kind; declare one per name"]
        );
    }
}
