//! Client secrets of the issuer: kept only as argon2id hashes (PHC strings), verified on a
//! bounded pool of blocking threads.
//!
//! argon2 is slow on purpose (tens of milliseconds, ~19 MiB each), so two things keep the token
//! endpoint fast and standing:
//! - a secret that verified once is remembered for [`VERIFIED_TTL`] under an HMAC of the client
//!   id and the secret (never the secret), so a client asking for tokens costs one hash per
//!   `VERIFIED_TTL`, not one per request;
//! - at most one verification per core runs at a time, and a caller waits at most
//!   [`QUEUE_TIMEOUT`] for its turn, so a flood of wrong secrets gets 503s instead of eating
//!   every core and all memory.
//!
//! Unknown clients are checked against a dummy hash, so timing does not tell which ids exist.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

use crate::token::{KeyDeriver, TokenKey, UnixMillis, now_millis};

/// How long a verified secret is trusted without hashing again.
pub const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Longest wait for a verification slot before answering 503.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// An argon2 hash in PHC string form. `Debug` does not print it.
///
/// A hash the gateway made of a secret the configuration references is salted afresh at each
/// load, so two loads of the same secret give different strings: such hashes carry a digest of
/// the secret keyed by this process's own random key, and compare by it. A reload that leaves
/// the secret alone then leaves the issuer alone (and its remembered verifications).
#[derive(Clone)]
pub struct SecretHash {
    phc: String,
    digest: Option<[u8; 32]>,
}

impl PartialEq for SecretHash {
    fn eq(&self, other: &Self) -> bool {
        match (&self.digest, &other.digest) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.phc == other.phc,
            _ => false,
        }
    }
}

impl Eq for SecretHash {}

/// The key of [`SecretHash`]'s digests: random, for this process only, so a digest is of no use
/// anywhere else.
fn digest_of(secret: &str) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut k);
        k
    });
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key size");
    mac.update(secret.as_bytes());
    mac.finalize().into_bytes().into()
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<argon2>)")
    }
}

impl SecretHash {
    /// Accepts a PHC string of an argon2 variant (`$argon2id$v=19$m=...`).
    pub fn parse(phc: &str) -> Result<Self, String> {
        let parsed = PasswordHash::new(phc)
            .map_err(|_| "is not a PHC hash string (`gateway hash-secret` prints one)")?;
        if !parsed.algorithm.as_str().starts_with("argon2") {
            return Err(format!(
                "must be an argon2 hash, not {}",
                parsed.algorithm.as_str()
            ));
        }
        Ok(Self {
            phc: phc.to_owned(),
            digest: None,
        })
    }

    /// Hashes `secret` with argon2id and OWASP's parameters (19 MiB, 2 passes) and a random salt.
    pub fn hash(secret: &str) -> Self {
        let salt = SaltString::generate(&mut rand_core::OsRng);
        let phc = Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .expect("argon2 with default parameters hashes any input")
            .to_string();
        Self { phc, digest: None }
    }

    /// [`Self::hash`] of a secret the configuration references, equal to every other hash of
    /// the same secret made by this process.
    pub fn of_reference(secret: &str) -> Self {
        Self {
            digest: Some(digest_of(secret)),
            ..Self::hash(secret)
        }
    }

    /// The PHC string (not secret, but not for logs either).
    pub fn as_str(&self) -> &str {
        &self.phc
    }

    /// Whether `secret` matches. Slow: call off the async threads.
    pub fn verify(&self, secret: &str) -> bool {
        PasswordHash::new(&self.phc).is_ok_and(|h| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &h)
                .is_ok()
        })
    }
}

/// Why a secret could not be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Every verification slot stayed taken for [`QUEUE_TIMEOUT`].
    Saturated,
}

/// Verifies client secrets with a cache of recent successes and a bound on concurrent hashing.
pub struct Verifier {
    keys: KeyDeriver,
    verified: papaya::HashMap<TokenKey, UnixMillis>,
    slots: Arc<Semaphore>,
    dummy: SecretHash,
}

impl Verifier {
    /// A verifier whose cache keys are derived by `keys`.
    pub fn new(keys: KeyDeriver) -> Self {
        let slots = std::thread::available_parallelism().map_or(1, usize::from);
        let mut dummy_secret = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut dummy_secret);
        Self {
            keys,
            verified: papaya::HashMap::new(),
            slots: Arc::new(Semaphore::new(slots)),
            dummy: SecretHash::hash(&String::from_utf8_lossy(&dummy_secret)),
        }
    }

    /// Whether `secret` is `client_id`'s secret; `hash` is `None` for an unknown client (which
    /// then costs a verification against a dummy hash and fails).
    pub async fn check(
        &self,
        client_id: &str,
        hash: Option<&SecretHash>,
        secret: &str,
    ) -> Result<bool, Busy> {
        let key = self.keys.key(client_id, secret);
        let now = now_millis();
        if hash.is_some()
            && self
                .verified
                .pin()
                .get(&key)
                .is_some_and(|&until| until > now)
        {
            return Ok(true);
        }
        let permit = tokio::time::timeout(QUEUE_TIMEOUT, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| Busy::Saturated)?
            .expect("the semaphore is never closed");
        let (known, hash) = match hash {
            Some(h) => (true, h.clone()),
            None => (false, self.dummy.clone()),
        };
        let secret = secret.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash.verify(&secret)
        })
        .await
        .unwrap_or(false)
            && known;
        if ok {
            let verified = self.verified.pin();
            verified.retain(|_, until| *until > now);
            verified.insert(key, now + VERIFIED_TTL.as_millis() as u64);
        }
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::FleetKey;

    #[test]
    fn hashes_verify_only_their_secret_and_parse_back() {
        let h = SecretHash::hash("correct horse");
        assert!(h.verify("correct horse"));
        assert!(!h.verify("correct horse "));
        assert_eq!(SecretHash::parse(h.as_str()).unwrap(), h);
        assert!(!format!("{h:?}").contains("argon2id$"));
        assert!(SecretHash::parse("plain-secret").is_err());
        let pbkdf = "$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo";
        assert_eq!(
            SecretHash::parse(pbkdf).unwrap_err(),
            "must be an argon2 hash, not pbkdf2-sha256"
        );
    }

    #[tokio::test]
    async fn verifier_remembers_successes_only_for_the_same_secret() {
        let keys = KeyDeriver::labelled(&FleetKey::random(), "test", "");
        let v = Verifier::new(keys);
        let h = SecretHash::hash("s3cret");
        assert_eq!(v.check("app", Some(&h), "s3cret").await, Ok(true));
        assert_eq!(v.check("app", Some(&h), "s3cret").await, Ok(true));
        assert_eq!(v.verified.len(), 1);
        assert_eq!(v.check("app", Some(&h), "wrong").await, Ok(false));
        assert_eq!(v.check("other", None, "s3cret").await, Ok(false));
        assert_eq!(v.verified.len(), 1);
    }

    #[test]
    fn a_referenced_secret_hashed_twice_compares_equal_and_another_does_not() {
        let (a, b) = (
            SecretHash::of_reference("s3cret"),
            SecretHash::of_reference("s3cret"),
        );
        assert_ne!(a.as_str(), b.as_str(), "salted afresh");
        assert_eq!(a, b);
        assert!(b.verify("s3cret"));
        assert_ne!(a, SecretHash::of_reference("s3cret2"));
        let given = SecretHash::parse(a.as_str()).unwrap();
        assert_ne!(a, given, "a given hash is not a referenced secret");
        assert_eq!(given, SecretHash::parse(a.as_str()).unwrap());
    }
}
