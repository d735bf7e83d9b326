//! The client side of an RFC 7662 introspection endpoint.

use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Map, Value};

use super::{EndpointAuth, IntrospectionConfig};
use crate::outbound::exchange;
use crate::outbound::{ClientAuth, IdpClient, IdpError};
use crate::token::AuthMethod;

/// One configured introspection endpoint, with its own connection pool (its TLS options are
/// its own).
pub struct IntrospectionClient {
    http: reqwest::Client,
    cfg: IntrospectionConfig,
}

/// What the endpoint said about a token.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `"active": true`, with the whole response as claims.
    Active(Map<String, Value>),
    /// `"active": false`.
    Inactive,
}

impl IntrospectionClient {
    /// A client for `cfg`'s endpoint.
    pub fn new(cfg: &IntrospectionConfig) -> reqwest::Result<Self> {
        Ok(Self {
            http: cfg.http.build()?,
            cfg: cfg.clone(),
        })
    }

    /// Asks about `token`, through the node's retries and the endpoint's circuit breaker.
    pub async fn introspect(&self, idp: &IdpClient, token: &str) -> Result<Answer, IdpError> {
        idp.call(self.cfg.url.as_str(), self.cfg.http.retries, || {
            self.attempt(token)
        })
        .await
    }

    async fn attempt(&self, token: &str) -> Result<Answer, (IdpError, Option<Duration>)> {
        let (req, body) = self
            .request(token)
            .map_err(|e| (IdpError::Protocol(e), None))?;
        let (status, body) = exchange(req.body(body)).await?;
        if status == http::StatusCode::UNAUTHORIZED || status == http::StatusCode::FORBIDDEN {
            // The endpoint refuses *the gateway*: a configuration problem, not the caller's.
            return Err((IdpError::InvalidClient, None));
        }
        if !status.is_success() {
            return Err((
                IdpError::Protocol(format!("introspection answered HTTP {}", status.as_u16())),
                None,
            ));
        }
        parse(&body).map_err(|e| (e, None))
    }

    /// The request (RFC 7662 §2.1): a form POST with `token` and the optional hint, the
    /// configured headers and client authentication (made anew for each attempt).
    fn request(&self, token: &str) -> Result<(reqwest::RequestBuilder, String), String> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token);
        if let Some(hint) = &self.cfg.token_type_hint {
            form.append_pair("token_type_hint", hint);
        }
        let mut req = self
            .http
            .post(self.cfg.url.clone())
            .timeout(self.cfg.http.timeout)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (name, value) in &self.cfg.headers {
            req = req.header(name, value);
        }
        let client = match &self.cfg.auth {
            EndpointAuth::None => None,
            EndpointAuth::Bearer(t) => {
                req = req.header(AUTHORIZATION, format!("Bearer {}", t.expose()));
                None
            }
            EndpointAuth::Header { value, .. } => {
                req = req.header(AUTHORIZATION, value.expose());
                None
            }
            EndpointAuth::Client {
                method,
                client_id: id,
                secret,
            } => Some(match method {
                AuthMethod::ClientSecretBasic => ClientAuth::Basic { id, secret },
                AuthMethod::ClientSecretPost => ClientAuth::Post { id, secret },
                AuthMethod::ClientSecretJwt => ClientAuth::SecretJwt { id, secret },
                AuthMethod::PrivateKeyJwt | AuthMethod::TlsClientAuth => ClientAuth::Tls { id },
            }),
            EndpointAuth::Key { client_id: id, key } => Some(ClientAuth::KeyJwt { id, key }),
        };
        if let Some(client) = client
            && let Some(value) = client.apply(self.cfg.url.as_str(), &mut form)?
        {
            req = req.header(AUTHORIZATION, value);
        }
        Ok((req, form.finish()))
    }
}

/// RFC 7662 §2.2: a JSON object whose `active` member is REQUIRED and boolean.
pub fn parse(body: &[u8]) -> Result<Answer, IdpError> {
    let obj: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|_| IdpError::Protocol("introspection response is not a JSON object".into()))?;
    match obj.get("active") {
        Some(Value::Bool(true)) => Ok(Answer::Active(obj)),
        Some(Value::Bool(false)) => Ok(Answer::Inactive),
        _ => Err(IdpError::Protocol(
            "introspection response has no boolean \"active\"".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_must_be_a_boolean() {
        assert!(
            matches!(parse(br#"{"active":true,"sub":"a"}"#), Ok(Answer::Active(c)) if c["sub"] == "a")
        );
        assert_eq!(parse(br#"{"active":false}"#).unwrap(), Answer::Inactive);
        for bad in [
            &br#"{"active":"true"}"#[..],
            br#"{"sub":"a"}"#,
            br#"[]"#,
            b"nope",
        ] {
            assert!(matches!(parse(bad), Err(IdpError::Protocol(_))));
        }
    }

    proptest::proptest! {
        /// Whatever an endpoint answers is an answer or a protocol error, never a panic; an
        /// active answer is a JSON object with `active: true`.
        #[test]
        fn any_introspection_body_is_judged_safely(body in "[ -~]{0,80}", raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            for b in [body.as_bytes(), &raw[..]] {
                if let Ok(Answer::Active(c)) = parse(b) {
                    proptest::prop_assert_eq!(&c["active"], &Value::Bool(true));
                }
            }
        }
    }
}
