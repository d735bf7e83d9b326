//! The cache-hit path: what a request costs when its token is in the L1.
//!
//! `app_level` is the full middleware on a hit: decode the caller's Basic credentials, derive the
//! HMAC key, look it up in the L1, set `Authorization` and two claim headers. `gateway_level`
//! skips the decoding and the HMAC (its key is derived once at start). `key_derivation` is the
//! HMAC alone. Entries are obtained for real from the fake IdP before measuring.

use std::hint::black_box;
use std::sync::Arc;

use base64::Engine;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use gateway::auth::ClientCredentials;
use gateway::config::{Config, MiddlewareConfig};
use gateway::store::{MemoryStore, Store};
use gateway::token::{FleetKey, KeyDeriver, TokenCache};
use http::{HeaderMap, HeaderValue};

fn middleware(cfg: &Config, name: &str, cache: &Arc<TokenCache>) -> ClientCredentials {
    let MiddlewareConfig::ClientCredentials(cc) = &cfg.middlewares[name];
    ClientCredentials::new(name, cc.clone(), Arc::clone(cache))
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
    let idp = rt.block_on(chaos::FakeIdp::start());
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
        app.apply(&mut request_headers(Some(&basic))).await.unwrap();
        gw.apply(&mut request_headers(None)).await.unwrap();
    });

    let mut group = c.benchmark_group("cache_hit");
    group.bench_function("app_level", |b| {
        b.iter_batched_ref(
            || request_headers(Some(&basic)),
            |h| {
                app.apply(black_box(h))
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
                gw.apply(black_box(h))
                    .now_or_never()
                    .expect("a hit never waits")
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    let MiddlewareConfig::ClientCredentials(cc) = &cfg.middlewares["app"];
    let deriver = KeyDeriver::new(cache.fleet(), &cc.token_url, &cc.scopes, None, &[]);
    group.bench_function("key_derivation", |b| {
        b.iter(|| deriver.key(black_box("bench-client"), black_box("bench-secret")))
    });
    group.finish();
    drop(idp);
}

criterion_group!(benches, cache_hit);
criterion_main!(benches);
