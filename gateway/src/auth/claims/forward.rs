//! Writing what a middleware learnt onto the upstream request.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

/// Sets each `(header, claim)` from `claims`. A header of that name sent by the caller is ALWAYS
/// removed first, whether or not the claim exists: a caller can never supply a value the
/// upstream would take for a verified claim.
pub fn forward_claims(
    headers: &mut HeaderMap,
    mapping: &[(HeaderName, String)],
    claims: Option<&Map<String, Value>>,
) {
    for (name, claim) in mapping {
        headers.remove(name);
        let value = claims
            .and_then(|c| super::lookup(c, claim))
            .and_then(super::as_text)
            .and_then(|text| HeaderValue::try_from(text).ok());
        if let Some(v) = value {
            headers.insert(name.clone(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_value_is_dropped_even_when_the_claim_is_missing() {
        let mut h = HeaderMap::new();
        h.append("sub", HeaderValue::from_static("admin"));
        h.append("sub", HeaderValue::from_static("root"));
        h.insert("x-team", HeaderValue::from_static("spoofed"));
        let claims: Map<String, Value> = serde_json::from_str(r#"{"sub":"svc-1"}"#).unwrap();
        let mapping = [
            (HeaderName::from_static("sub"), "sub".into()),
            (HeaderName::from_static("x-team"), "team".into()),
        ];
        forward_claims(&mut h, &mapping, Some(&claims));
        assert_eq!(h.get_all("sub").iter().collect::<Vec<_>>(), ["svc-1"]);
        assert!(h.get("x-team").is_none());
    }
}
