//! The per-request cost of the bearer-token middlewares, measured through the real middleware
//! code with keys and answers obtained from the fake IdP first:
//!
//! - `jwt/rs256`, `jwt/es256`: find the token, pick the key, verify the signature and the
//!   registered claims, check a claims expression, rewrite the headers (a token seen for the
//!   first time: the remembered verifications are forgotten before each iteration);
//! - `jwt/remembered`: the same with a token verified before (hash, lookup, expiry check);
//! - `introspection/cached`: an introspection answer served from the L1;
//! - `claims/*`: a claims expression alone.

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use gateway::auth::claims::ClaimsExpr;
use gateway::auth::{Introspection, Jwt};
use gateway::config::Config;
use gateway::lifecycle::TokenCache;
use gateway::store::{MemoryStore, Store};
use gateway::token::FleetKey;
use serde_json::json;

/// Benchmarks call from one address; their middlewares have no miss budget.
const CALLER: gateway::auth::Caller = gateway::auth::Caller {
    address: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
};

fn request(token: &str) -> http::request::Parts {
    http::Request::get("/api/orders?page=2")
        .header("host", "api.example")
        .header("user-agent", "bench/1.0")
        .header("authorization", format!("Bearer {token}"))
        .header("x-sub", "spoofed")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

fn auth(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let idp = rt.block_on(testkit::FakeIdp::start());
    idp.register("bench-gateway", "bench-secret");
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
middlewares:
  jwt:
    jwt:
      jwksUrl: {jwks}
      issuer: {iss}
      audience: orders
      forwardHeaders: {{ X-Sub: sub }}
      claims: SplitContains(`scope`, ` `, `orders:read`) && Prefix(`sub`, `svc-`)
  introspect:
    introspection:
      clientConfig:
        url: {introspect}
        auth: {{ kind: Basic, clientId: bench-gateway, clientSecret: bench-secret }}
      forwardHeaders: {{ X-Sub: sub }}
      claims: SplitContains(`scope`, ` `, `orders:read`) && Prefix(`sub`, `svc-`)
"#,
        jwks = idp.jwks_url(),
        iss = idp.issuer(),
        introspect = idp.introspection_url(),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": idp.issuer(), "sub": "svc-orders", "aud": "orders", "client_id": "svc-orders",
        "scope": "orders:read orders:write", "iat": now, "exp": now + 3600,
    });
    let rs256 = idp.mint(&claims);
    // Both keys published before the middleware first fetches them.
    idp.rotate_key();
    let es256 = idp.mint(&claims);
    let cfg = Config::from_yaml(&yaml).unwrap();
    let cache = TokenCache::new(FleetKey::random(), Store::Memory(MemoryStore::new()));
    let (jwt, introspect) = rt.block_on(async {
        let Some(j) = cfg.middlewares["jwt"]
            .downcast_ref::<gateway::auth::JwtConfig>()
            .cloned()
        else {
            panic!("jwt")
        };
        let Some(i) = cfg.middlewares["introspect"]
            .downcast_ref::<gateway::auth::IntrospectionConfig>()
            .cloned()
        else {
            panic!("introspection")
        };
        (
            Jwt::new("jwt", j, &cache, Default::default()).unwrap(),
            Introspection::new(
                "introspect",
                i,
                &cache,
                gateway::auth::limits::Guards::unlimited(),
            )
            .unwrap(),
        )
    });
    rt.block_on(async {
        // Keys fetched and the introspection answer cached.
        for t in [&rs256, &es256] {
            jwt.apply(&mut request(t)).await.unwrap();
        }
        introspect
            .apply(&mut request(&rs256), &CALLER)
            .await
            .unwrap();
    });

    let mut group = c.benchmark_group("jwt");
    for (name, token) in [("rs256", &rs256), ("es256", &es256)] {
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || {
                    jwt.forget_verified();
                    request(token)
                },
                |parts| {
                    jwt.apply(black_box(parts))
                        .now_or_never()
                        .expect("loaded keys never wait")
                        .unwrap()
                },
                // Every setup runs right before its own iteration, so none is remembered.
                BatchSize::PerIteration,
            )
        });
    }
    group.bench_function("remembered", |b| {
        b.iter_batched_ref(
            || request(&rs256),
            |parts| {
                jwt.apply(black_box(parts))
                    .now_or_never()
                    .expect("a remembered token never waits")
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("introspection");
    group.bench_function("cached", |b| {
        b.iter_batched_ref(
            || request(&rs256),
            |parts| {
                introspect
                    .apply(black_box(parts), &CALLER)
                    .now_or_never()
                    .expect("a cached answer never waits")
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let map = claims.as_object().unwrap().clone();
    let mut group = c.benchmark_group("claims");
    for (name, text) in [
        ("equals", "Equals(`sub`, `svc-orders`)"),
        (
            "compound",
            "(SplitContains(`scope`, ` `, `orders:read`) || OneOf(`client_id`, `a`, `b`)) && !Prefix(`iss`, `https://evil`)",
        ),
    ] {
        let expr = ClaimsExpr::parse(text).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| black_box(&expr).allows(black_box(&map)))
        });
    }
    group.finish();
}

criterion_group!(benches, auth);
criterion_main!(benches);
