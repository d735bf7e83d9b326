//! Conversions between the cache's protobuf messages and the gateway's types.

use tokengate_proto::cache as pc;
use tonic::Status;

use crate::token::{EntryMeta, SealedEntry, TokenKey};

/// A 32-byte key.
pub fn key_from(bytes: &[u8]) -> Result<TokenKey, Status> {
    <[u8; 32]>::try_from(bytes)
        .map(TokenKey::from_bytes)
        .map_err(|_| Status::invalid_argument("a key is 32 bytes"))
}

/// The protobuf form of an entry.
pub fn sealed_to(e: &SealedEntry) -> pc::SealedEntry {
    let m = &e.meta;
    pc::SealedEntry {
        meta: Some(pc::EntryMeta {
            client_id: m.client_id.clone(),
            token_url: m.token_url.clone(),
            scopes: m.scopes.clone(),
            audience: m.audience.clone(),
            granted_scope: m.granted_scope.clone(),
            issued_at: m.issued_at,
            expires_at: m.expires_at,
            refresh_at: m.refresh_at,
            version: m.version,
            last_used: m.last_used,
        }),
        key_id: e.key_id.clone(),
        ciphertext: e.ciphertext.clone(),
        marked_due: e.marked_due,
        retry_at: e.retry_at,
    }
}

/// An entry from its protobuf form.
pub fn sealed_from(e: Option<pc::SealedEntry>) -> Result<SealedEntry, Status> {
    let e = e.ok_or_else(|| Status::invalid_argument("entry is required"))?;
    let m = e
        .meta
        .ok_or_else(|| Status::invalid_argument("entry.meta is required"))?;
    Ok(SealedEntry {
        meta: EntryMeta {
            client_id: m.client_id,
            token_url: m.token_url,
            scopes: m.scopes,
            audience: m.audience,
            granted_scope: m.granted_scope,
            issued_at: m.issued_at,
            expires_at: m.expires_at,
            refresh_at: m.refresh_at,
            version: m.version,
            last_used: m.last_used,
        },
        key_id: e.key_id,
        ciphertext: e.ciphertext,
        marked_due: e.marked_due,
        retry_at: e.retry_at,
    })
}
