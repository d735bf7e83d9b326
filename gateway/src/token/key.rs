//! Cache keys and the fleet key ring.
//!
//! A cached token is found by `HMAC-SHA256(fleet key, token URL, scopes, audience, params,
//! client id, secret)`. The secret is part of the key so that a caller presenting the right
//! client id with a wrong secret can never land on the token cached for the right one, and the
//! token URL is part of it so that credentials valid at one IdP are never reused at another.
//! Because the key is an HMAC under a fleet secret, a key seen in Redis, a log line or a
//! `cachectl` listing reveals nothing about the credentials behind it.
//!
//! Fields are length-prefixed before hashing, so no choice of values can make two different
//! requests hash the same input (a plain `a|b` join could: `a|b` + `c` vs `a` + `b|c`).

use std::fmt;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::TokenRequest;
use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// Identifies one cached credential fleet-wide. 32 bytes of HMAC output.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a key from raw bytes (as read back from a store).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses [`TokenKey::to_hex`]'s output.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }

    /// Full lower-case hex, as used in store keys.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Shows a short id (first 8 bytes): enough to tell entries apart in logs and listings.
/// Keys travel as hex text (Raft log entries, snapshots).
impl serde::Serialize for TokenKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for TokenKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let hex = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_hex(&hex).ok_or_else(|| serde::de::Error::custom("not a 64-digit hex key"))
    }
}

impl fmt::Display for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey({self})")
    }
}

/// Key material derived from one fleet key.
#[derive(Clone)]
pub struct FleetKey {
    /// Public fingerprint of the key, stored beside sealed data.
    pub(crate) id: String,
    /// Derives [`TokenKey`]s.
    derive: [u8; 32],
    /// AES-256-GCM key for sealing.
    pub(crate) seal: [u8; 32],
}

impl FleetKey {
    /// Derives the sub-keys from configured key material with HKDF-SHA256, so the same secret
    /// never serves two purposes directly.
    pub fn from_secret(secret: &Secret) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"tokengate fleet key v1"), secret.expose().as_bytes());
        let mut derive = [0u8; 32];
        let mut seal = [0u8; 32];
        let mut id = [0u8; 4];
        hk.expand(b"token-key", &mut derive)
            .expect("32 bytes is a valid HKDF length");
        hk.expand(b"seal", &mut seal)
            .expect("32 bytes is a valid HKDF length");
        hk.expand(b"key-id", &mut id)
            .expect("4 bytes is a valid HKDF length");
        let id = id.iter().map(|b| format!("{b:02x}")).collect();
        Self { id, derive, seal }
    }

    /// A random key, for a node-local memory store that shares nothing.
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self::from_secret(&Secret::new(hex))
    }

    /// The key's public fingerprint.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FleetKey({})", self.id)
    }
}

/// The fleet's keys: the current one seals new entries and derives cache keys; previous ones
/// (being rotated out) still open entries sealed under them, and their cache keys are looked up
/// on a miss so that a rotation does not cost an IdP request per credential.
#[derive(Clone, Debug)]
pub struct KeyRing {
    current: FleetKey,
    previous: Vec<FleetKey>,
}

impl KeyRing {
    /// A ring of `current` and the keys being rotated out.
    pub fn new(current: FleetKey, previous: Vec<FleetKey>) -> Self {
        Self { current, previous }
    }

    /// The key new entries are sealed and found under.
    pub fn current(&self) -> &FleetKey {
        &self.current
    }

    /// Keys being rotated out, newest first.
    pub fn previous(&self) -> &[FleetKey] {
        &self.previous
    }

    /// The key with this fingerprint, if the ring holds it.
    pub fn by_id(&self, id: &str) -> Option<&FleetKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }
}

impl From<FleetKey> for KeyRing {
    fn from(current: FleetKey) -> Self {
        Self::new(current, Vec::new())
    }
}

/// Derives keys for one token endpoint configuration. The endpoint-wide fields are absorbed
/// once, at configuration load; a request only adds its client id and secret (the hot path
/// clones a prepared HMAC state instead of rehashing the configuration).
#[derive(Clone)]
pub struct KeyDeriver {
    prefix: HmacSha256,
}

impl KeyDeriver {
    /// Prepares a deriver for an endpoint configuration.
    pub fn new(
        fleet: &FleetKey,
        token_url: &url::Url,
        scopes: &[String],
        audience: Option<&str>,
        params: &[(String, String)],
    ) -> Self {
        let mut mac = HmacSha256::new_from_slice(&fleet.derive).expect("HMAC takes any key size");
        field(&mut mac, b"tokengate key v1");
        field(&mut mac, token_url.as_str().as_bytes());
        field(&mut mac, &(scopes.len() as u64).to_be_bytes());
        scopes.iter().for_each(|s| field(&mut mac, s.as_bytes()));
        match audience {
            Some(a) => {
                field(&mut mac, b"1");
                field(&mut mac, a.as_bytes());
            }
            None => field(&mut mac, b"0"),
        }
        field(&mut mac, &(params.len() as u64).to_be_bytes());
        for (k, v) in params {
            field(&mut mac, k.as_bytes());
            field(&mut mac, v.as_bytes());
        }
        Self { prefix: mac }
    }

    /// Makes the endpoint's TLS profile part of every key: a token obtained with one client
    /// certificate is never served to a route that presents another (an IdP may bind tokens
    /// to the certificate, RFC 8705). Without a profile, keys are as they always were.
    pub fn with_tls_profile(mut self, profile: Option<&str>) -> Self {
        if let Some(p) = profile {
            field(&mut self.prefix, b"tls profile");
            field(&mut self.prefix, p.as_bytes());
        }
        self
    }

    /// Prepares a deriver for the results of one token introspection endpoint (RFC 7662), as
    /// seen by the client `client_id` (endpoints may answer differently per resource server).
    /// Its own label keeps these keys apart from every token key.
    pub fn introspection(fleet: &FleetKey, url: &url::Url, client_id: &str) -> Self {
        let mut mac = HmacSha256::new_from_slice(&fleet.derive).expect("HMAC takes any key size");
        field(&mut mac, b"tokengate introspection v1");
        field(&mut mac, url.as_str().as_bytes());
        field(&mut mac, client_id.as_bytes());
        Self { prefix: mac }
    }

    /// Prepares a deriver for another use of keyed hashes (`label` names it; `context` scopes
    /// it, e.g. to one issuer), kept apart from every token and introspection key.
    pub fn labelled(fleet: &FleetKey, label: &'static str, context: &str) -> Self {
        let mut mac = HmacSha256::new_from_slice(&fleet.derive).expect("HMAC takes any key size");
        field(&mut mac, label.as_bytes());
        field(&mut mac, context.as_bytes());
        Self { prefix: mac }
    }

    /// The key of one introspected token: the token itself never appears anywhere a key does.
    pub fn token(&self, token: &str) -> TokenKey {
        let mut mac = self.prefix.clone();
        field(&mut mac, token.as_bytes());
        TokenKey(mac.finalize().into_bytes().into())
    }

    /// The key for one client's credentials at this endpoint.
    pub fn key(&self, client_id: &str, client_secret: &str) -> TokenKey {
        let mut mac = self.prefix.clone();
        field(&mut mac, client_id.as_bytes());
        field(&mut mac, client_secret.as_bytes());
        TokenKey(mac.finalize().into_bytes().into())
    }
}

impl TokenRequest {
    /// The cache key of this request under a fleet key.
    pub fn key(&self, fleet: &FleetKey) -> TokenKey {
        KeyDeriver::new(
            fleet,
            &self.token_url,
            &self.scopes,
            self.audience.as_deref(),
            &self.params,
        )
        .key(&self.client_id, self.client_secret.expose())
    }
}

fn field(mac: &mut HmacSha256, bytes: &[u8]) {
    mac.update(&(bytes.len() as u64).to_be_bytes());
    mac.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deriver(fleet: &FleetKey, url: &str) -> KeyDeriver {
        KeyDeriver::new(
            fleet,
            &url.parse().unwrap(),
            &["read".into()],
            Some("aud"),
            &[],
        )
    }

    #[test]
    fn secret_and_token_url_are_part_of_the_key() {
        let fleet = FleetKey::random();
        let a = deriver(&fleet, "http://idp-a/token");
        let b = deriver(&fleet, "http://idp-b/token");
        assert_eq!(a.key("id", "s1"), a.key("id", "s1"));
        assert_ne!(a.key("id", "s1"), a.key("id", "s2"));
        assert_ne!(a.key("id", "s1"), b.key("id", "s1"));
    }

    #[test]
    fn hex_round_trips() {
        let key = deriver(&FleetKey::random(), "http://i/t").key("c", "s");
        assert_eq!(TokenKey::from_hex(&key.to_hex()), Some(key));
        assert_eq!(TokenKey::from_hex("zz"), None);
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let fleet = FleetKey::random();
        let d = deriver(&fleet, "http://idp/token");
        assert_ne!(d.key("ab", "c"), d.key("a", "bc"));
    }

    #[test]
    fn same_fleet_secret_gives_same_keys_on_every_node() {
        let s = Secret::new("x".repeat(32));
        let (n1, n2) = (FleetKey::from_secret(&s), FleetKey::from_secret(&s));
        assert_eq!(n1.id(), n2.id());
        assert_eq!(
            deriver(&n1, "http://i/t").key("c", "s"),
            deriver(&n2, "http://i/t").key("c", "s")
        );
        assert_ne!(
            deriver(&FleetKey::random(), "http://i/t").key("c", "s"),
            deriver(&n1, "http://i/t").key("c", "s")
        );
    }
}
