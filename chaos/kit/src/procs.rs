//! Real processes under test: started from built binaries, their output kept in files,
//! killed, paused and restarted on command, and always killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process that is killed and reaped when dropped, however the test ends: the one
/// handle every harness holds its processes by.
#[derive(Debug)]
pub struct Owned(pub Child);

impl Owned {
    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.kill();
    }
}

impl From<Child> for Owned {
    fn from(child: Child) -> Self {
        Self(child)
    }
}

/// A process the harness owns.
pub struct Proc {
    /// Name in reports and log file names (`gateway-1`, `cache-node-2`, `redis`).
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Owned>,
    paused: bool,
}

impl Proc {
    /// Starts `program args` with `env`, its output appended to `<log_dir>/<name>.log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        log_dir: &Path,
    ) -> std::io::Result<Self> {
        let mut p = Self {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            env,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            paused: false,
        };
        p.restart()?;
        Ok(p)
    }

    /// Starts the process again (after a kill) with the same arguments.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(Owned(child));
        Ok(())
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        // Dropping the child kills and reaps it; a paused one is woken first.
        if let Some(c) = self.child.take()
            && self.paused
        {
            self.signal_pid(c.0.id(), "CONT");
            self.paused = false;
        }
    }

    /// SIGTERM, then waits up to `grace` for it to exit (SIGKILL after that).
    pub fn terminate(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        self.signal_pid(c.0.id(), "TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(c.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Dropping it kills and reaps it.
    }

    /// SIGSTOP: the process stays, frozen.
    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            self.signal_pid(pid, "STOP");
            self.paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            self.signal_pid(pid, "CONT");
            self.paused = false;
        }
    }

    fn signal_pid(&self, pid: u32, signal: &str) {
        let _ = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status();
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.0.id())
    }

    /// Whether it is running (not killed, not exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.0.try_wait(), Ok(None)))
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits up to `within` until something listens on `addr`.
pub async fn wait_listening(addr: &str, within: Duration) -> bool {
    // A loop of its own rather than `wait::poll_until`: the harness needs this future `Send`,
    // which an async closure's is not (yet).
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// A free loopback port (bound and released, so another process could still take it first).
///
/// The port is drawn below Linux's ephemeral range (32768 and up): a gateway restarted on its
/// port must find it free, and a port in the ephemeral range can meanwhile become the source
/// port of any outgoing connection (the balancer's, the driver's), which fails the restart.
pub fn free_port() -> u16 {
    use rand::Rng;
    for _ in 0..1000 {
        let port = rand::rng().random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The path of the workspace binary `bin`, beside `beside` (a binary of the same build:
/// `env!("CARGO_BIN_EXE_...")`).
///
/// Made sure of once per test process by running the workspace's own test build (`cargo test
/// --workspace --no-run`): quick when `cargo test --workspace` just built everything, and it
/// builds `bin` with the very features that build resolved. (`cargo build -p <package>`
/// resolves features for that package alone, so it would rebuild tokio, serde and most of the
/// tree a second time, for a minute or two, inside a test.)
pub fn sibling_binary(bin: &str, beside: &Path) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["test", "--workspace", "--no-run", "--quiet"])
            .stdout(Stdio::null())
            .status()
            .expect("cargo runs");
        assert!(status.success(), "the workspace builds");
    });
    let path = beside.with_file_name(bin);
    assert!(path.exists(), "no {bin} beside {}", beside.display());
    path
}
