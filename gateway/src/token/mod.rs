//! Tokens: key derivation, entries, sealing, the IdP client, the cache with its single flight,
//! and the refresher. DESIGN.md's "token lifecycle" lives here.

pub mod cache;
pub mod entry;
pub mod flight;
pub mod idp;
pub mod key;
pub mod refresher;
pub mod request;
pub mod seal;
mod sync;

pub use cache::TokenCache;
pub use entry::{EntryMeta, TokenEntry, UnixMillis, now_millis};
pub use idp::{BreakerConfig, IdpClient, IdpError};
pub use key::{FleetKey, KeyDeriver, KeyRing, TokenKey};
pub use request::{AuthMethod, TokenRequest};
pub use seal::SealedEntry;
