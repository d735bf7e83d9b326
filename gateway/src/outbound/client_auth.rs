//! How the gateway authenticates as a client at an IdP endpoint (token, introspection):
//!
//! - `client_secret_basic` and `client_secret_post` (RFC 6749 §2.3.1);
//! - `client_secret_jwt` and `private_key_jwt` (RFC 7523 §2.2 and §3, OpenID Connect Core §9): a
//!   JWT the client signs, HS256 under its secret or with its private key, whose `iss` and `sub`
//!   are the client id, `aud` the endpoint's URL, with a fresh `jti` and a short `exp`; a new one
//!   for every attempt, so that a retry is never a replay;
//! - `tls_client_auth` (RFC 8705 §2.1): the client certificate of the endpoint's TLS client
//!   proves the client; the form names the client id only.
//!
//! A private key never travels with a refresh spec: the spec names it by its profile (a digest),
//! and the node that refreshes signs with its own configuration's key of that profile.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngCore;
use serde_json::json;

use crate::secret::Secret;

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long an assertion is valid: enough for the request and for clocks a little apart, and
/// short, since it is a credential for as long as it is valid.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// A client's private key for `private_key_jwt`, with its algorithm and `kid`. `Debug` shows its
/// profile only.
#[derive(Clone)]
pub struct ClientKey {
    alg: Algorithm,
    kid: Option<String>,
    key: EncodingKey,
    profile: String,
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientKey({:?}, {})", self.alg, self.profile)
    }
}

/// Keys are the same when their profiles (digests of the PEM) and key ids are.
impl PartialEq for ClientKey {
    fn eq(&self, other: &Self) -> bool {
        self.profile == other.profile && self.kid == other.kid
    }
}

impl ClientKey {
    /// Loads a PEM private key: RSA (RS256), EC P-256 (ES256) or P-384 (ES384), Ed25519
    /// (EdDSA), PKCS#8 (or PKCS#1 for RSA). The error never quotes the key.
    pub fn from_pem(pem: &[u8], kid: Option<String>) -> Result<Self, String> {
        let probe = |key: &EncodingKey, alg| {
            jsonwebtoken::encode(&Header::new(alg), &json!({}), key).is_ok()
        };
        // Each family's parser once, then the first of its algorithms the key signs with (a
        // P-384 key cannot sign ES256).
        type Parse = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;
        let families: [(Parse, &[Algorithm]); 3] = [
            (EncodingKey::from_rsa_pem, &[Algorithm::RS256]),
            (
                EncodingKey::from_ec_pem,
                &[Algorithm::ES256, Algorithm::ES384],
            ),
            (EncodingKey::from_ed_pem, &[Algorithm::EdDSA]),
        ];
        let found = families.into_iter().find_map(|(parse, algorithms)| {
            let key = parse(pem).ok()?;
            let alg = algorithms.iter().copied().find(|a| probe(&key, *a))?;
            Some((key, alg))
        });
        let Some((key, alg)) = found else {
            return Err(
                "is not a PEM private key of RSA, EC P-256 or P-384, or Ed25519 (e.g. `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`)"
                    .into(),
            );
        };
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(b"tokengate client key\0")
            .chain_update(pem)
            .finalize();
        let profile = format!("key-{}", hex(&digest[..16]));
        Ok(Self {
            alg,
            kid,
            key,
            profile,
        })
    }

    /// The name a refresh spec gives it (a digest: it reveals nothing of the key).
    pub fn profile(&self) -> &str {
        &self.profile
    }

    /// Its signature algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// How a client authenticates at an endpoint, with what.
#[derive(Debug, Clone, Copy)]
pub enum ClientAuth<'a> {
    /// `client_secret_basic`.
    Basic { id: &'a str, secret: &'a Secret },
    /// `client_secret_post`.
    Post { id: &'a str, secret: &'a Secret },
    /// `client_secret_jwt`: an HS256 assertion under the secret.
    SecretJwt { id: &'a str, secret: &'a Secret },
    /// `private_key_jwt`: an assertion signed with the client's key.
    KeyJwt { id: &'a str, key: &'a ClientKey },
    /// `tls_client_auth`: the TLS client certificate; the form names the client.
    Tls { id: &'a str },
}

impl ClientAuth<'_> {
    /// Adds the client's authentication to a form POST to `endpoint` (the URL, which is the
    /// assertion's audience); the `Authorization` value it needs, if any. Fails only if a key
    /// cannot sign (checked when the configuration loads).
    pub fn apply(
        &self,
        endpoint: &str,
        form: &mut form_urlencoded::Serializer<'_, String>,
    ) -> Result<Option<String>, String> {
        match *self {
            Self::Basic { id, secret } => {
                return Ok(Some(basic_authorization(id, secret.expose())));
            }
            Self::Post { id, secret } => {
                form.append_pair("client_id", id);
                form.append_pair("client_secret", secret.expose());
            }
            Self::SecretJwt { id, secret } => {
                let key = EncodingKey::from_secret(secret.expose().as_bytes());
                let jwt = assertion(id, endpoint, Algorithm::HS256, None, &key)?;
                append_assertion(form, id, &jwt);
            }
            Self::KeyJwt { id, key } => {
                let jwt = assertion(id, endpoint, key.alg, key.kid.clone(), &key.key)?;
                append_assertion(form, id, &jwt);
            }
            Self::Tls { id } => {
                form.append_pair("client_id", id);
            }
        }
        Ok(None)
    }
}

fn append_assertion(form: &mut form_urlencoded::Serializer<'_, String>, id: &str, jwt: &str) {
    // `client_id` is optional beside an assertion (RFC 7523 §3.1); IdPs that route by it
    // (Keycloak, Okta) want it.
    form.append_pair("client_id", id);
    form.append_pair("client_assertion_type", ASSERTION_TYPE);
    form.append_pair("client_assertion", jwt);
}

/// A fresh client assertion (RFC 7523 §3): `iss` = `sub` = the client, `aud` = the endpoint,
/// issued now, valid for [`ASSERTION_LIFETIME`], with a random `jti`.
fn assertion(
    client_id: &str,
    audience: &str,
    alg: Algorithm,
    kid: Option<String>,
    key: &EncodingKey,
) -> Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut jti = [0u8; 16];
    rand::rng().fill_bytes(&mut jti);
    let claims = json!({
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": hex(&jti),
        "iat": now,
        "exp": now + ASSERTION_LIFETIME.as_secs(),
    });
    let mut header = Header::new(alg);
    header.kid = kid;
    jsonwebtoken::encode(&header, &claims, key)
        .map_err(|_| "cannot sign the client assertion with the configured key".to_owned())
}

/// RFC 6749 §2.3.1: id and secret are form-urlencoded (Appendix B) before being joined by `:`
/// and base64-encoded, so ids and secrets containing `:` or non-ASCII survive the trip.
pub fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        BASE64.encode(format!("{}:{}", enc(client_id), enc(client_secret)))
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;

    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_before_base64() {
        let h = basic_authorization("a:b c", "p+/%");
        let decoded = BASE64.decode(h.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "a%3Ab+c:p%2B%2F%25");
    }

    fn form_of(auth: ClientAuth<'_>) -> (Option<String>, Vec<(String, String)>) {
        let mut form = form_urlencoded::Serializer::new(String::new());
        let header = auth.apply("https://idp.example/token", &mut form).unwrap();
        let body = form.finish();
        let pairs = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        (header, pairs)
    }

    fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_secret_assertion_names_the_client_and_the_endpoint_and_is_never_the_same_twice() {
        let secret = Secret::new("a-secret-of-at-least-32-bytes-long!!");
        let auth = ClientAuth::SecretJwt {
            id: "svc",
            secret: &secret,
        };
        let (header, form) = form_of(auth);
        assert_eq!(header, None);
        assert_eq!(field(&form, "client_id"), Some("svc"));
        assert_eq!(field(&form, "client_assertion_type"), Some(ASSERTION_TYPE));
        assert_eq!(
            field(&form, "client_secret"),
            None,
            "the secret never travels"
        );
        let jwt = field(&form, "client_assertion").unwrap();
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&["https://idp.example/token"]);
        v.set_issuer(&["svc"]);
        v.sub = Some("svc".into());
        let claims = jsonwebtoken::decode::<Value>(
            jwt,
            &DecodingKey::from_secret(secret.expose().as_bytes()),
            &v,
        )
        .unwrap()
        .claims;
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert_eq!(lifetime, ASSERTION_LIFETIME.as_secs());
        let (_, again) = form_of(auth);
        let again = field(&again, "client_assertion").unwrap();
        let jti = |t: &str| {
            jsonwebtoken::dangerous::insecure_decode::<Value>(t)
                .unwrap()
                .claims["jti"]
                .clone()
        };
        assert_ne!(jti(jwt), jti(again), "a fresh jti for every attempt");
    }

    #[test]
    fn a_key_assertion_is_signed_by_the_key_with_its_kid() {
        let pem = p256_pem();
        let key = ClientKey::from_pem(pem.as_bytes(), Some("k1".into())).unwrap();
        assert_eq!(key.algorithm(), Algorithm::ES256);
        assert!(
            !format!("{key:?}").contains("PRIVATE"),
            "Debug shows no key"
        );
        let (_, form) = form_of(ClientAuth::KeyJwt {
            id: "svc",
            key: &key,
        });
        let jwt = field(&form, "client_assertion").unwrap();
        let header = jsonwebtoken::decode_header(jwt).unwrap();
        assert_eq!(
            (header.alg, header.kid.as_deref()),
            (Algorithm::ES256, Some("k1"))
        );
        // The same PEM is the same profile; another key is another.
        let same = ClientKey::from_pem(pem.as_bytes(), None).unwrap();
        assert_eq!(same.profile(), key.profile());
        let other = ClientKey::from_pem(p256_pem().as_bytes(), None).unwrap();
        assert_ne!(other.profile(), key.profile());
        assert!(ClientKey::from_pem(b"not a key", None).is_err());
    }

    #[test]
    fn tls_client_auth_names_the_client_only() {
        let (header, form) = form_of(ClientAuth::Tls { id: "svc" });
        assert_eq!(header, None);
        assert_eq!(form, [("client_id".to_owned(), "svc".to_owned())]);
    }

    fn p256_pem() -> String {
        use p256::pkcs8::EncodePrivateKey;
        p256::SecretKey::random(&mut rand_core::OsRng)
            .to_pkcs8_pem(Default::default())
            .unwrap()
            .to_string()
    }
}
