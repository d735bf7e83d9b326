//! The `middlewares` section: each kind's options, validated into typed values (claims
//! expressions compiled, secrets resolved, TLS files read) with every problem named by its key
//! path.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use jsonwebtoken::Algorithm;

use super::raw::{
    RawClientCredentials, RawEndpointAuth, RawHttpClient, RawIntrospection, RawJwt, RawMiddleware,
    RawTls, RawTokenSource, StringOrList,
};
use super::validate::Issues;
use crate::auth::DEFAULT_REALM;
use crate::auth::MiddlewareConfig;
use crate::auth::bearer::TokenSource;
use crate::auth::claims::{ClaimsExpr, ClaimsPolicy};
use crate::auth::client_credentials::{
    ClientCredentialsConfig, DEFAULT_NEGATIVE_CACHE_TTL, DEFAULT_REJECTED_TOKEN_MIN_AGE,
    DEFAULT_TOKEN_LIFETIME,
};
use crate::auth::introspection::{
    DEFAULT_INACTIVE_CACHE_TTL, DEFAULT_MAX_CACHE_TTL, EndpointAuth, IntrospectionConfig,
};
use crate::auth::jwt::{
    DEFAULT_JWKS_MAX_STALENESS, DEFAULT_JWKS_MIN_REFRESH_INTERVAL, DEFAULT_JWKS_REFRESH_INTERVAL,
    DEFAULT_LEEWAY, GATEWAY_TOKEN_HEADER, JwksSource, JwtConfig,
};
use crate::outbound::{DEFAULT_IDP_RETRIES, DEFAULT_IDP_TIMEOUT, HttpClientConfig, HttpTls};
use crate::token::AuthMethod;

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

/// Validates one named middleware.
pub(super) fn middleware(
    issues: &mut Issues,
    name: &str,
    m: RawMiddleware,
) -> Option<MiddlewareConfig> {
    let base = format!("middlewares.{name}");
    match m {
        RawMiddleware {
            client_credentials: Some(cc),
            introspection: None,
            jwt: None,
        } => client_credentials(issues, &format!("{base}.clientCredentials"), cc)
            .map(MiddlewareConfig::ClientCredentials),
        RawMiddleware {
            client_credentials: None,
            introspection: Some(i),
            jwt: None,
        } => introspection(issues, &format!("{base}.introspection"), i)
            .map(MiddlewareConfig::Introspection),
        RawMiddleware {
            client_credentials: None,
            introspection: None,
            jwt: Some(j),
        } => jwt(issues, &format!("{base}.jwt"), j).map(MiddlewareConfig::Jwt),
        RawMiddleware {
            client_credentials: None,
            introspection: None,
            jwt: None,
        } => {
            issues.push(
                base,
                "names no middleware kind (expected clientCredentials, introspection or jwt)",
            );
            None
        }
        _ => {
            issues.push(
                base,
                "names more than one middleware kind; declare one per name",
            );
            None
        }
    }
}

fn client_credentials(
    issues: &mut Issues,
    path: &str,
    cc: RawClientCredentials,
) -> Option<ClientCredentialsConfig> {
    let before = issues.0.len();
    let token_url = issues.http_url(&format!("{path}.url"), &cc.url);
    let credentials = match (cc.client_id, cc.client_secret) {
        (None, None) => None,
        (Some(id), Some(secret)) => {
            if id.is_empty() {
                issues.push(format!("{path}.clientId"), "is empty");
            }
            issues
                .secret(&format!("{path}.clientSecret"), &secret)
                .map(|s| (id, s))
        }
        (Some(_), None) => {
            issues.push(
                format!("{path}.clientSecret"),
                "is required when clientId is set",
            );
            None
        }
        (None, Some(_)) => {
            issues.push(
                format!("{path}.clientId"),
                "is required when clientSecret is set",
            );
            None
        }
    };
    let auth_method = match cc.auth_method.as_deref() {
        None | Some("client_secret_basic") => AuthMethod::ClientSecretBasic,
        Some("client_secret_post") => AuthMethod::ClientSecretPost,
        Some(other) => {
            issues.push(
                format!("{path}.authMethod"),
                format!("must be client_secret_basic or client_secret_post, not {other:?}"),
            );
            AuthMethod::ClientSecretBasic
        }
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
            "grant_type" | "client_id" | "client_secret" | "scope" | "audience"
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
    if issues.0.len() != before {
        return None;
    }
    Some(ClientCredentialsConfig {
        token_url: token_url?,
        credentials,
        auth_method,
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
        idp_timeout: cc.client_config.timeout.unwrap_or(DEFAULT_IDP_TIMEOUT),
        idp_retries: cc.client_config.retries.unwrap_or(DEFAULT_IDP_RETRIES),
    })
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
    let auth = match cc.auth {
        None => EndpointAuth::None,
        Some(a) => endpoint_auth(issues, &format!("{cpath}.auth"), a),
    };
    let mut headers = Vec::new();
    for (name, value) in cc.headers {
        let hpath = format!("{cpath}.headers.{name}");
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
        issuer: j.issuer,
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
pub(super) fn algorithms(
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

fn policy(
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

fn token_source(issues: &mut Issues, path: &str, raw: Option<RawTokenSource>) -> TokenSource {
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

fn endpoint_auth(issues: &mut Issues, path: &str, a: RawEndpointAuth) -> EndpointAuth {
    let client = |issues: &mut Issues, method| match (a.client_id.clone(), &a.client_secret) {
        (Some(id), Some(s)) if !id.is_empty() => issues
            .secret(&format!("{path}.clientSecret"), s)
            .map_or(EndpointAuth::None, |secret| EndpointAuth::Client {
                method,
                client_id: id,
                secret,
            }),
        _ => {
            issues.push(
                path,
                format!("kind {} needs clientId and clientSecret", a.kind),
            );
            EndpointAuth::None
        }
    };
    match a.kind.as_str() {
        "Basic" => client(issues, AuthMethod::ClientSecretBasic),
        "Post" => client(issues, AuthMethod::ClientSecretPost),
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
                format!("must be Basic, Post or Bearer, not {other:?}"),
            );
            EndpointAuth::None
        }
    }
}

/// The HTTP client that fetches keys (`clientConfig` under `path`).
pub(super) fn key_client(
    issues: &mut Issues,
    path: &str,
    raw: Option<RawHttpClient>,
) -> HttpClientConfig {
    match raw {
        None => http_client(issues, path, None, None, None),
        Some(RawHttpClient {
            timeout,
            retries,
            tls,
        }) => http_client(
            issues,
            &format!("{path}.clientConfig"),
            timeout,
            retries,
            tls,
        ),
    }
}

pub(super) fn http_client(
    issues: &mut Issues,
    path: &str,
    timeout: Option<Duration>,
    retries: Option<u32>,
    tls: Option<RawTls>,
) -> HttpClientConfig {
    let timeout = timeout.unwrap_or(DEFAULT_IDP_TIMEOUT);
    if timeout.is_zero() {
        issues.push(format!("{path}.timeout"), "must be greater than zero");
    }
    HttpClientConfig {
        timeout,
        retries: retries.unwrap_or(DEFAULT_IDP_RETRIES),
        tls: tls.map_or_else(HttpTls::default, |t| {
            http_tls(issues, &format!("{path}.tls"), t)
        }),
    }
}

fn http_tls(issues: &mut Issues, path: &str, t: RawTls) -> HttpTls {
    let mut read = |key: &str, file: &Option<String>| {
        file.as_ref().and_then(|f| {
            std::fs::read(f)
                .map_err(|e| issues.push(format!("{path}.{key}"), format!("cannot read {f}: {e}")))
                .ok()
        })
    };
    let ca = read("caFile", &t.ca_file);
    let cert = read("certFile", &t.cert_file);
    let key = read("keyFile", &t.key_file);
    let ca = ca.map_or_else(
        Vec::new,
        |pem| match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certs) if !certs.is_empty() => certs,
            _ => {
                issues.push(format!("{path}.caFile"), "holds no PEM certificate");
                Vec::new()
            }
        },
    );
    let identity = match (t.cert_file.is_some(), t.key_file.is_some()) {
        (false, false) => None,
        (true, true) => {
            let (Some(mut pem), Some(key)) = (cert, key) else {
                return HttpTls::default();
            };
            pem.push(b'\n');
            pem.extend_from_slice(&key);
            reqwest::Identity::from_pem(&pem)
                .map_err(|_| {
                    issues.push(
                        format!("{path}.certFile"),
                        "certificate and key do not form a PEM identity",
                    )
                })
                .ok()
        }
        _ => {
            issues.push(path, "certFile and keyFile go together");
            None
        }
    };
    HttpTls {
        ca,
        identity,
        insecure_skip_verify: t.insecure_skip_verify,
    }
}

fn realm(issues: &mut Issues, path: &str, realm: Option<String>) -> String {
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
fn is_reserved_header(h: &HeaderName) -> bool {
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
