//! A real `redis-server` (or `redis-sentinel`) on a loopback port, without persistence, killed
//! when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::procs::free_port;
use crate::tls::TlsFixture;

/// Whether `redis-server` can be run here (benchmarks skip their Redis part without it).
pub fn installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A free port whose Redis Cluster bus port (port + 10000) is free and valid too.
pub fn free_cluster_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A real `redis-server` on a loopback port, without persistence. Killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    sentinel_conf: Option<String>,
    /// Arguments `redis-cli` needs to reach it (TLS).
    cli_args: Vec<String>,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with(free_port(), &[])
    }

    /// Starts a server on `port` with extra `redis-server` arguments (`--cluster-enabled`, ...).
    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let extra = extra.iter().map(ToString::to_string).collect();
        let mut server = Self {
            child: None,
            port,
            dir,
            extra,
            sentinel_conf: None,
            cli_args: vec![],
        };
        server.restart();
        server
    }

    /// Starts a sentinel on a free port with these configuration lines.
    pub fn sentinel(conf: &str) -> Self {
        let port = free_port();
        let conf = format!("port {port}\nbind 127.0.0.1\n{conf}\n");
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self {
            child: None,
            port,
            dir,
            extra: vec![],
            sentinel_conf: Some(conf),
            cli_args: vec![],
        };
        server.restart();
        server
    }

    /// Starts a server that speaks TLS only and requires a client certificate signed by the
    /// fixture's CA.
    pub fn start_tls(tls: &TlsFixture) -> Self {
        let port = free_port();
        let p = |name: &str| tls.path(name);
        let extra = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &p("server.crt"),
            "--tls-key-file",
            &p("server.key"),
            "--tls-ca-cert-file",
            &p("ca.crt"),
            "--tls-auth-clients",
            "yes",
        ];
        let cli_args = [
            "--tls",
            "--cacert",
            &p("ca.crt"),
            "--cert",
            &p("client.crt"),
            "--key",
            &p("client.key"),
        ];
        let mut server = Self {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(ToString::to_string).collect(),
            sentinel_conf: None,
            cli_args: cli_args.iter().map(ToString::to_string).collect(),
        };
        server.restart();
        server
    }

    /// `127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILLs the server (its data is gone: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server (again) on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = match &self.sentinel_conf {
            Some(conf) => {
                // Sentinel rewrites its configuration file, so it gets a fresh writable one.
                let path = self.dir.path().join("sentinel.conf");
                std::fs::write(&path, conf).unwrap();
                let mut cmd = Command::new("redis-sentinel");
                cmd.arg(path);
                cmd
            }
            None => {
                let mut cmd = Command::new("redis-server");
                let port = self.port.to_string();
                cmd.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(self.dir.path())
                .args(&self.extra);
                cmd
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        crate::wait::wait_until(
            &format!("redis-server answers on port {}", self.port),
            Duration::from_secs(10),
            || self.cli(&["PING"]).trim() == "PONG",
        );
    }

    /// Runs `redis-cli` against the server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(&self.cli_args)
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
