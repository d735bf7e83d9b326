//! Which requests a route takes: a boolean rule over the request's host, path, method, headers,
//! query and peer address, and the route's priority.
//!
//! One engine serves both ways of writing a route. The native `match` block (`host`, `path`,
//! `pathPrefix`, `methods`, `headers`) is turned into a rule here; `match.rule` is Traefik's rule
//! language (v3 syntax), parsed by [`parse`]. Both become the same [`Rule`], evaluated against the
//! request once the edge has put its path in canonical form.
//!
//! Priority is Traefik's: an explicit `priority`, or else the length of the rule's text (for a
//! native `match`, the text of the equivalent Traefik rule), the longest first. Routes of equal
//! priority keep their order in the file.

mod parse;

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use regex::Regex;

pub use parse::{RuleError, parse};

/// A request as rules see it: the edge has checked the host and put the path in canonical form.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The method.
    pub method: &'a Method,
    /// The host, lower-case and without port.
    pub host: Option<&'a str>,
    /// The canonical path.
    pub path: &'a str,
    /// The raw query string, if any.
    pub query: Option<&'a str>,
    /// The request's headers.
    pub headers: &'a HeaderMap,
    /// The address of the connection's peer (not the forwarded caller: `ClientIP` is Traefik's,
    /// which ignores `X-Forwarded-For`).
    pub peer: IpAddr,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub enum Rule {
    /// `Host`: the host, lower-case.
    Host(String),
    /// `host: "*.example.com"` in a native match: one label, then this suffix (`.example.com`).
    HostWildcard(String),
    /// `HostRegexp`, against the lower-case host.
    HostRegexp(Regex),
    /// `Path`: the whole path.
    Path(String),
    /// `PathPrefix`: a plain string prefix (`/app` matches `/apple`, as in Traefik).
    PathPrefix(String),
    /// `PathRegexp`.
    PathRegexp(Regex),
    /// `Method`.
    Method(Method),
    /// `Header`: some field of that name has exactly this value.
    Header(HeaderName, HeaderValue),
    /// `HeaderRegexp`: some field of that name matches.
    HeaderRegexp(HeaderName, Regex),
    /// `Query`: some parameter of that name has this (decoded) value; `""` for `Query(`k`)`.
    Query(String, String),
    /// `QueryRegexp`.
    QueryRegexp(String, Regex),
    /// `ClientIP`: the peer address is in this network.
    ClientIp(IpNet),
    /// `&&`.
    All(Vec<Rule>),
    /// `||`.
    Any(Vec<Rule>),
    /// `!`.
    Not(Box<Rule>),
}

impl Rule {
    /// Whether the request satisfies the rule.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        match self {
            Self::Host(h) => req.host == Some(h.as_str()),
            Self::HostWildcard(suffix) => req.host.is_some_and(|h| {
                h.strip_suffix(suffix.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            }),
            Self::HostRegexp(re) => req.host.is_some_and(|h| re.is_match(h)),
            Self::Path(p) => req.path == p,
            Self::PathPrefix(p) => req.path.starts_with(p.as_str()),
            Self::PathRegexp(re) => re.is_match(req.path),
            Self::Method(m) => req.method == m,
            Self::Header(name, value) => req.headers.get_all(name).iter().any(|v| v == value),
            Self::HeaderRegexp(name, re) => req
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| re.is_match(v))),
            Self::Query(key, value) => {
                query_pairs(req.query).any(|(k, v)| k == *key && v == *value)
            }
            Self::QueryRegexp(key, re) => {
                query_pairs(req.query).any(|(k, v)| k == *key && re.is_match(&v))
            }
            Self::ClientIp(net) => net.contains(&req.peer),
            Self::All(rules) => rules.iter().all(|r| r.matches(req)),
            Self::Any(rules) => rules.iter().any(|r| r.matches(req)),
            Self::Not(rule) => !rule.matches(req),
        }
    }

    /// Every path literal (`Path`, `PathPrefix`) the rule holds, for validation.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Self::Path(p) | Self::PathPrefix(p) => vec![p.as_str()],
            Self::All(rules) | Self::Any(rules) => rules.iter().flat_map(Self::paths).collect(),
            Self::Not(rule) => rule.paths(),
            _ => Vec::new(),
        }
    }
}

fn query_pairs(
    query: Option<&str>,
) -> impl Iterator<Item = (std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
}

/// A native `match` block, validated field by field by the configuration.
#[derive(Debug, Default)]
pub struct NativeMatch {
    /// Lower-case host, or `*.` and a suffix.
    pub host: Option<String>,
    /// Exact path.
    pub path: Option<String>,
    /// Path prefix; `/` when neither it nor `path` is given.
    pub path_prefix: Option<String>,
    /// Methods, upper case; any of them.
    pub methods: Vec<Method>,
    /// Header fields that must carry these values.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl NativeMatch {
    /// The rule, and the text of the equivalent Traefik rule (whose length is the default
    /// priority).
    pub fn compile(self) -> (Rule, String) {
        let mut rules = Vec::new();
        let mut text = Vec::new();
        if let Some(h) = self.host {
            text.push(format!("Host(`{h}`)"));
            rules.push(match h.strip_prefix('*') {
                Some(suffix) => Rule::HostWildcard(suffix.to_owned()),
                None => Rule::Host(h),
            });
        }
        match (self.path, self.path_prefix) {
            (Some(p), _) => {
                text.push(format!("Path(`{p}`)"));
                rules.push(Rule::Path(p));
            }
            (None, p) => {
                let p = p.unwrap_or_else(|| "/".to_owned());
                text.push(format!("PathPrefix(`{p}`)"));
                rules.push(Rule::PathPrefix(p));
            }
        }
        if !self.methods.is_empty() {
            let methods: Vec<String> = self
                .methods
                .iter()
                .map(|m| format!("Method(`{m}`)"))
                .collect();
            text.push(if methods.len() == 1 {
                methods.concat()
            } else {
                format!("({})", methods.join(" || "))
            });
            rules.push(Rule::Any(
                self.methods.into_iter().map(Rule::Method).collect(),
            ));
        }
        for (name, value) in self.headers {
            text.push(format!(
                "Header(`{name}`, `{}`)",
                String::from_utf8_lossy(value.as_bytes())
            ));
            rules.push(Rule::Header(name, value));
        }
        let rule = if rules.len() == 1 {
            rules.pop().expect("one rule")
        } else {
            Rule::All(rules)
        };
        (rule, text.join(" && "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(
        method: &'a Method,
        host: Option<&'a str>,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> RequestView<'a> {
        RequestView {
            method,
            host,
            path,
            query,
            headers,
            peer: [10, 1, 2, 3].into(),
        }
    }

    #[test]
    fn native_match_reads_as_the_equivalent_traefik_rule() {
        let (rule, text) = NativeMatch {
            host: Some("*.example.com".into()),
            path_prefix: Some("/api".into()),
            methods: vec![Method::GET, Method::HEAD],
            headers: vec![(
                HeaderName::from_static("x-tenant"),
                HeaderValue::from_static("a"),
            )],
            ..NativeMatch::default()
        }
        .compile();
        assert_eq!(
            text,
            "Host(`*.example.com`) && PathPrefix(`/api`) && (Method(`GET`) || Method(`HEAD`)) && Header(`x-tenant`, `a`)"
        );
        let mut h = HeaderMap::new();
        h.insert("x-tenant", HeaderValue::from_static("a"));
        let get = Method::GET;
        assert!(rule.matches(&view(&get, Some("eu.example.com"), "/api/x", None, &h)));
        assert!(!rule.matches(&view(&get, Some("a.eu.example.com"), "/api/x", None, &h)));
        assert!(!rule.matches(&view(&get, Some("example.com"), "/api/x", None, &h)));
        assert!(!rule.matches(&view(
            &Method::POST,
            Some("eu.example.com"),
            "/api",
            None,
            &h
        )));
        assert!(!rule.matches(&view(
            &get,
            Some("eu.example.com"),
            "/api",
            None,
            &HeaderMap::new()
        )));
    }

    #[test]
    fn an_empty_native_match_is_every_path() {
        let (rule, text) = NativeMatch::default().compile();
        assert_eq!(text, "PathPrefix(`/`)");
        let h = HeaderMap::new();
        assert!(rule.matches(&view(&Method::GET, None, "/anything", None, &h)));
    }

    #[test]
    fn query_values_are_compared_decoded() {
        let rule = parse("Query(`q`, `a b`) && !Query(`debug`)").unwrap();
        let h = HeaderMap::new();
        let get = Method::GET;
        assert!(rule.matches(&view(&get, None, "/", Some("q=a%20b"), &h)));
        assert!(rule.matches(&view(&get, None, "/", Some("x=1&q=a+b"), &h)));
        assert!(!rule.matches(&view(&get, None, "/", Some("q=a+b&debug"), &h)));
        assert!(!rule.matches(&view(&get, None, "/", None, &h)));
    }

    #[test]
    fn client_ip_is_the_peer() {
        let h = HeaderMap::new();
        let get = Method::GET;
        assert!(
            parse("ClientIP(`10.0.0.0/8`)")
                .unwrap()
                .matches(&view(&get, None, "/", None, &h))
        );
        assert!(
            !parse("ClientIP(`10.1.2.4`)")
                .unwrap()
                .matches(&view(&get, None, "/", None, &h))
        );
    }
}
