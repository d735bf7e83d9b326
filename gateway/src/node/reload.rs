//! Live reload of a running node's configuration.
//!
//! The configuration file and every file it names (secrets read through `file:` or
//! `urn:k8s:secret:`, a `manifests` directory, TLS material of upstream transports and IdP
//! clients) are fingerprinted every `watchInterval`; a change, or SIGHUP, reloads. A new
//! configuration is validated in full first: if it is invalid the running one stays, the
//! problems are logged once with their key paths, and the admin listener's `/config` and
//! `/readyz` say the last reload failed. A valid one is swapped in at once: requests in flight
//! finish on the proxy they started on, new ones take the new one. The token cache, the
//! refresher, the store's connections and the callers' connections are the node's and are not
//! touched; authentication middlewares whose settings did not change are kept with their state.
//! Settings only a restart applies (listeners, store, fleet keys, refresher, logging, tracing,
//! listener limits and TLS) are reported as needing one, not silently ignored.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::issuer::Issuer;
use crate::lifecycle::TokenCache;
use crate::proxy::Gateway;
use crate::proxy::admin::ConfigStatus;

/// Where a node's configuration comes from, to reload it.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The configuration file.
    pub path: PathBuf,
    /// How often its files are looked at for changes.
    pub watch_interval: Duration,
}

/// Adds `path` and its contents (or that it is missing, so that its appearance is a change).
fn add_file(h: &mut Sha256, path: &Path) {
    h.update(path.as_os_str().as_encoded_bytes());
    h.update([0]);
    match std::fs::read(path) {
        Ok(bytes) => {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(&bytes);
        }
        Err(_) => h.update(u64::MAX.to_be_bytes()),
    }
}

/// The files of directory `dir`, sorted.
fn files_of(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

/// The hash `/config` shows: of the configuration file and its directories of manifests, never
/// of the secret files it names (a hash of a weak secret could be tested against guesses). The
/// same configuration gives the same hash on every node.
pub fn config_hash(path: &Path, sources: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    add_file(&mut h, path);
    for dir in sources.iter().filter(|s| s.is_dir()) {
        files_of(dir).iter().for_each(|f| add_file(&mut h, f));
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What changes when any file the configuration reads changes, secrets included; keyed by
/// `salt` (random per process) and never shown.
fn changes(salt: &[u8; 32], path: &Path, sources: &[PathBuf]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    add_file(&mut h, path);
    for source in sources {
        if source.is_dir() {
            files_of(source).iter().for_each(|f| add_file(&mut h, f));
        } else {
            add_file(&mut h, source);
        }
    }
    h.finalize().into()
}

/// The settings that differ between `old` and `new` and that only a restart applies.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("listen", old.listen != new.listen),
        ("admin.listen", old.admin_listen != new.admin_listen),
        (
            "admin.token",
            old.admin_token.as_ref().map(crate::secret::Secret::expose)
                != new.admin_token.as_ref().map(crate::secret::Secret::expose),
        ),
        ("store", old.store != new.store),
        ("fleetKey", old.fleet_key != new.fleet_key),
        (
            "previousFleetKeys",
            old.previous_fleet_keys != new.previous_fleet_keys,
        ),
        ("refresh", old.refresh != new.refresh),
        (
            "shutdownTimeout",
            old.shutdown_timeout != new.shutdown_timeout,
        ),
        ("log", old.log != new.log),
        ("idpCircuitBreaker", old.idp_breaker != new.idp_breaker),
        ("telemetry", old.tracing != new.tracing),
        (
            "transport and http2",
            old.edge.transport != new.edge.transport,
        ),
        ("tls", old.tls != new.tls),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// The node's proxy as requests find it, and the active health checks of the one in use.
pub struct LiveProxy {
    /// The proxy new requests take.
    pub current: Arc<ArcSwap<Gateway>>,
    health: Mutex<(CancellationToken, JoinSet<()>)>,
    background: CancellationToken,
}

impl LiveProxy {
    /// Serves `gateway`, starting its health checks (stopped with `background`).
    pub fn new(gateway: Gateway, background: &CancellationToken) -> Self {
        let token = background.child_token();
        let tasks = gateway.spawn_health_checks(&token);
        Self {
            current: Arc::new(ArcSwap::from_pointee(gateway)),
            health: Mutex::new((token, tasks)),
            background: background.clone(),
        }
    }

    /// Swaps `gateway` in: new requests take it; its health checks start and the previous
    /// proxy's stop.
    pub fn swap(&self, gateway: Gateway) {
        let token = self.background.child_token();
        let tasks = gateway.spawn_health_checks(&token);
        self.current.store(Arc::new(gateway));
        let (old_token, mut old_tasks) = std::mem::replace(
            &mut *self.health.lock().unwrap_or_else(|p| p.into_inner()),
            (token, tasks),
        );
        old_token.cancel();
        // The cancelled checks end at their next await; nothing to wait for here.
        old_tasks.detach_all();
    }

    /// Stops the health checks and waits for them (shutdown).
    pub async fn stop(&self) {
        let (token, tasks) = std::mem::replace(
            &mut *self.health.lock().unwrap_or_else(|p| p.into_inner()),
            (CancellationToken::new(), JoinSet::new()),
        );
        token.cancel();
        tasks.join_all().await;
    }
}

/// Reloads a node's configuration when its files change or on SIGHUP.
pub struct Reloader {
    /// Where the configuration comes from.
    pub source: ConfigSource,
    /// The configuration in use.
    pub config: Config,
    /// The proxy being served.
    pub proxy: Arc<LiveProxy>,
    /// The node's token cache (kept across reloads).
    pub cache: Arc<TokenCache>,
    /// The issuer in use, if any (kept while its settings do not change).
    pub issuer: Option<Arc<Issuer>>,
    /// What `/config` and `/readyz` say.
    pub status: Arc<ConfigStatus>,
}

impl Reloader {
    /// Watches until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        let salt: [u8; 32] = rand::random();
        let mut seen = changes(&salt, &self.source.path, &self.config.sources);
        loop {
            let signalled = async {
                match &mut hangup {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                _ = signalled => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    seen = changes(&salt, &self.source.path, &self.config.sources);
                    self.reload().await;
                }
                () = tokio::time::sleep(self.source.watch_interval) => {
                    let now = changes(&salt, &self.source.path, &self.config.sources);
                    if now != seen {
                        tracing::info!("the configuration's files changed: reloading");
                        seen = now;
                        self.reload().await;
                    }
                }
            }
        }
    }

    /// Loads, validates and, if valid, applies the configuration on disk.
    async fn reload(&mut self) {
        let metrics = crate::telemetry::metrics::metrics();
        // Loading reads files and may hash secrets (argon2): off the request threads.
        let path = self.source.path.clone();
        let loaded = tokio::task::spawn_blocking(move || Config::load(&path))
            .await
            .map_err(|e| vec![format!("loading stopped: {e}")])
            .and_then(|r| {
                r.map_err(|e| e.to_string().lines().map(str::to_owned).collect::<Vec<_>>())
            });
        let mut config = match loaded {
            Ok(c) => c,
            Err(errors) => {
                tracing::error!(problems = %errors.join("; "), "the new configuration is invalid; the running one stays");
                metrics.config_reload(false);
                self.status.reload_failed(errors);
                return;
            }
        };
        let restart = restart_needed(&self.config, &config);
        if !restart.is_empty() {
            tracing::warn!(settings = %restart.join(", "), "changed settings apply only after a restart; the others are applied now");
        }
        // The issuer is rebuilt only when its settings change, and keeps a key it generated.
        if let (Some(new), Some(running)) = (config.issuer.as_mut(), self.config.issuer.as_ref()) {
            new.keep_generated_key(running);
        }
        let issuer = if config.issuer == self.config.issuer {
            Ok(self.issuer.clone())
        } else {
            config
                .issuer
                .as_ref()
                .map(|i| Issuer::new(i, &self.cache).map(Arc::new))
                .transpose()
                .map_err(|e| e.to_string())
        };
        let built = issuer.and_then(|issuer| {
            self.proxy
                .current
                .load()
                .rebuild(config.proxy(), &self.cache, issuer.clone())
                .map(|gateway| (gateway, issuer))
                .map_err(|e| e.to_string())
        });
        match built {
            Ok((gateway, issuer)) => {
                self.proxy.swap(gateway);
                self.issuer = issuer;
                for warning in &config.warnings {
                    tracing::warn!(%warning, "configuration");
                }
                self.config = config;
                metrics.config_reload(true);
                self.status.reloaded(
                    config_hash(&self.source.path, &self.config.sources),
                    restart,
                );
                tracing::info!("configuration reloaded");
            }
            Err(error) => {
                tracing::error!(%error, "the new configuration cannot be applied; the running one stays");
                metrics.config_reload(false);
                self.status.reload_failed(vec![error]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_follow_every_file_and_the_shown_hash_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.yaml");
        let secret = dir.path().join("secret");
        let manifests = dir.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        std::fs::write(&config, "a").unwrap();
        std::fs::write(&secret, "s1").unwrap();
        let sources = [secret.clone(), manifests.clone()];
        let salt = [7; 32];
        let (first, shown) = (
            changes(&salt, &config, &sources),
            config_hash(&config, &sources),
        );
        assert_eq!(first, changes(&salt, &config, &sources));
        std::fs::write(&secret, "s2").unwrap();
        let second = changes(&salt, &config, &sources);
        assert_ne!(first, second, "a secret's change is a change");
        assert_eq!(
            shown,
            config_hash(&config, &sources),
            "but never moves the shown hash"
        );
        std::fs::write(manifests.join("a.yaml"), "kind: Middleware").unwrap();
        assert_ne!(second, changes(&salt, &config, &sources));
        assert_ne!(
            shown,
            config_hash(&config, &sources),
            "manifests are configuration"
        );
    }
}
