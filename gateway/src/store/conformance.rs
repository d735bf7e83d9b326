//! The [`TokenStore`] contract as executable checks. Every backend's tests call [`run`] with a
//! factory returning a fresh, empty store (sharing no state with earlier calls).
//!
//! The suite uses real time (short TTLs and polling), because the backends it checks (Redis, a
//! Raft cluster) keep their own clocks.

use std::time::{Duration, Instant};

use super::{Lookup, NodeId, PutOutcome, StoreEvent, TokenStore};
use crate::token::{EntryMeta, SealedEntry, TokenKey, now_millis};

/// Runs every check against stores made by `make`.
pub async fn run<S: TokenStore>(make: impl AsyncFn() -> S) {
    run_with_operator(make, async |_| None).await;
}

/// [`run`] for a backend whose listing and steering calls need other rights than a gateway's
/// (the Raft cache service's operator role): `operator(&store)` gives a store on the same
/// backend with those rights, used for the checks of what only operators do.
pub async fn run_with_operator<S: TokenStore>(
    make: impl AsyncFn() -> S,
    operator: impl AsyncFn(&S) -> Option<S>,
) {
    missing_key_reads_as_none(&make().await).await;
    newest_version_wins(&make().await).await;
    expired_entries_are_never_returned(&make().await).await;
    stale_fence_cannot_write(&make().await).await;
    refresh_lease_is_exclusive_and_fences_grow(&make().await).await;
    fill_lease_is_exclusive_per_key(&make().await).await;
    a_lookup_finds_the_entry_or_takes_the_fill_lease(&make().await).await;
    a_postponed_renewal_is_not_due_until_then(&make().await).await;
    versioned_evict_spares_replacements(&make().await).await;
    due_entries_are_the_used_ones_past_refresh_at(&make().await).await;
    changes_are_announced(&make().await).await;
    claims_are_granted_once_until_they_lapse(&make().await).await;
    rates_pass_a_burst_then_one_per_interval(&make().await).await;
    let s = make().await;
    let op = operator(&s).await;
    listing_pages_through_live_entries_in_key_order(&s, op.as_ref().unwrap_or(&s)).await;
    let s = make().await;
    let op = operator(&s).await;
    marking_due_makes_an_entry_due_now(&s, op.as_ref().unwrap_or(&s)).await;
    the_lease_holder_is_visible(&make().await).await;
}

async fn listing_pages_through_live_entries_in_key_order<S: TokenStore>(s: &S, op: &S) {
    for n in [30, 32, 31, 34] {
        s.put(&key(n), entry(1, 60_000, 120_000), None)
            .await
            .unwrap();
    }
    s.put(&key(33), entry(1, 50, 100), None).await.unwrap();
    eventually("the short entry expires", async || {
        s.get(&key(33)).await.unwrap().is_none()
    })
    .await;
    let keys =
        |page: Vec<(TokenKey, SealedEntry)>| page.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(keys(op.list(None, 2).await.unwrap()), [key(30), key(31)]);
    assert_eq!(
        keys(op.list(Some(key(31)), 10).await.unwrap()),
        [key(32), key(34)]
    );
    assert!(op.list(Some(key(34)), 10).await.unwrap().is_empty());
}

async fn marking_due_makes_an_entry_due_now<S: TokenStore>(s: &S, op: &S) {
    let now = now_millis();
    let mut idle = entry(1, 60_000, 120_000);
    idle.meta.last_used = now - 600_000;
    s.put(&key(35), idle, None).await.unwrap();
    assert!(
        s.due_for_refresh(now_millis(), now - 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(op.mark_due(&key(35)).await.unwrap());
    assert!(!op.mark_due(&key(36)).await.unwrap(), "no such entry");
    let due = s
        .due_for_refresh(now_millis(), now - 60_000, 10)
        .await
        .unwrap();
    assert_eq!(due, [key(35)], "due now, and counted as used");
    let e = s.get(&key(35)).await.unwrap().unwrap();
    assert!(
        e.refresh_at() <= now_millis(),
        "a refresher reading it sees it due"
    );
    assert!(
        e.meta.refresh_at > now_millis(),
        "the sealed metadata is left as sealed"
    );
    // A result that is not renewable (an introspection answer) stays so.
    s.put(&key(37), entry(1, 60_000, 60_000), None)
        .await
        .unwrap();
    assert!(!op.mark_due(&key(37)).await.unwrap());
}

async fn the_lease_holder_is_visible(s: &impl TokenStore) {
    assert_eq!(s.refresh_lease().await.unwrap(), None);
    let a = NodeId::random();
    let fence = s
        .acquire_refresh_lease(&a, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let info = s.refresh_lease().await.unwrap().expect("held");
    assert_eq!((info.holder.as_str(), info.fence), (a.as_str(), fence.0));
    assert!(info.expires_in_ms > 20_000 && info.expires_in_ms <= 30_000);
    s.release_refresh_lease(&a).await.unwrap();
    assert_eq!(s.refresh_lease().await.unwrap(), None);
}

async fn claims_are_granted_once_until_they_lapse(s: &impl TokenStore) {
    let until = now_millis() + 300;
    assert!(s.claim_once(&key(40), until).await.unwrap());
    assert!(!s.claim_once(&key(40), until + 60_000).await.unwrap());
    assert!(
        s.claim_once(&key(41), until).await.unwrap(),
        "claims are per key"
    );
    eventually("the claim lapses", async || {
        s.claim_once(&key(40), now_millis() + 60_000).await.unwrap()
    })
    .await;
    assert!(!s.claim_once(&key(40), now_millis() + 60_000).await.unwrap());
}

async fn rates_pass_a_burst_then_one_per_interval(s: &impl TokenStore) {
    let minute = super::rate::RateLimit {
        interval_us: 60_000_000,
        burst: 2,
    };
    assert_eq!(s.take_rate(&key(50), minute).await.unwrap(), None);
    assert_eq!(s.take_rate(&key(50), minute).await.unwrap(), None);
    let wait = s
        .take_rate(&key(50), minute)
        .await
        .unwrap()
        .expect("over the burst");
    assert!(
        wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    assert_eq!(
        s.take_rate(&key(51), minute).await.unwrap(),
        None,
        "limits are per key"
    );
    // A short interval passes again once it has gone by.
    let quick = super::rate::RateLimit {
        interval_us: 100_000,
        burst: 1,
    };
    assert_eq!(s.take_rate(&key(52), quick).await.unwrap(), None);
    assert!(s.take_rate(&key(52), quick).await.unwrap().is_some());
    eventually("the interval goes by", async || {
        s.take_rate(&key(52), quick).await.unwrap().is_none()
    })
    .await;
}

/// A sealed entry with the given version and lifetime; content is opaque to stores.
pub fn entry(version: u64, refresh_in_ms: i64, expires_in_ms: i64) -> SealedEntry {
    let now = now_millis() as i64;
    SealedEntry {
        meta: EntryMeta {
            client_id: "conformance".into(),
            token_url: "http://idp.invalid/token".into(),
            scopes: vec!["read".into()],
            audience: None,
            granted_scope: None,
            issued_at: now as u64,
            expires_at: (now + expires_in_ms) as u64,
            refresh_at: (now + refresh_in_ms) as u64,
            version,
            last_used: now as u64,
        },
        key_id: "00000000".into(),
        ciphertext: vec![version as u8; 40],
        marked_due: None,
        retry_at: None,
    }
}

fn key(n: u8) -> TokenKey {
    TokenKey::from_bytes([n; 32])
}

async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn missing_key_reads_as_none(s: &impl TokenStore) {
    assert_eq!(s.get(&key(1)).await.unwrap(), None);
}

async fn newest_version_wins(s: &impl TokenStore) {
    let (k, e2, e1) = (key(2), entry(2, 60_000, 120_000), entry(1, 60_000, 120_000));
    assert_eq!(
        s.put(&k, e2.clone(), None).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(s.put(&k, e1, None).await.unwrap(), PutOutcome::Stale);
    assert_eq!(
        s.put(&k, e2.clone(), None).await.unwrap(),
        PutOutcome::Stale,
        "equal version is not newer"
    );
    assert_eq!(s.get(&k).await.unwrap(), Some(e2));
    let e3 = entry(3, 60_000, 120_000);
    assert_eq!(
        s.put(&k, e3.clone(), None).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(s.get(&k).await.unwrap(), Some(e3));
}

async fn expired_entries_are_never_returned(s: &impl TokenStore) {
    let k = key(3);
    assert_eq!(
        s.put(&k, entry(1, 100, 300), None).await.unwrap(),
        PutOutcome::Stored
    );
    assert!(s.get(&k).await.unwrap().is_some());
    eventually("the entry expires", async || {
        s.get(&k).await.unwrap().is_none()
    })
    .await;
    // An expired entry does not block a new one with a lower version either.
    assert_eq!(
        s.put(&k, entry(1, 60_000, 120_000), None).await.unwrap(),
        PutOutcome::Stored
    );
}

async fn stale_fence_cannot_write(s: &impl TokenStore) {
    let (a, b) = (NodeId::random(), NodeId::random());
    let ttl = Duration::from_millis(200);
    let fa = s
        .acquire_refresh_lease(&a, ttl)
        .await
        .unwrap()
        .expect("free lease is granted");
    eventually("b takes over a's lapsed lease", async || {
        s.acquire_refresh_lease(&b, ttl).await.unwrap().is_some()
    })
    .await;
    let fb = s
        .acquire_refresh_lease(&b, ttl)
        .await
        .unwrap()
        .expect("b holds it");
    assert!(fb > fa);
    let k = key(4);
    assert_eq!(
        s.put(&k, entry(5, 60_000, 120_000), Some(fa))
            .await
            .unwrap(),
        PutOutcome::Fenced
    );
    assert_eq!(s.get(&k).await.unwrap(), None);
    assert_eq!(
        s.put(&k, entry(5, 60_000, 120_000), Some(fb))
            .await
            .unwrap(),
        PutOutcome::Stored
    );
}

async fn refresh_lease_is_exclusive_and_fences_grow(s: &impl TokenStore) {
    let (a, b) = (NodeId::random(), NodeId::random());
    let ttl = Duration::from_secs(30);
    let f1 = s
        .acquire_refresh_lease(&a, ttl)
        .await
        .unwrap()
        .expect("granted");
    assert_eq!(
        s.acquire_refresh_lease(&b, ttl).await.unwrap(),
        None,
        "held by a"
    );
    assert_eq!(
        s.acquire_refresh_lease(&a, ttl).await.unwrap(),
        Some(f1),
        "renewal keeps the fence"
    );
    s.release_refresh_lease(&b).await.unwrap();
    assert_eq!(
        s.acquire_refresh_lease(&b, ttl).await.unwrap(),
        None,
        "b cannot release a's lease"
    );
    s.release_refresh_lease(&a).await.unwrap();
    let f2 = s
        .acquire_refresh_lease(&b, ttl)
        .await
        .unwrap()
        .expect("released lease is free");
    assert!(f2 > f1);
}

async fn fill_lease_is_exclusive_per_key(s: &impl TokenStore) {
    let (a, b) = (NodeId::random(), NodeId::random());
    // Long enough that the lease cannot lapse during the checks below on a loaded machine
    // (each is a replicated write on the Raft store); short enough to watch it lapse.
    let ttl = Duration::from_millis(1500);
    assert!(s.try_fill_lease(&key(5), &a, ttl).await.unwrap());
    assert!(!s.try_fill_lease(&key(5), &b, ttl).await.unwrap());
    assert!(
        s.try_fill_lease(&key(6), &b, ttl).await.unwrap(),
        "other keys are independent"
    );
    s.release_fill_lease(&key(5), &b).await.unwrap();
    assert!(
        !s.try_fill_lease(&key(5), &b, ttl).await.unwrap(),
        "only the holder releases"
    );
    s.release_fill_lease(&key(5), &a).await.unwrap();
    assert!(s.try_fill_lease(&key(5), &b, ttl).await.unwrap());
    eventually("b's fill lease lapses", async || {
        s.try_fill_lease(&key(5), &a, ttl).await.unwrap()
    })
    .await;
}

async fn a_lookup_finds_the_entry_or_takes_the_fill_lease(s: &impl TokenStore) {
    let (a, b) = (NodeId::random(), NodeId::random());
    let ttl = Duration::from_secs(30);
    assert_eq!(
        s.lookup(&key(50), &a, ttl).await.unwrap(),
        Lookup::Missing { lease: true }
    );
    assert_eq!(
        s.lookup(&key(50), &b, ttl).await.unwrap(),
        Lookup::Missing { lease: false },
        "one holder per key"
    );
    let e = entry(1, 60_000, 120_000);
    assert_eq!(
        s.put_filled(&key(50), e.clone(), &b).await.unwrap(),
        PutOutcome::Stored
    );
    assert!(
        !s.try_fill_lease(&key(50), &b, ttl).await.unwrap(),
        "a put by another holder leaves the lease alone"
    );
    assert_eq!(
        s.put_filled(&key(50), entry(2, 60_000, 120_000), &a)
            .await
            .unwrap(),
        PutOutcome::Stored
    );
    assert!(
        s.try_fill_lease(&key(50), &b, ttl).await.unwrap(),
        "the holder's put released its lease"
    );
    match s.lookup(&key(50), &a, ttl).await.unwrap() {
        Lookup::Found(found) => assert_eq!(found.meta.version, 2),
        other => panic!("expected the entry, got {other:?}"),
    }
}

async fn a_postponed_renewal_is_not_due_until_then(s: &impl TokenStore) {
    let now = now_millis();
    let k = key(51);
    s.put(&k, entry(1, -1_000, 120_000), None).await.unwrap();
    let due = async || {
        s.due_for_refresh(now_millis(), now - 60_000, 100)
            .await
            .unwrap()
    };
    assert!(due().await.contains(&k));
    let (a, b) = (NodeId::random(), NodeId::random());
    let ttl = Duration::from_secs(30);
    let old = s.acquire_refresh_lease(&a, ttl).await.unwrap().unwrap();
    s.release_refresh_lease(&a).await.unwrap();
    let current = s.acquire_refresh_lease(&b, ttl).await.unwrap().unwrap();
    s.postpone(&k, now + 60_000, Some(old)).await.unwrap();
    assert!(
        due().await.contains(&k),
        "a fenced-off leader cannot postpone"
    );
    s.postpone(&k, now + 60_000, Some(current)).await.unwrap();
    assert!(!due().await.contains(&k), "postponed");
    let stored = s.get(&k).await.unwrap().unwrap();
    assert_eq!(stored.retry_at, Some(now + 60_000));
    assert_eq!(stored.refresh_at(), now + 60_000);
    s.put(&k, entry(2, -1_000, 120_000), None).await.unwrap();
    assert!(due().await.contains(&k), "a new version starts afresh");
}

async fn versioned_evict_spares_replacements(s: &impl TokenStore) {
    let k = key(7);
    s.put(&k, entry(2, 60_000, 120_000), None).await.unwrap();
    assert!(!s.evict(&k, Some(1)).await.unwrap());
    assert!(s.get(&k).await.unwrap().is_some());
    assert!(s.evict(&k, Some(2)).await.unwrap());
    assert_eq!(s.get(&k).await.unwrap(), None);
    s.put(&k, entry(3, 60_000, 120_000), None).await.unwrap();
    assert!(s.evict(&k, None).await.unwrap());
    assert!(!s.evict(&k, None).await.unwrap());
}

async fn due_entries_are_the_used_ones_past_refresh_at(s: &impl TokenStore) {
    let now = now_millis();
    let mut idle = entry(1, -10, 60_000);
    idle.meta.last_used = now - 600_000;
    s.put(&key(8), entry(1, -20, 60_000), None).await.unwrap();
    s.put(&key(9), entry(1, 30_000, 60_000), None)
        .await
        .unwrap();
    s.put(&key(10), idle, None).await.unwrap();
    s.put(&key(11), entry(1, -10, 60_000), None).await.unwrap();
    let due = s
        .due_for_refresh(now_millis(), now - 60_000, 10)
        .await
        .unwrap();
    assert_eq!(due, [key(8), key(11)], "due and used, soonest first");
    assert_eq!(
        s.due_for_refresh(now_millis(), now - 60_000, 1)
            .await
            .unwrap(),
        [key(8)]
    );
    s.touch(&[(key(10), now_millis())]).await.unwrap();
    let due = s
        .due_for_refresh(now_millis(), now - 60_000, 10)
        .await
        .unwrap();
    assert!(due.contains(&key(10)), "a touched entry counts as used");
}

async fn changes_are_announced(s: &impl TokenStore) {
    let mut rx = s.subscribe();
    let k = key(12);
    s.put(&k, entry(4, 60_000, 120_000), None).await.unwrap();
    s.evict(&k, None).await.unwrap();
    // `Resync` may come at any time (the contract allows it); skip it.
    let next = async |rx: &mut tokio::sync::broadcast::Receiver<StoreEvent>| loop {
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        match event.expect("event within 5s").unwrap() {
            StoreEvent::Resync { .. } => continue,
            other => break other,
        }
    };
    assert_eq!(
        next(&mut rx).await,
        StoreEvent::Stored { key: k, version: 4 }
    );
    assert_eq!(next(&mut rx).await, StoreEvent::Evicted { key: k });
}
