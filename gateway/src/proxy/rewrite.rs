//! What a route changes in a request after its callers are authenticated: the path
//! (`stripPrefix`, `addPrefix`, `replacePath`, `replacePathRegex`) and header fields (`headers`'
//! custom request and response headers), with Traefik's semantics.
//!
//! A rewritten path is put in canonical form again before it is forwarded, so a rewrite cannot
//! turn a path that was routed as one thing into one the upstream resolves as another:
//! stripping `/api` from `/api../admin` leaves `/../admin`, which climbs above the root and is
//! refused, as it would have been had the caller sent it.

use http::header::{CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use regex::Regex;

use super::path::{PathError, PathPolicy, canonicalize};

/// One path rewrite.
#[derive(Debug, Clone)]
pub enum PathRewrite {
    /// `stripPrefix.prefixes`: the first that the path starts with is removed (as a string
    /// prefix, like Traefik) and sent as `X-Forwarded-Prefix`.
    StripPrefix(Vec<String>),
    /// `addPrefix.prefix`: put in front of the path (no trailing `/`).
    AddPrefix(String),
    /// `replacePath.path`: the whole path; the old one goes in `X-Replaced-Path`.
    ReplacePath(String),
    /// `replacePathRegex`: every match replaced (`$1`, `${name}` refer to groups); the old path
    /// goes in `X-Replaced-Path`.
    ReplacePathRegex {
        /// The expression.
        regex: Regex,
        /// The replacement.
        replacement: String,
    },
}

const FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
const REPLACED_PATH: HeaderName = HeaderName::from_static("x-replaced-path");

impl PathRewrite {
    /// The rewritten path, or `None` when the rewrite does not apply; records what it did in
    /// `headers`.
    fn rewrite(&self, path: &str, headers: &mut HeaderMap) -> Option<String> {
        match self {
            Self::StripPrefix(prefixes) => {
                let prefix = prefixes.iter().find(|p| path.starts_with(p.as_str()))?;
                let rest = &path[prefix.len()..];
                if let Ok(v) = HeaderValue::try_from(prefix.as_str()) {
                    headers.insert(FORWARDED_PREFIX, v);
                }
                Some(if rest.starts_with('/') {
                    rest.to_owned()
                } else {
                    format!("/{rest}")
                })
            }
            Self::AddPrefix(prefix) => Some(format!("{prefix}{path}")),
            Self::ReplacePath(new) => {
                replaced(path, headers);
                Some(new.clone())
            }
            Self::ReplacePathRegex { regex, replacement } => {
                if !regex.is_match(path) {
                    return None;
                }
                replaced(path, headers);
                Some(regex.replace_all(path, replacement.as_str()).into_owned())
            }
        }
    }

    /// Rewrites `uri`'s path (its query stays), in canonical form under `policy`.
    pub fn apply(
        &self,
        uri: &mut Uri,
        headers: &mut HeaderMap,
        policy: &PathPolicy,
    ) -> Result<(), PathError> {
        let Some(path) = self.rewrite(uri.path(), headers) else {
            return Ok(());
        };
        let canonical = canonicalize(&path, policy)?;
        let path_and_query = match uri.query() {
            Some(q) => format!("{}?{q}", canonical.path),
            None => canonical.path.into_owned(),
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(
            PathAndQuery::try_from(path_and_query).map_err(|_| PathError::ForbiddenCharacter)?,
        );
        *uri = Uri::from_parts(parts).map_err(|_| PathError::ForbiddenCharacter)?;
        Ok(())
    }
}

fn replaced(path: &str, headers: &mut HeaderMap) {
    if let Ok(v) = HeaderValue::try_from(path) {
        headers.insert(REPLACED_PATH, v);
    }
}

/// Changes to header fields, in order.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules(pub Vec<HeaderRule>);

/// One change to a header field.
#[derive(Debug, Clone)]
pub enum HeaderRule {
    /// Replace every field of the name by this one (`customRequestHeaders: { X: v }`).
    Set(HeaderName, HeaderValue),
    /// Add a field, keeping those there (`addRequestHeaders`).
    Add(HeaderName, HeaderValue),
    /// Remove every field of the name (`customRequestHeaders: { X: "" }`).
    Remove(HeaderName),
}

impl HeaderRules {
    /// Applies the changes.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for rule in &self.0 {
            match rule {
                HeaderRule::Set(name, value) => {
                    headers.insert(name.clone(), value.clone());
                }
                HeaderRule::Add(name, value) => {
                    headers.append(name.clone(), value.clone());
                }
                HeaderRule::Remove(name) => {
                    headers.remove(name);
                }
            }
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Header fields that framing or routing own: a rule may not change them (`Host` is
/// `passHostHeader`'s).
pub fn reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    ) || name == HOST
        || name == CONTENT_LENGTH
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(rewrite: &PathRewrite, target: &str) -> (Result<String, PathError>, HeaderMap) {
        let mut uri: Uri = target.parse().unwrap();
        let mut headers = HeaderMap::new();
        let out = rewrite
            .apply(&mut uri, &mut headers, &PathPolicy::default())
            .map(|()| uri.to_string());
        (out, headers)
    }

    #[test]
    fn strip_prefix_removes_the_first_matching_prefix_and_says_which() {
        let strip = PathRewrite::StripPrefix(vec!["/api/v1".into(), "/api".into()]);
        let (out, h) = rewritten(&strip, "/api/v1/users?x=1");
        assert_eq!(out.unwrap(), "/users?x=1");
        assert_eq!(h[FORWARDED_PREFIX], "/api/v1");
        assert_eq!(rewritten(&strip, "/api").0.unwrap(), "/");
        // A string prefix, as in Traefik.
        assert_eq!(rewritten(&strip, "/apiary").0.unwrap(), "/ary");
        let (out, h) = rewritten(&strip, "/other");
        assert_eq!(out.unwrap(), "/other");
        assert!(h.is_empty());
    }

    #[test]
    fn a_rewrite_that_climbs_above_the_root_is_refused() {
        let strip = PathRewrite::StripPrefix(vec!["/api".into()]);
        assert_eq!(
            rewritten(&strip, "/api../admin").0,
            Err(PathError::AboveRoot)
        );
        let replace = PathRewrite::ReplacePathRegex {
            regex: Regex::new("^/a/(.*)$").unwrap(),
            replacement: "/b/$1/../../c".into(),
        };
        assert_eq!(rewritten(&replace, "/a/x").0.unwrap(), "/c");
    }

    #[test]
    fn replacements_keep_the_old_path_in_a_header() {
        let replace = PathRewrite::ReplacePathRegex {
            regex: Regex::new("^/users/([0-9]+)$").unwrap(),
            replacement: "/v2/accounts/${1}".into(),
        };
        let (out, h) = rewritten(&replace, "/users/42?full");
        assert_eq!(out.unwrap(), "/v2/accounts/42?full");
        assert_eq!(h[REPLACED_PATH], "/users/42");
        assert_eq!(rewritten(&replace, "/users/x").0.unwrap(), "/users/x");
        let (out, h) = rewritten(&PathRewrite::ReplacePath("/health".into()), "/x");
        assert_eq!(out.unwrap(), "/health");
        assert_eq!(h[REPLACED_PATH], "/x");
        assert_eq!(
            rewritten(&PathRewrite::AddPrefix("/svc".into()), "/x")
                .0
                .unwrap(),
            "/svc/x"
        );
    }

    #[test]
    fn header_rules_set_add_and_remove_in_order() {
        let rules = HeaderRules(vec![
            HeaderRule::Set(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("1"),
            ),
            HeaderRule::Add(
                HeaderName::from_static("x-b"),
                HeaderValue::from_static("2"),
            ),
            HeaderRule::Remove(HeaderName::from_static("x-c")),
        ]);
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("old"));
        h.append("x-a", HeaderValue::from_static("older"));
        h.append("x-b", HeaderValue::from_static("kept"));
        h.append("x-c", HeaderValue::from_static("gone"));
        rules.apply(&mut h);
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), ["1"]);
        assert_eq!(h.get_all("x-b").iter().collect::<Vec<_>>(), ["kept", "2"]);
        assert!(!h.contains_key("x-c"));
    }
}
