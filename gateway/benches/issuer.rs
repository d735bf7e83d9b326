//! The cost of issuing a token, by part:
//!
//! - `issuer/sign_es256`, `issuer/sign_rs256`: signing an RFC 9068 access token;
//! - `issuer/secret_cached`: checking a client secret that verified recently (the common case);
//! - `issuer/secret_argon2`: a full argon2id verification (a client's first request, or a wrong
//!   secret), which bounds how many such checks a core can do per second.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use gateway::issuer::keys::SigningKey;
use gateway::issuer::secret::{SecretHash, Verifier};
use gateway::token::{FleetKey, KeyDeriver};
use jsonwebtoken::Algorithm;
use serde_json::json;

fn issuer(c: &mut Criterion) {
    let claims = json!({
        "iss": "https://gw.example.com", "sub": "orders", "aud": "orders-api",
        "exp": 4_000_000_000u64, "iat": 1_700_000_000u64, "jti": "q3A0bxv1kZ3dQ6mY0k2N1w",
        "client_id": "orders", "scope": "orders:read orders:write", "team": "payments",
    });
    let mut group = c.benchmark_group("issuer");
    for (name, alg) in [
        ("sign_es256", Algorithm::ES256),
        ("sign_rs256", Algorithm::RS256),
    ] {
        let key = SigningKey::generate(alg).unwrap();
        group.bench_function(name, |b| b.iter(|| key.sign(black_box(&claims)).unwrap()));
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let hash = SecretHash::hash("s3cret-of-the-orders-client");
    let verifier = Verifier::new(KeyDeriver::labelled(&FleetKey::random(), "bench", ""));
    assert_eq!(
        rt.block_on(verifier.check("orders", Some(&hash), "s3cret-of-the-orders-client", CALLER)),
        Ok(true)
    );
    group.bench_function("secret_cached", |b| {
        b.iter(|| {
            verifier
                .check(
                    "orders",
                    Some(&hash),
                    black_box("s3cret-of-the-orders-client"),
                    CALLER,
                )
                .now_or_never()
                .expect("a remembered secret never waits")
        })
    });
    group.sample_size(10);
    group.bench_function("secret_argon2", |b| {
        b.iter(|| hash.verify(black_box("s3cret-of-the-orders-client")))
    });
    group.finish();
}

/// Where the bench's token requests come from.
const CALLER: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

criterion_group!(benches, issuer);
criterion_main!(benches);
