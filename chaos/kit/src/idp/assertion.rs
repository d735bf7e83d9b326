//! Client authentication by a signed JWT at the fake IdP (RFC 7523 §2.2, §3; OpenID Connect
//! Core §9): `client_secret_jwt` (HS256 under the registered secret) and `private_key_jwt`
//! (the registered public key). The assertion must name the client in `iss` and `sub`, this
//! IdP's endpoint (or issuer) in `aud`, not have expired, and carry a `jti` never seen before.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::State;

/// `client_assertion_type` of a JWT assertion.
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How an assertion authenticated a client, or why not.
pub(super) enum Asserted {
    /// The form carries no assertion.
    Absent,
    /// The client it proves, and the method (`client_secret_jwt` or `private_key_jwt`).
    Client(String, &'static str),
    /// Refused: why (for the test's eyes only; the answer is `invalid_client`).
    Refused(&'static str),
}

/// Checks the form's client assertion, if any, for a request to `endpoint`; a refusal is
/// recorded with its reason ([`super::FakeIdp::assertion_refusals`]).
pub(super) fn asserted(state: &State, form: &[(String, String)], endpoint: &str) -> Asserted {
    let verdict = check(state, form, endpoint);
    if let Asserted::Refused(why) = verdict {
        state.assertion_refusals.lock().unwrap().push(why);
    }
    verdict
}

fn check(state: &State, form: &[(String, String)], endpoint: &str) -> Asserted {
    let get = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(jwt) = get("client_assertion") else {
        return Asserted::Absent;
    };
    if get("client_assertion_type") != Some(ASSERTION_TYPE) {
        return Asserted::Refused("client_assertion_type");
    }
    let Ok(header) = jsonwebtoken::decode_header(jwt) else {
        return Asserted::Refused("not a JWT");
    };
    // The client is who the assertion says it is, `iss` and `sub` alike; its key decides.
    let Some(claimed) = unverified_subject(jwt) else {
        return Asserted::Refused("no sub");
    };
    let (key, method) = if header.alg == Algorithm::HS256 {
        match state.clients.lock().unwrap().get(&claimed) {
            Some(secret) => (
                DecodingKey::from_secret(secret.as_bytes()),
                "client_secret_jwt",
            ),
            None => return Asserted::Refused("unknown client"),
        }
    } else {
        match state.client_keys.lock().unwrap().get(&claimed) {
            Some(key) => (key.clone(), "private_key_jwt"),
            None => return Asserted::Refused("unknown client key"),
        }
    };
    let mut validation = Validation::new(header.alg);
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    validation.leeway = 5;
    let data = match jsonwebtoken::decode::<Value>(jwt, &key, &validation) {
        Ok(data) => data,
        Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
            return Asserted::Refused("expired");
        }
        Err(_) => return Asserted::Refused("signature"),
    };
    let issuer = state.issuer.lock().unwrap().clone();
    let audiences = match &data.claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.iter().any(|a| *a == endpoint || *a == issuer) {
        return Asserted::Refused("audience");
    }
    if data.claims["iss"].as_str() != Some(claimed.as_str()) {
        return Asserted::Refused("issuer is not the client");
    }
    let Some(jti) = data.claims["jti"].as_str() else {
        return Asserted::Refused("no jti");
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exp = data.claims["exp"].as_u64().unwrap_or_default();
    if exp > now + 300 {
        return Asserted::Refused("exp too far ahead");
    }
    if !state.assertion_ids.lock().unwrap().insert(jti.to_owned()) {
        return Asserted::Refused("jti replayed");
    }
    if get("client_id").is_some_and(|id| id != claimed) {
        return Asserted::Refused("client_id is another client");
    }
    Asserted::Client(claimed, method)
}

/// The `sub` an assertion names, read before its signature is checked (to find its key).
fn unverified_subject(jwt: &str) -> Option<String> {
    let data = jsonwebtoken::dangerous::insecure_decode::<Value>(jwt).ok()?;
    data.claims["sub"].as_str().map(str::to_owned)
}
