//! Which cache cachectl talks to, and the operations on its entries. Entry operations go
//! through the gateway's own [`TokenStore`] backends, so cachectl reads and writes exactly what
//! gateway nodes do (evictions are announced to every node's L1 the same way).

use std::time::Duration;

use gateway::cacheclient::Dialer;
use gateway::outbound::StoreTls;
use gateway::secret::Secret;
use gateway::store::{RaftStore, RedisStore, Store, StoreError, StoreEvent, TokenStore};
use gateway::store::{RaftStoreConfig, RedisConfig, RedisTopology};
use gateway::token::{SealedEntry, TokenKey, now_millis};
use serde::Serialize;

use crate::admin::Admin;
use crate::render::{self, EntryView, Format};
use crate::{Cli, Failure};

/// Entries per listing call.
const PAGE: usize = 1000;
/// Shortest key prefix accepted (the listing shows 12 digits).
const MIN_PREFIX: usize = 6;

/// The cache.
pub struct Backend {
    store: Store,
    admin: Option<Admin>,
    /// Where the cache is, for messages.
    target: String,
    timeout: Duration,
}

fn server(target: &str, e: StoreError) -> Failure {
    Failure::Server(match e {
        StoreError::Unavailable(m) => format!("cannot reach the cache at {target}: {m}"),
        StoreError::Corrupt(m) => {
            format!("the cache at {target} answered something unreadable: {m}")
        }
        StoreError::Refused(m) => format!("the cache at {target} refused the request: {m}"),
    })
}

impl Backend {
    /// The cache the flags name: exactly one of `--endpoints` and `--redis`.
    pub fn open(cli: &Cli) -> Result<Self, Failure> {
        match (&cli.endpoints[..], &cli.redis) {
            ([], None) => Err(Failure::Usage(
                "name the cache: --endpoints host:port,... (Raft cache service) or --redis URL"
                    .into(),
            )),
            ([_, ..], Some(_)) => Err(Failure::Usage(
                "give --endpoints or --redis, not both".into(),
            )),
            (endpoints, None) => {
                let tls = tls_files(cli)?;
                if cli.token.is_some() && tls.is_none() {
                    in_clear(cli, "--token", endpoints.iter().map(String::as_str))?;
                }
                let store = RaftStore::new(&RaftStoreConfig {
                    endpoints: endpoints.to_vec(),
                    timeout: cli.timeout,
                    tls: tls.clone(),
                    // Listing and evicting are the operator's calls.
                    token: cli.token.clone().map(Secret::new),
                });
                Ok(Self {
                    store: Store::Raft(store),
                    admin: Some(Admin::new(
                        endpoints.to_vec(),
                        cli.token.clone(),
                        cli.timeout,
                        Dialer::new(tls.as_ref()),
                    )),
                    target: endpoints.join(","),
                    timeout: cli.timeout,
                })
            }
            ([], Some(url)) => {
                let cfg = redis_config(url, &cli.key_prefix, cli.timeout, tls_files(cli)?)?;
                if cfg.password.is_some() && cfg.tls.is_none() {
                    let hosts: Vec<String> = cfg
                        .endpoints
                        .iter()
                        .map(|(h, p)| format!("{h}:{p}"))
                        .collect();
                    in_clear(cli, "the password", hosts.iter().map(String::as_str))?;
                }
                let target = cfg
                    .endpoints
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect::<Vec<_>>()
                    .join(",");
                let store = RedisStore::new(&cfg).map_err(|e| server(&target, e))?;
                Ok(Self {
                    store: Store::Redis(store),
                    admin: None,
                    target,
                    timeout: cli.timeout,
                })
            }
        }
    }

    /// The Raft admin calls; a usage error on Redis.
    pub fn admin(&self) -> Result<&Admin, Failure> {
        self.admin.as_ref().ok_or_else(|| {
            Failure::Usage("this command needs the Raft cache service (--endpoints)".into())
        })
    }

    /// Every unexpired entry, in key order.
    pub async fn entries(&self) -> Result<Vec<EntryView>, Failure> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list(after, PAGE)
                .await
                .map_err(|e| server(&self.target, e))?;
            let n = page.len();
            after = page.last().map(|(k, _)| *k);
            all.extend(page.iter().map(|(k, e)| view(k, e)));
            if n < PAGE {
                return Ok(all);
            }
        }
    }

    /// The entry whose key starts with `prefix`.
    pub async fn resolve(&self, prefix: &str) -> Result<EntryView, Failure> {
        let prefix = prefix.to_ascii_lowercase();
        if prefix.len() < MIN_PREFIX || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Failure::Usage(format!(
                "a key is hex, at least {MIN_PREFIX} digits of it (as `cachectl ls` shows)"
            )));
        }
        let mut matches: Vec<EntryView> = self
            .entries()
            .await?
            .into_iter()
            .filter(|e| e.key.starts_with(&prefix))
            .collect();
        match matches.len() {
            0 => Err(Failure::Server(format!(
                "no cached entry has a key starting with {prefix}"
            ))),
            1 => Ok(matches.remove(0)),
            n => Err(Failure::Usage(format!(
                "{prefix} matches {n} entries; give more digits"
            ))),
        }
    }

    /// Evicts `entries` fleet-wide; how many were still there.
    pub async fn evict(&self, entries: &[EntryView]) -> Result<u64, Failure> {
        let mut evicted = 0;
        for e in entries {
            let key = TokenKey::from_hex(&e.key).expect("listed keys are hex");
            if self
                .store
                .evict(&key, None)
                .await
                .map_err(|err| server(&self.target, err))?
            {
                evicted += 1;
            }
        }
        Ok(evicted)
    }

    /// Makes `entry` due now.
    pub async fn refresh(&self, entry: &EntryView) -> Result<(), Failure> {
        if !entry.renewable {
            return Err(Failure::Server(
                "this entry is not renewable (an introspection result); evict it instead".into(),
            ));
        }
        let key = TokenKey::from_hex(&entry.key).expect("listed keys are hex");
        match self.store.mark_due(&key).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::Server(
                "the entry is gone (expired or evicted)".into(),
            )),
            Err(e) => Err(server(&self.target, e)),
        }
    }

    /// `cachectl status`.
    pub async fn status(&self, format: Format) -> Result<String, Failure> {
        if let Some(admin) = &self.admin {
            return admin.status(format).await;
        }
        #[derive(Serialize)]
        struct RedisStatus<'a> {
            server: &'a str,
            lease_holder: Option<String>,
            fence: Option<u64>,
            entries: usize,
        }
        let lease = self
            .store
            .refresh_lease()
            .await
            .map_err(|e| server(&self.target, e))?;
        let entries = self.entries().await?.len();
        let s = RedisStatus {
            server: &self.target,
            lease_holder: lease.as_ref().map(|l| l.holder.clone()),
            fence: lease.as_ref().map(|l| l.fence),
            entries,
        };
        let row = vec![
            s.server.to_owned(),
            s.lease_holder.clone().unwrap_or_else(|| "-".into()),
            s.fence.map_or_else(|| "-".into(), |f| f.to_string()),
            s.entries.to_string(),
        ];
        Ok(render::rows(
            &["SERVER", "LEASE HOLDER", "FENCE", "ENTRIES"],
            vec![row],
            &s,
            format,
        ))
    }

    /// `cachectl leases`.
    pub async fn leases(&self, format: Format) -> Result<String, Failure> {
        let lease = self
            .store
            .refresh_lease()
            .await
            .map_err(|e| server(&self.target, e))?;
        let rows = lease
            .iter()
            .map(|l| {
                vec![
                    "refresh".into(),
                    l.holder.clone(),
                    l.fence.to_string(),
                    render::human_ms(l.expires_in_ms as i64, "now"),
                ]
            })
            .collect();
        Ok(render::rows(
            &["LEASE", "HOLDER", "FENCE", "EXPIRES IN"],
            rows,
            &lease,
            format,
        ))
    }

    /// `cachectl watch`: one line (or JSON object) per change.
    pub async fn watch(&self, count: Option<u64>, format: Format) -> Result<String, Failure> {
        use std::io::Write;
        let open = match &self.store {
            Store::Raft(s) => s.watching(self.timeout).await,
            Store::Redis(s) => s.subscribed(self.timeout).await,
            Store::Memory(_) => true,
        };
        if !open {
            return Err(Failure::Server(format!(
                "cannot follow changes at {}: no answer within {:?}",
                self.target, self.timeout
            )));
        }
        // Subscribed once the stream is open: the resync that opening announces is not news.
        let mut events = self.store.subscribe();
        eprintln!("watching {} (Ctrl-C to stop)", self.target);
        let mut seen = 0;
        while count.is_none_or(|c| seen < c) {
            let event = match events.recv().await {
                Ok(e) => e,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    StoreEvent::Resync { lost: false }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            };
            let (change, key, version) = match event {
                StoreEvent::Stored { key, version } => ("stored", Some(key), Some(version)),
                StoreEvent::Evicted { key } => ("evicted", Some(key), None),
                StoreEvent::Resync { .. } => ("resync", None, None),
            };
            let line = match format {
                Format::Json => serde_json::json!({
                    "at": now_millis(),
                    "change": change,
                    "key": key.map(|k| k.to_hex()),
                    "version": version,
                })
                .to_string(),
                Format::Table => format!(
                    "{change:<8} {} {}",
                    key.map_or_else(|| "-".repeat(12), |k| k.to_hex()[..12].to_owned()),
                    version.map_or_else(String::new, |v| format!("v{v}")),
                ),
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            seen += 1;
        }
        Ok(String::new())
    }
}

/// An entry's clear metadata as cachectl shows it.
fn view(key: &TokenKey, e: &SealedEntry) -> EntryView {
    let now = now_millis() as i64;
    let m = &e.meta;
    EntryView {
        key: key.to_hex(),
        client_id: m.client_id.clone(),
        token_url: m.token_url.clone(),
        scopes: m.scopes.clone(),
        audience: m.audience.clone(),
        granted_scope: m.granted_scope.clone(),
        version: m.version,
        issued_at: m.issued_at,
        expires_at: m.expires_at,
        refresh_at: m.refresh_at,
        last_used: m.last_used,
        expires_in_ms: m.expires_at as i64 - now,
        refresh_in_ms: e.refresh_at() as i64 - now,
        last_used_ms_ago: now - m.last_used as i64,
        renewable: m.refresh_at < m.expires_at,
        fleet_key_id: e.key_id.clone(),
        sealed_bytes: e.ciphertext.len(),
    }
}

/// Refuses to send `what` in clear to a cache not on this host, unless `--allow-plaintext`.
fn in_clear<'a>(
    cli: &Cli,
    what: &str,
    endpoints: impl IntoIterator<Item = &'a str>,
) -> Result<(), Failure> {
    match gateway::outbound::first_off_host(endpoints) {
        Some(away) if !cli.allow_plaintext => Err(Failure::Usage(format!(
            "{what} would cross the network to {away} in clear: use TLS (--cacert, or rediss://), or pass --allow-plaintext on a network you trust"
        ))),
        _ => Ok(()),
    }
}

/// The TLS files the flags name, read; `None` when no TLS flag is given.
fn tls_files(cli: &Cli) -> Result<Option<StoreTls>, Failure> {
    let read = |flag: &str, path: &Option<std::path::PathBuf>| -> Result<_, Failure> {
        path.as_ref()
            .map(|p| gateway::config::read_pem(&p.display().to_string()))
            .transpose()
            .map_err(|e| Failure::Usage(format!("{flag}: {e}")))
    };
    let ca = read("--cacert", &cli.cacert)?;
    let client = match (read("--cert", &cli.cert)?, read("--key", &cli.cert_key)?) {
        (Some(cert), Some(key)) => Some((cert, Secret::new(String::from_utf8_lossy(&key)))),
        _ => None,
    };
    Ok((ca.is_some() || client.is_some()).then_some(StoreTls {
        ca,
        client,
        insecure_skip_verify: false,
    }))
}

/// `redis://[[user]:password@]host:port[/db]`; `rediss://` for TLS (the system roots, or the
/// `tls` files).
fn redis_config(
    url: &str,
    prefix: &str,
    timeout: Duration,
    tls_files: Option<StoreTls>,
) -> Result<RedisConfig, Failure> {
    let bad = |why: &str| {
        Failure::Usage(format!(
            "--redis: {why} (expected redis://[[user]:password@]host:port[/db])"
        ))
    };
    let u = url::Url::parse(url).map_err(|_| bad("not a URL"))?;
    let tls = match (u.scheme(), tls_files) {
        ("redis", None) => None,
        ("redis", Some(_)) => return Err(bad("--cacert/--cert/--key need rediss://")),
        ("rediss", files) => Some(files.unwrap_or(StoreTls {
            ca: None,
            client: None,
            insecure_skip_verify: false,
        })),
        _ => return Err(bad("the scheme must be redis or rediss")),
    };
    let host = u.host_str().ok_or_else(|| bad("no host"))?.to_owned();
    let database = match u.path().trim_start_matches('/') {
        "" => 0,
        db => db
            .parse()
            .map_err(|_| bad("the path must be a database number"))?,
    };
    Ok(RedisConfig {
        endpoints: vec![(host, u.port().unwrap_or(6379))],
        username: Some(u.username().to_owned()).filter(|n| !n.is_empty()),
        password: u.password().map(Secret::new),
        database,
        key_prefix: prefix.to_owned(),
        topology: RedisTopology::Standalone,
        pool_size: 2,
        timeout,
        tls,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn redis_urls_become_configs_and_bad_ones_name_the_flag() {
        use gateway::outbound::StoreTls;
        let second = super::Duration::from_secs(1);
        let cfg =
            super::redis_config("redis://:pw@10.0.0.5:6380/2", "fleet", second, None).unwrap();
        assert_eq!(cfg.endpoints, [("10.0.0.5".to_owned(), 6380)]);
        assert_eq!((cfg.database, cfg.key_prefix.as_str()), (2, "fleet"));
        assert_eq!(cfg.password.unwrap().expose(), "pw");
        let tls = |url: &str, files| super::redis_config(url, "p", second, files);
        assert!(tls("rediss://cache.internal", None).unwrap().tls.is_some());
        let files = StoreTls {
            ca: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            client: None,
            insecure_skip_verify: false,
        };
        let with_ca = tls("rediss://cache.internal", Some(files.clone())).unwrap();
        assert_eq!(with_ca.tls, Some(files.clone()));
        let err = tls("redis://cache.internal", Some(files)).unwrap_err();
        assert!(
            err.to_string()
                .contains("--cacert/--cert/--key need rediss://")
        );
        let err = tls("http://x", None).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--redis: the scheme must be redis or rediss")
        );
    }
}
