//! The `gateway` binary: one binary, several roles.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::config::Config;
use gateway::http::Listeners;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "tokengate: an API gateway for machine-to-machine OAuth2"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a proxy node.
    Run {
        /// The configuration file (YAML).
        #[arg(long, short, env = "TOKENGATE_CONFIG")]
        config: PathBuf,
        /// How often the configuration's files are looked at for changes (0s: never; SIGHUP
        /// reloads either way).
        #[arg(long, env = "TOKENGATE_WATCH_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
        watch_interval: std::time::Duration,
        /// Threads that serve the proxy listener, each with its own event loop and its own
        /// accept on the listener; default: one per CPU. 0: serve it
        /// on the threads shared with everything else.
        #[arg(long, env = "TOKENGATE_WORKERS")]
        workers: Option<usize>,
    },
    /// Validate a configuration file and exit: 0 when valid, 1 with every problem listed.
    CheckConfig {
        /// The configuration file (YAML).
        file: PathBuf,
        /// Check secret references without reading them (for pipelines that do not hold the
        /// secrets).
        #[arg(long)]
        no_secrets: bool,
    },
    /// Print the native configuration a file amounts to, its `manifests` (Traefik `Middleware`
    /// and `IngressRoute` documents) converted.
    Convert {
        /// The configuration file (YAML).
        file: PathBuf,
    },
    /// Run everything in one process: the gateway, its own OAuth2 issuer and an echo upstream,
    /// and print the commands to try every flow.
    Demo {
        /// The gateway's address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The admin listener (`/healthz`, `/readyz`).
        #[arg(long, default_value = "127.0.0.1:8081")]
        admin_listen: SocketAddr,
        /// Print the demo's configuration (with this run's secrets) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Run a member of the Raft-replicated cache service.
    CacheNode {
        /// This node's id: unique in the cluster, never reused.
        #[arg(long, env = "TOKENGATE_NODE_ID")]
        id: u64,
        /// Where to listen for gRPC (Raft, TokenCache, Admin).
        #[arg(long, env = "TOKENGATE_LISTEN")]
        listen: SocketAddr,
        /// The address peers and gateways reach this node at (default: --listen).
        #[arg(long, env = "TOKENGATE_ADVERTISE")]
        advertise: Option<String>,
        /// Where the Raft log, vote and snapshots are kept.
        #[arg(long, env = "TOKENGATE_DATA_DIR")]
        data_dir: PathBuf,
        /// Bootstrap a new cluster with these members: `1=host:port,2=host:port,...`. Safe to
        /// repeat on every initial member and on restarts.
        #[arg(long, value_delimiter = ',', value_parser = parse_member)]
        init: Vec<(u64, String)>,
        /// Join a running cluster as a learner through these members (`host:port,...`; promote
        /// it with Admin.ChangeMembership). The operator token is sent only to them, or, with
        /// TLS, to a leader whose certificate proves its address.
        #[arg(long, value_delimiter = ',', conflicts_with = "init")]
        join: Vec<String>,
        /// Reach these peers at other addresses for Raft traffic (`2=host:port,...`), e.g. over
        /// a separate replication network; their membership addresses stay what gateways use.
        #[arg(long, value_delimiter = ',', value_parser = parse_member)]
        peer: Vec<(u64, String)>,
        /// Secret reference (`env:NAME`, `file:/path`) to the operator's bearer token: Admin
        /// calls and cachectl's listings and evictions need it.
        #[arg(long, env = "TOKENGATE_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Secret reference to the peers' bearer token: the Raft RPCs need it, and this node
        /// sends it to its peers.
        #[arg(long, env = "TOKENGATE_PEER_TOKEN", hide_env_values = true)]
        peer_token: Option<String>,
        /// Secret reference to the gateways' bearer token: TokenCache calls need it.
        #[arg(long, env = "TOKENGATE_GATEWAY_TOKEN", hide_env_values = true)]
        gateway_token: Option<String>,
        /// Client-certificate identities (SAN DNS/URI or subject CN; `*` matches any run of
        /// characters) that hold the peer role under mutual TLS.
        #[arg(long, value_delimiter = ',', env = "TOKENGATE_PEER_IDENTITY")]
        peer_identity: Vec<String>,
        /// Certificate identities that hold the gateway role.
        #[arg(long, value_delimiter = ',', env = "TOKENGATE_GATEWAY_IDENTITY")]
        gateway_identity: Vec<String>,
        /// Certificate identities that hold the operator role.
        #[arg(long, value_delimiter = ',', env = "TOKENGATE_OPERATOR_IDENTITY")]
        operator_identity: Vec<String>,
        /// Serve without any credential on a non-loopback address: anyone who can reach the
        /// port may read, evict and rewrite the cache. For isolated test networks only.
        #[arg(long)]
        insecure_no_auth: bool,
        /// Send and take the role tokens without TLS on a non-loopback address (anyone on the
        /// path can read them). For a private network you trust; give --tls-cert instead.
        #[arg(long, env = "TOKENGATE_ALLOW_PLAINTEXT")]
        allow_plaintext: bool,
        /// Log entries between snapshots.
        #[arg(long, default_value_t = gateway::cachenode::DEFAULT_SNAPSHOT_LOGS)]
        snapshot_logs: u64,
        /// Entries the cache keeps at most; past it the leader has the least recently used
        /// dropped (on every node alike). Give every node the same value.
        #[arg(long, default_value_t = gateway::cachenode::DEFAULT_MAX_ENTRIES)]
        max_entries: u64,
        /// `text` or `json`.
        #[arg(long, default_value = "text")]
        log_format: String,
        /// Serve Prometheus `/metrics` (Raft term, leader, log and applied index) over HTTP here.
        #[arg(long, env = "TOKENGATE_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Serve gRPC over TLS with this PEM certificate chain (also presented to peers).
        #[arg(long, env = "TOKENGATE_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, env = "TOKENGATE_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// PEM CA bundle to verify peers' certificates against (default: the webpki roots).
        #[arg(long, env = "TOKENGATE_TLS_CA", requires = "tls_cert")]
        tls_ca: Option<PathBuf>,
        /// Require every caller (gateways, cachectl, peers) to present a certificate signed by
        /// this PEM CA bundle (mutual TLS).
        #[arg(long, env = "TOKENGATE_TLS_CLIENT_CA", requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
        /// How often the Raft leader sends heartbeats. Give every node the same timers.
        #[arg(long, env = "TOKENGATE_HEARTBEAT_INTERVAL",
              default_value_t = gateway::cachenode::HEARTBEAT.into())]
        heartbeat_interval: humantime::Duration,
        /// The Raft election timeout's lower bound; the upper bound is twice this. A dead
        /// leader is replaced after three to four times this; at least three heartbeats.
        #[arg(long, env = "TOKENGATE_ELECTION_TIMEOUT",
              default_value_t = gateway::cachenode::ELECTION_TIMEOUT_MIN.into())]
        election_timeout: humantime::Duration,
    },
    /// Hash a client secret for `issuer.clients.<id>.secretHash` (argon2id). Reads the secret
    /// from the first line of standard input.
    HashSecret,
    /// Ask a node's readiness endpoint and exit 0 when it answers 2xx, 1 otherwise: the
    /// image's health check, so that the image needs no HTTP client of its own.
    Health {
        /// The endpoint: a gateway's `/readyz` on its admin listener, or a cache node's on its
        /// metrics listener (`http://127.0.0.1:9100/readyz`).
        #[arg(
            long,
            env = "TOKENGATE_HEALTH_URL",
            default_value = "http://127.0.0.1:9090/readyz"
        )]
        url: reqwest::Url,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
}

/// Each role's secret (resolved) and identity patterns, as the flags give them; identities need
/// mutual TLS.
fn node_credentials(
    roles: [(&str, Option<String>, Vec<String>); 3],
    mutual_tls: bool,
) -> Result<gateway::cachenode::auth::Credentials, String> {
    use gateway::cachenode::auth::{Credentials, IdentityPattern, RoleCredential};
    let mut out = Vec::new();
    for (flag, token, identities) in roles {
        let secret = match token.as_deref().map(gateway::secret::resolve) {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => return Err(format!("{flag} token: {e}")),
        };
        if !identities.is_empty() && !mutual_tls {
            return Err(format!(
                "{flag} identities need mutual TLS (--tls-client-ca)"
            ));
        }
        let identities = identities
            .iter()
            .map(|p| IdentityPattern::new(p).ok_or_else(|| format!("{flag} identity is empty")))
            .collect::<Result<_, _>>()?;
        out.push(RoleCredential { secret, identities });
    }
    let [peer, gateway, operator] = <[RoleCredential; 3]>::try_from(out).expect("three roles");
    Ok(Credentials {
        peer,
        gateway,
        operator,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file, no_secrets } => match if no_secrets {
            Config::check_without_secrets(&file)
        } else {
            Config::load(&file)
        } {
            Ok(cfg) => {
                for warning in &cfg.warnings {
                    println!("{}: warning: {warning}", file.display());
                }
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => config_failed(&file, &e),
        },
        Command::HashSecret => hash_secret(),
        Command::Health { url, timeout } => current_thread().block_on(health(url, timeout)),
        Command::Convert { file } => match Config::convert(&file) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => config_failed(&file, &e),
        },
        Command::CacheNode {
            id,
            listen,
            advertise,
            data_dir,
            init,
            join,
            peer,
            admin_token,
            peer_token,
            gateway_token,
            peer_identity,
            gateway_identity,
            operator_identity,
            insecure_no_auth,
            allow_plaintext,
            snapshot_logs,
            max_entries,
            log_format,
            metrics_listen,
            tls_cert,
            tls_key,
            tls_ca,
            tls_client_ca,
            heartbeat_interval,
            election_timeout,
        } => {
            let raft_timing = gateway::cachenode::RaftTiming {
                heartbeat: heartbeat_interval.into(),
                election_timeout: election_timeout.into(),
            };
            if let Err(e) = raft_timing.validate() {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
            let tls = match node_tls(tls_cert, tls_key, tls_ca, tls_client_ca) {
                Ok(tls) => tls,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let credentials = match node_credentials(
                [
                    ("--peer", peer_token, peer_identity),
                    ("--gateway", gateway_token, gateway_identity),
                    ("--admin-token/--operator", admin_token, operator_identity),
                ],
                tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            ) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let format = match log_format.as_str() {
                "json" => gateway::telemetry::LogFormat::Json,
                _ => gateway::telemetry::LogFormat::Text,
            };
            let cfg = gateway::cachenode::CacheNodeConfig {
                id,
                listen,
                advertise: advertise.unwrap_or_else(|| listen.to_string()),
                data_dir,
                init: init.into_iter().collect(),
                join,
                peers: peer.into_iter().collect(),
                credentials,
                insecure_no_auth,
                allow_plaintext,
                snapshot_logs,
                max_entries,
                metrics_listen,
                tls,
                raft_timing,
            };
            runtime().block_on(cache_node(cfg, format))
        }
        Command::Demo {
            listen,
            admin_listen,
            print_config,
        } => runtime().block_on(demo(listen, admin_listen, print_config)),
        Command::Run {
            config,
            watch_interval,
            workers,
        } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return config_failed(&config, &e),
            };
            let source = gateway::node::reload::ConfigSource {
                path: config,
                // Never looked at is the same as waiting forever; SIGHUP still reloads.
                watch_interval: if watch_interval.is_zero() {
                    std::time::Duration::from_secs(u64::from(u32::MAX))
                } else {
                    watch_interval
                },
            };
            let workers = workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
            });
            runtime().block_on(run(cfg, source, workers))
        }
    }
}

/// The cache node's TLS files, read; an error names the flag and the file.
fn node_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<gateway::cachenode::NodeTls>, String> {
    let read = |flag: &str, path: Option<PathBuf>| -> Result<Option<Vec<u8>>, String> {
        path.map(|p| gateway::config::read_pem(&p.display().to_string()))
            .transpose()
            .map_err(|e| format!("{flag}: {e}"))
    };
    let (Some(cert), Some(key)) = (read("--tls-cert", cert)?, read("--tls-key", key)?) else {
        return Ok(None);
    };
    Ok(Some(gateway::cachenode::NodeTls {
        cert,
        key: gateway::secret::Secret::new(String::from_utf8_lossy(&key).into_owned()),
        ca: read("--tls-ca", ca)?,
        client_ca: read("--tls-client-ca", client_ca)?,
    }))
}

/// `id=host:port`.
fn parse_member(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not id=host:port"))?;
    let id = id.parse().map_err(|_| format!("{id:?} is not a node id"))?;
    Ok((id, addr.to_owned()))
}

async fn cache_node(
    cfg: gateway::cachenode::CacheNodeConfig,
    format: gateway::telemetry::LogFormat,
) -> ExitCode {
    let log = gateway::telemetry::LogConfig {
        format,
        level: "info,openraft=warn".into(),
    };
    // Tracing on cache nodes follows the standard OTEL_* environment.
    let telemetry = match gateway::telemetry::init(
        &log,
        None,
        "tokengate-cache-node",
        Some(&format!("cache-node-{}", cfg.id)),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_on_stop(shutdown.clone()));
    let code = match gateway::cachenode::run(cfg, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "cache node stopped");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `gateway health`: one GET, 2xx or not.
async fn health(url: reqwest::Url, timeout: std::time::Duration) -> ExitCode {
    let client = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(url.clone()).send().await {
        Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            eprintln!("{url}: {status} {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hash_secret() -> ExitCode {
    if std::io::stdin().is_terminal() {
        eprintln!("secret (one line; it is not stored anywhere):");
    }
    let mut line = String::new();
    if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
        eprintln!("error: cannot read standard input: {e}");
        return ExitCode::FAILURE;
    }
    let secret = line.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        eprintln!("error: the secret is empty");
        return ExitCode::from(2);
    }
    println!(
        "{}",
        gateway::issuer::secret::SecretHash::hash(secret).as_str()
    );
    ExitCode::SUCCESS
}

async fn demo(listen: SocketAddr, admin_listen: SocketAddr, print_config: bool) -> ExitCode {
    let demo = match gateway::demo::Demo::prepare(listen, admin_listen).await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            if matches!(e, gateway::demo::DemoError::Bind { .. }) {
                eprintln!("  choose other ports with --listen and --admin-listen");
            }
            return ExitCode::FAILURE;
        }
    };
    if print_config {
        print!("{}", demo.config_yaml);
        let kept = demo.keep_certificates();
        eprintln!(
            "note: the configuration trusts the demo's CA in {}; remove it when done",
            kept.display()
        );
        return ExitCode::SUCCESS;
    }
    let log = gateway::telemetry::LogConfig {
        format: gateway::telemetry::LogFormat::Text,
        level: "info".into(),
    };
    let telemetry = match gateway::telemetry::init(&log, None, "tokengate-demo", None) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", demo.guide());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_on_stop(shutdown.clone()));
    let code = match demo.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "the demo stopped");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}

fn config_failed(file: &std::path::Path, e: &gateway::config::ConfigError) -> ExitCode {
    eprintln!("error: invalid configuration {}:", file.display());
    for line in e.to_string().lines() {
        eprintln!("  {line}");
    }
    ExitCode::FAILURE
}

async fn run(cfg: Config, source: gateway::node::reload::ConfigSource, workers: usize) -> ExitCode {
    let telemetry =
        match gateway::telemetry::init(&cfg.log, cfg.tracing.as_ref(), "tokengate-gateway", None) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
    let listeners = match Listeners::bind_workers(cfg.listen, cfg.admin_listen, workers).await {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(%error, listen = %cfg.listen, admin = %cfg.admin_listen, "cannot bind listeners");
            return ExitCode::FAILURE;
        }
    };
    let (proxy, admin) = (listeners.proxy.local_addr(), listeners.admin.local_addr());
    if let (Ok(proxy), Ok(admin)) = (proxy, admin) {
        tracing::info!(%proxy, %admin, store = %cfg.store, "tokengate listening");
    }
    for warning in &cfg.warnings {
        tracing::warn!(%warning, "configuration");
    }
    if cfg.fleet_key.is_none() {
        tracing::info!(
            "no fleetKey configured: using a random per-process key (tokens are node-local)"
        );
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_on_stop(shutdown.clone()));
    let code = match gateway::node::run(cfg, listeners, shutdown, Some(source)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    code
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn signal_on_stop(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down: draining in-flight requests");
    shutdown.cancel();
}
