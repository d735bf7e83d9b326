//! The token lifecycle: how a token is found, shared and kept fresh.
//!
//! - [`cache`]: the [`TokenCache`], the node's entry point. A lookup goes L1 (in process) →
//!   shared store → IdP, with single flight per node ([`flight`]) and a fill lease per fleet.
//! - [`refresher`]: the loop that, on the node holding the store's refresh lease, renews due
//!   entries before they expire, with a fence the store checks.
//! - `sync`: keeps the L1 in step with the store (pushed updates, resyncs, idle expiry, the
//!   node's entry bound).
//!
//! Everything here speaks to the store through [`crate::store::TokenStore`] and to the IdP
//! through [`crate::token::grant`]; it owns no socket of its own.

pub mod cache;
pub mod flight;
pub mod refresher;
mod sync;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use cache::TokenCache;

/// The refresher looks for due entries this often; a fraction of any realistic token lifetime.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Entries nobody used for this long are left to expire instead of being refreshed forever.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Refresh-leader lease lifetime: a dead leader is replaced within this time.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// The `refresh` section: the refresher's and the L1's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshConfig {
    /// How often due entries are looked for.
    pub interval: Duration,
    /// Entries unused this long are not refreshed.
    pub idle_timeout: Duration,
    /// Refresh-leader lease lifetime.
    pub lease_ttl: Duration,
    /// Entries a node keeps in memory at most (L1, and the memory store); past it the least
    /// recently used go first.
    pub max_entries: usize,
}
