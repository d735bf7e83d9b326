//! The client side of an RFC 6749 token endpoint: the client credentials grant (§4.4) and what a
//! conforming answer is (§5.1, §5.2). How the client authenticates (§2.3.1, RFC 7523, RFC 8705)
//! and the call itself (retries, the circuit breaker, the capped exchange) are
//! [`crate::outbound`]'s.

use std::time::Duration;

use serde::Deserialize;

use super::Clock;
use super::entry::UnixMillis;
use super::{AuthMethod, TokenRequest};
use crate::outbound::{ClientAuth, ClientKey, IdpClient, IdpError, exchange};
use crate::secret::Secret;

/// A token as the IdP issued it.
#[derive(Debug)]
pub struct IssuedToken {
    /// The access token.
    pub access_token: Secret,
    /// Granted scope, when the IdP said (RFC 6749 §5.1: omitted means as requested).
    pub scope: Option<String>,
    /// When the request was sent: the token cannot be older, so lifetimes count from here.
    pub issued_at: UnixMillis,
    /// `expires_in`, when the IdP sent it.
    pub expires_in: Option<Duration>,
}

#[derive(Deserialize)]
struct SuccessBody {
    access_token: String,
    token_type: String,
    #[serde(default)]
    expires_in: Option<ExpiresIn>,
    #[serde(default)]
    scope: Option<String>,
}

/// Some IdPs send `expires_in` as a string; RFC 6749 says number. Accept both.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
}

/// Obtains a token for `req`, with the endpoint's retries and circuit breaker. `clock` dates
/// the request (a token cannot be older than the request that obtained it).
pub async fn fetch(
    idp: &IdpClient,
    req: &TokenRequest,
    clock: &Clock,
) -> Result<IssuedToken, IdpError> {
    let Some(http) = idp.http_for(req.tls_profile.as_deref()) else {
        // A spec written by a node whose `clientConfig.tls` this node does not have (a rolling
        // change of certificates): the entry's own nodes fetch it again when it expires.
        return Err(IdpError::unavailable(
            "no clientConfig.tls on this node matches the token request's",
        ));
    };
    let key = match (&req.auth_method, &req.key_profile) {
        (AuthMethod::PrivateKeyJwt, Some(profile)) => match idp.key_for(profile) {
            Some(key) => Some(key),
            // As for TLS: a spec written by a node with another key; its nodes fetch anew.
            None => {
                return Err(IdpError::unavailable(
                    "no clientPrivateKey on this node matches the token request's",
                ));
            }
        },
        _ => None,
    };
    idp.call(req.token_url.as_str(), req.retries, || {
        attempt(&http, req, key.as_ref(), clock)
    })
    .await
}

/// How `req`'s client authenticates, with `key` for `private_key_jwt`.
fn client_auth<'a>(req: &'a TokenRequest, key: Option<&'a ClientKey>) -> ClientAuth<'a> {
    let (id, secret) = (req.client_id.as_str(), &req.client_secret);
    match (req.auth_method, key) {
        (AuthMethod::ClientSecretBasic, _) => ClientAuth::Basic { id, secret },
        (AuthMethod::ClientSecretPost, _) => ClientAuth::Post { id, secret },
        (AuthMethod::ClientSecretJwt, _) => ClientAuth::SecretJwt { id, secret },
        (AuthMethod::PrivateKeyJwt, Some(key)) => ClientAuth::KeyJwt { id, key },
        // A spec without its key's profile cannot sign; the IdP refuses the bare id.
        (AuthMethod::PrivateKeyJwt, None) | (AuthMethod::TlsClientAuth, _) => {
            ClientAuth::Tls { id }
        }
    }
}

/// One HTTP exchange. On a retryable error, also returns the server's `Retry-After`.
async fn attempt(
    http: &reqwest::Client,
    req: &TokenRequest,
    key: Option<&ClientKey>,
    clock: &Clock,
) -> Result<IssuedToken, (IdpError, Option<Duration>)> {
    let mut builder = http
        .post(req.token_url.clone())
        .timeout(req.timeout)
        .header(http::header::ACCEPT, "application/json")
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
    // Each attempt authenticates anew: an assertion's `jti` is never sent twice.
    let (authorization, body) = {
        let mut form = form_body(req);
        let authorization = client_auth(req, key)
            .apply(req.token_url.as_str(), &mut form)
            .map_err(|e| (IdpError::Protocol(e), None))?;
        (authorization, form.finish())
    };
    if let Some(value) = authorization {
        builder = builder.header(http::header::AUTHORIZATION, value);
    }
    let builder = builder.body(body);
    let issued_at = clock.now();
    let (status, body) = exchange(builder).await?;
    if status.is_success() {
        return parse_success(&body, issued_at).map_err(|e| (e, None));
    }
    match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(err) if err.error == "invalid_client" => Err((IdpError::InvalidClient, None)),
        Ok(err) if is_error_code(&err.error) => Err((IdpError::Refused { error: err.error }, None)),
        _ if status == http::StatusCode::UNAUTHORIZED => Err((IdpError::InvalidClient, None)),
        _ => Err((
            IdpError::Protocol(format!(
                "HTTP {} without an RFC 6749 error",
                status.as_u16()
            )),
            None,
        )),
    }
}

/// The form body of a client credentials token request (RFC 6749 §4.4.2), before the client's
/// authentication.
fn form_body(req: &TokenRequest) -> form_urlencoded::Serializer<'static, String> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if !req.scopes.is_empty() {
        form.append_pair("scope", &req.scopes.join(" "));
    }
    if let Some(aud) = &req.audience {
        form.append_pair("audience", aud);
    }
    for (k, v) in &req.params {
        form.append_pair(k, v);
    }
    form
}

/// RFC 6749 §5.2: `error` is a set of printable ASCII characters without `"` and `\`. We only
/// pass on codes of that shape, so nothing odd reaches a caller or a log.
pub fn is_error_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| (0x20..=0x7E).contains(&b) && b != b'"' && b != b'\\')
}

/// A successful token response (RFC 6749 §5.1): JSON with `access_token` and a `Bearer`
/// `token_type`; `expires_in` as a number (or a numeric string, as some IdPs send).
pub fn parse_success(body: &[u8], issued_at: UnixMillis) -> Result<IssuedToken, IdpError> {
    let ok: SuccessBody = serde_json::from_slice(body)
        .map_err(|_| IdpError::Protocol("token response is not RFC 6749 JSON".into()))?;
    // RFC 6750: we present the token as a bearer token; anything else we cannot use correctly.
    if !ok.token_type.eq_ignore_ascii_case("bearer") {
        return Err(IdpError::Protocol(format!(
            "unsupported token_type {:?}",
            ok.token_type.chars().take(20).collect::<String>()
        )));
    }
    if ok.access_token.is_empty() {
        return Err(IdpError::Protocol("empty access_token".into()));
    }
    let expires_in = match ok.expires_in {
        Some(ExpiresIn::Number(n)) => Some(n),
        Some(ExpiresIn::Text(t)) => Some(
            t.trim()
                .parse()
                .map_err(|_| IdpError::Protocol("expires_in is not a number".into()))?,
        ),
        None => None,
    };
    Ok(IssuedToken {
        access_token: Secret::new(ok.access_token),
        scope: ok.scope,
        issued_at,
        expires_in: expires_in.map(Duration::from_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::BreakerConfig;

    async fn fetch_now(client: &IdpClient, req: &TokenRequest) -> Result<IssuedToken, IdpError> {
        fetch(client, req, &Clock::system()).await
    }

    fn request(url: &str, timeout: Duration) -> TokenRequest {
        TokenRequest {
            token_url: url.parse().unwrap(),
            auth_method: AuthMethod::ClientSecretBasic,
            client_id: "c".into(),
            client_secret: Secret::new("s"),
            scopes: vec![],
            audience: None,
            params: vec![],
            default_lifetime: Duration::from_secs(60),
            timeout,
            retries: 0,
            tls_profile: None,
            key_profile: None,
        }
    }

    #[tokio::test]
    async fn a_spec_naming_a_key_this_node_lacks_is_left_alone() {
        // An endpoint that would count any request made to it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let mut spec = request(&url, Duration::from_secs(1));
        spec.auth_method = AuthMethod::PrivateKeyJwt;
        spec.key_profile = Some("key-of-another-node".into());
        let e = fetch_now(&IdpClient::default(), &spec).await.unwrap_err();
        assert!(
            matches!(&e, IdpError::Unavailable { reason, .. } if reason.contains("clientPrivateKey")),
            "{e:?}"
        );
        let accepted = tokio::time::timeout(Duration::from_millis(50), listener.accept()).await;
        assert!(accepted.is_err(), "nothing was sent");
    }

    // On paused time: the timeouts and the cooldown pass when nothing else can happen.
    #[tokio::test(start_paused = true)]
    async fn a_cancelled_trial_call_does_not_keep_the_circuit_open() {
        // An endpoint that accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", silent.local_addr().unwrap());
        let client = IdpClient::with_breaker(&BreakerConfig {
            failures: 1,
            cooldown: Duration::from_millis(50),
        });
        let slow = request(&url, Duration::from_millis(100));
        assert!(matches!(
            fetch_now(&client, &slow).await,
            Err(IdpError::Unavailable { .. })
        ));
        let open = fetch_now(&client, &slow).await;
        assert!(
            matches!(open, Err(IdpError::Unavailable { ref reason, .. }) if reason == "circuit open")
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        let patient = request(&url, Duration::from_secs(30));
        // The half-open trial is admitted (it hangs), then its caller gives up.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), fetch_now(&client, &patient))
                .await
                .is_err()
        );
        // The next call is admitted as the new trial instead of failing fast forever.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), fetch_now(&client, &patient))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn answers_a_caller_can_provoke_never_open_the_circuit() {
        // An IdP that answers every request 400 with an HTML page (not RFC 6749), as IdPs and
        // their front proxies do for an oversized client id.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0; 65536];
                    let _ = s.read(&mut buf).await;
                    let body = "<html>Bad Request</html>";
                    let resp = format!(
                        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        let client = IdpClient::with_breaker(&BreakerConfig {
            failures: 1,
            ..BreakerConfig::default()
        });
        for _ in 0..4 {
            let e = fetch_now(&client, &request(&url, Duration::from_secs(5)))
                .await
                .unwrap_err();
            assert!(matches!(e, IdpError::Protocol(_)), "{e:?}");
        }
        assert!(!client.is_open(&url));
    }

    #[test]
    fn non_bearer_token_type_is_rejected() {
        let body = br#"{"access_token":"x","token_type":"mac"}"#;
        assert!(matches!(parse_success(body, 0), Err(IdpError::Protocol(_))));
        let body = br#"{"access_token":"x","token_type":"Bearer","expires_in":"60"}"#;
        assert_eq!(
            parse_success(body, 0).unwrap().expires_in,
            Some(Duration::from_secs(60))
        );
    }

    proptest::proptest! {
        /// Whatever a token endpoint answers: a usable bearer token or a protocol error.
        #[test]
        fn any_token_response_is_judged_safely(
            token_type in "(Bearer|bearer|mac|)",
            expires in "(60|\"60\"|-1|1e9|\"x\"|null|18446744073709551616)",
            junk in "[ -~]{0,40}",
        ) {
            let body = format!(r#"{{"access_token":"t","token_type":"{token_type}","expires_in":{expires}}}"#);
            if let Ok(t) = parse_success(body.as_bytes(), 0) {
                proptest::prop_assert!(token_type.eq_ignore_ascii_case("bearer"));
                proptest::prop_assert_eq!(t.access_token.expose(), "t");
            }
            let _ = parse_success(junk.as_bytes(), 0);
        }
    }
}
