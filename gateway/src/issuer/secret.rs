//! Client secrets of the issuer: kept only as argon2id hashes (PHC strings), verified on a
//! bounded pool of blocking threads.
//!
//! argon2 is slow on purpose (tens of milliseconds, ~19 MiB each), so two things keep the token
//! endpoint fast and standing:
//! - a secret that verified once is remembered for [`VERIFIED_TTL`] under an HMAC of the client
//!   id and the secret (never the secret), so a client asking for tokens costs one hash per
//!   `VERIFIED_TTL`, not one per request;
//! - a secret refused once is remembered for a minute the same way, so sending it again costs
//!   nothing;
//! - at most one verification per core runs at a time, taken in turn; a caller (an address, an
//!   IPv6 /64) may have at most [`PER_CALLER_IN_FLIGHT`] waiting or running, more are refused
//!   before anything is hashed, so a flood from some addresses delays another caller by a few
//!   verifications per flooding address at most, however many requests it sends; and a caller
//!   waits at most [`QUEUE_TIMEOUT`] for its turn (then 503).
//!
//! An unknown client id costs no hash: it is refused after the time a verification usually
//! takes (a moving average of the real ones), so its answer's timing tells nothing a hash would
//! not. Under load a known id also waits for its turn, which an unknown id does not.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

use crate::auth::limits::{DEFAULT_IPV6_SUBNET, caller_prefix};
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

/// [`SecretHash`]'s digest of `secret`: an HMAC under a key drawn at random once per process,
/// so a digest is of no use anywhere else.
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
    /// This caller already has [`PER_CALLER_IN_FLIGHT`] verifications waiting or running.
    Caller,
}

/// Verifications one caller (an address; an IPv6 /64) may have waiting or running at once.
/// Slots are handed out first come, first served, so with this bound a caller waits behind
/// at most this many verifications of each other caller, however many requests they send.
pub const PER_CALLER_IN_FLIGHT: u32 = 2;
/// How long a refused secret is remembered, so that sending it again costs no hash.
const REFUSED_TTL: Duration = Duration::from_secs(60);
/// Remembered verifications (each way) before expired ones are swept, and all forgotten if
/// none has expired: a flood of random secrets costs bounded memory.
const REMEMBERED_MAX: usize = 100_000;
/// What an unknown client id waits before its refusal until a verification has been timed.
const FIRST_TYPICAL: Duration = Duration::from_millis(25);

/// Verifies client secrets with a cache of recent successes and refusals, a bound on
/// concurrent hashing, and a bound per caller before any hash is computed.
pub struct Verifier {
    keys: KeyDeriver,
    verified: papaya::HashMap<TokenKey, UnixMillis>,
    refused: papaya::HashMap<TokenKey, UnixMillis>,
    in_flight: Mutex<HashMap<IpAddr, u32>>,
    slots: Arc<Semaphore>,
    /// A recent verification's duration (moving average, microseconds): how long an unknown
    /// client id's refusal takes, so that its timing tells nothing a hash would not.
    typical_us: AtomicU64,
}

/// A caller's place among the verifications in flight; gives it back when dropped.
struct InFlight<'a> {
    verifier: &'a Verifier,
    caller: IpAddr,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .verifier
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = in_flight.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.caller);
            }
        }
    }
}

impl Verifier {
    /// A verifier whose cache keys are derived by `keys`.
    pub fn new(keys: KeyDeriver) -> Self {
        let slots = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            keys,
            verified: papaya::HashMap::new(),
            refused: papaya::HashMap::new(),
            in_flight: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(slots)),
            typical_us: AtomicU64::new(FIRST_TYPICAL.as_micros() as u64),
        }
    }

    /// Whether `secret` is `client_id`'s secret, asked by `caller`; `hash` is `None` for an
    /// unknown client, which is refused after a verification's usual time without hashing.
    pub async fn check(
        &self,
        client_id: &str,
        hash: Option<&SecretHash>,
        secret: &str,
        caller: IpAddr,
    ) -> Result<bool, Busy> {
        let key = self.keys.key(client_id, secret);
        let now = now_millis();
        let live = |map: &papaya::HashMap<TokenKey, UnixMillis>| {
            map.pin().get(&key).is_some_and(|&until| until > now)
        };
        if hash.is_some() && live(&self.verified) {
            return Ok(true);
        }
        if live(&self.refused) {
            return Ok(false);
        }
        let _place = self.enter(caller_prefix(caller, DEFAULT_IPV6_SUBNET))?;
        let Some(hash) = hash else {
            tokio::time::sleep(Duration::from_micros(
                self.typical_us.load(Ordering::Relaxed),
            ))
            .await;
            remember(&self.refused, key, now + REFUSED_TTL.as_millis() as u64);
            return Ok(false);
        };
        let permit = tokio::time::timeout(QUEUE_TIMEOUT, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| Busy::Saturated)?
            .expect("the semaphore is never closed");
        let (hash, secret) = (hash.clone(), secret.to_owned());
        let started = std::time::Instant::now();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash.verify(&secret)
        })
        .await
        .unwrap_or(false);
        let took = started.elapsed().as_micros() as u64;
        let typical = self.typical_us.load(Ordering::Relaxed);
        self.typical_us
            .store(typical - typical / 8 + took / 8, Ordering::Relaxed);
        if ok {
            remember(&self.verified, key, now + VERIFIED_TTL.as_millis() as u64);
        } else {
            remember(&self.refused, key, now + REFUSED_TTL.as_millis() as u64);
        }
        Ok(ok)
    }

    /// A place for `caller` among the verifications in flight, if it has one left.
    fn enter(&self, caller: IpAddr) -> Result<InFlight<'_>, Busy> {
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = in_flight.entry(caller).or_default();
        if *n >= PER_CALLER_IN_FLIGHT {
            return Err(Busy::Caller);
        }
        *n += 1;
        Ok(InFlight {
            verifier: self,
            caller,
        })
    }
}

/// Remembers `key` until `until`, sweeping expired entries once the map is full (and starting
/// over if none had expired).
fn remember(map: &papaya::HashMap<TokenKey, UnixMillis>, key: TokenKey, until: UnixMillis) {
    let map = map.pin();
    if map.len() >= REMEMBERED_MAX {
        let now = now_millis();
        map.retain(|_, u| *u > now);
        if map.len() >= REMEMBERED_MAX {
            map.clear();
        }
    }
    map.insert(key, until);
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
        let caller: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(v.check("app", Some(&h), "s3cret", caller).await, Ok(true));
        assert_eq!(v.check("app", Some(&h), "s3cret", caller).await, Ok(true));
        assert_eq!(v.verified.len(), 1);
        assert_eq!(v.check("app", Some(&h), "wrong", caller).await, Ok(false));
        assert_eq!(v.check("other", None, "s3cret", caller).await, Ok(false));
        assert_eq!(v.verified.len(), 1);
        assert_eq!(v.refused.len(), 2, "both refusals remembered");
        assert!(v.in_flight.lock().unwrap().is_empty(), "places given back");
    }

    #[tokio::test]
    async fn a_caller_has_a_bounded_number_of_verifications_in_flight() {
        let v = Verifier::new(KeyDeriver::labelled(&FleetKey::random(), "test", ""));
        let (a, b): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let held: Vec<_> = (0..PER_CALLER_IN_FLIGHT)
            .map(|_| v.enter(a).unwrap())
            .collect();
        assert_eq!(v.enter(a).err(), Some(Busy::Caller));
        // Refused before anything is hashed, known id or not.
        let h = SecretHash::hash("s3cret");
        assert_eq!(
            v.check("app", Some(&h), "guess", a).await,
            Err(Busy::Caller)
        );
        assert_eq!(v.check("nobody", None, "guess", a).await, Err(Busy::Caller));
        assert_eq!(
            v.check("app", Some(&h), "s3cret", b).await,
            Ok(true),
            "others go on"
        );
        drop(held);
        assert_eq!(v.check("app", Some(&h), "s3cret", a).await, Ok(true));
        // One IPv6 /64 is one caller.
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        let held: Vec<_> = (0..PER_CALLER_IN_FLIGHT)
            .map(|_| v.enter(caller_prefix(b, DEFAULT_IPV6_SUBNET)).unwrap())
            .collect();
        assert_eq!(
            v.check("app", Some(&h), "guess", same_64).await,
            Err(Busy::Caller)
        );
        drop(held);
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
