//! Shared by the process-level benches (`tracing`, `tls`, `routing`): a release-built `gateway
//! run` process (`gateway.rs`, which `versus` uses too), a closed-loop driver that counts
//! completed requests and the gateway's CPU time, and interleaved rounds reported as medians.
//!
//! Each mode gets its own gateway process. The modes take turns over several rounds, each round
//! starting with another mode, and the median of each is reported, so drift on the machine hits
//! them alike. The driver shares the cores with the gateway: the figures compare the modes, they
//! are not the gateway's ceiling.

mod gateway;

pub use gateway::Gateway;
use gateway::{cpu_time, median};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const CONCURRENCY: usize = 32;
const WARMUP: Duration = Duration::from_secs(2);
const ROUND: Duration = Duration::from_secs(8);
pub const ROUNDS: usize = 5;
/// Client identities the driver spreads its requests over (`client-N` / `secret-N`).
pub const CLIENTS: usize = 8;

/// One way of running the gateway: how to start it, and the client and URL that drive it.
pub struct Mode {
    pub name: String,
    pub start: Box<dyn Fn() -> Gateway>,
    pub client: reqwest::Client,
    /// `http` or `https`: how the driver reaches the proxy listener.
    pub scheme: &'static str,
    /// The path it requests.
    pub path: &'static str,
}

/// Over `ROUND`, after `WARMUP`, with `CONCURRENCY` requests in flight: requests completed per
/// second, and the gateway's CPU time per request.
async fn throughput(gw: &Gateway, mode: &Mode) -> (f64, Duration) {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("{}://{}{}", mode.scheme, gw.proxy(), mode.path);
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let (http, done, stop) = (mode.client.clone(), Arc::clone(&done), Arc::clone(&stop));
            let url = url.clone();
            let c = w % CLIENTS;
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let resp = http
                        .get(&url)
                        .basic_auth(format!("client-{c}"), Some(format!("secret-{c}")))
                        .send()
                        .await
                        .expect("gateway answers");
                    assert_eq!(resp.status(), 200);
                    let _ = resp.bytes().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(WARMUP).await;
    let pid = gw.pid();
    let (start, before, cpu_before) = (Instant::now(), done.load(Ordering::Relaxed), cpu_time(pid));
    tokio::time::sleep(ROUND).await;
    let n = done.load(Ordering::Relaxed) - before;
    let cpu = (cpu_time(pid) - cpu_before) / u32::try_from(n).unwrap();
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    (rate, cpu)
}

/// Runs every mode once per round for `ROUNDS` rounds, waiting `settle` after each, and prints
/// each round's figures and then the medians, relative to the first mode.
pub async fn rounds(modes: &[Mode], settle: Duration) {
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let width = modes.iter().map(|m| m.name.len()).max().unwrap_or(0);
    for round in 0..ROUNDS {
        // Each round starts with another mode, so no mode always follows the busiest one.
        for i in (0..modes.len()).map(|k| (k + round) % modes.len()) {
            let mode = &modes[i];
            let gw = (mode.start)();
            let (rate, cpu) = throughput(&gw, mode).await;
            drop(gw);
            let cpu_us = cpu.as_secs_f64() * 1e6;
            println!(
                "round {}: {:<width$} {rate:>8.0} req/s  {cpu_us:>6.1} µs CPU/request",
                round + 1,
                mode.name,
            );
            rates[i].push(rate);
            cpus[i].push(cpu_us);
            tokio::time::sleep(settle).await;
        }
    }
    let (base, base_cpu) = (median(rates[0].clone()), median(cpus[0].clone()));
    println!("\nmedian of {ROUNDS} rounds, {CONCURRENCY} in flight:");
    for ((mode, r), c) in modes.iter().zip(rates).zip(cpus) {
        let (m, c) = (median(r), median(c));
        println!(
            "  {:<width$} {m:>8.0} req/s ({:+.1}%)  {c:>6.1} µs CPU/request ({:+.1}%)",
            mode.name,
            (m / base - 1.0) * 100.0,
            (c / base_cpu - 1.0) * 100.0
        );
    }
}

/// A multi-threaded runtime with two workers, like the machine the figures are taken on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
