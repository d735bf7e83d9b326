//! Claims expressions (Traefik Hub's language): any text compiles or is refused with a column,
//! and a compiled expression evaluates without panicking.
#![no_main]

use gateway::auth::claims::ClaimsExpr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match ClaimsExpr::parse(text) {
        Ok(expr) => {
            let claims = serde_json::json!({
                "sub": "svc", "scope": "a b", "grp": ["x", "y"], "a": {"b": {"c": 1}}, "n": null,
            });
            let _ = expr.allows(claims.as_object().unwrap());
        }
        Err(e) => assert!(e.column <= text.chars().count() + 1),
    }
});
