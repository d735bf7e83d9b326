//! The fake IdP's RFC 6749 token endpoint: the client credentials grant (§4.4), the client
//! authentication methods of §2.3.1, JWT assertions (RFC 7523, `assertion.rs`) and
//! `tls_client_auth` (RFC 8705 §2.1), and the errors of §5.2.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use jsonwebtoken::Header;
use serde_json::json;

use super::assertion::{self, Asserted};
use super::{SeenRequest, State, basic_credentials, json_response, oauth_error};

/// Records the request now; returns how to answer it if the IdP is healthy.
pub(super) fn token<'a>(
    state: &'a State,
    basic: Option<&str>,
    form: &'a [(String, String)],
    endpoint: &str,
) -> impl FnOnce() -> Response<Full<Bytes>> + 'a {
    let get = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let from_basic = basic_credentials(basic);
    let asserted = assertion::asserted(state, form, endpoint);
    let from_post = get("client_id").map(|id| {
        (
            id.to_owned(),
            get("client_secret").unwrap_or_default().to_owned(),
        )
    });
    // Who the client is, how it says so, and whether that holds.
    let (auth_method, client_id, authenticated) = match (from_basic, asserted, from_post) {
        (Some(_), Asserted::Client(..) | Asserted::Refused(_), _) => ("both", None, false),
        (Some((id, secret)), Asserted::Absent, None) => {
            let ok = state.clients.lock().unwrap().get(&id) == Some(&secret);
            ("basic", Some(id), ok)
        }
        (Some((id, _)), Asserted::Absent, Some(_)) => ("both", Some(id), false),
        (None, Asserted::Client(id, method), _) => (method, Some(id), true),
        (None, Asserted::Refused(_), post) => ("assertion", post.map(|p| p.0), false),
        (None, Asserted::Absent, Some((id, _))) if get("client_secret").is_none() => {
            let ok = state.tls_clients.lock().unwrap().contains(&id);
            ("tls_client_auth", Some(id), ok)
        }
        (None, Asserted::Absent, Some((id, secret))) => {
            let ok = state.clients.lock().unwrap().get(&id) == Some(&secret);
            ("post", Some(id), ok)
        }
        (None, Asserted::Absent, None) => ("none", None, false),
    };
    state.seen.lock().unwrap().push(SeenRequest {
        auth_method,
        client_id: client_id.clone().unwrap_or_default(),
        params: form
            .iter()
            .filter(|(k, _)| k != "client_secret")
            .cloned()
            .collect(),
    });
    move || {
        if auth_method == "both" {
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", None);
        }
        let challenge = (auth_method == "basic").then_some("Basic realm=\"fake-idp\"");
        let Some(client_id) = client_id.filter(|_| authenticated) else {
            return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", challenge);
        };
        if get("grant_type") != Some("client_credentials") {
            return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", None);
        }
        let lifetime = *state.lifetime.lock().unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let audience: Vec<&str> = form
            .iter()
            .filter(|(k, _)| k == "audience" || k == "resource")
            .map(|(_, v)| v.as_str())
            .collect();
        let lies = *state.lies.lock().unwrap();
        let named = match lies.other_client {
            true => format!("not-{client_id}"),
            false => client_id.clone(),
        };
        let exp = match lies.expired {
            true => now.as_secs() - 1,
            false => (now + lifetime).as_secs(),
        };
        let claims = json!({
            "iss": *state.issuer.lock().unwrap(),
            "sub": named,
            "client_id": named,
            "aud": audience,
            "scope": get("scope").unwrap_or_default(),
            "iat": now.as_secs(),
            "exp": exp,
            "jti": state.jti.fetch_add(1, Ordering::Relaxed).to_string(),
        });
        let (key, alg, kid) = state.signer();
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let token = if state.opaque.load(Ordering::Relaxed) {
            let mut token = format!(
                "opaque-{}-{}",
                claims["jti"].as_str().unwrap_or_default(),
                now.as_nanos()
            );
            let len = state.opaque_len.load(Ordering::Relaxed);
            if token.len() < len {
                token.push('.');
                token.extend(std::iter::repeat_n('x', len - token.len()));
            }
            state
                .opaque_claims
                .lock()
                .unwrap()
                .insert(token.clone(), claims.clone());
            token
        } else {
            jsonwebtoken::encode(&header, &claims, key).expect("signing works")
        };
        *state.issued.lock().unwrap().entry(client_id).or_default() += 1;
        let mut body = json!({ "access_token": token, "token_type": "Bearer", "scope": get("scope").unwrap_or_default() });
        if !state.omit_expires_in.load(Ordering::Relaxed) {
            body["expires_in"] = json!(lifetime.as_secs());
        }
        json_response(StatusCode::OK, &body)
    }
}
