//! Helpers shared by the end-to-end tests: a real `gateway` process per node, killed when
//! dropped (even when the test fails), its log captured; and small HTTP and polling helpers.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, ExitStatus, Stdio};

use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::procs::Owned;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
pub use testkit::eventually;
pub use testkit::procs::free_port;
pub use testkit::redis::{RedisServer, free_cluster_port};
pub use testkit::tls::TlsFixture;

/// A gateway process started from the built binary.
pub struct Node {
    child: Owned,
    log: Arc<Mutex<String>>,
    /// The proxy listener.
    pub proxy: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Writes `yaml` to a temporary file and runs `gateway <args...> <file>`.
pub fn gateway_command(
    args: &[&str],
    yaml: &str,
    env: &[(&str, &str)],
) -> (Command, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(args).arg(&path).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd, dir)
}

/// The test nodes' logging, in front of their configuration.
fn with_log(yaml: &str) -> String {
    format!("log: {{ format: json, level: \"info,tokengate=debug,gateway=debug\" }}\n{yaml}")
}

/// Whether this process runs as root (tests that bind privileged ports or mount files).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Node {
    /// Starts a node with `yaml` (listeners on port 0) and waits until it listens.
    pub fn start(yaml: &str, env: &[(&str, &str)]) -> Self {
        Self::start_resolving(yaml, env, &[])
    }

    /// [`Node::start`], the node resolving each `(name, address)` of `hosts` to that address,
    /// as a pod's `hostAliases` do: it runs in its own mount namespace, where `/etc/hosts` is a
    /// file listing them (root only).
    pub fn start_resolving(yaml: &str, env: &[(&str, &str)], hosts: &[(&str, IpAddr)]) -> Self {
        let yaml = with_log(yaml);
        let (mut cmd, dir) = gateway_command(&["run", "--config"], &yaml, env);
        if !hosts.is_empty() {
            let file = dir.path().join("hosts");
            let lines: String = hosts
                .iter()
                .map(|(name, ip)| format!("{ip} {name}\n"))
                .collect();
            std::fs::write(&file, format!("127.0.0.1 localhost\n{lines}")).unwrap();
            let mut wrapped = Command::new("unshare");
            wrapped
                .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
                .arg(&file)
                .arg(cmd.get_program())
                .args(cmd.get_args())
                .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
                .env_remove("RUST_LOG");
            cmd = wrapped;
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gateway binary runs");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = Arc::clone(&log);
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let parsed = serde_json::from_str::<serde_json::Value>(&line).ok();
                    if let Some(v) = parsed.filter(|v| v["message"] == "tokengate listening") {
                        let _ = tx.send((
                            v["proxy"].as_str().unwrap().parse().unwrap(),
                            v["admin"].as_str().unwrap().parse().unwrap(),
                        ));
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let (proxy, admin): (SocketAddr, SocketAddr) =
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(a) => a,
                Err(_) => {
                    let _ = child.kill();
                    panic!("gateway did not start; log:\n{}", log.lock().unwrap());
                }
            };
        Self {
            child: Owned(child),
            log,
            proxy,
            admin,
            _dir: dir,
        }
    }

    /// Replaces the node's configuration file with `yaml` (a reload picks it up).
    pub fn rewrite_config(&self, yaml: &str) {
        let path = self._dir.path().join("gateway.yaml");
        // Written whole and renamed over, as configuration management tools do: the node never
        // reads half a file.
        let staged = self._dir.path().join("gateway.yaml.new");
        std::fs::write(&staged, with_log(yaml)).unwrap();
        std::fs::rename(staged, path).unwrap();
    }

    /// `http://<proxy><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Everything the node logged, once it holds what `holds` looks for. A line is logged after
    /// the answer it describes is sent (the access log), and reaches us through a pipe: a test
    /// that read the log at once could miss it.
    pub async fn log_once(&self, what: &str, holds: impl Fn(&str) -> bool) -> String {
        eventually(what, Duration::from_secs(10), async || holds(&self.log())).await;
        self.log()
    }

    /// Everything the node logged, once nothing new has come for a while: a proxy worker
    /// writes its lines in batches at least every 100 ms (`telemetry::output`), so a log quiet
    /// for five times that holds every line of the requests answered before the call. For
    /// checks that a secret is absent, which a line still buffered would pass vacuously.
    pub async fn settled_log(&self) -> String {
        let mut last = self.log();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.log();
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
    }

    /// The node's access log lines, once there are at least `n`.
    pub async fn access_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let access = |log: &str| -> Vec<serde_json::Value> {
            log.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["target"] == "tokengate::access")
                .collect()
        };
        let log = self
            .log_once(&format!("{n} access log lines"), |l| access(l).len() >= n)
            .await;
        access(&log)
    }

    /// Sends a signal (`TERM`, `INT`, ...) with `kill(1)`, keeping the tests free of unsafe code.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.0.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        testkit::wait::wait_until("the gateway exits", timeout, || {
            status = self.child.0.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }
}

/// `Basic base64(id:secret)`, as the Traefik Hub docs have callers build it.
pub fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{id}:{secret}")))
}

/// `GET url` with `Authorization: Basic base64(id:secret)`.
pub async fn get_as(
    http: &reqwest::Client,
    url: String,
    id: &str,
    secret: &str,
) -> reqwest::Response {
    http.get(url)
        .header("authorization", basic(id, secret))
        .send()
        .await
        .unwrap()
}

/// A client that never reuses connections across tests' nodes and has a sane timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Seconds since the Unix epoch, for JWT times.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `GET http://<addr>/metrics`: the Prometheus text.
pub async fn metrics_text(addr: impl std::fmt::Display) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// `GET url`, its body parsed as JSON.
pub async fn get_json(url: String) -> serde_json::Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The upstream's echo of a proxied request.
pub async fn echo(resp: reqwest::Response) -> serde_json::Value {
    assert_eq!(resp.status(), 200, "expected 200 from upstream echo");
    resp.json().await.unwrap()
}

/// Single header value from an echo.
pub fn header<'a>(echo: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    echo["headers"][name]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}

/// A config with one app-level and one gateway-level route to `upstream`.
/// `cc_extra` is added to the application-level middleware, `gw_method` is the gateway-level one's
/// `authMethod`.
pub fn two_modes_with(token_url: &str, upstream: &str, cc_extra: &str, gw_method: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
store: {{ memory: {{}} }}
middlewares:
  app-creds:
    clientCredentials:
      url: {token_url}
      scopes: [read]
      endpointParams: {{ resource: [https://api.example] }}
      usernameClaim: sub
      forwardHeaders: {{ Sub: sub, X-Client: client_id }}
      negativeCacheTtl: 30s
      {cc_extra}
  gw-creds:
    clientCredentials:
      url: {token_url}
      clientId: "gw id:+/%"
      clientSecret: env:GW_SECRET
      authMethod: {gw_method}
      audience: https://api.example
routes:
  - name: app
    match: {{ pathPrefix: /app }}
    middlewares: [app-creds]
    upstream: {{ urls: [{upstream}] }}
  - name: internal
    match: {{ pathPrefix: /internal }}
    middlewares: [gw-creds]
    upstream: {{ urls: [{upstream}] }}
"#
    )
}

/// [`two_modes_with`] with the gateway level on `client_secret_post`.
pub fn two_modes(token_url: &str, upstream: &str, cc_extra: &str) -> String {
    two_modes_with(token_url, upstream, cc_extra, "client_secret_post")
}

/// The gateway-level client's secret, with characters that need encoding.
pub const GW_SECRET: &str = "gw sec:ret+/%=&";

impl Node {
    /// The `store` field of `/readyz`: `ok` or `degraded`.
    pub async fn store_state(&self) -> String {
        let ready = get_json(format!("http://{}/readyz", self.admin)).await;
        ready["store"].as_str().unwrap_or_default().to_owned()
    }

    /// SIGKILLs the process now.
    pub fn kill(&mut self) {
        self.child.kill();
    }
}
