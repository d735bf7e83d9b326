//! What the gateway sends to a token endpoint, also kept as each entry's *refresh spec*.
//!
//! A [`TokenRequest`] holds everything needed to obtain a token again (endpoint, client
//! authentication, scopes, audience, extra parameters). It is stored sealed beside each entry so
//! that the refresh leader can renew any entry, including ones made from application-level
//! credentials it only ever saw through another node's callers.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::secret::Secret;

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HTTP Basic with form-urlencoded id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A JWT signed HS256 under the client secret (RFC 7523 §2.2).
    ClientSecretJwt,
    /// A JWT signed with the client's private key (RFC 7523 §2.2).
    PrivateKeyJwt,
    /// The TLS client certificate of the endpoint's client (RFC 8705 §2.1).
    TlsClientAuth,
}

/// One credential's token request; also the refresh spec stored (sealed) with its entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRequest {
    /// The token endpoint.
    pub token_url: Url,
    /// Client authentication method.
    pub auth_method: AuthMethod,
    /// The OAuth2 client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: Secret,
    /// Requested scopes, sorted and deduplicated.
    pub scopes: Vec<String>,
    /// `audience` parameter.
    pub audience: Option<String>,
    /// Extra form parameters, sorted.
    pub params: Vec<(String, String)>,
    /// Lifetime assumed when the IdP states none.
    #[serde(with = "humantime_serde")]
    pub default_lifetime: Duration,
    /// One attempt's timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// The TLS settings of the endpoint's client (`clientConfig.tls`), by profile name: the
    /// refreshing node uses its own configuration's settings of that name, so no certificate
    /// or key ever travels with the spec. `None`: the shared client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_profile: Option<String>,
    /// `private_key_jwt`: the client key, by profile, for the same reason: the refreshing node
    /// signs with its own configuration's key of that profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_profile: Option<String>,
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}
