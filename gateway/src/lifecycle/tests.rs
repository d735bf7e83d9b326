//! The token lifecycle's properties over time, on paused tokio time: a token's whole life (its
//! refresh window, the refresh lease lapsing and passing to another node, a fill lease whose
//! holder went silent, negative caching, idle expiry, the L1's bound, single flight) runs in
//! milliseconds of real time. The IdP is a script (these tests cannot wait on sockets: paused
//! time jumps ahead whenever the runtime is idle); the store is the memory store, sharing its
//! state between the nodes of a test.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::cache::Script;
use super::{RefreshConfig, TokenCache};
use crate::outbound::IdpError;
use crate::secret::Secret;
use crate::store::{MemoryStore, Store, TokenStore};
use crate::token::grant::IssuedToken;
use crate::token::{AuthMethod, Clock, FleetKey, TokenKey, TokenRequest, UnixMillis};

/// 2026-01-01, so that times in failures read as dates.
const START: UnixMillis = 1_767_225_600_000;
const LIFETIME: Duration = Duration::from_secs(100);
const NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// A scripted IdP: counts calls, answers after `latency` (of tokio time) with a token of
/// [`LIFETIME`], or with what `refuse` says.
struct Idp {
    calls: Arc<AtomicUsize>,
    script: Script,
}

impl Idp {
    fn answering(latency: Duration, refuse: Option<IdpError>) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let script: Script = Arc::new(move |_req, sent_at| {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            let refuse = refuse.clone();
            async move {
                tokio::time::sleep(latency).await;
                match refuse {
                    Some(e) => Err(e),
                    None => Ok(IssuedToken {
                        access_token: Secret::new(format!("token-{n}")),
                        scope: None,
                        issued_at: sent_at,
                        expires_in: Some(LIFETIME),
                    }),
                }
            }
            .boxed()
        });
        Self { calls, script }
    }

    fn ok() -> Self {
        Self::answering(Duration::from_millis(20), None)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn request() -> TokenRequest {
    TokenRequest {
        token_url: "https://idp.example/token".parse().unwrap(),
        auth_method: AuthMethod::ClientSecretBasic,
        client_id: "orders".into(),
        client_secret: Secret::new("s3cret"),
        scopes: vec![],
        audience: None,
        params: vec![],
        default_lifetime: Duration::from_secs(60),
        timeout: Duration::from_secs(5),
        retries: 0,
        tls_profile: None,
        key_profile: None,
    }
}

/// A node of a fleet sharing `store` under one fleet key.
fn node(fleet: &FleetKey, store: &MemoryStore, idp: &Idp, clock: Clock) -> Arc<TokenCache> {
    TokenCache::scripted(
        fleet.clone(),
        Store::Memory(store.clone()),
        clock,
        Arc::clone(&idp.script),
    )
}

/// One node on its own store, with a clock at [`START`] following tokio's.
fn single(idp: &Idp) -> (Arc<TokenCache>, Clock) {
    let clock = Clock::following_tokio(START);
    let store = MemoryStore::with_clock(1000, clock);
    (node(&FleetKey::random(), &store, idp, clock), clock)
}

fn refresh(idle_timeout: Duration, max_entries: usize) -> RefreshConfig {
    RefreshConfig {
        interval: Duration::from_secs(1),
        idle_timeout,
        lease_ttl: Duration::from_secs(10),
        max_entries,
    }
}

async fn get(cache: &Arc<TokenCache>, key: &TokenKey) -> Result<String, IdpError> {
    let entry = cache.get(key, request, NEGATIVE_TTL).await?;
    Ok(entry.access_token().to_owned())
}

/// Lets tokio time pass by `d` (timers fire in order; spawned tasks run between them).
async fn pass(d: Duration) {
    tokio::time::sleep(d).await;
}

/// Seconds since [`START`] by `clock`.
fn at(clock: &Clock) -> f64 {
    (clock.now() - START) as f64 / 1000.0
}

#[tokio::test(start_paused = true)]
async fn a_token_is_renewed_inside_its_refresh_window_not_before() {
    let idp = Idp::ok();
    let (cache, clock) = single(&idp);
    let key = request().key(cache.fleet());
    let stop = CancellationToken::new();
    cache.spawn_background(refresh(Duration::from_secs(900), 1000), stop.clone());
    assert_eq!(get(&cache, &key).await.unwrap(), "token-1");
    let first = cache.cached(&key, clock.now()).unwrap();
    let servable = first.meta.expires_at - first.meta.issued_at - 1000;
    // The window is 75-80 % of the servable life.
    pass(Duration::from_millis(servable * 74 / 100)).await;
    assert_eq!(idp.calls(), 1, "renewed too early, at {}s", at(&clock));
    pass(Duration::from_millis(servable * 8 / 100)).await;
    assert_eq!(idp.calls(), 2, "not renewed by {}s", at(&clock));
    let renewed = cache.cached(&key, clock.now()).unwrap();
    assert!(renewed.meta.version > first.meta.version);
    assert!(renewed.meta.expires_at > first.meta.expires_at);
    assert_eq!(
        get(&cache, &key).await.unwrap(),
        "token-2",
        "callers get the new token"
    );
    stop.cancel();
    cache.closed().await;
}

#[tokio::test(start_paused = true)]
async fn a_silent_leaders_lease_lapses_and_another_node_renews_in_time() {
    let idp = Idp::ok();
    let clock = Clock::following_tokio(START);
    let store = MemoryStore::with_clock(1000, clock);
    let fleet = FleetKey::random();
    let (a, b) = (
        node(&fleet, &store, &idp, clock),
        node(&fleet, &store, &idp, clock),
    );
    let key = request().key(&fleet);
    let cfg = refresh(Duration::from_secs(900), 1000);
    // A leads from the start; B's refresher starts a moment later and finds the lease taken.
    let a_refresher = tokio::spawn(super::refresher::run(
        Arc::clone(&a),
        cfg.clone(),
        CancellationToken::new(),
    ));
    pass(Duration::from_millis(100)).await;
    let stop_b = CancellationToken::new();
    b.spawn_background(cfg, stop_b.clone());
    get(&a, &key).await.unwrap();
    let holder = || async { store.refresh_lease().await.unwrap().map(|l| l.holder) };
    assert_eq!(holder().await.as_deref(), Some(a.node().as_str()));
    // A goes silent (killed: it never gives the lease back) at 70 s, before the entry is due.
    pass(Duration::from_secs(70)).await;
    a_refresher.abort();
    let fence_of_a = store.refresh_lease().await.unwrap().unwrap().fence;
    // Its lease, last renewed at 70 s, holds until 80 s: the entry, due from about 74 s, waits.
    pass(Duration::from_millis(9_500)).await;
    assert_eq!(idp.calls(), 1, "renewed at {}s with no leader", at(&clock));
    assert_eq!(holder().await.as_deref(), Some(a.node().as_str()));
    // Then B takes the lease, with a greater fence, and renews at once.
    pass(Duration::from_millis(2_000)).await;
    let lease = store.refresh_lease().await.unwrap().unwrap();
    assert_eq!(lease.holder, b.node().as_str());
    assert!(lease.fence > fence_of_a);
    assert_eq!(idp.calls(), 2, "not renewed by {}s", at(&clock));
    assert!(b.cached(&key, clock.now()).is_some());
    stop_b.cancel();
    b.closed().await;
}

#[tokio::test(start_paused = true)]
async fn a_fill_whose_lease_holder_goes_silent_is_taken_over_when_the_lease_lapses() {
    // A's IdP never answers in time; B waits for A's fill, then takes the fill lease over.
    let stuck = Idp::answering(Duration::from_secs(3600), None);
    let idp = Idp::ok();
    let clock = Clock::following_tokio(START);
    let store = MemoryStore::with_clock(1000, clock);
    let fleet = FleetKey::random();
    let a = node(&fleet, &store, &stuck, clock);
    let b = node(&fleet, &store, &idp, clock);
    let key = request().key(&fleet);
    let a_fill = tokio::spawn({
        let a = Arc::clone(&a);
        async move { get(&a, &key).await }
    });
    // B asks 5 s later. Its own patience would last 10 s; A's lease lapses 5 s into it.
    pass(Duration::from_secs(5)).await;
    let started = tokio::time::Instant::now();
    assert_eq!(get(&b, &key).await.unwrap(), "token-1");
    let waited = started.elapsed();
    assert_eq!((stuck.calls(), idp.calls()), (1, 1));
    // B looks every 100 ms, and fetches as soon as the lease is its own.
    assert!(
        waited >= Duration::from_millis(4_900) && waited <= Duration::from_millis(5_200),
        "B fetched after {waited:?}"
    );
    a_fill.abort();
}

#[tokio::test(start_paused = true)]
async fn invalid_client_is_remembered_for_the_negative_ttl_then_asked_again() {
    let idp = Idp::answering(Duration::from_millis(20), Some(IdpError::InvalidClient));
    let (cache, clock) = single(&idp);
    let key = request().key(cache.fleet());
    assert!(matches!(
        get(&cache, &key).await,
        Err(IdpError::InvalidClient)
    ));
    for _ in 0..5 {
        pass(Duration::from_secs(1)).await;
        assert!(matches!(
            get(&cache, &key).await,
            Err(IdpError::InvalidClient)
        ));
        assert!(cache.miss_is_free(&key, clock.now()));
    }
    assert_eq!(idp.calls(), 1, "remembered, not asked again");
    pass(NEGATIVE_TTL).await;
    assert!(!cache.miss_is_free(&key, clock.now()));
    assert!(matches!(
        get(&cache, &key).await,
        Err(IdpError::InvalidClient)
    ));
    assert_eq!(idp.calls(), 2, "asked again once the answer lapsed");
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_on_one_key_make_one_idp_call() {
    let idp = Idp::answering(Duration::from_secs(2), None);
    let (cache, _) = single(&idp);
    let key = request().key(cache.fleet());
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { get(&cache, &key).await })
        })
        .collect();
    for c in callers {
        assert_eq!(c.await.unwrap().unwrap(), "token-1");
    }
    assert_eq!(idp.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_entry_idle_past_the_idle_timeout_is_left_to_expire() {
    let idp = Idp::ok();
    let (cache, clock) = single(&idp);
    let key = request().key(cache.fleet());
    let stop = CancellationToken::new();
    cache.spawn_background(refresh(Duration::from_secs(60), 1000), stop.clone());
    get(&cache, &key).await.unwrap();
    // Never used again: by its refresh time (75-80 s) it has been idle for over a minute.
    pass(Duration::from_secs(98)).await;
    assert_eq!(idp.calls(), 1, "an idle entry was renewed");
    pass(Duration::from_secs(3)).await;
    assert!(cache.cached(&key, clock.now()).is_none(), "expired");
    assert!(cache.store().get(&key).await.unwrap().is_none());
    // A caller coming back gets a new token at once.
    assert_eq!(get(&cache, &key).await.unwrap(), "token-2");
    stop.cancel();
    cache.closed().await;
}

#[tokio::test(start_paused = true)]
async fn an_entry_in_use_keeps_being_renewed() {
    let idp = Idp::ok();
    let (cache, clock) = single(&idp);
    let key = request().key(cache.fleet());
    let stop = CancellationToken::new();
    cache.spawn_background(refresh(Duration::from_secs(60), 1000), stop.clone());
    // Used every 10 s for five lifetimes: renewed each lifetime, never fetched by a caller.
    for _ in 0..50 {
        get(&cache, &key).await.unwrap();
        pass(Duration::from_secs(10)).await;
    }
    assert!(cache.cached(&key, clock.now()).is_some());
    let calls = idp.calls();
    assert!(
        (6..=8).contains(&calls),
        "{calls} IdP calls in five lifetimes"
    );
    stop.cancel();
    cache.closed().await;
}

#[tokio::test(start_paused = true)]
async fn the_l1_keeps_its_bound_dropping_the_least_recently_used() {
    let idp = Idp::ok();
    let (cache, clock) = single(&idp);
    let stop = CancellationToken::new();
    cache.spawn_background(refresh(Duration::from_secs(900), 3), stop.clone());
    let keys: Vec<TokenKey> = (0..5)
        .map(|i| {
            let mut r = request();
            r.client_id = format!("client-{i}");
            r.key(cache.fleet())
        })
        .collect();
    for (i, key) in keys.iter().enumerate() {
        let mut r = request();
        r.client_id = format!("client-{i}");
        cache.get(key, || r, NEGATIVE_TTL).await.unwrap();
        pass(Duration::from_millis(10)).await;
    }
    // Uses since: 0 and 1 are the oldest.
    pass(Duration::from_secs(1)).await;
    let held: Vec<bool> = keys
        .iter()
        .map(|k| cache.cached(k, clock.now()).is_some())
        .collect();
    assert_eq!(held, [false, false, true, true, true]);
    stop.cancel();
    cache.closed().await;
}
