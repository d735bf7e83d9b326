//! The token lifecycle seen from outside: refresh ahead of expiry, IdP outages, upstream 401s.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testkit::{EchoUpstream, FakeIdp, IdpMode};

use crate::support::{GW_SECRET, Node, basic, client, echo, eventually, get_as, header, two_modes};

/// Refresh rounds every 100 ms so that seconds-long token lifetimes are refreshed in time.
const FAST_REFRESH: &str = "refresh: { interval: 100ms, leaseTtl: 6s }\n";

async fn start(lifetime: Duration) -> (FakeIdp, EchoUpstream, Node) {
    start_with(lifetime, "").await
}

/// [`start`] with `cc_extra` added to the application-level middleware.
async fn start_with(lifetime: Duration, cc_extra: &str) -> (FakeIdp, EchoUpstream, Node) {
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    idp.register("gw id:+/%", GW_SECRET);
    idp.register("svc-a", "s3cret");
    idp.set_token_lifetime(lifetime);
    let yaml = format!(
        "{FAST_REFRESH}{}",
        two_modes(&idp.token_url(), &upstream.url(), cc_extra)
    );
    let node = Node::start(&yaml, &[("GW_SECRET", GW_SECRET)]);
    (idp, upstream, node)
}

/// The bearer token the upstream received for a first `GET /app` with `auth`.
async fn token_of_first_call(http: &reqwest::Client, node: &Node, auth: &str) -> String {
    let first = echo(
        http.get(node.url("/app"))
            .header("authorization", auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    header(&first, "authorization")[0]
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned()
}

fn exp_of(token: &str) -> u64 {
    let claims = chaos_claims(token);
    claims["exp"].as_u64().unwrap()
}

fn chaos_claims(token: &str) -> serde_json::Value {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.validate_aud = false;
    v.validate_exp = false;
    jsonwebtoken::decode::<serde_json::Value>(token, &FakeIdp::decoding_key(), &v)
        .unwrap()
        .claims
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_ahead_of_expiry_so_no_request_waits_on_the_idp() {
    // 8 s tokens are servable for 7 s and refreshed at 75-80 % of that (5.25-5.6 s); with a 1 s
    // IdP the new token is in place by 6.6 s, before the old one stops being served.
    let (idp, _upstream, node) = start(Duration::from_secs(8)).await;
    let http = client();
    let warm = get_as(&http, node.url("/app"), "svc-a", "s3cret").await;
    assert_eq!(warm.status(), 200);
    // From now on an IdP round trip takes 1 s, and callers give up after 700 ms: any request
    // that had to wait for the IdP fails.
    idp.set_latency(Duration::from_millis(1000));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let started = Instant::now();
    let mut tokens = std::collections::BTreeSet::new();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(18) {
        let resp = impatient
            .get(node.url("/app"))
            .header("authorization", basic("svc-a", "s3cret"))
            .send()
            .await;
        let resp =
            resp.unwrap_or_else(|e| panic!("request {served} waited on the IdP or failed: {e}"));
        let e = echo(resp).await;
        let token = header(&e, "authorization")[0]
            .strip_prefix("Bearer ")
            .unwrap()
            .to_owned();
        assert!(
            exp_of(&token) >= now_secs(),
            "an expired token reached the upstream"
        );
        tokens.insert(token);
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served > 50);
    assert!(
        tokens.len() >= 3,
        "10 s of 5 s tokens needs at least 3 tokens, saw {}",
        tokens.len()
    );
    assert!(
        idp.issued("svc-a") <= tokens.len() as u64 + 1,
        "one refresh per lifetime, not a stampede"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_outage_serves_valid_tokens_then_answers_503_with_retry_after() {
    let (idp, _upstream, node) = start(Duration::from_secs(3)).await;
    let http = client();
    let get = || http.get(node.url("/internal/x")).send();
    assert_eq!(get().await.unwrap().status(), 200);
    idp.set_mode(IdpMode::Unreachable);
    // The cached token is still valid: callers do not notice the outage.
    assert_eq!(get().await.unwrap().status(), 200);
    let mut unavailable = None;
    eventually(
        "the cached token runs out",
        Duration::from_secs(8),
        async || {
            let resp = get().await.unwrap();
            if resp.status() == 503 {
                unavailable = Some(resp);
                return true;
            }
            assert_eq!(
                resp.status(),
                200,
                "only 200 (valid token) or 503 (none left)"
            );
            false
        },
    )
    .await;
    let resp = unavailable.unwrap();
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"],
        "temporarily_unavailable"
    );
    idp.set_mode(IdpMode::Healthy);
    eventually(
        "service recovers with the IdP",
        Duration::from_secs(15),
        async || get().await.unwrap().status() == 200,
    )
    .await;
}

/// `method /app/orders` with a 5-byte body, with the token of a `GET /app` just before refused by
/// the upstream (old enough to be evicted): that token and the answer's status. A 200 must
/// come from a replay with a fresh token and the same body.
async fn refused_then(
    idp: &FakeIdp,
    upstream: &EchoUpstream,
    node: &Node,
    method: reqwest::Method,
) -> (String, u16) {
    let http = client();
    let auth = basic("svc-a", "s3cret");
    let revoked = token_of_first_call(&http, node, &auth).await;
    upstream.reject_token(&revoked);
    let issued = idp.issued("svc-a");
    let resp = http
        .request(method.clone(), node.url("/app/orders"))
        .header("authorization", &auth)
        .body("hello")
        .send()
        .await
        .unwrap();
    let seen = upstream.seen();
    let last = seen.last().unwrap();
    if resp.status() != 200 {
        assert_eq!(last.bearer(), Some(revoked.as_str()));
    } else {
        assert_eq!(seen[seen.len() - 2].bearer(), Some(revoked.as_str()));
        assert_ne!(last.bearer(), Some(revoked.as_str()));
        assert_eq!(
            (last.method.as_str(), last.body_len),
            (method.as_str(), 5),
            "the body is replayed"
        );
        assert_eq!(idp.issued("svc-a"), issued + 1);
    }
    (revoked, resp.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_401_evicts_the_token_and_retries_once_with_a_fresh_one() {
    let (idp, upstream, node) =
        start_with(Duration::from_secs(300), "rejectedTokenMinAge: 0s").await;
    let http = client();
    let auth = basic("svc-a", "s3cret");
    let (_, status) = refused_then(&idp, &upstream, &node, reqwest::Method::PUT).await;
    assert_eq!(status, 200);
    assert_eq!(
        upstream.seen().len(),
        3,
        "first call, rejected attempt, retry"
    );

    // A POST is not idempotent (RFC 9110 §9.2.2): the upstream may have acted on it before it
    // answered 401, so it is not sent twice. Its token is evicted all the same, and the next
    // request carries a fresh one without a 401 first.
    let (second, status) = refused_then(&idp, &upstream, &node, reqwest::Method::POST).await;
    assert_eq!(status, 401, "the upstream's 401 is passed on");
    assert_eq!(upstream.seen().len(), 5, "the POST was sent once");
    let resp = http
        .post(node.url("/app/orders"))
        .header("authorization", &auth)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 6, "the next POST goes once, with a fresh token");
    assert_ne!(seen[5].bearer(), Some(second.as_str()));
    assert_eq!(idp.issued("svc-a"), 3);

    // An upstream that rejects every token gets exactly one retry per request, not a loop.
    upstream.reject_all(true);
    let (seen_before, issued_before) = (upstream.seen().len(), idp.issued("svc-a"));
    let resp = http
        .get(node.url("/app/orders"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        401,
        "the upstream's answer after the one retry is passed on"
    );
    assert_eq!(upstream.seen().len(), seen_before + 2);
    assert_eq!(idp.issued("svc-a"), issued_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_opts_in_replays_a_post_after_an_upstream_401() {
    let (idp, upstream, node) = start_with(
        Duration::from_secs(300),
        "rejectedTokenMinAge: 0s\n      replayNonIdempotent: true",
    )
    .await;
    let (_, status) = refused_then(&idp, &upstream, &node, reqwest::Method::POST).await;
    assert_eq!(status, 200);
    assert_eq!(
        upstream.seen().len(),
        3,
        "first call, rejected POST, replayed POST"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_idp_errors_are_retried() {
    let (idp, _upstream, node) = start(Duration::from_secs(300)).await;
    idp.fail_next(2);
    let resp = get_as(&client(), node.url("/app"), "svc-a", "s3cret").await;
    assert_eq!(
        resp.status(),
        200,
        "two 503s, then success on the third attempt"
    );
    assert_eq!(idp.seen().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_idp_is_not_hammered() {
    let (idp, _upstream, node) = start(Duration::from_secs(300)).await;
    idp.set_mode(IdpMode::ServerError);
    let http = client();
    for _ in 0..30 {
        let resp = http.get(node.url("/internal")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key("retry-after"));
    }
    // Three failed calls of three attempts each open the circuit; the rest fail fast.
    let attempts = idp.seen().len();
    assert!(attempts <= 9, "30 requests made {attempts} IdP attempts");
    let log = node
        .log_once("the outage is logged", |l| l.contains("circuit opened"))
        .await;
    assert_eq!(
        log.matches("circuit opened").count(),
        1,
        "the outage is logged once"
    );
    let metrics = crate::support::metrics_text(node.admin).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "tokengate_idp_circuits_open 1"),
        "the alert's metric counts the open circuit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_without_expires_in_get_the_configured_default_lifetime() {
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    idp.register("svc-a", "s3cret");
    idp.opaque_tokens(true);
    idp.omit_expires_in(true);
    let yaml = format!(
        "{FAST_REFRESH}{}",
        two_modes(
            &idp.token_url(),
            &upstream.url(),
            "defaultTokenLifetime: 3s"
        )
    );
    let node = Node::start(&yaml, &[("GW_SECRET", GW_SECRET)]);
    let http = client();
    let call = async || {
        let e = echo(get_as(&http, node.url("/app"), "svc-a", "s3cret").await).await;
        header(&e, "authorization")[0].to_owned()
    };
    let first = call().await;
    assert!(first.starts_with("Bearer opaque-"));
    assert_eq!(call().await, first, "cached");
    eventually(
        "the 3 s default lifetime is renewed",
        Duration::from_secs(6),
        async || call().await != first,
    )
    .await;
    let token = first.strip_prefix("Bearer ").unwrap();
    assert!(
        !node.settled_log().await.contains(token),
        "tokens are never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_401_to_a_fresh_token_is_passed_on_without_churning_the_idp() {
    // The default rejectedTokenMinAge (30 s): an upstream that refuses a token it was given
    // seconds ago refuses for its own reasons; anonymous callers must not turn that into IdP
    // traffic.
    let (idp, upstream, node) = start(Duration::from_secs(300)).await;
    let http = client();
    let auth = basic("svc-a", "s3cret");
    let token = token_of_first_call(&http, &node, &auth).await;
    upstream.reject_token(&token);
    for _ in 0..5 {
        let resp = http
            .get(node.url("/app/orders"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "the upstream's answer is passed on");
    }
    assert_eq!(
        upstream.seen().len(),
        6,
        "one attempt per request, no retry"
    );
    assert_eq!(
        idp.issued("svc-a"),
        1,
        "the token was neither evicted nor refetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_failing_credentials_do_not_delay_a_healthy_renewal() {
    use gateway::lifecycle::TokenCache;
    use gateway::store::{MemoryStore, Store, TokenStore};
    use gateway::token::{AuthMethod, FleetKey, TokenRequest};
    let failing = FakeIdp::start().await;
    let healthy = FakeIdp::start().await;
    // The failing IdP's 300 credentials fall due a second before the healthy one: first in
    // every listing of due entries.
    failing.set_token_lifetime(Duration::from_secs(8));
    healthy.set_token_lifetime(Duration::from_secs(10));
    let spec = |idp: &FakeIdp, client: &str| {
        idp.register(client, "s3cret");
        TokenRequest {
            token_url: idp.token_url().parse().unwrap(),
            auth_method: AuthMethod::ClientSecretBasic,
            client_id: client.to_owned(),
            client_secret: gateway::secret::Secret::new("s3cret"),
            scopes: Vec::new(),
            audience: None,
            params: Vec::new(),
            default_lifetime: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
            retries: 1,
            tls_profile: None,
            key_profile: None,
        }
    };
    let fleet = FleetKey::random();
    let cache = TokenCache::new(fleet.clone(), Store::Memory(MemoryStore::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    cache.spawn_background(
        gateway::lifecycle::RefreshConfig {
            interval: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(3600),
            lease_ttl: Duration::from_secs(5),
            max_entries: 1_000_000,
        },
        stop.clone(),
    );
    let mut failing_keys = Vec::new();
    for i in 0..300 {
        let s = spec(&failing, &format!("revoked-{i}"));
        let key = s.key(&fleet);
        cache.get(&key, || s, Duration::from_secs(1)).await.unwrap();
        failing_keys.push(key);
    }
    let s = spec(&healthy, "healthy");
    let healthy_key = s.key(&fleet);
    let first = cache
        .get(&healthy_key, || s, Duration::from_secs(1))
        .await
        .unwrap();
    // From now on the first IdP answers every token request 503, slowly.
    failing.set_latency(Duration::from_millis(300));
    failing.set_mode(IdpMode::ServerError);
    // Meanwhile the failing entries are put off after their failed renewals, not retried in
    // every round.
    let mut postponed = false;
    eventually(
        "the healthy credential is renewed, and failed renewals postponed",
        Duration::from_secs(20),
        async || {
            for k in &failing_keys {
                postponed |= cache
                    .store()
                    .get(k)
                    .await
                    .unwrap()
                    .is_some_and(|e| e.retry_at.is_some());
            }
            postponed && healthy.issued("healthy") >= 2
        },
    )
    .await;
    assert!(
        first.meta.is_servable(gateway::token::now_millis()),
        "renewed before the old token stopped being served"
    );
    stop.cancel();
    cache.closed().await;
}
