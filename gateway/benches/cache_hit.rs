//! The cache-hit path: what a request costs when its token is in the L1.
//!
//! `app_level` is the full middleware on a hit: decode the caller's Basic credentials, derive the
//! HMAC key, look it up in the L1, set `Authorization` and two claim headers. `gateway_level`
//! skips the decoding and the HMAC (its key is derived once at start). `key_derivation` is the
//! HMAC alone. Entries are obtained for real from the fake IdP before measuring.
//!
//! The `redis` group (run when `redis-server` is installed; the bench starts its own on a free
//! port) measures the same hit with the Redis store behind the L1, an L1 miss served from Redis
//! (another node fetched the token), and a full miss (Redis, then the fake IdP, then Redis).

use std::hint::black_box;
use std::sync::Arc;

use base64::Engine;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use gateway::auth::ClientCredentials;
use gateway::config::Config;
use gateway::lifecycle::TokenCache;
use gateway::store::{MemoryStore, Store};
use gateway::token::{FleetKey, KeyDeriver};
use http::{HeaderMap, HeaderValue};

/// Benchmarks call from one address; their middlewares have no miss budget.
const CALLER: gateway::auth::Caller = gateway::auth::Caller {
    address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
};

fn middleware(cfg: &Config, name: &str, cache: &Arc<TokenCache>) -> ClientCredentials {
    let Some(cc) = cfg.middlewares[name].downcast_ref::<gateway::auth::ClientCredentialsConfig>()
    else {
        panic!("{name} is a clientCredentials middleware")
    };
    ClientCredentials::new(
        name,
        cc.clone(),
        Arc::clone(cache),
        gateway::auth::limits::Guards::unlimited(),
    )
    .expect("no TLS material to refuse")
}

fn request_headers(auth: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.example"));
    h.insert("user-agent", HeaderValue::from_static("bench/1.0"));
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert("sub", HeaderValue::from_static("spoofed"));
    if let Some(a) = auth {
        h.insert("authorization", HeaderValue::try_from(a).unwrap());
    }
    h
}

fn cache_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let idp = rt.block_on(testkit::FakeIdp::start());
    idp.register("bench-client", "bench-secret");
    idp.set_token_lifetime(std::time::Duration::from_secs(3600));
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
middlewares:
  app:
    clientCredentials:
      url: {url}
      scopes: [read, write]
      usernameClaim: sub
      forwardHeaders: {{ Sub: sub, X-Client: client_id }}
  gw:
    clientCredentials:
      url: {url}
      clientId: bench-client
      clientSecret: bench-secret
      forwardHeaders: {{ Sub: sub, X-Client: client_id }}
"#,
        url = idp.token_url()
    );
    let cfg = Config::from_yaml(&yaml).unwrap();
    let cache = TokenCache::new(FleetKey::random(), Store::Memory(MemoryStore::new()));
    let (app, gw) = (
        middleware(&cfg, "app", &cache),
        middleware(&cfg, "gw", &cache),
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("bench-client:bench-secret")
    );
    rt.block_on(async {
        app.apply(&mut request_headers(Some(&basic)), &CALLER)
            .await
            .unwrap();
        gw.apply(&mut request_headers(None), &CALLER).await.unwrap();
    });

    let mut group = c.benchmark_group("cache_hit");
    group.bench_function("app_level", |b| {
        b.iter_batched_ref(
            || request_headers(Some(&basic)),
            |h| {
                app.apply(black_box(h), &CALLER)
                    .now_or_never()
                    .expect("a hit never waits")
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("gateway_level", |b| {
        b.iter_batched_ref(
            || request_headers(None),
            |h| {
                gw.apply(black_box(h), &CALLER)
                    .now_or_never()
                    .expect("a hit never waits")
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    // The same hit as the proxy calls it: through the kind-agnostic handle (a `dyn` call and
    // a boxed future), so the cost of the middleware table shows beside the direct call.
    let guards = gateway::auth::limits::Guards::unlimited();
    let handle = gateway::auth::Middleware::build(
        "gw",
        &*cfg.middlewares["gw"],
        &gateway::auth::Build {
            cache: &cache,
            guards: &guards,
            issuer_keys: None,
        },
    )
    .unwrap();
    group.bench_function("gateway_level_through_the_handle", |b| {
        b.iter_batched_ref(
            || {
                let mut parts = http::Request::new(()).into_parts().0;
                parts.headers = request_headers(None);
                parts
            },
            |parts| {
                handle
                    .apply(black_box(parts), &CALLER)
                    .now_or_never()
                    .expect("a hit never waits")
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    let Some(cc) = cfg.middlewares["app"].downcast_ref::<gateway::auth::ClientCredentialsConfig>()
    else {
        panic!("app is a clientCredentials middleware")
    };
    let deriver = KeyDeriver::new(cache.fleet(), &cc.token_url, &cc.scopes, None, &[]);
    group.bench_function("key_derivation", |b| {
        b.iter(|| deriver.key(black_box("bench-client"), black_box("bench-secret")))
    });
    group.finish();
    drop(idp);
}

fn redis_store(port: u16) -> Store {
    let cfg = gateway::store::RedisConfig {
        endpoints: vec![("127.0.0.1".into(), port)],
        username: None,
        password: None,
        database: 0,
        key_prefix: "bench".into(),
        topology: gateway::store::RedisTopology::Standalone,
        pool_size: 4,
        timeout: std::time::Duration::from_secs(1),
        tls: None,
    };
    Store::Redis(gateway::store::RedisStore::new(&cfg).unwrap())
}

fn redis(c: &mut Criterion) {
    if !testkit::redis::installed() {
        eprintln!("redis-server not installed: skipping the redis benchmarks");
        return;
    }
    let redis = testkit::redis::RedisServer::start();
    let port = redis.port;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let idp = rt.block_on(testkit::FakeIdp::start());
    idp.set_token_lifetime(std::time::Duration::from_secs(3600));
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nmiddlewares:\n  app:\n    clientCredentials:\n      \
         url: {}\n      forwardHeaders: {{ Sub: sub, X-Client: client_id }}\n",
        idp.token_url()
    );
    let cfg = Config::from_yaml(&yaml).unwrap();
    let fleet = FleetKey::from_secret(&gateway::secret::Secret::new(
        "bench-fleet-key-0123456789abcdef-xyz",
    ));
    // Two nodes of one fleet: `a` fetches, `b` finds what `a` stored.
    let (a, b) = rt.block_on(async {
        let a = TokenCache::new(fleet.clone(), redis_store(port));
        let b = TokenCache::new(fleet, redis_store(port));
        (middleware(&cfg, "app", &a), middleware(&cfg, "app", &b))
    });
    let basic = |i: u64| {
        let engine = base64::engine::general_purpose::STANDARD;
        format!("Basic {}", engine.encode(format!("client-{i}:secret-{i}")))
    };
    let mut next = 0u64;
    let mut fresh = |n: u64| {
        let ids: Vec<u64> = (next..next + n).collect();
        next += n;
        for i in &ids {
            idp.register(&format!("client-{i}"), &format!("secret-{i}"));
        }
        ids
    };
    let warm = fresh(1)[0];
    rt.block_on(a.apply(&mut request_headers(Some(&basic(warm))), &CALLER))
        .unwrap();

    let mut group = c.benchmark_group("redis");
    group.bench_function("app_level_hit", |bench| {
        bench.iter_batched_ref(
            || request_headers(Some(&basic(warm))),
            |h| {
                a.apply(black_box(h), &CALLER)
                    .now_or_never()
                    .expect("a hit never waits")
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.sample_size(20);
    group.bench_function("l1_miss_store_hit", |bench| {
        bench.iter_custom(|iters| {
            let ids = fresh(iters);
            rt.block_on(async {
                for i in &ids {
                    a.apply(&mut request_headers(Some(&basic(*i))), &CALLER)
                        .await
                        .unwrap();
                }
                let started = std::time::Instant::now();
                for i in &ids {
                    b.apply(&mut request_headers(Some(&basic(*i))), &CALLER)
                        .await
                        .unwrap();
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("full_miss_fake_idp", |bench| {
        bench.iter_custom(|iters| {
            let ids = fresh(iters);
            rt.block_on(async {
                let started = std::time::Instant::now();
                for i in &ids {
                    a.apply(&mut request_headers(Some(&basic(*i))), &CALLER)
                        .await
                        .unwrap();
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, cache_hit, redis);
criterion_main!(benches);
