//! tokengate against what a user would pick instead, on the same machine in the same run: nginx
//! (`proxy_pass` with a static header, upstream keepalive) and HAProxy (`set-header`), each in
//! front of the same nginx upstream answering a small 200 and each adding a ~600-byte
//! `Authorization` header; tokengate with no middleware, with gateway-level client credentials
//! and with application-level client credentials (both cache hits: the token is fetched once).
//!
//! Closed loop: `wrk` (2 threads, 32 connections, 8 s after a 2 s warm-up), every contender a
//! fresh process per round, rounds interleaved (each starts with another contender), medians
//! reported with each figure's ratio to nginx's. CPU per request is the proxy's own (every
//! process of it) over the measured seconds. Each round then measures the median request over a
//! single connection (`wrk -t1 -c1`, 3 s): latency with nothing queued. Then overload, open loop: twice the rate nginx
//! sustained, offered for 5 s to nginx and to tokengate (application level), with the latency
//! of each request counted from when it was due, not when it was sent.
//!
//! nginx and wrk come from Debian's packages (`apt-get install nginx wrk`; installed here when
//! missing and run as root), HAProxy too (`haproxy`); a missing one is skipped with a message.
//! Everything shares the machine's cores: the figures compare the contenders, they are not any
//! one's ceiling.
//!
//! Run with `cargo bench -p gateway --bench versus`.

#[path = "process/gateway.rs"]
mod gateway_process;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use gateway_process::{Gateway, cpu_time, median};
use testkit::FakeIdp;

const ROUNDS: usize = 3;
const WARMUP_SECS: u32 = 2;
const MEASURE_SECS: u32 = 8;
const CONNECTIONS: u32 = 32;
/// Seconds of the single-connection run.
const SINGLE_SECS: u32 = 3;
const OVERLOAD: Duration = Duration::from_secs(5);
/// Connections the open-loop driver sends over (requests in flight at most).
const DRIVER_CONNECTIONS: usize = 256;

/// What one round measured of a contender: under load, then over a single connection.
#[derive(Clone, Copy, Default)]
struct Measured {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
    /// The median request over one connection, one request at a time.
    single_p50_us: f64,
}

/// A running contender: its address and the processes whose CPU time it spends.
struct Running {
    addr: String,
    pids: Vec<u32>,
    _children: Vec<Child>,
    _gateway: Option<Gateway>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self._children {
            // Asked to stop (SIGTERM), nginx's master stops its workers before it exits;
            // killed, it would leave them running.
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Running {
    /// CPU time of the contender's processes and of their children (nginx's workers).
    fn cpu(&self) -> Duration {
        let mut pids = self.pids.clone();
        for p in &self.pids {
            let children =
                std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        pids.iter().map(|p| cpu_time(*p)).sum()
    }
}

struct Contender {
    name: &'static str,
    start: Box<dyn Fn() -> Running>,
    /// The header `wrk` sends (application-level credentials).
    header: Option<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `addr` accepts connections.
fn listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `tool` is on the PATH, installing `package` from Debian's archive when it is not and
/// this runs as root.
fn available(tool: &str, package: &str) -> bool {
    let found = || {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found() {
        return true;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if root {
        eprintln!("installing {package} (apt-get)");
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status();
    }
    found()
}

/// nginx in the foreground with `http` (given its directory) as its `http` block, `workers`
/// worker processes.
fn nginx(http: impl FnOnce(&std::path::Path) -> String, workers: u32) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let http = http(dir.path());
    let conf = format!(
        "worker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 8192; }}\nhttp {{\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n{http}\n}}\n",
        d = dir.path().display()
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir.path())
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pids = vec![child.id()];
    Running {
        addr: String::new(),
        pids,
        _children: vec![child],
        _gateway: None,
        _dir: Some(dir),
    }
}

/// The upstream every contender forwards to: nginx answering `ok` on `port`.
fn upstream(port: u16) -> Running {
    let mut up = nginx(
        |_| {
            format!(
                "  access_log off;\n  keepalive_requests 1000000;\n  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 \"ok\\n\"; }} }}"
            )
        },
        1,
    );
    up.addr = format!("127.0.0.1:{port}");
    listening(&up.addr);
    up
}

fn nginx_proxy(up: &str, bearer: &str) -> Running {
    let port = free_port();
    let mut p = nginx(
        |dir| {
            format!(
                "  access_log {}/access.log combined buffer=64k;\n  upstream up {{ server {up}; keepalive 64; keepalive_requests 1000000; }}\n  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    keepalive_requests 1000000;\n    location / {{\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Authorization \"Bearer {bearer}\";\n    }}\n  }}",
                dir.display()
            )
        },
        2,
    );
    p.addr = format!("127.0.0.1:{port}");
    listening(&p.addr);
    p
}

fn haproxy(up: &str, bearer: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = format!(
        "global\n  nbthread 2\n  maxconn 8000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\nfrontend fe\n  bind 127.0.0.1:{port}\n  http-request set-header Authorization \"Bearer {bearer}\"\n  default_backend be\nbackend be\n  server up {up}\n"
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    listening(&addr);
    Running {
        addr,
        pids: vec![child.id()],
        _children: vec![child],
        _gateway: None,
        _dir: Some(dir),
    }
}

fn gateway(config: String) -> Running {
    let gw = Gateway::start(&config, &[]);
    Running {
        addr: gw.proxy().to_owned(),
        pids: vec![gw.pid()],
        _children: Vec::new(),
        _gateway: Some(gw),
        _dir: None,
    }
}

/// A duration as `wrk` prints it (`812.00us`, `1.20ms`, `2.01s`), in µs.
fn micros(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        _ => f64::NAN,
    }
}

/// Runs `wrk` against `addr` for `secs` over `connections` (on as many threads, at most two);
/// requests per second, p50, p99 and the number of requests.
fn wrk(addr: &str, header: Option<&str>, connections: u32, secs: u32) -> (f64, f64, f64, u64) {
    let mut cmd = Command::new("wrk");
    cmd.args([
        &format!("-t{}", connections.min(2)),
        &format!("-c{connections}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(format!("http://{addr}/")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Non-2xx"), "{addr} answered errors:\n{text}");
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("wrk said:\n{text}"))
    };
    let requests: u64 = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("wrk said:\n{text}"));
    (
        field("Requests/sec:").parse().unwrap(),
        micros(&field("50%")),
        micros(&field("99%")),
        requests,
    )
}

fn measure(c: &Contender) -> Measured {
    let running = (c.start)();
    let header = c.header.as_deref();
    wrk(&running.addr, header, CONNECTIONS, WARMUP_SECS);
    let before = running.cpu();
    let (rps, p50_us, p99_us, requests) = wrk(&running.addr, header, CONNECTIONS, MEASURE_SECS);
    let cpu = running.cpu() - before;
    let (_, single_p50_us, _, _) = wrk(&running.addr, header, 1, SINGLE_SECS);
    Measured {
        rps,
        p50_us,
        p99_us,
        cpu_us: cpu.as_secs_f64() * 1e6 / requests.max(1) as f64,
        single_p50_us,
    }
}

/// What the open-loop driver saw.
struct Overloaded {
    offered: f64,
    answered_ok: f64,
    failed: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Offers `rate` requests a second to `addr` for [`OVERLOAD`] over [`DRIVER_CONNECTIONS`]
/// kept-alive connections, each request's latency counted from when it was due (as wrk2 does):
/// when the proxy falls behind, the requests queued behind it count their wait.
async fn open_loop(addr: &str, header: Option<&str>, rate: f64) -> Overloaded {
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\n{}\r\n",
        header.map(|h| format!("{h}\r\n")).unwrap_or_default()
    );
    let request = Arc::new(request.into_bytes());
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let total = (rate * OVERLOAD.as_secs_f64()) as u64;
    let workers: Vec<_> = (0..DRIVER_CONNECTIONS)
        .map(|_| {
            let (request, next, failed) =
                (Arc::clone(&request), Arc::clone(&next), Arc::clone(&failed));
            let addr = addr.to_owned();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut conn: Option<tokio::io::BufStream<tokio::net::TcpStream>> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return latencies;
                    }
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due).await;
                    if conn.is_none() {
                        conn = tokio::net::TcpStream::connect(&addr)
                            .await
                            .ok()
                            .map(tokio::io::BufStream::new);
                    }
                    let answered = match conn.as_mut() {
                        Some(c) => exchange(c, &request).await,
                        None => Ok(false),
                    };
                    match answered {
                        Ok(true) => latencies.push(due.elapsed().as_secs_f64() * 1e3),
                        Ok(false) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            conn = None;
                        }
                    }
                }
            })
        })
        .collect();
    let mut l = Vec::new();
    for w in workers {
        l.extend(w.await.unwrap());
    }
    let elapsed = start.elapsed().as_secs_f64();
    l.sort_by(f64::total_cmp);
    let at = |q: f64| l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)));
    Overloaded {
        offered: rate,
        answered_ok: l.len() as f64 / elapsed,
        failed: failed.load(Ordering::Relaxed),
        p50_ms: at(0.5).copied().unwrap_or(f64::NAN),
        p99_ms: at(0.99).copied().unwrap_or(f64::NAN),
    }
}

/// Sends one request on `conn` and reads its answer (`Content-Length` bodies only); whether
/// it was a 200.
async fn exchange(
    conn: &mut tokio::io::BufStream<tokio::net::TcpStream>,
    request: &[u8],
) -> std::io::Result<bool> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    conn.write_all(request).await?;
    conn.flush().await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    let ok = line.starts_with("HTTP/1.1 200");
    let mut length = 0usize;
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    Ok(ok)
}

fn main() {
    if !available("wrk", "wrk") || !available("nginx", "nginx") {
        eprintln!(
            "skipped: the comparison needs wrk and nginx (apt-get install wrk nginx; run as root to have this bench install them)"
        );
        return;
    }
    let haproxy_ok = available("haproxy", "haproxy");
    if !haproxy_ok {
        eprintln!("HAProxy is not installed (apt-get install haproxy): it is left out");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let idp = FakeIdp::start().await;
        idp.set_token_lifetime(Duration::from_secs(3600));
        idp.register("app-client", "app-secret");
        idp.register("gw-client", "gw-secret");
        let up_port = free_port();
        let up = upstream(up_port);
        let upstream_url = format!("http://{}", up.addr);
        // nginx and HAProxy add a static header as long as a token.
        let bearer = "x".repeat(600 - "Bearer ".len());
        let url = idp.token_url();
        let route = |middlewares: &str| {
            format!(
                "routes:\n  - {{ name: app, match: {{ pathPrefix: / }}, middlewares: [{middlewares}], upstream: {{ urls: [{upstream_url}] }} }}\n"
            )
        };
        let plain = route("");
        let gateway_level = format!(
            "middlewares:\n  gw: {{ clientCredentials: {{ url: {url}, clientId: gw-client, clientSecret: gw-secret }} }}\n{}",
            route("gw")
        );
        let app_level = format!(
            "middlewares:\n  app: {{ clientCredentials: {{ url: {url} }} }}\n{}",
            route("app")
        );
        let basic = format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode("app-client:app-secret")
        );
        let (up_addr, b1, b2) = (up.addr.clone(), bearer.clone(), bearer.clone());
        let up_addr2 = up_addr.clone();
        let mut contenders = vec![Contender {
            name: "nginx proxy_pass, static header",
            start: Box::new(move || nginx_proxy(&up_addr, &b1)),
            header: None,
        }];
        if haproxy_ok {
            contenders.push(Contender {
                name: "HAProxy set-header",
                start: Box::new(move || haproxy(&up_addr2, &b2)),
                header: None,
            });
        }
        contenders.extend([
            Contender {
                name: "tokengate, no middleware",
                start: Box::new(move || gateway(plain.clone())),
                header: None,
            },
            Contender {
                name: "tokengate, gateway-level cc (hit)",
                start: Box::new(move || gateway(gateway_level.clone())),
                header: None,
            },
            Contender {
                name: "tokengate, app-level cc (hit)",
                start: Box::new(move || gateway(app_level.clone())),
                header: Some(basic.clone()),
            },
        ]);

        let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); contenders.len()];
        let width = contenders.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for round in 0..ROUNDS {
            for i in (0..contenders.len()).map(|k| (k + round) % contenders.len()) {
                let c = &contenders[i];
                let m = tokio::task::block_in_place(|| measure(c));
                println!(
                    "round {}: {:<width$} {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  {:>5.1} µs CPU/request  one connection: p50 {:>4.0} µs",
                    round + 1,
                    c.name,
                    m.rps,
                    m.p50_us,
                    m.p99_us,
                    m.cpu_us,
                    m.single_p50_us
                );
                runs[i].push(m);
            }
        }
        let medians: Vec<Measured> = runs
            .iter()
            .map(|r| Measured {
                rps: median(r.iter().map(|m| m.rps).collect()),
                p50_us: median(r.iter().map(|m| m.p50_us).collect()),
                p99_us: median(r.iter().map(|m| m.p99_us).collect()),
                cpu_us: median(r.iter().map(|m| m.cpu_us).collect()),
                single_p50_us: median(r.iter().map(|m| m.single_p50_us).collect()),
            })
            .collect();
        let base = medians[0];
        println!(
            "\nmedians of {ROUNDS} rounds (wrk -t2 -c{CONNECTIONS} -d{MEASURE_SECS}s), ratios to nginx:\n"
        );
        println!(
            "| proxy | requests/s | p50 | p99 | CPU per request | one connection: p50 |"
        );
        println!("|---|---|---|---|---|---|");
        for (c, m) in contenders.iter().zip(&medians) {
            println!(
                "| {} | {:.0} ({:.2}×) | {:.0} µs ({:.2}×) | {:.0} µs ({:.2}×) | {:.1} µs ({:.2}×) | {:.0} µs ({:.2}×) |",
                c.name,
                m.rps,
                m.rps / base.rps,
                m.p50_us,
                m.p50_us / base.p50_us,
                m.p99_us,
                m.p99_us / base.p99_us,
                m.cpu_us,
                m.cpu_us / base.cpu_us,
                m.single_p50_us,
                m.single_p50_us / base.single_p50_us
            );
        }

        // Overload: twice the rate each sustained, to nginx and to tokengate (application
        // level).
        println!(
            "\noverload, open loop: twice the proxy's own median rate offered for {}s over {DRIVER_CONNECTIONS} connections (latency from when each request was due):\n",
            OVERLOAD.as_secs()
        );
        println!("| proxy | offered/s | answered 200/s | failed | p50 | p99 |");
        println!("|---|---|---|---|---|---|");
        let last = contenders.len() - 1;
        for i in [0, last] {
            let c = &contenders[i];
            let rate = 2.0 * medians[i].rps;
            let running = tokio::task::block_in_place(|| (c.start)());
            tokio::task::block_in_place(|| {
                wrk(&running.addr, c.header.as_deref(), CONNECTIONS, WARMUP_SECS)
            });
            let o = open_loop(&running.addr, c.header.as_deref(), rate).await;
            println!(
                "| {} | {:.0} | {:.0} | {} of {:.0} | {:.1} ms | {:.1} ms |",
                c.name,
                o.offered,
                o.answered_ok,
                o.failed,
                o.offered * OVERLOAD.as_secs_f64(),
                o.p50_ms,
                o.p99_ms
            );
        }
        assert_eq!(
            idp.issued("app-client") + idp.issued("gw-client"),
            2 * ROUNDS as u64 + 1,
            "a token per gateway process: every measured request was a cache hit"
        );
        drop(up);
    });
}
