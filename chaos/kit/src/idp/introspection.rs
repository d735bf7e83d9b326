//! The fake IdP's RFC 7662 introspection endpoint.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Value, json};

use super::assertion::{self, Asserted};
use super::{SeenRequest, State, basic_credentials, json_response, oauth_error};

/// RFC 7662 §2: the caller must authenticate; the answer is `{"active": false}` for anything
/// this IdP did not issue, or that expired or was revoked.
pub(super) fn introspect(
    state: &State,
    auth: Option<&str>,
    form: &[(String, String)],
    endpoint: &str,
) -> Response<Full<Bytes>> {
    state.introspections.fetch_add(1, Ordering::Relaxed);
    let get = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let bearer = auth
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::to_owned);
    let asserted = assertion::asserted(state, form, endpoint);
    let (method, client) = match (asserted, basic_credentials(auth), get("client_id"), bearer) {
        (Asserted::Client(id, method), ..) => (method, Some((id, String::new()))),
        (Asserted::Refused(_), ..) => ("assertion", None),
        (Asserted::Absent, Some(c), None, None) => ("basic", Some(c)),
        (Asserted::Absent, None, Some(id), None) => (
            "post",
            Some((
                id.to_owned(),
                get("client_secret").unwrap_or_default().to_owned(),
            )),
        ),
        (Asserted::Absent, None, None, Some(b)) => ("bearer", Some(("".to_owned(), b))),
        _ => ("none", None),
    };
    state.introspection_seen.lock().unwrap().push(SeenRequest {
        auth_method: method,
        client_id: client.as_ref().map(|c| c.0.clone()).unwrap_or_default(),
        params: form
            .iter()
            .filter(|(k, _)| k != "client_secret" && k != "token")
            .cloned()
            .collect(),
    });
    let authenticated = match (method, &client) {
        ("bearer", Some((_, b))) => {
            state.introspection_bearer.lock().unwrap().as_deref() == Some(b)
        }
        ("basic" | "post", Some((id, secret))) => {
            state.clients.lock().unwrap().get(id) == Some(secret)
        }
        ("client_secret_jwt" | "private_key_jwt", Some(_)) => true,
        ("none", None) => state.anonymous_introspection.load(Ordering::Relaxed),
        _ => false,
    };
    if !authenticated {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            Some("Basic realm=\"fake-idp\""),
        );
    }
    let Some(token) = get("token") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", None);
    };
    let inactive = json_response(StatusCode::OK, &json!({ "active": false }));
    if state.revoked.lock().unwrap().iter().any(|t| t == token) {
        return inactive;
    }
    let claims = match state.opaque_claims.lock().unwrap().get(token) {
        Some(c) => Some(c.clone()),
        None => verify_own(state, token),
    };
    let Some(mut claims) = claims else {
        return inactive;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if claims
        .get("exp")
        .and_then(Value::as_u64)
        .is_some_and(|exp| exp <= now)
    {
        return inactive;
    }
    claims["active"] = json!(true);
    claims["token_type"] = json!("Bearer");
    json_response(StatusCode::OK, &claims)
}

/// The claims of a JWT this IdP signed, with either of its keys (expiry checked by the caller).
fn verify_own(state: &State, token: &str) -> Option<Value> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let key = match header.alg {
        Algorithm::ES256 => &state.ec_key,
        _ => &state.key,
    };
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, header.alg).ok()?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(&jwk).ok()?, &v)
        .ok()
        .map(|d| d.claims)
}
