//! Sealing: entries leave a node only as AES-256-GCM ciphertext under the fleet key.
//!
//! The associated data binds a ciphertext to its cache key and to the metadata that decides
//! whether it is served (version, expiry, refresh time): a party that can write to the shared
//! store cannot move a token to another key or stretch its life without the seal breaking.

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::entry::{EntryMeta, EntrySecrets, EntrySecretsRef, TokenEntry, UnixMillis};
use super::key::{FleetKey, KeyRing, TokenKey};

/// An entry as a shared store holds it: clear metadata, sealed secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedEntry {
    /// Public metadata.
    pub meta: EntryMeta,
    /// Fingerprint of the fleet key that sealed `ciphertext`.
    pub key_id: String,
    /// 12-byte nonce followed by the AES-GCM ciphertext and tag (base64 when serialized).
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
    /// When an operator asked for a renewal now (`cachectl refresh`). Kept beside the sealed
    /// metadata rather than in it, since `refresh_at` is bound to the ciphertext; a new version
    /// of the entry clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marked_due: Option<UnixMillis>,
    /// Not renewed before this time: a renewal failed and the refresh leader backs off (kept
    /// beside the seal like `marked_due`; a new version of the entry, or an operator's
    /// `cachectl refresh`, clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<UnixMillis>,
}

impl SealedEntry {
    /// When the refresh leader should renew it: its own `refresh_at`, or earlier if an
    /// operator marked it due, or later while a failed renewal backs off.
    pub fn refresh_at(&self) -> UnixMillis {
        effective_refresh_at(self.meta.refresh_at, self.marked_due, self.retry_at)
    }
}

/// An entry's refresh time given an operator's mark and a failed renewal's backoff: the mark
/// brings it forward, the backoff puts it off.
pub fn effective_refresh_at(
    refresh_at: UnixMillis,
    marked_due: Option<UnixMillis>,
    retry_at: Option<UnixMillis>,
) -> UnixMillis {
    let at = marked_due.map_or(refresh_at, |m| m.min(refresh_at));
    retry_at.map_or(at, |r| r.max(at))
}

/// Bytes as standard base64 text, a third larger rather than the four times of a JSON array.
pub(crate) mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

/// Why an entry could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Sealed under a key this node does not have (a rotated-out or foreign fleet key).
    #[error("entry sealed under unknown fleet key {0}")]
    UnknownKey(String),
    /// Tampered with, truncated, or bound to another key.
    #[error("entry failed authentication")]
    Corrupt,
}

const NONCE_LEN: usize = 12;

fn aad(key: &TokenKey, meta: &EntryMeta) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + 24);
    aad.extend_from_slice(key.as_bytes());
    aad.extend_from_slice(&meta.version.to_be_bytes());
    aad.extend_from_slice(&meta.expires_at.to_be_bytes());
    aad.extend_from_slice(&meta.refresh_at.to_be_bytes());
    aad
}

/// Seals an entry for storage under `key`.
pub fn seal(fleet: &FleetKey, key: &TokenKey, entry: &TokenEntry) -> SealedEntry {
    let secrets = EntrySecretsRef {
        access_token: entry.access_token(),
        spec: &entry.spec,
    };
    let plaintext = serde_json::to_vec(&secrets).expect("secrets serialize");
    seal_payload(fleet, key, entry.meta.clone(), &plaintext)
}

/// Seals any payload under `key` beside its clear `meta` (the token entry's secrets, or another
/// cached result such as an introspection answer).
pub fn seal_payload(
    fleet: &FleetKey,
    key: &TokenKey,
    meta: EntryMeta,
    plaintext: &[u8],
) -> SealedEntry {
    let cipher = Aes256Gcm::new_from_slice(&fleet.seal).expect("32-byte key");
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad(key, &meta),
            },
        )
        .expect("AES-GCM encryption does not fail for in-memory buffers");
    let mut ciphertext = nonce.to_vec();
    ciphertext.extend_from_slice(&ct);
    SealedEntry {
        marked_due: None,
        retry_at: None,
        meta,
        key_id: fleet.id.clone(),
        ciphertext,
    }
}

/// Opens a sealed entry read back from a store, with whichever ring key sealed it.
pub fn unseal(
    ring: &KeyRing,
    key: &TokenKey,
    sealed: &SealedEntry,
) -> Result<TokenEntry, SealError> {
    let plaintext = unseal_payload(ring, key, sealed)?;
    let secrets: EntrySecrets =
        serde_json::from_slice(&plaintext).map_err(|_| SealError::Corrupt)?;
    TokenEntry::new(sealed.meta.clone(), secrets).map_err(|_| SealError::Corrupt)
}

/// Opens any sealed payload (see [`seal_payload`]).
pub fn unseal_payload(
    ring: &KeyRing,
    key: &TokenKey,
    sealed: &SealedEntry,
) -> Result<Vec<u8>, SealError> {
    let fleet = ring
        .by_id(&sealed.key_id)
        .ok_or_else(|| SealError::UnknownKey(sealed.key_id.clone()))?;
    if sealed.ciphertext.len() < NONCE_LEN {
        return Err(SealError::Corrupt);
    }
    let cipher = Aes256Gcm::new_from_slice(&fleet.seal).expect("32-byte key");
    let (nonce, ct) = sealed.ciphertext.split_at(NONCE_LEN);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: &aad(key, &sealed.meta),
            },
        )
        .map_err(|_| SealError::Corrupt)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::secret::Secret;
    use crate::token::{AuthMethod, TokenRequest};

    pub(crate) fn sample_entry(version: u64) -> TokenEntry {
        let meta = EntryMeta {
            client_id: "svc".into(),
            token_url: "http://idp/token".into(),
            scopes: vec!["read".into()],
            audience: None,
            granted_scope: None,
            issued_at: 1,
            expires_at: u64::MAX / 2,
            refresh_at: u64::MAX / 4,
            version,
            last_used: 1,
        };
        let spec = TokenRequest {
            token_url: "http://idp/token".parse().unwrap(),
            auth_method: AuthMethod::ClientSecretBasic,
            client_id: "svc".into(),
            client_secret: Secret::new("the-client-secret"),
            scopes: vec!["read".into()],
            audience: None,
            params: vec![],
            default_lifetime: Duration::from_secs(60),
            timeout: Duration::from_secs(1),
            retries: 0,
            tls_profile: None,
            key_profile: None,
        };
        let secrets = EntrySecrets {
            access_token: Secret::new("the-access-token"),
            spec,
        };
        TokenEntry::new(meta, secrets).unwrap()
    }

    #[test]
    fn ciphertext_hides_token_and_secret() {
        let fleet = FleetKey::random();
        let key = TokenKey::from_bytes([7; 32]);
        let sealed = seal(&fleet, &key, &sample_entry(1));
        let stored = serde_json::to_string(&sealed).unwrap();
        assert!(!stored.contains("the-access-token") && !stored.contains("the-client-secret"));
        let opened = unseal(&fleet.into(), &key, &sealed).unwrap();
        assert_eq!(opened.access_token(), "the-access-token");
    }

    #[test]
    fn sealed_entry_cannot_move_to_another_key_or_live_longer() {
        let ring = KeyRing::from(FleetKey::random());
        let key = TokenKey::from_bytes([7; 32]);
        let sealed = seal(ring.current(), &key, &sample_entry(1));
        let moved = unseal(&ring, &TokenKey::from_bytes([8; 32]), &sealed);
        assert!(matches!(moved, Err(SealError::Corrupt)));
        let mut stretched = sealed.clone();
        stretched.meta.expires_at += 1;
        assert!(matches!(
            unseal(&ring, &key, &stretched),
            Err(SealError::Corrupt)
        ));
        let stranger = KeyRing::from(FleetKey::random());
        assert!(matches!(
            unseal(&stranger, &key, &sealed),
            Err(SealError::UnknownKey(_))
        ));
    }

    #[test]
    fn entries_sealed_under_a_previous_key_stay_readable() {
        let (old, new) = (FleetKey::random(), FleetKey::random());
        let key = TokenKey::from_bytes([9; 32]);
        let sealed = seal(&old, &key, &sample_entry(1));
        assert!(unseal(&KeyRing::new(new.clone(), vec![old]), &key, &sealed).is_ok());
        assert!(unseal(&KeyRing::from(new), &key, &sealed).is_err());
    }
}
