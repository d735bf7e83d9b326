//! The `issuer` section: the gateway as an OAuth2 authorization server for workloads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::issues::Issues;
use super::middleware::{algorithms, key_client};
use crate::auth::DEFAULT_REALM;
use crate::auth::bearer::TokenSource;
use crate::auth::claims::ClaimsPolicy;
use crate::auth::jwt::{
    DEFAULT_JWKS_MAX_STALENESS, DEFAULT_JWKS_MIN_REFRESH_INTERVAL, DEFAULT_JWKS_REFRESH_INTERVAL,
    DEFAULT_LEEWAY, JwksSource, JwtConfig,
};
use crate::config::StringOrList;
use crate::config::middleware::http_client::RawHttpClient;
use crate::issuer::keys::SigningKey;
use crate::issuer::secret::SecretHash;
use crate::issuer::{
    DEFAULT_ISSUED_TOKEN_LIFETIME, IssuerClient, IssuerConfig, MAX_ISSUED_TOKEN_LIFETIME,
    TOKEN_PATH,
};
use serde::Deserialize;

/// Claims the issuer sets itself; a client's extra `claims` cannot override them.
const REGISTERED_CLAIMS: [&str; 10] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "client_id",
    "scope",
    "auth_time",
];

pub(super) fn issuer(
    issues: &mut Issues,
    raw: RawIssuer,
    shared_store: bool,
) -> Option<IssuerConfig> {
    let before = issues.0.len();
    let url = issues.http_url("issuer.url", &raw.url);
    if let Some(u) = &url
        && (u.path() != "/" || u.query().is_some() || u.fragment().is_some())
    {
        issues.push(
            "issuer.url",
            "must be an origin (scheme, host, port) without path, query or fragment",
        );
    }
    let issuer = raw.url.trim_end_matches('/').to_owned();
    let key_generated = raw.signing_key.as_ref().is_none_or(|k| k.file.is_none());
    let signing_key = signing_key(issues, &raw, shared_store);
    let previous_keys = raw
        .previous_signing_keys
        .iter()
        .enumerate()
        .filter_map(|(i, file)| {
            let path = format!("issuer.previousSigningKeys[{i}]");
            load_key(issues, &path, file, None)
        })
        .collect();
    let audience = raw.audience.unwrap_or_else(|| issuer.clone());
    let token_lifetime = lifetime(issues, "issuer.tokenLifetime", raw.token_lifetime)
        .unwrap_or(DEFAULT_ISSUED_TOKEN_LIFETIME);
    let leeway = raw.leeway.unwrap_or(DEFAULT_LEEWAY);

    let token_endpoint = format!("{issuer}{}", TOKEN_PATH);
    let mut trusted_issuers = Vec::new();
    let mut trusted_names = BTreeSet::new();
    for (i, t) in raw.trusted_issuers.into_iter().enumerate() {
        let path = format!("issuer.trustedIssuers[{i}]");
        if !trusted_names.insert(t.issuer.clone()) {
            issues.push(
                format!("{path}.issuer"),
                format!("{:?} is listed twice", t.issuer),
            );
        }
        let default_audience = vec![issuer.clone(), token_endpoint.clone()];
        if let Some(cfg) = trusted_issuer(issues, &path, t, default_audience, leeway) {
            trusted_issuers.push(cfg);
        }
    }

    let mut clients = BTreeMap::new();
    let mut identities: BTreeMap<(String, String), String> = BTreeMap::new();
    for (id, c) in raw.clients {
        let path = format!("issuer.clients.{id}");
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
            issues.push(&path, "a client id is visible ASCII without spaces");
        }
        for (j, f) in c.federated_identities.iter().enumerate() {
            let fpath = format!("{path}.federatedIdentities[{j}]");
            if !trusted_names.contains(&f.issuer) {
                issues.push(
                    format!("{fpath}.issuer"),
                    format!("{:?} is not in issuer.trustedIssuers", f.issuer),
                );
            }
            if let Some(other) =
                identities.insert((f.issuer.clone(), f.subject.clone()), id.clone())
            {
                issues.push(
                    fpath,
                    format!("this identity already acts as client {other:?}"),
                );
            }
        }
        if let Some(client) = client(issues, &path, c, &audience, token_lifetime) {
            clients.insert(id, client);
        }
    }
    if issues.0.len() != before {
        return None;
    }
    Some(IssuerConfig {
        issuer,
        signing_key: signing_key?,
        key_generated,
        previous_keys,
        audience,
        token_lifetime,
        clients,
        trusted_issuers,
    })
}

fn signing_key(issues: &mut Issues, raw: &RawIssuer, shared_store: bool) -> Option<SigningKey> {
    let spec = raw.signing_key.as_ref();
    let alg = match spec.and_then(|k| k.algorithm.as_deref()) {
        None => None,
        Some(name) => match name.parse::<Algorithm>() {
            Ok(a) if crate::issuer::keys::SIGNING_ALGORITHMS.contains(&a) => Some(a),
            _ => {
                issues.push(
                    "issuer.signingKey.algorithm",
                    format!("{name:?} is not one of ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512"),
                );
                return None;
            }
        },
    };
    match spec.and_then(|k| k.file.as_deref()) {
        Some(file) => load_key(issues, "issuer.signingKey.file", file, alg),
        None if shared_store => {
            issues.push(
                "issuer.signingKey.file",
                "is required with a shared store: every node must sign with the same key",
            );
            None
        }
        None => SigningKey::generate(alg.unwrap_or(Algorithm::ES256))
            .map_err(|m| issues.push("issuer.signingKey.algorithm", m))
            .ok(),
    }
}

fn load_key(
    issues: &mut Issues,
    path: &str,
    file: &str,
    alg: Option<Algorithm>,
) -> Option<SigningKey> {
    if !issues.reads_key_material() {
        // The file is not read; a key of the same algorithm stands in for it.
        return SigningKey::generate(alg.unwrap_or(Algorithm::ES256))
            .map_err(|m| issues.push(path, m))
            .ok();
    }
    let pem = std::fs::read(file)
        .map_err(|e| issues.push(path, format!("cannot read {file}: {}", e.kind())))
        .ok()?;
    SigningKey::from_pem(&pem, alg)
        .map_err(|m| issues.push(path, format!("{file} {m}")))
        .ok()
}

fn lifetime(issues: &mut Issues, path: &str, value: Option<Duration>) -> Option<Duration> {
    let d = value?;
    if d < Duration::from_secs(1) || d > MAX_ISSUED_TOKEN_LIFETIME {
        issues.push(path, "must be between 1s and 24h");
    }
    Some(d)
}

fn client(
    issues: &mut Issues,
    path: &str,
    c: RawIssuerClient,
    default_audience: &str,
    default_lifetime: Duration,
) -> Option<IssuerClient> {
    let secret = match (&c.secret_hash, &c.secret) {
        (Some(_), Some(_)) => {
            issues.push(path, "give secretHash or secret, not both");
            None
        }
        (Some(phc), None) => SecretHash::parse(phc)
            .map_err(|m| issues.push(format!("{path}.secretHash"), m))
            .ok(),
        (None, Some(reference)) => issues
            .secret(&format!("{path}.secret"), reference)
            .map(|s| SecretHash::of_reference(s.expose())),
        (None, None) => {
            if c.federated_identities.is_empty() {
                issues.push(
                    path,
                    "needs secretHash, secret or federatedIdentities to authenticate",
                );
            }
            None
        }
    };
    let mut scopes = c.scopes;
    for (i, s) in scopes.iter().enumerate() {
        // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            issues.push(
                format!("{path}.scopes[{i}]"),
                "is not an RFC 6749 scope token",
            );
        }
    }
    scopes.sort();
    scopes.dedup();
    for name in c.claims.keys() {
        if REGISTERED_CLAIMS.contains(&name.as_str()) {
            issues.push(
                format!("{path}.claims.{name}"),
                "is set by the issuer and cannot be overridden",
            );
        }
    }
    let token_lifetime = lifetime(issues, &format!("{path}.tokenLifetime"), c.token_lifetime)
        .unwrap_or(default_lifetime);
    Some(IssuerClient {
        secret,
        scopes,
        audience: c.audience.unwrap_or_else(|| default_audience.to_owned()),
        token_lifetime,
        claims: c.claims,
        federated: c
            .federated_identities
            .into_iter()
            .map(|f| (f.issuer, f.subject))
            .collect(),
    })
}

/// A trusted workload identity provider as a `jwt` validation: its `iss`, its keys, the
/// accepted audiences (this gateway by default, RFC 7523 §3 item 3).
fn trusted_issuer(
    issues: &mut Issues,
    path: &str,
    t: RawTrustedIssuer,
    default_audience: Vec<String>,
    leeway: Duration,
) -> Option<JwtConfig> {
    let before = issues.0.len();
    if t.issuer.is_empty() {
        issues.push(format!("{path}.issuer"), "is empty");
    }
    let keys = match (&t.jwks_url, t.keys) {
        (Some(_), Some(_)) => {
            issues.push(path, "give jwksUrl or keys, not both");
            None
        }
        (Some(u), None) => issues
            .http_url(&format!("{path}.jwksUrl"), u)
            .map(JwksSource::Url),
        (None, Some(doc)) => {
            let usable = crate::auth::jwt::keys::parse_set(&doc, &algorithms(issues, path, None));
            if usable.keys.is_empty() {
                issues.push(
                    format!("{path}.keys"),
                    "holds no usable public signing key (expected a JWKS: {\"keys\": [...]})",
                );
            }
            Some(JwksSource::Inline(Arc::new(doc)))
        }
        (None, None) => issues
            .http_url(&format!("{path}.issuer"), &t.issuer)
            .map(JwksSource::Discovery),
    };
    let audience = match t.audience {
        None => default_audience,
        Some(StringOrList::One(a)) => vec![a],
        Some(StringOrList::Many(a)) if a.is_empty() => {
            issues.push(format!("{path}.audience"), "must name at least one");
            a
        }
        Some(StringOrList::Many(a)) => a,
    };
    let algorithms = algorithms(issues, path, t.algorithms);
    let http = key_client(issues, path, t.client_config);
    if issues.0.len() != before {
        return None;
    }
    Some(JwtConfig {
        token_source: TokenSource::default(),
        keys: keys?,
        issuer: Some(t.issuer),
        audience,
        algorithms,
        leeway,
        forward_authorization: false,
        policy: ClaimsPolicy::default(),
        jwks_refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
        jwks_min_refresh_interval: DEFAULT_JWKS_MIN_REFRESH_INTERVAL,
        jwks_max_staleness: DEFAULT_JWKS_MAX_STALENESS,
        http,
        realm: DEFAULT_REALM.into(),
        access_token_type: false,
    })
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

/// The built-in token issuer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawIssuer {
    /// Issuer identifier (`iss`): the gateway's public origin, e.g. `https://gw.example.com`.
    pub url: String,
    /// The key access tokens are signed with. Omitted: an ES256 key generated at start.
    #[serde(default)]
    pub signing_key: Option<RawSigningKey>,
    /// PEM files of retired keys: published in the JWKS, never used to sign.
    #[serde(default)]
    pub previous_signing_keys: Vec<String>,
    /// `aud` of tokens whose client names none.
    #[serde(default)]
    pub audience: Option<String>,
    /// Lifetime of tokens whose client names none.
    #[serde(default, with = "humantime_serde")]
    pub token_lifetime: Option<Duration>,
    /// Clock skew tolerated on client assertions.
    #[serde(default, with = "humantime_serde")]
    pub leeway: Option<Duration>,
    /// Registered clients by client id.
    #[serde(default)]
    pub clients: BTreeMap<String, RawIssuerClient>,
    /// Identity providers whose tokens are accepted as client assertions (RFC 7523).
    #[serde(default)]
    pub trusted_issuers: Vec<RawTrustedIssuer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSigningKey {
    /// PKCS#8 (or PKCS#1 for RSA) PEM private key. Omitted: generated at start.
    #[serde(default)]
    pub file: Option<String>,
    /// `ES256` (default), `ES384`, `RS256`, `PS256`... (must fit the key).
    #[serde(default)]
    pub algorithm: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawIssuerClient {
    /// PHC-format argon2 hash of the client secret (`gateway hash-secret` prints one).
    #[serde(default)]
    pub secret_hash: Option<String>,
    /// Secret reference; hashed at load, never kept in clear.
    #[serde(default)]
    pub secret: Option<String>,
    /// Scopes the client may ask for; all of them when it asks for none.
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub token_lifetime: Option<Duration>,
    /// Extra claims put in every token of this client.
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// Workload identities (`iss` + `sub` of a trusted issuer's token) that act as this client.
    #[serde(default)]
    pub federated_identities: Vec<RawFederatedIdentity>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawFederatedIdentity {
    pub issuer: String,
    pub subject: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTrustedIssuer {
    /// The `iss` of the assertions.
    pub issuer: String,
    /// Where its keys are. Without it and without `keys`: OpenID Connect discovery.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// An inline JWKS document (`{"keys": [...]}`).
    #[serde(default)]
    pub keys: Option<serde_json::Value>,
    /// Accepted `aud` values; default: this issuer's URL and its token endpoint.
    #[serde(default)]
    pub audience: Option<StringOrList>,
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub client_config: Option<RawHttpClient>,
}

#[cfg(test)]
mod tests {
    use crate::auth::jwt::JwksSource;
    use crate::config::{Config, ConfigError};

    fn load(extra: &str, issuer: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(&format!(
            "listen: 127.0.0.1:8080\nadmin: {{ listen: 127.0.0.1:9090 }}\n{extra}\n{issuer}"
        ))
    }

    fn issues(extra: &str, issuer: &str) -> Vec<String> {
        match load(extra, issuer) {
            Err(ConfigError::Invalid(issues)) => issues.iter().map(ToString::to_string).collect(),
            other => panic!("expected value errors, got {other:?}"),
        }
    }

    #[test]
    fn every_issuer_problem_is_reported_with_its_key_path() {
        let (_key, fleet_key) = crate::config::test_fleet_key();
        let got = issues(
            &format!("{fleet_key}\nstore: {{ redis: {{ endpoints: [127.0.0.1:6379] }} }}"),
            r#"
issuer:
  url: https://gw.example.com/tenant
  tokenLifetime: 48h
  clients:
    app:
      secret: inline
      secretHash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA"
      scopes: ["a b"]
      claims: { sub: root }
    nothing: {}
    legacy:
      secretHash: "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo"
    ci:
      federatedIdentities: [{ issuer: "https://unknown.example", subject: x }]
  trustedIssuers:
    - issuer: https://ci.example
      keys: { keys: [] }
"#,
        );
        assert_eq!(
            got,
            [
                "issuer.url: must be an origin (scheme, host, port) without path, query or fragment",
                "issuer.signingKey.file: is required with a shared store: every node must sign with the same key",
                "issuer.tokenLifetime: must be between 1s and 24h",
                "issuer.trustedIssuers[0].keys: holds no usable public signing key (expected a JWKS: {\"keys\": [...]})",
                "issuer.clients.app: give secretHash or secret, not both",
                "issuer.clients.app.scopes[0]: is not an RFC 6749 scope token",
                "issuer.clients.app.claims.sub: is set by the issuer and cannot be overridden",
                "issuer.clients.ci.federatedIdentities[0].issuer: \"https://unknown.example\" is not in issuer.trustedIssuers",
                "issuer.clients.legacy.secretHash: must be an argon2 hash, not pbkdf2-sha256",
                "issuer.clients.nothing: needs secretHash, secret or federatedIdentities to authenticate",
            ]
        );
    }

    #[test]
    fn a_reloaded_issuer_compares_equal_when_its_referenced_secret_did_not_change() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("app-secret");
        std::fs::write(&secret, "s3cret").unwrap();
        let issuer = format!(
            "issuer:\n  url: https://gw.example.com\n  clients:\n    app: {{ secret: \"file:{}\" }}",
            secret.display()
        );
        let loaded = || load("", &issuer).unwrap().issuer.unwrap();
        let running = loaded();
        let mut again = loaded();
        assert!(running.key_generated && again.key_generated);
        assert_ne!(
            running.signing_key, again.signing_key,
            "each load generates a key"
        );
        again.keep_generated_key(&running);
        assert_eq!(again, running, "the same file, the same issuer");
        std::fs::write(&secret, "rotated").unwrap();
        let mut rotated = loaded();
        rotated.keep_generated_key(&running);
        assert_ne!(rotated, running, "a changed secret is a change");
        assert_eq!(rotated.signing_key, running.signing_key);
    }

    #[test]
    fn gateway_issuer_middlewares_need_the_issuer_and_are_bound_to_it() {
        let jwt = "middlewares:\n  own:\n    jwt: { gatewayIssuer: true, audience: api }";
        assert_eq!(
            issues(jwt, ""),
            ["middlewares.own.jwt.gatewayIssuer: needs the top-level issuer section"]
        );
        let cfg = load(jwt, "issuer: { url: \"https://gw.example.com/\" }").unwrap();
        let issuer = cfg.issuer.as_ref().unwrap();
        assert_eq!(issuer.issuer, "https://gw.example.com");
        assert_eq!(
            issuer.token_endpoint(),
            "https://gw.example.com/oauth2/token"
        );
        let Some(j) = cfg.middlewares["own"].downcast_ref::<crate::auth::JwtConfig>() else {
            panic!("a jwt middleware")
        };
        assert_eq!(j.keys, JwksSource::Gateway);
        assert_eq!(j.issuer.as_deref(), Some("https://gw.example.com"));
        assert!(j.access_token_type);
        let headers: Vec<&str> = j
            .token_source
            .headers
            .iter()
            .map(|(h, _)| h.as_str())
            .collect();
        assert_eq!(headers, ["authorization", "x-tokengate-auth"]);
        let both = "middlewares:\n  own:\n    jwt: { gatewayIssuer: true, audience: api, jwksUrl: \"http://x/jwks\" }";
        assert_eq!(
            issues(both, "issuer: { url: \"https://gw.example.com\" }"),
            [
                "middlewares.own.jwt.gatewayIssuer: takes its keys and issuer from the top-level issuer; drop jwksUrl and issuer"
            ]
        );
    }
}
