//! The request edge's settings: path canonicalisation, encoded characters, forwarding headers,
//! connection limits, caller limits and miss budgets. Each setting is defined by the module that
//! applies it; this file only reads them from the file and checks them.

use std::time::Duration;

use ipnet::IpNet;

use super::issues::Issues;
use crate::auth::limits::{BucketConfig, CallerLimits, MissBudgetConfig};
use crate::http::TransportLimits;
use crate::proxy::edge::EdgeConfig;
use crate::proxy::forward::ForwardedHeaders;
use crate::proxy::path::{EncodedCharacters, PathPolicy};
use serde::Deserialize;

/// The top-level sections that make up the edge settings, as written.
pub(super) struct RawEdge<'a> {
    pub paths: &'a RawPaths,
    pub encoded_characters: &'a RawEncodedCharacters,
    pub forwarded_headers: &'a RawForwardedHeaders,
    pub transport: &'a RawTransport,
    pub http2: &'a RawHttp2,
    pub limits: &'a RawCallerLimits,
    pub idp_miss_budget: &'a RawMissBudget,
}

/// Reads the edge settings.
pub(super) fn edge(issues: &mut Issues, raw: &RawEdge<'_>) -> EdgeConfig {
    let defaults = PathPolicy::default();
    let paths = PathPolicy {
        normalize: raw.paths.normalize.unwrap_or(defaults.normalize),
        merge_slashes: raw.paths.merge_slashes.unwrap_or(defaults.merge_slashes),
    };
    EdgeConfig {
        paths,
        encoded_characters: encoded_characters(
            raw.encoded_characters,
            EncodedCharacters::default(),
        ),
        forwarded: forwarded(issues, raw.forwarded_headers),
        transport: transport(issues, raw),
        caller_limits: caller_limits(issues, raw.limits),
        miss_budget: miss_budget(issues, raw.idp_miss_budget),
    }
}

/// `encodedCharacters`, each unset option taken from `base`.
pub(super) fn encoded_characters(
    raw: &RawEncodedCharacters,
    base: EncodedCharacters,
) -> EncodedCharacters {
    EncodedCharacters {
        slash: raw.allow_encoded_slash.unwrap_or(base.slash),
        back_slash: raw.allow_encoded_back_slash.unwrap_or(base.back_slash),
        null_character: raw
            .allow_encoded_null_character
            .unwrap_or(base.null_character),
        semicolon: raw.allow_encoded_semicolon.unwrap_or(base.semicolon),
        percent: raw.allow_encoded_percent.unwrap_or(base.percent),
        question_mark: raw
            .allow_encoded_question_mark
            .unwrap_or(base.question_mark),
        hash: raw.allow_encoded_hash.unwrap_or(base.hash),
    }
}

fn forwarded(issues: &mut Issues, raw: &RawForwardedHeaders) -> ForwardedHeaders {
    let trusted = raw
        .trusted_ips
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let parsed = t
                .parse::<IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from));
            parsed
                .map_err(|_| {
                    issues.push(
                        format!("forwardedHeaders.trustedIPs[{i}]"),
                        format!("{t:?} is not an IP address or CIDR"),
                    )
                })
                .ok()
        })
        .collect();
    ForwardedHeaders {
        trusted,
        insecure: raw.insecure,
    }
}

fn transport(issues: &mut Issues, raw: &RawEdge<'_>) -> TransportLimits {
    let d = TransportLimits::default();
    let t = &raw.transport;
    let h2 = &raw.http2;
    let limits = TransportLimits {
        max_connections: t.max_connections.unwrap_or(d.max_connections),
        max_header_bytes: t.max_header_bytes.unwrap_or(d.max_header_bytes),
        max_headers: t.max_headers.unwrap_or(d.max_headers),
        read_header_timeout: t
            .responding_timeouts
            .read_header_timeout
            .unwrap_or(d.read_header_timeout),
        idle_timeout: t.responding_timeouts.idle_timeout.unwrap_or(d.idle_timeout),
        max_concurrent_streams: h2
            .max_concurrent_streams
            .unwrap_or(d.max_concurrent_streams),
        keep_alive_interval: h2.keep_alive_interval.unwrap_or(d.keep_alive_interval),
        keep_alive_timeout: h2.keep_alive_timeout.unwrap_or(d.keep_alive_timeout),
        max_upgraded_connections: t.upgrades.max_connections,
        upgraded_max_lifetime: t.upgrades.max_lifetime,
    };
    if limits.max_connections == 0 {
        issues.push("transport.maxConnections", "must be at least 1");
    }
    if let Some(n) = limits.max_upgraded_connections
        && (n == 0 || n > limits.max_connections)
    {
        issues.push(
            "transport.upgrades.maxConnections",
            "must be between 1 and transport.maxConnections (upgraded connections count there too)",
        );
    }
    if limits.upgraded_max_lifetime.is_some_and(|l| l.is_zero()) {
        issues.push(
            "transport.upgrades.maxLifetime",
            "must be greater than zero",
        );
    }
    // hyper's parser needs a buffer of at least 8 KiB, and no request line fits in less.
    if !(8192..=1024 * 1024).contains(&limits.max_header_bytes) {
        issues.push(
            "transport.maxHeaderBytes",
            "must be between 8192 and 1048576",
        );
    }
    if !(1..=1000).contains(&limits.max_headers) {
        issues.push("transport.maxHeaders", "must be between 1 and 1000");
    }
    for (path, value) in [
        (
            "transport.respondingTimeouts.readHeaderTimeout",
            limits.read_header_timeout,
        ),
        (
            "transport.respondingTimeouts.idleTimeout",
            limits.idle_timeout,
        ),
        ("http2.keepAliveInterval", limits.keep_alive_interval),
        ("http2.keepAliveTimeout", limits.keep_alive_timeout),
    ] {
        if value.is_zero() {
            issues.push(path, "must be greater than zero");
        }
    }
    if limits.max_concurrent_streams == 0 {
        issues.push("http2.maxConcurrentStreams", "must be at least 1");
    }
    limits
}

fn caller_limits(issues: &mut Issues, raw: &RawCallerLimits) -> CallerLimits {
    let d = CallerLimits::default();
    let limits = CallerLimits {
        client_id_max_length: raw.client_id_max_length.unwrap_or(d.client_id_max_length),
        client_secret_max_length: raw
            .client_secret_max_length
            .unwrap_or(d.client_secret_max_length),
        token_max_length: raw.token_max_length.unwrap_or(d.token_max_length),
    };
    for (path, value) in [
        ("limits.clientIdMaxLength", limits.client_id_max_length),
        (
            "limits.clientSecretMaxLength",
            limits.client_secret_max_length,
        ),
        ("limits.tokenMaxLength", limits.token_max_length),
    ] {
        if !(1..=64 * 1024).contains(&value) {
            issues.push(path, "must be between 1 and 65536");
        }
    }
    limits
}

fn miss_budget(issues: &mut Issues, raw: &RawMissBudget) -> MissBudgetConfig {
    let d = MissBudgetConfig::default();
    let mut bucket = |path: &str, raw: Option<&RawBucket>, default: Option<BucketConfig>| {
        let Some(raw) = raw else { return default };
        if raw.average == 0 {
            return None;
        }
        let period = raw.period.unwrap_or(Duration::from_secs(1));
        if period.is_zero() {
            issues.push(format!("{path}.period"), "must be greater than zero");
            return default;
        }
        let burst = raw.burst.unwrap_or(raw.average);
        if burst == 0 {
            issues.push(format!("{path}.burst"), "must be at least 1");
            return default;
        }
        Some(BucketConfig {
            average: raw.average,
            period,
            burst,
        })
    };
    MissBudgetConfig {
        per_client_id: bucket(
            "idpMissBudget.perClientId",
            raw.per_client_id.as_ref(),
            d.per_client_id,
        ),
        per_address: bucket(
            "idpMissBudget.perAddress",
            raw.per_address.as_ref(),
            d.per_address,
        ),
        ipv6_subnet: match raw.ipv6_subnet {
            None => d.ipv6_subnet,
            Some(bits @ 1..=128) => bits,
            Some(_) => {
                issues.push("idpMissBudget.ipv6Subnet", "must be between 1 and 128");
                d.ipv6_subnet
            }
        },
    }
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

/// `paths`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawPaths {
    #[serde(default)]
    pub normalize: Option<bool>,
    #[serde(default)]
    pub merge_slashes: Option<bool>,
}

/// `encodedCharacters` (Traefik's names), top level or per route.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawEncodedCharacters {
    #[serde(default)]
    pub allow_encoded_slash: Option<bool>,
    #[serde(default)]
    pub allow_encoded_back_slash: Option<bool>,
    #[serde(default)]
    pub allow_encoded_null_character: Option<bool>,
    #[serde(default)]
    pub allow_encoded_semicolon: Option<bool>,
    #[serde(default)]
    pub allow_encoded_percent: Option<bool>,
    #[serde(default)]
    pub allow_encoded_question_mark: Option<bool>,
    #[serde(default)]
    pub allow_encoded_hash: Option<bool>,
}

/// `forwardedHeaders` (Traefik's names).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawForwardedHeaders {
    /// Peers (IPs or CIDRs) whose forwarding headers are kept and extended.
    #[serde(default, rename = "trustedIPs")]
    pub trusted_ips: Vec<String>,
    /// Trust every peer. For tests behind a proxy you control only.
    #[serde(default)]
    pub insecure: bool,
}

/// `transport`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawTransport {
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub max_header_bytes: Option<usize>,
    #[serde(default)]
    pub max_headers: Option<usize>,
    #[serde(default)]
    pub responding_timeouts: RawRespondingTimeouts,
    /// Upgraded connections (WebSocket).
    #[serde(default)]
    pub upgrades: RawUpgrades,
}

/// `transport.upgrades`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawUpgrades {
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub max_lifetime: Option<Duration>,
}

/// `transport.respondingTimeouts`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRespondingTimeouts {
    #[serde(default, with = "humantime_serde")]
    pub read_header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

/// `http2`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHttp2 {
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub keep_alive_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub keep_alive_timeout: Option<Duration>,
}

/// `limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawCallerLimits {
    #[serde(default)]
    pub client_id_max_length: Option<usize>,
    #[serde(default)]
    pub client_secret_max_length: Option<usize>,
    #[serde(default)]
    pub token_max_length: Option<usize>,
}

/// `idpMissBudget`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMissBudget {
    #[serde(default)]
    pub per_client_id: Option<RawBucket>,
    #[serde(default)]
    pub per_address: Option<RawBucket>,
    /// IPv6 callers share buckets per prefix of this many bits (Traefik's `ipv6Subnet`).
    #[serde(default)]
    pub ipv6_subnet: Option<u8>,
}

/// A token bucket (Traefik `rateLimit` names); `average: 0` turns it off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBucket {
    pub average: u32,
    #[serde(default, with = "humantime_serde")]
    pub period: Option<Duration>,
    #[serde(default)]
    pub burst: Option<u32>,
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    const BASE: &str = "listen: 127.0.0.1:8080\nadmin: { listen: 127.0.0.1:9090 }\n";

    #[test]
    fn edge_defaults_are_strict() {
        let c = Config::from_yaml(BASE).unwrap();
        assert!(c.edge.paths.normalize && c.edge.paths.merge_slashes);
        assert_eq!(c.edge.encoded_characters, Default::default());
        assert!(c.edge.forwarded.trusted.is_empty() && !c.edge.forwarded.insecure);
        assert!(c.edge.miss_budget.per_address.is_some());
    }

    #[test]
    fn edge_settings_are_read_and_checked_with_their_paths() {
        let good = format!(
            "{BASE}forwardedHeaders: {{ trustedIPs: [10.0.0.0/8, 192.0.2.7] }}\nencodedCharacters: {{ allowEncodedSlash: true }}\ntransport: {{ maxConnections: 50, respondingTimeouts: {{ idleTimeout: 5s }}, upgrades: {{ maxConnections: 10, maxLifetime: 1h }} }}\nhttp2: {{ maxConcurrentStreams: 10 }}\nlimits: {{ tokenMaxLength: 4096 }}\nidpMissBudget: {{ perClientId: {{ average: 0 }}, perAddress: {{ average: 5, period: 1m, burst: 7 }}, ipv6Subnet: 56 }}\n"
        );
        let c = Config::from_yaml(&good).unwrap();
        assert_eq!(c.edge.forwarded.trusted.len(), 2);
        assert!(c.edge.encoded_characters.slash && !c.edge.encoded_characters.back_slash);
        assert_eq!(c.edge.transport.max_connections, 50);
        assert_eq!(c.edge.transport.idle_timeout.as_secs(), 5);
        assert_eq!(c.edge.transport.max_upgraded_connections, Some(10));
        assert_eq!(
            c.edge.transport.upgraded_max_lifetime,
            Some(std::time::Duration::from_secs(3600))
        );
        assert_eq!(c.edge.transport.max_concurrent_streams, 10);
        assert_eq!(c.edge.caller_limits.token_max_length, 4096);
        assert!(c.edge.miss_budget.per_client_id.is_none());
        let a = c.edge.miss_budget.per_address.unwrap();
        assert_eq!((a.average, a.period.as_secs(), a.burst), (5, 60, 7));
        assert_eq!(c.edge.miss_budget.ipv6_subnet, 56);

        let bad = good
            .replace("192.0.2.7", "not-an-ip")
            .replace("maxConnections: 50", "maxConnections: 0")
            .replace("tokenMaxLength: 4096", "tokenMaxLength: 0")
            .replace("period: 1m", "period: 0s")
            .replace("ipv6Subnet: 56", "ipv6Subnet: 129")
            .replace(
                "maxConnections: 10, maxLifetime: 1h",
                "maxConnections: 51, maxLifetime: 0s",
            );
        let Err(ConfigError::Invalid(issues)) = Config::from_yaml(&bad) else {
            panic!()
        };
        let text: Vec<String> = issues.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "forwardedHeaders.trustedIPs[1]: \"not-an-ip\" is not an IP address or CIDR",
                "transport.maxConnections: must be at least 1",
                "transport.upgrades.maxConnections: must be between 1 and transport.maxConnections (upgraded connections count there too)",
                "transport.upgrades.maxLifetime: must be greater than zero",
                "limits.tokenMaxLength: must be between 1 and 65536",
                "idpMissBudget.perAddress.period: must be greater than zero",
                "idpMissBudget.ipv6Subnet: must be between 1 and 128",
            ]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The loader turns any text into a configuration or errors, never a panic.
        #[test]
        fn any_text_loads_or_is_refused(extra in "[a-zA-Z:{}\\[\\], \n0-9./-]{0,120}") {
            let text = format!("{BASE}{extra}");
            if let Err(e) = Config::from_yaml(&text) {
                proptest::prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
