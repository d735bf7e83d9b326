//! `chaos`: run an experiment against a real fleet and say whether the fleet kept its promise.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chaos::fleet::StoreKind;
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
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::List => {
            for s in SCENARIOS {
                let stores: Vec<String> = s.stores.iter().map(ToString::to_string).collect();
                println!("{:<28} [{}]\n    {}\n", s.name, stores.join(", "), s.about);
            }
            ExitCode::SUCCESS
        }
        Command::Run {
            scenario,
            store,
            gateways,
            duration,
            rps,
            seed,
            clients,
            token_lifetime,
            gateway_bin,
            out,
        } => {
            let Some(scenario) = scenario::find(&scenario) else {
                eprintln!("error: no scenario {scenario:?}; `chaos list` shows them");
                return ExitCode::from(2);
            };
            let gateway_bin = gateway_bin.unwrap_or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|p| Some(p.parent()?.join("gateway")))
                    .unwrap_or_else(|| "gateway".into())
            });
            if !gateway_bin.exists() {
                eprintln!(
                    "error: no gateway binary at {}; build it (cargo build -p gateway) or pass --gateway-bin",
                    gateway_bin.display()
                );
                return ExitCode::from(2);
            }
            let dir = out.unwrap_or_else(|| {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                PathBuf::from("chaos-runs").join(format!("{}-{store}-{stamp}", scenario.name))
            });
            let spec = RunSpec {
                scenario,
                store,
                gateways,
                duration,
                rps,
                seed,
                clients,
                token_lifetime,
                gateway_bin,
                dir: dir.clone(),
                lies: chaos::Lies::default(),
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(run(spec, dir))
        }
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
