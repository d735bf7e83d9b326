//! The `middlewares` section: each kind's options, validated into typed values (claims
//! expressions compiled, secrets resolved, TLS files read) with every problem named by its key
//! path.
//!
//! Every kind is listed once, in [`KINDS`]: its name in the configuration and in Traefik Hub's
//! documents, its reference page, and the type its options are read into. The loader, the
//! manifest converter and the documentation's tests read that table; a kind's options type
//! turns them into the settings the proxy builds the middleware from.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderName;
use serde::de::DeserializeOwned;

use super::issues::Issues;
use crate::auth::DEFAULT_REALM;
use crate::auth::MiddlewareConfig;
use crate::auth::bearer::TokenSource;
use crate::auth::claims::{ClaimsExpr, ClaimsPolicy};
use crate::proxy::middleware::HttpMiddleware;

mod client_certificate;
mod client_credentials;
pub(super) mod http_client;
mod introspection;
mod jwt;
#[cfg(test)]
mod require_header;
mod shaping;

use client_certificate::RawClientCertificate;
use client_credentials::RawClientCredentials;
pub(super) use http_client::key_client;
use introspection::RawIntrospection;
use jwt::RawJwt;
pub(super) use jwt::algorithms;
use serde::Deserialize;
use shaping::{
    RawAddPrefix, RawHeaders, RawRateLimit, RawReplacePath, RawReplacePathRegex, RawRetry,
    RawStripPrefix,
};

/// Declares every middleware kind at once, one line each (the `kinds!` table below): [`KINDS`], the
/// file's shape of a named middleware ([`RawMiddleware`], one variant per kind) and the
/// dispatch from it to the kind's [`Options`]. A new kind is its module (what it does, under
/// `auth/` or `proxy/`), its options (a file here whose `Raw…` type implements [`Options`]),
/// one line in the table, and its reference page.
macro_rules! kinds {
    ($($(#[$when:meta])* $variant:ident($options:ty) = $name:literal, traefik: $traefik:expr, page: $page:literal;)*) => {
        /// Every middleware kind, in the order the documentation lists them.
        pub const KINDS: &[Kind] = &[$($(#[$when])* Kind { name: $name, traefik: $traefik, page: $page },)*];

        /// One named middleware as the file writes it, `{kind: options}`: the options read
        /// into the kind's type straight from the file, so that a misspelt option is reported
        /// with its key path, line and column.
        #[derive(Debug)]
        pub enum RawMiddleware {
            $(
                #[doc = concat!("`", $name, "`")]
                $(#[$when])*
                $variant($options),
            )*
        }

        impl RawMiddleware {
            /// Reads the options of the kind called `name`; `None` for an unknown kind.
            fn read<'de, A: serde::de::MapAccess<'de>>(
                name: &str,
                map: &mut A,
            ) -> Option<Result<Self, A::Error>> {
                match name {
                    $($(#[$when])* $name => Some(map.next_value().map(Self::$variant)),)*
                    _ => None,
                }
            }

            /// Its kind's name in the configuration.
            fn kind(&self) -> &'static str {
                match self {
                    $($(#[$when])* Self::$variant(_) => $name,)*
                }
            }

            /// Validates the options at key path `path`.
            fn declare(self, issues: &mut Issues, path: &str) -> Option<Declared> {
                match self {
                    $($(#[$when])* Self::$variant(options) => options.declare(issues, path),)*
                }
            }
        }
    };
}
kinds! {
    // variant(options type)                  = name in the file,   Traefik Hub's name,                             reference page
    ClientCredentials(RawClientCredentials)   = "clientCredentials", traefik: Some("plugin.oAuthClientCredentials"), page: "reference/client-credentials.md";
    Introspection(RawIntrospection)           = "introspection",     traefik: Some("plugin.oAuthIntrospection"),     page: "reference/introspection.md";
    Jwt(RawJwt)                               = "jwt",               traefik: Some("plugin.jwt"),                    page: "reference/jwt.md";
    ClientCertificate(RawClientCertificate)   = "clientCertificate", traefik: None,                                  page: "reference/tls.md";
    StripPrefix(RawStripPrefix)               = "stripPrefix",       traefik: Some("stripPrefix"),                   page: "reference/routes.md";
    AddPrefix(RawAddPrefix)                   = "addPrefix",         traefik: Some("addPrefix"),                     page: "reference/routes.md";
    ReplacePath(RawReplacePath)               = "replacePath",       traefik: Some("replacePath"),                   page: "reference/routes.md";
    ReplacePathRegex(RawReplacePathRegex)     = "replacePathRegex",  traefik: Some("replacePathRegex"),              page: "reference/routes.md";
    Headers(RawHeaders)                       = "headers",           traefik: Some("headers"),                       page: "reference/routes.md";
    Retry(RawRetry)                           = "retry",             traefik: Some("retry"),                         page: "reference/routes.md";
    RateLimit(RawRateLimit)                   = "rateLimit",         traefik: Some("rateLimit"),                     page: "reference/routes.md";
    #[cfg(test)]
    RequireHeader(require_header::RawRequireHeader) = "requireHeader", traefik: None,                                page: "";
}

/// One middleware kind.
#[derive(Debug)]
pub struct Kind {
    /// Its name in the configuration (`middlewares.NAME.<kind>`).
    pub name: &'static str,
    /// What a Traefik Hub `Middleware` document calls it under `spec` (`plugin.jwt`,
    /// `stripPrefix`), if the manifest converter takes it.
    pub traefik: Option<&'static str>,
    /// Its reference page, under `docs/`.
    pub page: &'static str,
}

/// A kind's options as the file writes them: their shape (serde, with `deny_unknown_fields`)
/// and their validation into what the proxy builds the middleware from.
pub(super) trait Options: DeserializeOwned {
    /// Validates the options at key path `path`, recording every problem in `issues`.
    fn declare(self, issues: &mut Issues, path: &str) -> Option<Declared>;
}

/// A validated middleware: one that authenticates, or one that shapes traffic.
pub(super) enum Declared {
    /// `clientCredentials`, `introspection`, `jwt`, `clientCertificate`.
    Auth(MiddlewareConfig),
    /// `stripPrefix`, `addPrefix`, `replacePath`, `replacePathRegex`, `headers`, `retry`,
    /// `rateLimit`.
    Http(HttpMiddleware),
}

impl Declared {
    /// An authentication middleware's settings.
    fn auth(settings: impl crate::auth::AuthSettings) -> Self {
        Self::Auth(Arc::new(settings))
    }
}

/// The kinds' names, for messages.
fn kind_names() -> String {
    let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
    names.join(", ")
}

impl<'de> Deserialize<'de> for RawMiddleware {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EntryVisitor)
    }
}

struct EntryVisitor;

impl<'de> serde::de::Visitor<'de> for EntryVisitor {
    type Value = RawMiddleware;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a middleware kind and its options ({})", kind_names())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let Some(name) = map.next_key::<String>()? else {
            return Err(A::Error::custom(format!(
                "names no middleware kind (expected one of {})",
                kind_names()
            )));
        };
        let Some(m) = RawMiddleware::read(&name, &mut map) else {
            return Err(A::Error::custom(format!(
                "unknown middleware kind `{name}` (expected one of {})",
                kind_names()
            )));
        };
        let m = m?;
        if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            return Err(A::Error::custom(
                "names more than one middleware kind; declare one per name",
            ));
        }
        Ok(m)
    }
}

/// Validates one named middleware.
pub(super) fn middleware(issues: &mut Issues, name: &str, m: RawMiddleware) -> Option<Declared> {
    let path = format!("middlewares.{name}.{}", m.kind());
    let before = issues.0.len();
    let declared = m.declare(issues, &path);
    declared.filter(|_| issues.0.len() == before)
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
        let Some(j) = by_issuer.middlewares["m"].downcast_ref::<crate::auth::JwtConfig>() else {
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
        let Some(j) = open.middlewares["m"].downcast_ref::<crate::auth::JwtConfig>() else {
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
                "middlewares.m.introspection.clientConfig.auth.kind: must be Basic, Post, ClientSecretJwt, PrivateKeyJwt, TlsClientAuth or Bearer, not \"Digest\"",
                "middlewares.m.introspection.clientConfig.headers.Authorization: is taken as the client authentication: Basic or Bearer credentials (or use clientConfig.auth)",
                "middlewares.m.introspection.clientConfig.tls.certFile: cannot read /nonexistent/cert.pem: No such file or directory (os error 2)",
                "middlewares.m.introspection.clientConfig.tls: certFile and keyFile go together",
                "middlewares.m.introspection.forwardHeaders.Host: cannot be set from a claim (it is managed by the gateway)",
            ]
        );
    }

    #[test]
    fn signed_client_authentication_needs_its_own_credential_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_key = dir.path().join("not-a-key.pem");
        std::fs::write(&not_a_key, "-----BEGIN PRIVATE KEY-----\nnope\n").unwrap();
        assert_eq!(
            issues(&format!(
                "    clientCredentials:\n      url: http://idp/token\n      authMethod: private_key_jwt\n      clientSecret: s\n      clientPrivateKey: file:{}",
                not_a_key.display()
            )),
            [
                "middlewares.m.clientCredentials.clientSecret: is not sent with authMethod private_key_jwt; remove it",
                "middlewares.m.clientCredentials.clientId: is required with authMethod private_key_jwt (the gateway's own key or certificate authenticates; it never vouches for a caller)",
                "middlewares.m.clientCredentials.clientPrivateKey: is not a PEM private key of RSA, EC P-256 or P-384, or Ed25519 (e.g. `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`)",
            ]
        );
        assert_eq!(
            issues(
                "    clientCredentials:\n      url: http://idp/token\n      clientId: a\n      clientSecret: s\n      clientKeyId: k"
            ),
            [
                "middlewares.m.clientCredentials.clientKeyId: is used by authMethod private_key_jwt only"
            ]
        );
        assert_eq!(
            issues(
                "    clientCredentials:\n      url: http://idp/token\n      clientId: a\n      authMethod: private_key_jwt"
            ),
            [
                "middlewares.m.clientCredentials.clientPrivateKey: is required with authMethod private_key_jwt"
            ]
        );
        assert_eq!(
            issues(
                "    introspection:\n      clientConfig:\n        url: http://idp/introspect\n        auth: { kind: PrivateKeyJwt, clientSecret: s }"
            ),
            [
                "middlewares.m.introspection.clientConfig.auth.clientId: is required by kind PrivateKeyJwt",
                "middlewares.m.introspection.clientConfig.auth.clientSecret: is not sent with kind PrivateKeyJwt; remove it",
                "middlewares.m.introspection.clientConfig.auth.privateKey: is required by kind PrivateKeyJwt",
            ]
        );
        // Application level signs with the caller's secret.
        assert!(
            load("    clientCredentials:\n      url: http://idp/token\n      authMethod: client_secret_jwt")
                .is_ok()
        );
    }

    #[test]
    fn a_traefik_authorization_header_is_the_client_authentication_it_carries() {
        use crate::auth::introspection::EndpointAuth;
        let with_header = |value: &str, auth: &str| {
            load(&format!(
                "    introspection:\n      clientConfig:\n        url: http://idp/introspect\n        headers: {{ Authorization: \"{value}\" }}\n{auth}"
            ))
        };
        // base64("gw id:s3cret/+")
        let cfg = with_header("Basic Z3cgaWQ6czNjcmV0Lys=", "").unwrap();
        let Some(i) = cfg.middlewares["m"].downcast_ref::<crate::auth::IntrospectionConfig>()
        else {
            panic!("an introspection middleware")
        };
        match &i.auth {
            EndpointAuth::Header { client_id, value } => {
                assert_eq!(client_id, "gw id");
                assert_eq!(
                    value.expose(),
                    "Basic Z3cgaWQ6czNjcmV0Lys=",
                    "sent as written"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            i.headers.is_empty(),
            "the gateway sends it as the client authentication"
        );
        assert!(
            cfg.warnings
                .iter()
                .any(|w| w
                    .starts_with("middlewares.m.introspection.clientConfig.headers.Authorization")),
            "an inline credential is a warning: {:?}",
            cfg.warnings
        );
        let bearer = with_header("Bearer rs-token", "").unwrap();
        let Some(i) = bearer.middlewares["m"].downcast_ref::<crate::auth::IntrospectionConfig>()
        else {
            panic!("an introspection middleware")
        };
        assert!(
            matches!(&i.auth, EndpointAuth::Header { client_id, value } if client_id.is_empty() && value.expose() == "Bearer rs-token")
        );
        assert_eq!(
            issues(
                "    introspection:\n      clientConfig:\n        url: http://idp/introspect\n        headers: { Authorization: \"Bearer t\" }\n        auth: { kind: Bearer, token: env:HOME }"
            ),
            [
                "middlewares.m.introspection.clientConfig.headers.Authorization: authenticates the gateway a second time beside clientConfig.auth; keep one"
            ]
        );
    }

    #[test]
    fn every_authentication_kind_reports_the_tables_name() {
        let minimal = [
            ("clientCredentials", "{ url: http://idp/token }"),
            (
                "introspection",
                "{ clientConfig: { url: http://idp/introspect } }",
            ),
            (
                "jwt",
                "{ jwksUrl: http://idp/jwks, allowAnyIssuer: true, allowAnyAudience: true }",
            ),
            ("clientCertificate", "{}"),
        ];
        for (kind, options) in minimal {
            assert!(
                super::KINDS.iter().any(|k| k.name == kind),
                "{kind} is in the table"
            );
            let cfg = load(&format!("    {kind}: {options}")).unwrap();
            assert_eq!(cfg.middlewares["m"].kind(), kind);
        }
    }

    #[test]
    fn a_middleware_names_one_known_kind() {
        let shape = |middleware: &str| match load(middleware) {
            Err(ConfigError::Shape { path, message }) => format!("{path}: {message}"),
            other => panic!("expected a shape error, got {other:?}"),
        };
        assert_eq!(
            shape(
                "    jwt: { jwksUrl: http://idp/jwks }\n    clientCredentials: { url: http://idp/token }"
            ),
            "middlewares.m: names more than one middleware kind; declare one per name at line 6 column 5"
        );
        let unknown = shape("    basicAuth: { users: [a] }");
        assert!(
            unknown.starts_with("middlewares.m: unknown middleware kind `basicAuth` (expected one of clientCredentials, introspection, jwt, clientCertificate, stripPrefix,"),
            "{unknown}"
        );
        assert!(shape("    {}").starts_with("middlewares.m: names no middleware kind"));
        // Every kind of the table is read by its own options type.
        for kind in super::KINDS {
            let got = shape(&format!("    {}: {{ noSuchOption: 1 }}", kind.name));
            assert!(
                got.starts_with(&format!(
                    "middlewares.m.{}.noSuchOption: unknown field `noSuchOption`",
                    kind.name
                )),
                "{got}"
            );
        }
    }
}
