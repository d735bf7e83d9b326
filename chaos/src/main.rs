//! `chaos`: run an experiment against a real fleet and say whether the fleet kept its promise.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chaos::fleet::{Hosting, StoreKind};
use chaos::run::{Live, RunSpec};
use chaos::scenario::{self, SCENARIOS};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chaos",
    version,
    about = "Kill tokengate nodes during token refreshes and check that nothing breaks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the scenarios.
    List,
    /// Run one scenario and print a report (exit 0 when every invariant held, 1 otherwise).
    Run {
        /// The scenario (see `chaos list`).
        scenario: String,
        /// The shared store.
        #[arg(long, value_enum, default_value_t = StoreKind::Raft)]
        store: StoreKind,
        /// Where the nodes run: processes on loopback, or containers from the images
        /// `scripts/images` builds, each a host on a network of its own.
        #[arg(long, value_enum, default_value_t = Hosting::Processes)]
        hosting: Hosting,
        /// Gateway nodes behind the balancer.
        #[arg(long, default_value_t = 3)]
        gateways: usize,
        /// How long the load runs.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Requests per second.
        #[arg(long, default_value_t = 200)]
        rps: u32,
        /// Seed for the scenario's choices (victims, orders).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Client identities.
        #[arg(long, default_value_t = 20)]
        clients: usize,
        /// Lifetime of the IdP's tokens (short, so that the run sees many refreshes).
        #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
        token_lifetime: Duration,
        /// The `gateway` binary (default: next to this one).
        #[arg(long)]
        gateway_bin: Option<PathBuf>,
        /// Where logs, report.json and timeline.svg go (default: a new directory under
        /// ./chaos-runs).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Every node's log filter (`RUST_LOG` syntax); each node logs to its own file in the
        /// run's directory. The default records the token lifecycle (fills, renewals, leases)
        /// at debug level.
        #[arg(
            long,
            default_value = "info,gateway::lifecycle=debug,gateway::store=debug"
        )]
        log_level: String,
    },
    /// Fill the shared cache with many new credentials, store after store, and print what it
    /// cost: rate, IdP requests, elections, memory, snapshot and catch-up (see the Performance
    /// section of docs/development.md).
    Fill {
        /// The stores, in order; rates are also given as ratios to the first.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [StoreKind::Memory, StoreKind::Redis, StoreKind::Raft])]
        stores: Vec<StoreKind>,
        /// New credentials per store.
        #[arg(long, default_value_t = 100_000)]
        credentials: usize,
        /// Gateway nodes behind the balancer.
        #[arg(long, default_value_t = 3)]
        gateways: usize,
        /// Callers in the closed loop.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Size of each access token, bytes.
        #[arg(long, default_value_t = 900)]
        token_bytes: usize,
        /// The `gateway` binary (default: next to this one).
        #[arg(long)]
        gateway_bin: Option<PathBuf>,
        /// Where logs, data and fill.json go (default: a new directory under ./chaos-runs).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Every node's log filter (`RUST_LOG` syntax).
        #[arg(long, default_value = "info")]
        log_level: String,
        /// Redis' `appendfsync`: `always` (as durable as the Raft log) or `everysec` (Redis'
        /// recommended setting).
        #[arg(long, default_value = "always", value_parser = ["always", "everysec"])]
        redis_fsync: String,
    },
    /// Serve the fake IdP and echo upstreams until SIGINT or SIGTERM, as stand-ins for a real
    /// IdP and real APIs (the example configuration and docker-compose.yml use them).
    Doubles {
        /// Where the fake IdP listens (`/token`, `/introspect`, `/jwks`, OIDC discovery).
        #[arg(long, default_value = "127.0.0.1:4444")]
        idp_listen: SocketAddr,
        /// The URL callers reach the IdP at: its tokens' `iss` and the base of the endpoints
        /// its discovery document names [default: http://IDP_LISTEN].
        #[arg(long)]
        idp_url: Option<String>,
        /// Where an echo upstream listens (repeat for several).
        #[arg(long = "upstream-listen", default_values = ["127.0.0.1:8081", "127.0.0.1:8082"])]
        upstream_listen: Vec<SocketAddr>,
        /// A client the IdP accepts, `ID=SECRET`; SECRET may be a reference `env:NAME` or
        /// `file:/path` (repeat for several).
        #[arg(long = "client", value_parser = parse_client,
              default_values = ["demo-app=demo-secret", "gateway=env:GW_SECRET"])]
        clients: Vec<(String, String)>,
        /// Lifetime of the tokens it issues.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        token_lifetime: Duration,
    },
}

/// `ID=SECRET`, the secret given inline or as a reference.
fn parse_client(s: &str) -> Result<(String, String), String> {
    let (id, secret) = s
        .split_once('=')
        .filter(|(id, secret)| !id.is_empty() && !secret.is_empty())
        .ok_or_else(|| format!("{s:?} is not ID=SECRET"))?;
    let secret = if let Some(name) = secret.strip_prefix("env:") {
        std::env::var(name).map_err(|_| format!("client {id}: {name} is not set"))?
    } else if let Some(path) = secret.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map_err(|e| format!("client {id}: cannot read {path}: {e}"))?
            .trim_end_matches(['\r', '\n'])
            .to_owned()
    } else {
        secret.to_owned()
    };
    Ok((id.to_owned(), secret))
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::List => {
            for s in SCENARIOS {
                let stores: Vec<String> = s.stores.iter().map(ToString::to_string).collect();
                let hostings: Vec<String> = s.hostings.iter().map(ToString::to_string).collect();
                println!(
                    "{:<28} [{}] [{}]\n    {}\n",
                    s.name,
                    stores.join(", "),
                    hostings.join(", "),
                    s.about
                );
            }
            ExitCode::SUCCESS
        }
        Command::Run {
            scenario,
            store,
            hosting,
            gateways,
            duration,
            rps,
            seed,
            clients,
            token_lifetime,
            gateway_bin,
            out,
            log_level,
        } => {
            let Some(scenario) = scenario::find(&scenario) else {
                eprintln!("error: no scenario {scenario:?}; `chaos list` shows them");
                return ExitCode::from(2);
            };
            // Containers run the images' binaries.
            let gateway_bin = match hosting {
                Hosting::Containers => PathBuf::new(),
                Hosting::Processes => match gateway_binary(gateway_bin) {
                    Some(bin) => bin,
                    None => return ExitCode::from(2),
                },
            };
            let dir = out.unwrap_or_else(|| {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                PathBuf::from("chaos-runs")
                    .join(format!("{}-{store}-{hosting}-{stamp}", scenario.name))
            });
            let spec = RunSpec {
                scenario,
                store,
                hosting,
                gateways,
                duration,
                rps,
                seed,
                clients,
                token_lifetime,
                gateway_bin,
                dir: dir.clone(),
                lies: testkit::Lies::default(),
                log_level,
            };
            runtime().block_on(run(spec, dir))
        }
        Command::Fill {
            stores,
            credentials,
            gateways,
            concurrency,
            token_bytes,
            gateway_bin,
            out,
            log_level,
            redis_fsync,
        } => {
            let Some(gateway_bin) = gateway_binary(gateway_bin) else {
                return ExitCode::from(2);
            };
            let redis_fsync = if redis_fsync == "everysec" {
                "everysec"
            } else {
                "always"
            };
            let dir = out.unwrap_or_else(|| {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                PathBuf::from("chaos-runs").join(format!("fill-{stamp}"))
            });
            runtime().block_on(async {
                let mut reports = Vec::new();
                for store in stores {
                    eprintln!("filling {credentials} credentials through {gateways} gateways on {store}...");
                    let spec = chaos::fill::FillSpec {
                        store,
                        gateways,
                        credentials,
                        concurrency,
                        token_bytes,
                        gateway_bin: gateway_bin.clone(),
                        dir: dir.join(store.to_string()),
                        log_level: log_level.clone(),
                        redis_fsync,
                    };
                    match chaos::fill::fill(&spec).await {
                        Ok(r) => reports.push(r),
                        Err(e) => {
                            eprintln!("error: the fill on {store} failed: {e:#}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                println!("{}", chaos::fill::table(&reports));
                let json = serde_json::to_string_pretty(&reports).expect("reports serialize");
                if let Err(e) = std::fs::write(dir.join("fill.json"), json) {
                    eprintln!("error: cannot write {}: {e}", dir.join("fill.json").display());
                }
                let ok = reports
                    .iter()
                    .all(|r| r.failed == 0 && r.idp_requests_max <= 1);
                if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
            })
        }
        Command::Doubles {
            idp_listen,
            idp_url,
            upstream_listen,
            clients,
            token_lifetime,
        } => {
            match runtime().block_on(doubles(
                idp_listen,
                idp_url,
                &upstream_listen,
                &clients,
                token_lifetime,
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The `gateway` binary to start: the one given, or the one next to this binary.
fn gateway_binary(given: Option<PathBuf>) -> Option<PathBuf> {
    let bin = given.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.join("gateway")))
            .unwrap_or_else(|| "gateway".into())
    });
    if bin.exists() {
        return Some(bin);
    }
    eprintln!(
        "error: no gateway binary at {}; build it (cargo build -p gateway) or pass --gateway-bin",
        bin.display()
    );
    None
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Serves the doubles until SIGINT or SIGTERM.
async fn doubles(
    idp_listen: SocketAddr,
    idp_url: Option<String>,
    upstream_listen: &[SocketAddr],
    clients: &[(String, String)],
    token_lifetime: Duration,
) -> std::io::Result<()> {
    let bind_error =
        |addr: SocketAddr| move |e: std::io::Error| std::io::Error::other(format!("{addr}: {e}"));
    let idp = testkit::FakeIdp::start_on(idp_listen)
        .await
        .map_err(bind_error(idp_listen))?;
    if let Some(url) = &idp_url {
        idp.set_issuer(url);
    }
    idp.set_token_lifetime(token_lifetime);
    for (id, secret) in clients {
        idp.register(id, secret);
    }
    let mut upstreams = Vec::new();
    for addr in upstream_listen {
        upstreams.push(
            testkit::EchoUpstream::start_on(*addr)
                .await
                .map_err(bind_error(*addr))?,
        );
    }
    let ids: Vec<&str> = clients.iter().map(|(id, _)| id.as_str()).collect();
    println!(
        "fake IdP listening on {} as {} (clients: {})",
        idp.addr(),
        idp.issuer(),
        ids.join(", ")
    );
    for upstream in &upstreams {
        println!("echo upstream listening on {}", upstream.url());
    }
    println!("serving until SIGINT or SIGTERM");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

async fn run(spec: RunSpec, dir: PathBuf) -> ExitCode {
    let live = Arc::new(Live::default());
    let bar = indicatif::ProgressBar::new(spec.duration.as_secs());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:40}] {pos}/{len}s {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message("starting the fleet");
    let ticker = {
        let (bar, live) = (bar.clone(), Arc::clone(&live));
        tokio::spawn(async move {
            let mut started = None;
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let done = live.done.load(Ordering::Relaxed);
                if done == 0 {
                    continue;
                }
                let t0 = *started.get_or_insert_with(Instant::now);
                bar.set_position(t0.elapsed().as_secs());
                bar.set_message(format!(
                    "{done} requests, {} failed",
                    live.failed.load(Ordering::Relaxed)
                ));
            }
        })
    };
    let result = chaos::run::run(&spec, live).await;
    ticker.abort();
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            print!("{}", chaos::report::table(&report));
            if let Err(e) = chaos::report::write(&report, &dir) {
                eprintln!("error: cannot write the report: {e}");
                return ExitCode::FAILURE;
            }
            println!(
                "report: {}  chart: {}  logs: {}",
                dir.join("report.json").display(),
                dir.join("timeline.svg").display(),
                dir.display()
            );
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: the run could not complete: {e:#}");
            eprintln!("logs: {}", dir.display());
            ExitCode::FAILURE
        }
    }
}
