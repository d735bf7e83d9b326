//! `cachectl`: the operator's view of tokengate's shared token cache, as `etcdctl` is etcd's and
//! `redis-cli` is Redis's.
//!
//! It talks gRPC to the Raft cache service (`--endpoints`, admin calls with `--token` or
//! `CACHECTL_TOKEN`) or directly to a Redis-backed cache (`--redis URL --key-prefix P`). Entries
//! are listed from their clear metadata; the token and the refresh spec are sealed under the
//! fleet key, which cachectl never holds, so no command can print them.
//!
//! Exit codes: 0 success, 1 the cache said no or could not be reached, 2 usage.
//!
//! # Layout
//!
//! - [`backend`]: which cache, and the operations on it.
//! - [`admin`]: the Raft cache service's `Admin` calls (status, membership, snapshots).
//! - [`render`]: tables for people, JSON for scripts.

#![forbid(unsafe_code)]

mod admin;
mod backend;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use backend::Backend;
use render::Format;

#[derive(Parser)]
#[command(
    name = "cachectl",
    version,
    about = "Inspect and steer tokengate's shared token cache"
)]
struct Cli {
    /// Cache nodes of the Raft cache service (`host:port`, comma-separated).
    #[arg(long, global = true, value_delimiter = ',', env = "CACHECTL_ENDPOINTS")]
    endpoints: Vec<String>,
    /// The cache nodes' admin token. Prefer the environment variable: flags show in `ps`.
    #[arg(long, global = true, env = "CACHECTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A Redis-backed cache: `redis://[[user]:password@]host:port[/db]`, `rediss://` for TLS.
    #[arg(long, global = true, env = "CACHECTL_REDIS", hide_env_values = true)]
    redis: Option<String>,
    /// PEM CA bundle to verify the cache nodes' (or `rediss://` Redis') certificate against;
    /// giving any TLS flag dials the cache nodes over TLS (default roots: webpki).
    #[arg(long, global = true, env = "CACHECTL_CACERT")]
    cacert: Option<PathBuf>,
    /// PEM client certificate, for nodes that require one (mutual TLS).
    #[arg(long, global = true, env = "CACHECTL_CERT", requires = "cert_key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(
        long = "key",
        id = "cert_key",
        global = true,
        env = "CACHECTL_KEY",
        requires = "cert"
    )]
    cert_key: Option<PathBuf>,
    /// Send the token (or the Redis password) without TLS to a cache that is not on this host:
    /// anyone on the path can read it. For a private network you trust.
    #[arg(long, global = true, env = "CACHECTL_ALLOW_PLAINTEXT")]
    allow_plaintext: bool,
    /// The fleet's `store.redis.keyPrefix`.
    #[arg(long, global = true, default_value = "tokengate")]
    key_prefix: String,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Upper bound on each call to the cache.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cluster members, roles, leader, term, log and applied index, lag; Redis: server, lease,
    /// entry count.
    Status,
    /// Cached entries (never their tokens).
    Ls {
        /// Only this client id.
        #[arg(long)]
        client: Option<String>,
        /// Only entries expiring within this time (e.g. `30s`).
        #[arg(long, value_parser = humantime::parse_duration)]
        expiring_within: Option<Duration>,
        /// Sort order.
        #[arg(long, value_enum, default_value_t = Sort::Key)]
        sort: Sort,
    },
    /// One entry in full (metadata only: the token and secrets are sealed).
    Get {
        /// The entry's key, or a unique prefix of it (at least 6 hex digits).
        key: String,
    },
    /// Evict entries fleet-wide: every gateway's L1 drops them too.
    Evict {
        /// The entry's key or a unique prefix.
        key: Option<String>,
        /// Every entry of this client id.
        #[arg(long, conflicts_with = "key")]
        client: Option<String>,
        /// Every entry (needs --yes).
        #[arg(long, conflicts_with_all = ["key", "client"])]
        all: bool,
        /// Confirm --all.
        #[arg(long)]
        yes: bool,
    },
    /// Ask the refresh leader to renew an entry now.
    Refresh {
        /// The entry's key or a unique prefix.
        key: String,
    },
    /// Who holds the refresh lease, and its fence.
    Leases,
    /// Follow changes as they happen (Ctrl-C to stop).
    Watch {
        /// Stop after this many changes.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Change the Raft cluster's membership.
    Members {
        #[command(subcommand)]
        action: MembersCmd,
    },
    /// Take a snapshot on every reachable cache node now; with --out, write a backup of the
    /// cache (entries sealed as stored, one-time claims) to a file instead.
    Snapshot {
        /// Write the leader's state to this file (created with mode 0600; replaced whole).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a backup's entries and claims to the cache through the leader. An entry older
    /// than the cached one, or expired, is skipped; nothing is removed. The fleet that reads
    /// the entries needs the fleet key they were sealed under.
    Restore {
        /// A file written by `snapshot --out`.
        file: PathBuf,
    },
    /// Print a shell completion script (`cachectl completions bash > /etc/bash_completion.d/cachectl`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum MembersCmd {
    /// Add a node as a learner (it catches up without voting).
    AddLearner {
        /// Its id.
        id: u64,
        /// Its address (`host:port`).
        addr: String,
    },
    /// Make a member a voter.
    Promote {
        /// Its id.
        id: u64,
    },
    /// Remove a member.
    Remove {
        /// Its id.
        id: u64,
    },
    /// Replace a voter by a learner once the learner has caught up with the leader (a node
    /// that lost its disk, back under a new id).
    Replace {
        /// The voter to remove.
        old: u64,
        /// The learner to promote in its place.
        new: u64,
        /// How long to wait for the learner to catch up.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
}

/// Entry listing order.
#[derive(Clone, Copy, ValueEnum)]
enum Sort {
    Key,
    Expires,
    Refresh,
    Client,
    Used,
}

/// Why a command failed: the exit code tells scripts which kind.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Wrong or missing arguments: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The cache refused, has no such entry, or cannot be reached: exit 1.
    #[error("{0}")]
    Server(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "cachectl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(m)) => {
            eprintln!("cachectl: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Server(m)) => {
            eprintln!("cachectl: {m}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<String, Failure> {
    let backend = Backend::open(&cli)?;
    let format = cli.output;
    match cli.command {
        Cmd::Status => backend.status(format).await,
        Cmd::Ls {
            client,
            expiring_within,
            sort,
        } => {
            let mut entries = backend.entries().await?;
            entries.retain(|e| {
                client.as_ref().is_none_or(|c| e.client_id == *c)
                    && expiring_within.is_none_or(|w| e.expires_in_ms <= w.as_millis() as i64)
            });
            match sort {
                Sort::Key => {}
                Sort::Expires => entries.sort_by_key(|e| e.expires_in_ms),
                Sort::Refresh => entries.sort_by_key(|e| e.refresh_in_ms),
                Sort::Client => entries.sort_by(|a, b| a.client_id.cmp(&b.client_id)),
                Sort::Used => entries.sort_by_key(|e| e.last_used_ms_ago),
            }
            Ok(render::entries(&entries, format))
        }
        Cmd::Get { key } => {
            let entry = backend.resolve(&key).await?;
            Ok(render::entry(&entry, format))
        }
        Cmd::Evict {
            key,
            client,
            all,
            yes,
        } => {
            let targets = match (key, client, all) {
                (Some(k), _, _) => vec![backend.resolve(&k).await?],
                (None, Some(c), _) => {
                    let mut e = backend.entries().await?;
                    e.retain(|e| e.client_id == c);
                    e
                }
                (None, None, true) if yes => backend.entries().await?,
                (None, None, true) => {
                    return Err(Failure::Usage(
                        "evict --all removes every cached token fleet-wide; add --yes".into(),
                    ));
                }
                (None, None, false) => {
                    return Err(Failure::Usage(
                        "evict needs KEY, --client ID or --all --yes".into(),
                    ));
                }
            };
            let evicted = backend.evict(&targets).await?;
            Ok(render::count("evicted", evicted, format))
        }
        Cmd::Refresh { key } => {
            let entry = backend.resolve(&key).await?;
            backend.refresh(&entry).await?;
            Ok(render::count("marked due", 1, format))
        }
        Cmd::Leases => backend.leases(format).await,
        Cmd::Watch { count } => backend.watch(count, format).await,
        Cmd::Members { action } => {
            let admin = backend.admin()?;
            let index = match action {
                MembersCmd::AddLearner { id, addr } => admin.add_learner(id, addr).await?,
                MembersCmd::Promote { id } => admin.change_voters(|v| v.push(id)).await?,
                MembersCmd::Remove { id } => {
                    admin.change_voters(|v| v.retain(|x| *x != id)).await?
                }
                MembersCmd::Replace { old, new, wait } => admin.replace(old, new, wait).await?,
            };
            Ok(render::count(
                "membership changed at log index",
                index,
                format,
            ))
        }
        Cmd::Snapshot { out: None } => backend.admin()?.snapshot(format).await,
        Cmd::Snapshot { out: Some(file) } => backend.admin()?.backup(&file, format).await,
        Cmd::Restore { file } => backend.admin()?.restore(&file, format).await,
        Cmd::Completions { .. } => unreachable!("handled before the runtime starts"),
    }
}
