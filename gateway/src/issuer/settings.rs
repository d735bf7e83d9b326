//! The issuer's settings (the `issuer` section), as the configuration loader validates them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use super::keys::SigningKey;
use super::secret::SecretHash;
use crate::auth::jwt::JwtConfig;

/// Lifetime of issued tokens when neither the client nor the issuer names one: short enough
/// that a leaked token is soon worthless, long enough that clients are not busy renewing.
pub const DEFAULT_ISSUED_TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Longest lifetime an issued token may be given.
pub const MAX_ISSUED_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// The token endpoint's path (Octelium's, and the common choice).
pub const TOKEN_PATH: &str = "/oauth2/token";
/// The RFC 7662 introspection endpoint's path.
pub const INTROSPECT_PATH: &str = "/oauth2/introspect";
/// The JWKS path.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The RFC 8414 metadata path.
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";

/// The issuer, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerConfig {
    /// The issuer identifier (`iss`), without a trailing slash.
    pub issuer: String,
    /// The key tokens are signed with.
    pub signing_key: SigningKey,
    /// Whether the key was generated at load (no `signingKey.file`; one node, memory store).
    pub key_generated: bool,
    /// Retired keys, still published so tokens they signed verify until they expire.
    pub previous_keys: Vec<SigningKey>,
    /// `aud` for clients that name none.
    pub audience: String,
    /// Lifetime for clients that name none.
    pub token_lifetime: Duration,
    /// Registered clients by id.
    pub clients: BTreeMap<String, IssuerClient>,
    /// Identity providers whose tokens are client assertions, as `jwt` validations.
    pub trusted_issuers: Vec<JwtConfig>,
}

impl IssuerConfig {
    /// The token endpoint URL.
    pub fn token_endpoint(&self) -> String {
        format!("{}{TOKEN_PATH}", self.issuer)
    }

    /// The introspection endpoint URL.
    pub fn introspection_endpoint(&self) -> String {
        format!("{}{INTROSPECT_PATH}", self.issuer)
    }

    /// The JWKS URL.
    pub fn jwks_uri(&self) -> String {
        format!("{}{JWKS_PATH}", self.issuer)
    }

    /// Keeps `running`'s generated key when this configuration, loaded to replace it, generated
    /// one of the same algorithm too: tokens signed before a reload go on verifying.
    pub fn keep_generated_key(&mut self, running: &Self) {
        if self.key_generated
            && running.key_generated
            && self.signing_key.algorithm() == running.signing_key.algorithm()
        {
            self.signing_key = running.signing_key.clone();
        }
    }
}

/// One registered client.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerClient {
    /// Its secret's hash; `None`: it authenticates only with federated identities.
    pub secret: Option<SecretHash>,
    /// Scopes it may be granted, sorted.
    pub scopes: Vec<String>,
    /// `aud` of its tokens.
    pub audience: String,
    /// Lifetime of its tokens.
    pub token_lifetime: Duration,
    /// Extra claims of its tokens.
    pub claims: Map<String, Value>,
    /// `(iss, sub)` pairs of workload tokens that act as this client.
    pub federated: Vec<(String, String)>,
}
