//! What tracing costs: proxy throughput of a release-built `gateway run` process with span
//! export off, at sampling 0.01 and at 1.0, exporting over OTLP/gRPC to an in-process receiver.
//!
//! Each mode gets its own gateway process (an application-level client credentials route to an
//! echo upstream, tokens from the fake IdP, memory store, access log on). A closed-loop driver
//! keeps `CONCURRENCY` requests in flight from 8 client identities; after a warm-up, completed
//! requests and the gateway process's CPU time are counted for `ROUND`. The modes take turns
//! over several rounds and the median of each is reported, so drift on the machine hits them
//! alike. The driver and the receiver share the cores with the gateway (at sampling 1.0 the
//! receiver decodes every span it is sent): the figures compare the modes, they are not the
//! gateway's ceiling.
//!
//! Run with `cargo bench -p gateway --bench tracing`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::otlp::Collector;
use testkit::{EchoUpstream, FakeIdp};

const CONCURRENCY: usize = 32;
const WARMUP: Duration = Duration::from_secs(2);
const ROUND: Duration = Duration::from_secs(8);
const ROUNDS: usize = 5;
const CLIENTS: usize = 8;
const SETTLE: Duration = Duration::from_secs(3);

struct Gateway {
    child: Child,
    proxy: String,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a gateway with `telemetry` (a YAML fragment, empty for none) and waits until it
/// listens; its output is drained and dropped.
fn start(idp: &FakeIdp, upstream: &EchoUpstream, telemetry: &str, env: &[(&str, &str)]) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
log: {{ format: json, level: info }}
{telemetry}
middlewares:
  app:
    clientCredentials: {{ url: {url}, scopes: [read] }}
routes:
  - {{ name: app, match: {{ pathPrefix: / }}, middlewares: [app], upstream: {{ urls: [{up}] }} }}
"#,
        url = idp.token_url(),
        up = upstream.url(),
    );
    std::fs::write(&path, yaml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "tokengate listening"
            {
                let _ = tx.send(v["proxy"].as_str().unwrap().to_owned());
            }
        }
    });
    let proxy = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("gateway listens");
    Gateway {
        child,
        proxy,
        _dir: dir,
    }
}

/// CPU time the process has used so far (user + system), from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // The kernel reports in USER_HZ, 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// Over `ROUND`, after `WARMUP`: requests completed per second, and the gateway's CPU time
/// per request.
async fn throughput(gw: &Gateway) -> (f64, Duration) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let (http, done, stop) = (http.clone(), Arc::clone(&done), Arc::clone(&stop));
            let url = format!("http://{}/x", gw.proxy);
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
    let pid = gw.child.id();
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (idp, upstream, collector) = (
            FakeIdp::start().await,
            EchoUpstream::start().await,
            Collector::start().await,
        );
        idp.set_token_lifetime(Duration::from_secs(3600));
        for c in 0..CLIENTS {
            idp.register(&format!("client-{c}"), &format!("secret-{c}"));
        }
        let endpoint = collector.endpoint();
        let traced = |rate: &str| {
            format!(
                "telemetry: {{ tracing: {{ sampleRate: {rate}, otlp: {{ grpc: {{ endpoint: \"{endpoint}\" }} }} }} }}"
            )
        };
        let modes = [
            ("off", String::new()),
            ("sampling 0.01", traced("0.01")),
            ("sampling 1.0", traced("1.0")),
        ];
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        let mut cpus: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
        for round in 0..ROUNDS {
            // Each round starts with another mode, so no mode always follows the busiest one.
            for i in (0..modes.len()).map(|k| (k + round) % modes.len()) {
                let (name, telemetry) = &modes[i];
                let gw = start(&idp, &upstream, telemetry, &[("OTEL_BSP_MAX_QUEUE_SIZE", "65536")]);
                let (rate, cpu) = throughput(&gw).await;
                drop(gw);
                let cpu_us = cpu.as_secs_f64() * 1e6;
                println!(
                    "round {}: {name:<14} {rate:>8.0} req/s  {cpu_us:>6.1} µs CPU/request",
                    round + 1
                );
                rates[i].push(rate);
                cpus[i].push(cpu_us);
                // Let the receiver take in the last exported batches before the next mode.
                tokio::time::sleep(SETTLE).await;
            }
        }
        let (off, off_cpu) = (median(rates[0].clone()), median(cpus[0].clone()));
        println!("\nmedian of {ROUNDS} rounds, {CONCURRENCY} in flight:");
        for (((name, _), r), c) in modes.iter().zip(rates).zip(cpus) {
            let (m, c) = (median(r), median(c));
            println!(
                "  {name:<14} {m:>8.0} req/s ({:+.1}%)  {c:>6.1} µs CPU/request ({:+.1}%)",
                (m / off - 1.0) * 100.0,
                (c / off_cpu - 1.0) * 100.0
            );
        }
        println!("spans received: {}", collector.spans().len());
    });
}
