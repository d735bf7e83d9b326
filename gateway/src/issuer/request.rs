//! Reading a token request (RFC 6749 §3.2, §4.4.2) and telling how its client authenticates
//! (§2.3.1 `client_secret_basic` / `client_secret_post`, RFC 7523 §2.2 JWT assertions).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use http::header::{AUTHORIZATION, CONTENT_TYPE};

use super::error::OAuthError;

/// RFC 7523 §2.2: the `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The form parameters, each present at most once; empty values count as absent (§3.1).
#[derive(Debug, Default)]
pub struct Form(BTreeMap<String, String>);

impl Form {
    /// Parses an `application/x-www-form-urlencoded` body.
    pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Self, OAuthError> {
        let form_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        if !form_type {
            return Err(OAuthError::invalid_request(
                "the body must be application/x-www-form-urlencoded",
            ));
        }
        let mut params = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(body) {
            if v.is_empty() {
                continue;
            }
            if params.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(OAuthError::invalid_request(
                    "a request parameter is repeated",
                ));
            }
        }
        Ok(Self(params))
    }

    /// A parameter's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// How the client authenticates.
#[derive(PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_secret_basic`, or `client_secret_post` (`basic` tells which, for the challenge).
    Secret {
        /// The client id.
        client_id: String,
        /// The secret as sent.
        secret: String,
        /// Whether it came in the `Authorization` header.
        basic: bool,
    },
    /// A JWT client assertion (RFC 7523 §2.2), with the `client_id` if the client sent one.
    Assertion {
        /// The assertion.
        jwt: String,
        /// The optional `client_id` parameter.
        client_id: Option<String>,
    },
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret {
                client_id, basic, ..
            } => write!(f, "Secret({client_id}, basic: {basic})"),
            Self::Assertion { client_id, .. } => write!(f, "Assertion({client_id:?})"),
        }
    }
}

impl ClientAuth {
    /// Finds the single authentication method of the request (§2.3: a client must not use more
    /// than one).
    pub fn of(headers: &HeaderMap, form: &Form) -> Result<Self, OAuthError> {
        let basic = headers
            .get(AUTHORIZATION)
            .map(|v| basic_credentials(v.as_bytes()));
        let post = form.get("client_secret");
        let assertion = (
            form.get("client_assertion"),
            form.get("client_assertion_type"),
        );
        let used = [basic.is_some(), post.is_some(), assertion != (None, None)];
        if used.iter().filter(|u| **u).count() > 1 {
            return Err(OAuthError::invalid_request(
                "use exactly one client authentication method",
            ));
        }
        if let Some(basic) = basic {
            let (client_id, secret) = basic
                .ok_or_else(|| OAuthError::invalid_client(true, "malformed Basic credentials"))?;
            if form.get("client_id").is_some_and(|id| id != client_id) {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the authenticated client",
                ));
            }
            return Ok(Self::Secret {
                client_id,
                secret,
                basic: true,
            });
        }
        if let Some(secret) = post {
            let client_id = form
                .get("client_id")
                .ok_or_else(|| OAuthError::invalid_request("client_secret needs client_id"))?;
            return Ok(Self::Secret {
                client_id: client_id.to_owned(),
                secret: secret.to_owned(),
                basic: false,
            });
        }
        match assertion {
            (Some(jwt), Some(JWT_BEARER)) => Ok(Self::Assertion {
                jwt: jwt.to_owned(),
                client_id: form.get("client_id").map(str::to_owned),
            }),
            (_, Some(_)) => Err(OAuthError::invalid_client(
                false,
                "unsupported client_assertion_type",
            )),
            (Some(_), None) => Err(OAuthError::invalid_request(
                "client_assertion needs client_assertion_type",
            )),
            (None, None) => Err(OAuthError::invalid_client(
                true,
                "client authentication required",
            )),
        }
    }
}

/// RFC 6749 §2.3.1: `Basic base64(urlencode(id) ":" urlencode(secret))`. `None` if the header
/// is Basic but malformed; `Some(Err)`-like results are folded into `None` too, since either way
/// the client failed to authenticate.
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let unescape = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let (id, secret) = (unescape(id), unescape(secret));
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

    fn auth(extra: &[(&str, &str)], body: &str) -> Result<ClientAuth, OAuthError> {
        let mut pairs = vec![FORM];
        pairs.extend_from_slice(extra);
        let h = headers(&pairs);
        ClientAuth::of(&h, &Form::parse(&h, body.as_bytes())?)
    }

    fn basic(raw: &str) -> String {
        format!("Basic {}", STANDARD.encode(raw))
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        // RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
        let a = auth(&[("authorization", &basic("my%3Aapp:p%40ss+word"))], "").unwrap();
        assert_eq!(
            a,
            ClientAuth::Secret {
                client_id: "my:app".into(),
                secret: "p@ss word".into(),
                basic: true
            }
        );
    }

    #[test]
    fn exactly_one_method() {
        let both = auth(
            &[("authorization", &basic("a:b"))],
            "client_id=a&client_secret=b",
        );
        assert_eq!(both.unwrap_err().code, "invalid_request");
        let none = auth(&[], "grant_type=client_credentials&client_id=a").unwrap_err();
        assert_eq!((none.code, none.status.as_u16()), ("invalid_client", 401));
        let post = auth(&[], "client_id=a&client_secret=b").unwrap();
        assert!(matches!(post, ClientAuth::Secret { basic: false, .. }));
        let jwt = auth(
            &[],
            &format!("client_assertion=x.y.z&client_assertion_type={JWT_BEARER}"),
        );
        assert!(matches!(
            jwt.unwrap(),
            ClientAuth::Assertion {
                client_id: None,
                ..
            }
        ));
        let other = auth(&[], "client_assertion=x&client_assertion_type=urn:other").unwrap_err();
        assert_eq!(other.code, "invalid_client");
        let bad_basic = auth(&[("authorization", "Basic !!!")], "").unwrap_err();
        assert_eq!(
            (bad_basic.code, bad_basic.challenge),
            ("invalid_client", true)
        );
        let mismatch = auth(&[("authorization", &basic("a:b"))], "client_id=c").unwrap_err();
        assert_eq!(mismatch.code, "invalid_request");
    }

    #[test]
    fn forms_refuse_repeats_and_other_media_types() {
        let h = headers(&[FORM]);
        let repeated = Form::parse(&h, b"scope=a&scope=b").unwrap_err();
        assert_eq!(repeated.code, "invalid_request");
        // An empty value is an omitted parameter (§3.1), so it cannot count as a repeat.
        assert!(Form::parse(&h, b"scope=&scope=b").is_ok());
        let json = headers(&[("content-type", "application/json")]);
        assert_eq!(
            Form::parse(&json, b"{}").unwrap_err().code,
            "invalid_request"
        );
        let charset = headers(&[(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )]);
        assert!(Form::parse(&charset, b"a=1").is_ok());
    }
}
