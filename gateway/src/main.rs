//! The `gateway` binary: one binary, several roles.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::config::Config;
use gateway::proxy::Listeners;
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

#[derive(Subcommand)]
enum Command {
    /// Run a proxy node.
    Run {
        /// The configuration file (YAML).
        #[arg(long, short, env = "TOKENGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration file and exit: 0 when valid, 1 with every problem listed.
    CheckConfig {
        /// The configuration file (YAML).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => config_failed(&file, &e),
        },
        Command::Run { config } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => return config_failed(&config, &e),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(run(cfg))
        }
    }
}

fn config_failed(file: &std::path::Path, e: &gateway::config::ConfigError) -> ExitCode {
    eprintln!("error: invalid configuration {}:", file.display());
    for line in e.to_string().lines() {
        eprintln!("  {line}");
    }
    ExitCode::FAILURE
}

async fn run(cfg: Config) -> ExitCode {
    gateway::telemetry::init(&cfg.log);
    let listeners = match Listeners::bind(cfg.listen, cfg.admin_listen).await {
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
    if cfg.fleet_key.is_none() {
        tracing::info!(
            "no fleetKey configured: using a random per-process key (tokens are node-local)"
        );
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(signal_on_stop(shutdown.clone()));
    match gateway::run(cfg, listeners, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            ExitCode::FAILURE
        }
    }
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
