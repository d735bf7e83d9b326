//! What a token is, before any cache: its key (derived under the fleet key), the entry and its
//! metadata, sealing for the shared store, the refresh spec that says how to obtain it again,
//! and the RFC 6749 grant that obtains it. The lifecycle built on these (the cache, single
//! flight, the refresher) is [`crate::lifecycle`]'s.

pub mod clock;
pub mod entry;
pub mod grant;
pub mod key;
pub mod request;
pub mod seal;

/// Entries a process keeps in memory at most, by default: a gateway's L1 and memory store, and a
/// cache node's state. A million tokens of 900 bytes is about 2 GiB.
pub const DEFAULT_MAX_ENTRIES: usize = 1_000_000;

pub use clock::Clock;
pub use entry::{EntryMeta, TokenEntry, UnixMillis, now_millis};
pub use key::{FleetKey, KeyDeriver, KeyRing, TokenKey};
pub use request::{AuthMethod, TokenRequest};
pub use seal::SealedEntry;

/// The `n` keys used least recently among `entries` (`(key, last use)`), for trimming a cache
/// to its bound: O(len) with a partial sort.
pub fn least_recently_used(
    entries: impl Iterator<Item = (TokenKey, UnixMillis)>,
    n: usize,
) -> Vec<TokenKey> {
    let mut all: Vec<(UnixMillis, TokenKey)> = entries.map(|(k, at)| (at, k)).collect();
    if n < all.len() {
        all.select_nth_unstable(n);
        all.truncate(n);
    }
    all.into_iter().map(|(_, k)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_are_picked() {
        let key = |n: u8| TokenKey::from_bytes([n; 32]);
        let entries = [(key(1), 50), (key(2), 10), (key(3), 40), (key(4), 20)];
        let mut lru = least_recently_used(entries.into_iter(), 2);
        lru.sort();
        assert_eq!(lru, [key(2), key(4)]);
        assert_eq!(least_recently_used(entries.into_iter(), 9).len(), 4);
        assert!(least_recently_used(entries.into_iter(), 0).is_empty());
    }
}
