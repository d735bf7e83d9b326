//! Bearer JWTs as callers send them, through the whole `jwt` middleware check (header, alg
//! allow-list, kid, signature, claims) against an inline key set. The input is either a token
//! as is, or (with a leading 0x00) a header, payload and signature separated by 0xFF bytes,
//! each base64url-encoded here, so the fuzzer explores header and claim JSON directly.
#![no_main]

use std::sync::{Arc, LazyLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use gateway::auth::Jwt;
use gateway::auth::MiddlewareConfig;
use gateway::auth::jwt::JwksSource;
use gateway::config::Config;
use gateway::store::{MemoryStore, Store};
use gateway::lifecycle::TokenCache;
use gateway::token::FleetKey;
use libfuzzer_sys::fuzz_target;

struct Target {
    rt: tokio::runtime::Runtime,
    jwt: Jwt,
}

static TARGET: LazyLock<Target> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let yaml = "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }\nmiddlewares:\n  m:\n    jwt:\n      jwksUrl: http://127.0.0.1:1/jwks\n      issuer: https://idp.example\n      audience: orders\n";
    let cfg = Config::from_yaml(yaml).unwrap();
    let MiddlewareConfig::Jwt(mut j) = cfg.middlewares["m"].clone() else {
        unreachable!()
    };
    // RFC 7517 Appendix A.1's P-256 key, as a signing key.
    j.keys = JwksSource::Inline(Arc::new(serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "use": "sig", "kid": "1",
        "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
        "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM",
    }]})));
    let jwt = rt.block_on(async {
        let cache = TokenCache::new(FleetKey::random(), Store::Memory(MemoryStore::new()));
        Jwt::new("fuzz", j, &cache, Default::default()).unwrap()
    });
    Target { rt, jwt }
});

fuzz_target!(|data: &[u8]| {
    let t = &*TARGET;
    let token = match data.split_first() {
        Some((0, rest)) => {
            let mut parts = rest.splitn(3, |b| *b == 0xFF);
            let mut enc = || B64URL.encode(parts.next().unwrap_or_default());
            format!("{}.{}.{}", enc(), enc(), enc())
        }
        _ => match std::str::from_utf8(data) {
            Ok(s) => s.to_owned(),
            Err(_) => return,
        },
    };
    // Nothing here is signed by the key: every token must be refused, none may panic.
    assert!(t.rt.block_on(t.jwt.verify(&token)).is_err());
});
