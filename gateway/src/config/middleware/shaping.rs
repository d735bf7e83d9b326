//! The traffic middlewares: `stripPrefix`, `addPrefix`, `replacePath`, `replacePathRegex` and
//! `headers` (custom headers and CORS), `retry` and `rateLimit`, validated with their key paths.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use crate::proxy::ratelimit::{RateLimitPolicy, Source};
use crate::store::rate::RateLimit;

/// Traefik's `rateLimit.period` default.
const DEFAULT_RATE_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

fn rate_limit(issues: &mut Issues, path: &str, raw: RawRateLimit) -> HttpMiddleware {
    let period = raw.period.unwrap_or(DEFAULT_RATE_PERIOD);
    if raw.average == 0 {
        issues.push(format!("{path}.average"), "must be at least 1");
    }
    let interval_us =
        u64::try_from(period.as_micros()).unwrap_or(u64::MAX) / u64::from(raw.average.max(1));
    if interval_us == 0 || period > std::time::Duration::from_secs(86_400) {
        issues.push(
            format!("{path}.period"),
            "with average, must allow between one request a day and a million a second",
        );
    }
    // Traefik's default burst is 1; a burst below the average per period would refuse a
    // client sending exactly its average in one go, so the default here is the average.
    let burst = raw.burst.unwrap_or(raw.average);
    if !(1..=1_000_000).contains(&burst) {
        issues.push(format!("{path}.burst"), "must be between 1 and 1000000");
    }
    let criterion = raw.source_criterion.unwrap_or_default();
    let chosen = usize::from(criterion.ip_strategy.is_some())
        + usize::from(criterion.request_header_name.is_some())
        + usize::from(criterion.request_host)
        + usize::from(criterion.client_id);
    if chosen > 1 {
        issues.push(
            format!("{path}.sourceCriterion"),
            "names more than one source; choose one of ipStrategy, requestHeaderName, requestHost, clientId",
        );
    }
    let source = if criterion.client_id {
        Source::ClientId
    } else if criterion.request_host {
        Source::RequestHost
    } else if let Some(name) = criterion.request_header_name {
        HeaderName::try_from(name.as_str()).map_or_else(
            |_| {
                issues.push(
                    format!("{path}.sourceCriterion.requestHeaderName"),
                    "not a valid header name",
                );
                Source::ClientIp
            },
            Source::RequestHeader,
        )
    } else {
        Source::ClientIp
    };
    HttpMiddleware::RateLimit(RateLimitPolicy {
        limit: RateLimit {
            interval_us: interval_us.max(1),
            burst: burst.max(1),
        },
        source,
        failure_mode_deny: raw.failure_mode_deny,
    })
}
use super::super::issues::Issues;
use super::{Declared, Options};
use crate::proxy::cors::Cors;
use crate::proxy::middleware::{Headers, HttpMiddleware};
use crate::proxy::retry::RetryPolicy;
use crate::proxy::rewrite::{HeaderRule, HeaderRules, PathRewrite, reserved};
use serde::Deserialize;

/// Most retries a request may get.
const MAX_ATTEMPTS: u32 = 10;
/// Share of a route's requests that may be retried, by default.
const DEFAULT_BUDGET_PERCENT: u32 = 20;

fn retry(issues: &mut Issues, path: &str, raw: RawRetry) -> HttpMiddleware {
    if !(1..=MAX_ATTEMPTS).contains(&raw.attempts) {
        issues.push(
            format!("{path}.attempts"),
            format!("must be between 1 and {MAX_ATTEMPTS}"),
        );
    }
    let budget_percent = raw.budget_percent.unwrap_or(DEFAULT_BUDGET_PERCENT);
    if !(1..=100).contains(&budget_percent) {
        issues.push(format!("{path}.budgetPercent"), "must be between 1 and 100");
    }
    let mut status = Vec::new();
    for (i, s) in raw.status.iter().enumerate() {
        let range = s.split_once('-').unwrap_or((s, s));
        match (range.0.trim().parse::<u16>(), range.1.trim().parse::<u16>()) {
            (Ok(lo), Ok(hi)) if (100..=599).contains(&lo) && (lo..=599).contains(&hi) => {
                status.push((lo, hi));
            }
            _ => issues.push(
                format!("{path}.status[{i}]"),
                "not a status or range of statuses (\"503\", \"500-599\")",
            ),
        }
    }
    HttpMiddleware::Retry(RetryPolicy {
        attempts: raw.attempts,
        initial_interval: raw.initial_interval.unwrap_or_default(),
        status,
        on_network_error: !raw.disable_retry_on_network_error,
        budget_percent,
    })
}

/// The path a rewrite option names must be one.
fn absolute(issues: &mut Issues, path: String, value: &str) {
    if !value.starts_with('/') {
        issues.push(path, "must start with /");
    }
}

fn strip_prefix(issues: &mut Issues, path: &str, raw: RawStripPrefix) -> HttpMiddleware {
    if raw.prefixes.is_empty() {
        issues.push(format!("{path}.prefixes"), "needs at least one prefix");
    }
    for (i, p) in raw.prefixes.iter().enumerate() {
        absolute(issues, format!("{path}.prefixes[{i}]"), p);
    }
    HttpMiddleware::Path(PathRewrite::StripPrefix(raw.prefixes))
}

fn add_prefix(issues: &mut Issues, path: &str, raw: RawAddPrefix) -> HttpMiddleware {
    absolute(issues, format!("{path}.prefix"), &raw.prefix);
    let prefix = raw.prefix.trim_end_matches('/').to_owned();
    if prefix.is_empty() && raw.prefix.starts_with('/') {
        issues.push(format!("{path}.prefix"), "adds nothing");
    }
    HttpMiddleware::Path(PathRewrite::AddPrefix(prefix))
}

fn replace_path(issues: &mut Issues, path: &str, raw: RawReplacePath) -> HttpMiddleware {
    absolute(issues, format!("{path}.path"), &raw.path);
    HttpMiddleware::Path(PathRewrite::ReplacePath(raw.path))
}

fn replace_path_regex(
    issues: &mut Issues,
    path: &str,
    raw: RawReplacePathRegex,
) -> Option<HttpMiddleware> {
    let regex = compile(issues, format!("{path}.regex"), &raw.regex)?;
    Some(HttpMiddleware::Path(PathRewrite::ReplacePathRegex {
        regex,
        replacement: raw.replacement,
    }))
}

fn compile(issues: &mut Issues, path: String, pattern: &str) -> Option<Regex> {
    Regex::new(pattern)
        .map_err(|e| issues.push(path, format!("not a valid regular expression: {e}")))
        .ok()
}

fn headers(issues: &mut Issues, path: &str, raw: RawHeaders) -> HttpMiddleware {
    let request = rules(
        issues,
        path,
        [
            ("customRequestHeaders", raw.custom_request_headers, false),
            ("addRequestHeaders", raw.add_request_headers, true),
        ],
    );
    let response = rules(
        issues,
        path,
        [
            ("customResponseHeaders", raw.custom_response_headers, false),
            ("addResponseHeaders", raw.add_response_headers, true),
        ],
    );
    let cors = cors(
        issues,
        path,
        raw.access_control_allow_origin_list,
        raw.access_control_allow_origin_list_regex,
        CorsRest {
            methods: raw.access_control_allow_methods,
            headers: raw.access_control_allow_headers,
            expose: raw.access_control_expose_headers,
            credentials: raw.access_control_allow_credentials,
            max_age: raw.access_control_max_age,
            vary: raw.add_vary_header,
        },
    );
    HttpMiddleware::Headers(Box::new(Headers {
        request,
        response,
        cors,
    }))
}

/// Header rules from `(option, fields, add)`: `add` appends; otherwise an empty value removes.
fn rules<const N: usize>(
    issues: &mut Issues,
    path: &str,
    options: [(&str, BTreeMap<String, String>, bool); N],
) -> HeaderRules {
    let mut out = Vec::new();
    for (option, fields, add) in options {
        for (name, value) in fields {
            let key = format!("{path}.{option}.{name}");
            let Ok(header) = HeaderName::try_from(name.as_str()) else {
                issues.push(key, "not a valid header name");
                continue;
            };
            if reserved(&header) {
                issues.push(
                    key,
                    "is managed by the gateway (framing and Host; use upstream.passHostHeader for Host)",
                );
                continue;
            }
            if value.is_empty() && !add {
                out.push(HeaderRule::Remove(header));
                continue;
            }
            match HeaderValue::try_from(value) {
                Ok(v) if add => out.push(HeaderRule::Add(header, v)),
                Ok(v) => out.push(HeaderRule::Set(header, v)),
                Err(_) => issues.push(key, "not a valid header value"),
            }
        }
    }
    HeaderRules(out)
}

/// The CORS options besides the origins.
struct CorsRest {
    methods: Vec<String>,
    headers: Vec<String>,
    expose: Vec<String>,
    credentials: bool,
    max_age: Option<u64>,
    vary: Option<bool>,
}

fn cors(
    issues: &mut Issues,
    path: &str,
    origins: Vec<String>,
    patterns: Vec<String>,
    rest: CorsRest,
) -> Option<Cors> {
    if origins.is_empty() && patterns.is_empty() {
        let set = !rest.methods.is_empty()
            || !rest.headers.is_empty()
            || !rest.expose.is_empty()
            || rest.credentials
            || rest.max_age.is_some();
        if set {
            issues.push(
                format!("{path}.accessControlAllowOriginList"),
                "is needed by the other accessControl options",
            );
        }
        return None;
    }
    for (i, o) in origins.iter().enumerate() {
        let p = format!("{path}.accessControlAllowOriginList[{i}]");
        if o == "*" {
            if rest.credentials {
                issues.push(
                    p,
                    "\"*\" with accessControlAllowCredentials would let every site make credentialed requests; list the origins",
                );
            }
            continue;
        }
        match url::Url::parse(o) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.origin().ascii_serialization() == *o => {}
            _ => issues.push(p, "not an origin (scheme://host[:port], no path) or *"),
        }
    }
    // Anchored at both ends, whatever the pattern says: an unanchored `https://app\.example`
    // (Traefik matches these unanchored) would allow `https://app.example.evil.net`.
    let origin_patterns = patterns
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            compile(
                issues,
                format!("{path}.accessControlAllowOriginListRegex[{i}]"),
                &format!("^(?:{p})$"),
            )
        })
        .collect();
    for (i, m) in rest.methods.iter().enumerate() {
        if Method::from_bytes(m.as_bytes()).is_err() {
            issues.push(
                format!("{path}.accessControlAllowMethods[{i}]"),
                "not a method",
            );
        }
    }
    let mut names = |option: &str, list: &[String]| {
        for (i, h) in list.iter().enumerate() {
            if HeaderName::try_from(h.as_str()).is_err() {
                issues.push(format!("{path}.{option}[{i}]"), "not a valid header name");
            }
        }
        joined(list)
    };
    let headers = names("accessControlAllowHeaders", &rest.headers);
    let expose = names("accessControlExposeHeaders", &rest.expose);
    Some(Cors {
        origins,
        origin_patterns,
        methods: joined(&rest.methods),
        headers,
        expose,
        credentials: rest.credentials,
        max_age: rest.max_age.map(HeaderValue::from),
        vary: rest.vary.unwrap_or(true),
    })
}

/// A list as one field value (`a, b`); `None` when empty or not a valid value (reported by the
/// item checks).
fn joined(list: &[String]) -> Option<HeaderValue> {
    if list.is_empty() {
        return None;
    }
    HeaderValue::try_from(list.join(", ")).ok()
}

/// The traffic kinds' options, each validated by the function of its name above.
macro_rules! traffic {
    ($($raw:ty => $validate:ident),* $(,)?) => {
        $(
            impl Options for $raw {
                fn declare(self, issues: &mut Issues, path: &str) -> Option<Declared> {
                    Some(Declared::Http($validate(issues, path, self)))
                }
            }
        )*
    };
}

traffic! {
    RawRateLimit => rate_limit,
    RawRetry => retry,
    RawStripPrefix => strip_prefix,
    RawAddPrefix => add_prefix,
    RawReplacePath => replace_path,
    RawHeaders => headers,
}

impl Options for RawReplacePathRegex {
    fn declare(self, issues: &mut Issues, path: &str) -> Option<Declared> {
        replace_path_regex(issues, path, self).map(Declared::Http)
    }
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

/// `rateLimit` (Traefik's, plus `sourceCriterion.clientId` and `failureModeDeny`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRateLimit {
    pub average: u32,
    #[serde(default, with = "humantime_serde")]
    pub period: Option<Duration>,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub source_criterion: Option<RawSourceCriterion>,
    #[serde(default)]
    pub failure_mode_deny: bool,
}

/// `rateLimit.sourceCriterion`: one of these.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSourceCriterion {
    /// The caller's address (no options: `forwardedHeaders` says whom to believe).
    #[serde(default)]
    pub ip_strategy: Option<RawIpStrategy>,
    #[serde(default)]
    pub request_header_name: Option<String>,
    #[serde(default)]
    pub request_host: bool,
    #[serde(default)]
    pub client_id: bool,
}

/// `ipStrategy`: the caller's address as `forwardedHeaders.trustedIPs` resolves it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpStrategy {}

/// `retry` (Traefik's, plus `budgetPercent`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRetry {
    pub attempts: u32,
    #[serde(default, with = "humantime_serde")]
    pub initial_interval: Option<Duration>,
    /// Statuses and ranges (`"503"`, `"500-599"`).
    #[serde(default)]
    pub status: Vec<String>,
    #[serde(default)]
    pub disable_retry_on_network_error: bool,
    #[serde(default)]
    pub budget_percent: Option<u32>,
}

/// `stripPrefix` (Traefik's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawStripPrefix {
    /// Prefixes, the first that matches is removed.
    pub prefixes: Vec<String>,
}

/// `addPrefix` (Traefik's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawAddPrefix {
    /// Put in front of the path.
    pub prefix: String,
}

/// `replacePath` (Traefik's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawReplacePath {
    /// The new path.
    pub path: String,
}

/// `replacePathRegex` (Traefik's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawReplacePathRegex {
    /// Matched against the path.
    pub regex: String,
    /// What each match becomes (`$1`, `${name}`).
    pub replacement: String,
}

/// `headers` (Traefik's custom headers and CORS options, plus `add*Headers`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHeaders {
    /// Set on the request; an empty value removes the field.
    #[serde(default)]
    pub custom_request_headers: BTreeMap<String, String>,
    /// Set on the answer; an empty value removes the field.
    #[serde(default)]
    pub custom_response_headers: BTreeMap<String, String>,
    /// Added to the request, keeping fields of the same name.
    #[serde(default)]
    pub add_request_headers: BTreeMap<String, String>,
    /// Added to the answer, keeping fields of the same name.
    #[serde(default)]
    pub add_response_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub access_control_allow_origin_list: Vec<String>,
    #[serde(default)]
    pub access_control_allow_origin_list_regex: Vec<String>,
    #[serde(default)]
    pub access_control_allow_methods: Vec<String>,
    #[serde(default)]
    pub access_control_allow_headers: Vec<String>,
    #[serde(default)]
    pub access_control_expose_headers: Vec<String>,
    #[serde(default)]
    pub access_control_allow_credentials: bool,
    /// Seconds.
    #[serde(default)]
    pub access_control_max_age: Option<u64>,
    #[serde(default)]
    pub add_vary_header: Option<bool>,
}
