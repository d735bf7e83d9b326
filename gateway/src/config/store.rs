//! The `store` section: which backend shares tokens, and the Redis options, validated.

use std::time::Duration;

use super::issues::Issues;
use crate::config::tls::RawTls;
use crate::outbound::StoreTls;
use crate::secret::Secret;
use crate::store::{
    DEFAULT_RAFT_TIMEOUT, DEFAULT_REDIS_POOL_SIZE, DEFAULT_REDIS_TIMEOUT, RaftStoreConfig,
    RedisConfig, RedisTopology,
};
use serde::Deserialize;

pub(super) fn raft(issues: &mut Issues, r: RawRaftStore) -> Option<RaftStoreConfig> {
    if r.endpoints.is_empty() {
        issues.push("store.raft.endpoints", "must name at least one cache node");
    }
    for (i, e) in r.endpoints.iter().enumerate() {
        let ok = e
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !ok {
            issues.push(format!("store.raft.endpoints[{i}]"), "not host:port");
        }
    }
    let timeout = r.timeout.unwrap_or(DEFAULT_RAFT_TIMEOUT);
    if timeout.is_zero() {
        issues.push("store.raft.timeout", "must be greater than zero");
    }
    let tls = r.tls.map(|t| {
        if t.insecure_skip_verify {
            issues.push(
                "store.raft.tls.insecureSkipVerify",
                "not supported for the cache service: give caFile to trust a private CA",
            );
        }
        store_tls(issues, "store.raft.tls", t)
    });
    let token = r
        .token
        .as_deref()
        .and_then(|t| issues.secret("store.raft.token", t));
    in_clear(
        issues,
        "store.raft",
        "the gateway token",
        r.token.is_some() && tls.is_none(),
        r.endpoints.iter().map(String::as_str),
        r.allow_plaintext,
    );
    Some(RaftStoreConfig {
        endpoints: r.endpoints,
        timeout,
        tls,
        token,
    })
}

pub(super) fn redis(issues: &mut Issues, r: RawRedisStore) -> Option<RedisConfig> {
    let before = issues.0.len();
    if r.endpoints.is_empty() {
        issues.push("store.redis.endpoints", "needs at least one host:port");
    }
    let mut endpoints = Vec::new();
    for (i, e) in r.endpoints.iter().enumerate() {
        match e.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
            Some((host, Ok(port))) if !host.is_empty() && !host.contains(['/', '@']) => {
                endpoints.push((host.trim_matches(['[', ']']).to_owned(), port));
            }
            _ => issues.push(
                format!("store.redis.endpoints[{i}]"),
                format!(
                    "not host:port: {:?} (credentials go in username and password)",
                    super::issues::redacted(e)
                ),
            ),
        }
    }
    let password = r
        .password
        .as_deref()
        .and_then(|p| issues.secret("store.redis.password", p));
    let key_prefix = r.key_prefix.unwrap_or_else(|| "tokengate".into());
    if key_prefix.is_empty() || key_prefix.contains(['{', '}', ' ']) {
        issues.push(
            "store.redis.keyPrefix",
            "must be non-empty, without braces or spaces",
        );
    }
    let topology = match (r.cluster, r.sentinel) {
        (false, None) => RedisTopology::Standalone,
        (true, None) => RedisTopology::Cluster,
        (false, Some(s)) => RedisTopology::Sentinel {
            master_set: s.master_set,
        },
        (true, Some(_)) => {
            issues.push(
                "store.redis.sentinel",
                "cannot be combined with cluster: true",
            );
            RedisTopology::Standalone
        }
    };
    let database = r.database.unwrap_or(0);
    if database != 0 && topology == RedisTopology::Cluster {
        issues.push("store.redis.database", "must be 0 with Redis Cluster");
    }
    let pool_size = r.pool_size.unwrap_or(DEFAULT_REDIS_POOL_SIZE);
    if pool_size == 0 {
        issues.push("store.redis.poolSize", "must be at least 1");
    }
    let timeout = r.timeout.unwrap_or(DEFAULT_REDIS_TIMEOUT);
    if timeout.is_zero() {
        issues.push("store.redis.timeout", "must be greater than zero");
    }
    let tls = r.tls.map(|t| {
        if t.insecure_skip_verify {
            issues.insecure("store.redis.tls.insecureSkipVerify".into());
        }
        store_tls(issues, "store.redis.tls", t)
    });
    in_clear(
        issues,
        "store.redis",
        "the password",
        r.password.is_some() && tls.is_none(),
        r.endpoints.iter().map(String::as_str),
        r.allow_plaintext,
    );
    (issues.0.len() == before).then_some(RedisConfig {
        endpoints,
        username: r.username,
        password,
        database,
        key_prefix,
        topology,
        pool_size,
        timeout,
        tls,
    })
}

/// A secret (`what`) sent without TLS (`clear`) to one of `endpoints` off this host is refused
/// unless the operator set `<section>.allowPlaintext` (then it is a warning): no secret crosses
/// a network in clear by default.
fn in_clear<'a>(
    issues: &mut Issues,
    section: &str,
    what: &str,
    clear: bool,
    endpoints: impl IntoIterator<Item = &'a str>,
    allowed: bool,
) {
    let Some(away) = clear
        .then(|| crate::outbound::first_off_host(endpoints))
        .flatten()
    else {
        return;
    };
    let path = format!("{section}.tls");
    if allowed {
        issues.warn(
            &path,
            &format!("not set: {what} crosses the network to {away} in clear (allowPlaintext)"),
        );
    } else {
        issues.push(
            path,
            format!(
                "is required to send {what} to {away}, which is not on this host; set {section}.allowPlaintext: true to send it in clear on a network you trust"
            ),
        );
    }
}

/// Reads a PEM file (certificates or a key); the error names the file, never its content.
pub fn read_pem(file: &str) -> Result<Vec<u8>, String> {
    match std::fs::read(file) {
        Ok(pem) if pem.windows(11).any(|w| w == b"-----BEGIN ") => Ok(pem),
        Ok(_) => Err(format!("{file} is not PEM")),
        Err(e) => Err(format!("cannot read {file}: {}", e.kind())),
    }
}

/// The `tls` block of the store `section`, its files read (errors named by key path).
fn store_tls(issues: &mut Issues, section: &str, t: RawTls) -> StoreTls {
    let mut read = |path: &str, file: &Option<String>| -> Option<Vec<u8>> {
        if !issues.reads_key_material() {
            return None;
        }
        read_pem(file.as_deref()?)
            .map_err(|e| issues.push(path, e))
            .ok()
    };
    let ca = read(&format!("{section}.caFile"), &t.ca_file);
    let cert = read(&format!("{section}.certFile"), &t.cert_file);
    let key = read(&format!("{section}.keyFile"), &t.key_file);
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((c, Secret::new(String::from_utf8_lossy(&k).into_owned()))),
        _ if t.cert_file.is_some() != t.key_file.is_some() => {
            issues.push(section, "certFile and keyFile go together");
            None
        }
        _ => None,
    };
    StoreTls {
        ca,
        client,
        insecure_skip_verify: t.insecure_skip_verify,
    }
}

// The section as written in the file: its shape only (`deny_unknown_fields` catches typos);
// its values are checked above.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRaftStore {
    /// `host:port` of cache nodes (any subset; the leader is found from them).
    pub endpoints: Vec<String>,
    /// Upper bound on one operation, leader changes included.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// TLS towards the cache nodes.
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Secret reference to the gateway role's token (the nodes' `--gateway-token`).
    #[serde(default)]
    pub token: Option<String>,
    /// Send the token without TLS to nodes that are not on this host.
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRedisStore {
    /// `host:port` of each server (Cluster: seed nodes; Sentinel: the sentinels).
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// Secret reference.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub database: Option<i64>,
    /// Prefix of every key and channel (default `tokengate`).
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Redis Cluster.
    #[serde(default)]
    pub cluster: bool,
    /// Redis Sentinel.
    #[serde(default)]
    pub sentinel: Option<RawSentinel>,
    /// Connections per node.
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Upper bound on one Redis operation, connecting included.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// TLS towards Redis (and, with Sentinel, towards the servers it names).
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Send the password without TLS to servers that are not on this host.
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawSentinel {
    /// The monitored master's name.
    pub master_set: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawMemoryStore {}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};
    use crate::store::{DEFAULT_RAFT_TIMEOUT, RaftStoreConfig, StoreConfig};

    fn load(store: &str) -> Result<Config, ConfigError> {
        let (_key, fleet_key) = crate::config::test_fleet_key();
        Config::from_yaml(&format!(
            "listen: 127.0.0.1:8080\nadmin: {{ listen: 127.0.0.1:9090 }}\n{fleet_key}\nstore: {store}\n"
        ))
    }

    #[test]
    fn a_secret_for_a_store_off_this_host_needs_tls_or_an_explicit_opt_in() {
        let issues = |store: &str| match load(store) {
            Err(ConfigError::Invalid(i)) => i.iter().map(ToString::to_string).collect::<Vec<_>>(),
            other => panic!("expected value errors, got {other:?}"),
        };
        assert_eq!(
            issues("{ raft: { endpoints: [\"127.0.0.1:7000\", \"cache-2:7000\"], token: t0ken } }"),
            [
                "store.raft.tls: is required to send the gateway token to cache-2:7000, which is not on this host; set store.raft.allowPlaintext: true to send it in clear on a network you trust"
            ]
        );
        assert_eq!(
            issues("{ redis: { endpoints: [\"10.0.0.5:6379\"], password: pa55 } }"),
            [
                "store.redis.tls: is required to send the password to 10.0.0.5:6379, which is not on this host; set store.redis.allowPlaintext: true to send it in clear on a network you trust"
            ]
        );
        // On this host, without a secret, or with TLS: nothing to say.
        for fine in [
            "{ raft: { endpoints: [\"127.0.0.1:7000\", \"localhost:7001\", \"[::1]:7002\"], token: t0ken } }",
            "{ raft: { endpoints: [\"cache-2:7000\"] } }",
            "{ redis: { endpoints: [\"10.0.0.5:6379\"] } }",
        ] {
            let cfg = load(fine).unwrap();
            assert!(
                !cfg.warnings.iter().any(|w| w.contains("in clear")),
                "{fine}: {:?}",
                cfg.warnings
            );
        }
        // Told, it loads and warns.
        let told =
            load("{ raft: { endpoints: [\"cache-2:7000\"], token: t0ken, allowPlaintext: true } }")
                .unwrap();
        let plaintext: Vec<&String> = told
            .warnings
            .iter()
            .filter(|w| w.starts_with("store.raft.tls"))
            .collect();
        assert_eq!(
            plaintext,
            [
                "store.raft.tls: not set: the gateway token crosses the network to cache-2:7000 in clear (allowPlaintext)"
            ]
        );
        assert!(!told.warnings.iter().any(|w| w.contains("t0ken")));
    }

    #[test]
    fn raft_store_endpoints_are_checked_and_backends_are_exclusive() {
        let cfg = load("{ raft: { endpoints: [\"10.0.0.1:7000\", \"cache-2:7000\"] } }").unwrap();
        assert_eq!(
            cfg.store,
            StoreConfig::Raft(RaftStoreConfig {
                endpoints: vec!["10.0.0.1:7000".into(), "cache-2:7000".into()],
                timeout: DEFAULT_RAFT_TIMEOUT,
                tls: None,
                token: None,
            })
        );
        let with_token = load("{ raft: { endpoints: [\"a:1\"], token: env:TG_TEST_UNSET_TOKEN } }");
        assert!(
            with_token
                .unwrap_err()
                .to_string()
                .contains("store.raft.token: environment variable TG_TEST_UNSET_TOKEN is not set")
        );
        let issues = |store: &str| match load(store) {
            Err(ConfigError::Invalid(i)) => i.iter().map(ToString::to_string).collect::<Vec<_>>(),
            other => panic!("expected value errors, got {other:?}"),
        };
        assert_eq!(
            issues("{ raft: { endpoints: [\"cache-1\", \":7000\"], timeout: 0s } }"),
            [
                "store.raft.endpoints[0]: not host:port",
                "store.raft.endpoints[1]: not host:port",
                "store.raft.timeout: must be greater than zero",
            ]
        );
        assert_eq!(
            issues(
                "{ raft: { endpoints: [\"a:1\"], tls: { caFile: /nonexistent/ca.pem, \
                 certFile: /nonexistent/c.pem, insecureSkipVerify: true } } }"
            ),
            [
                "store.raft.tls.insecureSkipVerify: not supported for the cache service: give caFile to trust a private CA",
                "store.raft.tls.caFile: cannot read /nonexistent/ca.pem: entity not found",
                "store.raft.tls.certFile: cannot read /nonexistent/c.pem: entity not found",
                "store.raft.tls: certFile and keyFile go together",
            ]
        );
        assert_eq!(
            issues("{ raft: { endpoints: [\"a:1\"] }, redis: { endpoints: [\"b:2\"] } }"),
            ["store: names two backends; choose one of memory, redis, raft"]
        );
        assert_eq!(
            issues("{}"),
            ["store: names no backend (expected memory, redis or raft)"]
        );
    }
}
