//! The Docker CLI, for fleets of containers: one call per command, its output or an error that
//! carries what Docker said; a Compose project that is taken down when dropped; a network of a
//! fleet's own and the containers on it; the faults a loopback cannot express (a container's
//! links cut, made lossy or slow by packet filters and a token bucket inside its own network
//! namespace, a container killed without a reset to its peers, or frozen).
//!
//! Everything goes through the `docker` and Compose command-line tools, as an operator's would:
//! the fleet under test is started and broken the way it is in production.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `program args` and returns its standard output, trimmed; an error names the command
/// and carries its standard error.
fn run(program: &str, args: &[&str], env: &[(String, String)]) -> anyhow::Result<String> {
    let out = output(program, args, env)?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {}: {}: {}",
        args.first().copied().unwrap_or_default(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn output(program: &str, args: &[&str], env: &[(String, String)]) -> anyhow::Result<Output> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))
}

/// `docker ARGS`: its standard output.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    run("docker", args, &[])
}

/// `docker ARGS` with `env` in its environment (what `-e NAME` passes on, so that no value
/// shows in a process listing): its standard output.
pub fn docker_with_env(args: &[&str], env: &[(String, String)]) -> anyhow::Result<String> {
    run("docker", args, env)
}

/// `docker ARGS`, whatever its exit status: its whole output.
pub fn docker_output(args: &[&str]) -> anyhow::Result<Output> {
    output("docker", args, &[])
}

/// Those of `images` that this machine does not have.
pub fn missing_images(images: &[&str]) -> Vec<String> {
    images
        .iter()
        .filter(|i| docker(&["image", "inspect", "--format", "{{.Id}}", i]).is_err())
        .map(|i| (*i).to_owned())
        .collect()
}

/// A container's state as `docker inspect` reports it: `healthy`, `unhealthy`, `starting`, or
/// the plain state (`running`, `exited`, ...) when it has no health check.
pub fn health(container: &str) -> String {
    docker(&[
        "inspect",
        "--format",
        "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}",
        container,
    ])
    .unwrap_or_else(|_| "gone".into())
}

/// The process id of a container's first process on the host (0 when it is not running): its
/// network namespace is `/proc/PID/ns/net`.
pub fn pid(container: &str) -> anyhow::Result<u32> {
    Ok(docker(&["inspect", "--format", "{{.State.Pid}}", container])?.parse()?)
}

/// A container's address on `network`.
pub fn address(container: &str, network: &str) -> anyhow::Result<String> {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    let ip = docker(&["inspect", "--format", &format, container])?;
    anyhow::ensure!(!ip.is_empty(), "{container} has no address on {network}");
    Ok(ip)
}

/// Packet filters inside a container's network namespace, entered from the host (`nsenter`),
/// so that the image needs neither the tools nor the capability.
pub fn iptables(container: &str, rule: &[&str]) -> anyhow::Result<()> {
    let pid = pid(container)?;
    anyhow::ensure!(pid != 0, "{container} is not running");
    let target = pid.to_string();
    let mut args = vec!["-t", &target, "-n", "iptables", "-w"];
    args.extend_from_slice(rule);
    run("nsenter", &args, &[]).map(drop)
}

/// Drops every packet between a container and `peer` (both directions), or lets them through
/// again (`cut` false). Established connections stall, as on a real partition.
pub fn cut(container: &str, peer: &str, cut: bool) -> anyhow::Result<()> {
    let op = if cut { "-I" } else { "-D" };
    iptables(container, &[op, "INPUT", "-s", peer, "-j", "DROP"])?;
    iptables(container, &[op, "OUTPUT", "-d", peer, "-j", "DROP"])
}

/// Drops the container's packets to one `address:port` (TCP), or lets them through again.
pub fn cut_port(container: &str, address: &str, port: u16, cut: bool) -> anyhow::Result<()> {
    let op = if cut { "-I" } else { "-D" };
    let port = port.to_string();
    iptables(
        container,
        &[
            op, "OUTPUT", "-p", "tcp", "-d", address, "--dport", &port, "-j", "DROP",
        ],
    )
}

/// Makes a container's link lossy (`loss`: the share of arriving packets dropped, by a packet
/// filter) and slow (a token bucket of `kbit` a second on its interface, queueing up to
/// `latency`), or heals it. The kernel here has no `netem`, so a fixed delay cannot be added.
pub fn degrade(
    container: &str,
    loss: f64,
    kbit: u32,
    latency: Duration,
    on: bool,
) -> anyhow::Result<()> {
    let probability = format!("{loss:.4}");
    let op = if on { "-I" } else { "-D" };
    iptables(
        container,
        &[
            op,
            "INPUT",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &probability,
            "-j",
            "DROP",
        ],
    )?;
    let pid = pid(container)?.to_string();
    let mut tc = vec!["-t", &pid, "-n", "tc", "qdisc"];
    let (rate, queue) = (format!("{kbit}kbit"), format!("{}ms", latency.as_millis()));
    if on {
        tc.extend([
            "add", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "32kbit", "latency",
            &queue,
        ]);
    } else {
        tc.extend(["del", "dev", "eth0", "root"]);
    }
    run("nsenter", &tc, &[]).map(drop)
}

/// A Compose project: the repository's `docker-compose.yml` under a project name of its own,
/// with the environment it interpolates. Dropping it takes everything down (containers,
/// networks, volumes).
pub struct Compose {
    project: String,
    file: PathBuf,
    env: Vec<(String, String)>,
    tool: (&'static str, Vec<&'static str>),
}

impl Compose {
    /// The project `project` of the Compose file `file`, interpolated with `env`.
    pub fn new(project: &str, file: &Path, env: Vec<(String, String)>) -> Self {
        // The Compose plugin where there is one, else the stand-alone tool.
        let plugin = Command::new("docker")
            .args(["compose", "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let tool = if plugin {
            ("docker", vec!["compose"])
        } else {
            ("docker-compose", Vec::new())
        };
        Self {
            project: project.to_owned(),
            file: file.to_owned(),
            env,
            tool,
        }
    }

    /// The project's name.
    pub fn project(&self) -> &str {
        &self.project
    }

    fn args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = self.tool.1.clone();
        all.extend([
            "--ansi",
            "never",
            "-p",
            &self.project,
            "-f",
            self.file.to_str().unwrap_or_default(),
        ]);
        all.extend_from_slice(args);
        all
    }

    /// `compose ARGS`: its standard output.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        run(self.tool.0, &self.args(args), &self.env)
    }

    /// `compose ARGS`, whatever its exit status.
    pub fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        output(self.tool.0, &self.args(args), &self.env)
    }

    /// The project's containers: (service, container id), by service name.
    pub fn containers(&self) -> anyhow::Result<Vec<(String, String)>> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &label,
            "--format",
            "{{.Label \"com.docker.compose.service\"}} {{.ID}}",
        ])?;
        let mut all: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(s, id)| (s.to_owned(), id.to_owned()))
            .collect();
        all.sort();
        Ok(all)
    }

    /// Polls until every container of the project is healthy (or running, where it has no
    /// health check) and at least `expected` exist; how long that took. An error lists the
    /// containers that were not.
    pub async fn wait_healthy(
        &self,
        expected: usize,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let containers = self.containers()?;
            let states: Vec<(String, String)> = containers
                .iter()
                .map(|(service, id)| (service.clone(), health(id)))
                .collect();
            let ready = states.len() >= expected
                && states.iter().all(|(_, s)| s == "healthy" || s == "running");
            if ready {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                anyhow::bail!("not healthy within {within:?}: {states:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The host address a service's `port` is published on.
    pub fn port(&self, service: &str, port: u16) -> anyhow::Result<String> {
        let p = port.to_string();
        let out = self.run(&["port", service, &p])?;
        anyhow::ensure!(!out.is_empty(), "{service}:{port} is not published");
        Ok(out)
    }

    /// Every container's log, as `compose logs` prints it.
    pub fn logs(&self) -> anyhow::Result<String> {
        let out = self.output(&["logs", "--no-color"])?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// `compose down` with the project's volumes.
    pub fn down(&self) -> anyhow::Result<()> {
        self.run(&["down", "--volumes", "--remove-orphans", "--timeout", "45"])
            .map(drop)
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        // Whatever a test left: never a container, network or volume behind.
        if self.containers().is_ok_and(|c| !c.is_empty()) {
            let _ = self.down();
        }
    }
}

/// A user-defined bridge network of its own for one fleet: containers get fixed addresses in
/// it (so a restarted container keeps its address), and the host reaches it at its gateway
/// address. Removed when dropped.
pub struct Network {
    /// Its name.
    pub name: String,
    base: std::net::Ipv4Addr,
    /// The host's address on it: what the containers reach the host at.
    pub gateway: std::net::Ipv4Addr,
}

impl Network {
    /// Creates the network `name` on a free subnet. Fixed addresses need a subnet given at
    /// creation: Docker picks a free one for a first network, which is then made anew with that
    /// subnet named.
    pub fn create(name: &str) -> anyhow::Result<Self> {
        let _ = docker(&["network", "rm", name]);
        docker(&["network", "create", name])?;
        let ipam = |name: &str| {
            docker(&[
                "network",
                "inspect",
                "--format",
                "{{(index .IPAM.Config 0).Subnet}} {{(index .IPAM.Config 0).Gateway}}",
                name,
            ])
        };
        let picked = ipam(name);
        docker(&["network", "rm", name])?;
        let picked = picked?;
        let (subnet, gateway) = picked
            .split_once(' ')
            .ok_or_else(|| anyhow::anyhow!("network {name}: no subnet in {picked:?}"))?;
        docker(&[
            "network",
            "create",
            "--subnet",
            subnet,
            "--gateway",
            gateway,
            "--label",
            "tokengate-chaos=1",
            name,
        ])?;
        let base = subnet.split_once('/').map_or(subnet, |(b, _)| b).parse()?;
        Ok(Self {
            name: name.to_owned(),
            base,
            gateway: gateway.parse()?,
        })
    }

    /// The address `host` (a small number, 2..=250) in the network's subnet.
    pub fn address(&self, host: u8) -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(u32::from(self.base) + u32::from(host))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// How to run one container: its options for `docker run` (network, address, mounts, ports),
/// its environment (passed by name, so no value shows in a process listing), image and command.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// `docker run` options.
    pub options: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// The image.
    pub image: String,
    /// The command (after the image's entrypoint).
    pub command: Vec<String>,
}

/// A container the harness owns: started with `docker run`, killed, paused, stopped, started
/// again and replaced on command; when dropped, its log is saved to `<log_dir>/<name>.log` and
/// it is removed with its anonymous volumes.
pub struct Container {
    /// Its name (unique on the machine).
    pub name: String,
    spec: RunSpec,
    log: PathBuf,
}

impl Container {
    /// Runs `spec` as the container `name` (removing a stale one of that name first).
    pub fn run(name: &str, spec: RunSpec, log_dir: &Path) -> anyhow::Result<Self> {
        let c = Self {
            name: name.to_owned(),
            spec,
            log: log_dir.join(format!("{name}.log")),
        };
        c.create()?;
        Ok(c)
    }

    fn create(&self) -> anyhow::Result<()> {
        let _ = docker(&["rm", "-f", "-v", &self.name]);
        let mut args: Vec<&str> = vec!["run", "-d", "--name", &self.name];
        args.extend(self.spec.options.iter().map(String::as_str));
        for (k, _) in &self.spec.env {
            args.extend(["-e", k.as_str()]);
        }
        args.push(&self.spec.image);
        args.extend(self.spec.command.iter().map(String::as_str));
        run("docker", &args, &self.spec.env).map(drop)
    }

    /// SIGKILL (`docker kill`): the container stops, its disk stays.
    pub fn kill(&self) {
        let _ = docker(&["unpause", &self.name]);
        let _ = docker(&["kill", &self.name]);
    }

    /// Starts it again after a kill or a stop (killing it first if it runs).
    pub fn restart(&self) -> anyhow::Result<()> {
        self.kill();
        docker(&["start", &self.name]).map(drop)
    }

    /// SIGTERM (`docker stop`), SIGKILL after `grace`.
    pub fn stop(&self, grace: Duration) {
        let secs = grace.as_secs().max(1).to_string();
        let _ = docker(&["stop", "-t", &secs, &self.name]);
    }

    /// Freezes every process in it (the cgroup freezer: as SIGSTOP, but for the container).
    pub fn pause(&self) {
        let _ = docker(&["pause", &self.name]);
    }

    /// Thaws it.
    pub fn unpause(&self) {
        let _ = docker(&["unpause", &self.name]);
    }

    /// Replaces it with a container of the same name, address and options from `image`, as a
    /// rolling upgrade does. Its anonymous volumes go with it: a replaced cache node starts on
    /// an empty disk.
    pub fn replace(&mut self, image: &str) -> anyhow::Result<()> {
        let spec = RunSpec {
            image: image.to_owned(),
            ..self.spec.clone()
        };
        self.recreate(spec)
    }

    /// Replaces it with a container of the same name, address, options and image running
    /// `command`, on an empty disk.
    pub fn replace_with(&mut self, command: Vec<String>) -> anyhow::Result<()> {
        let spec = RunSpec {
            command,
            ..self.spec.clone()
        };
        self.recreate(spec)
    }

    /// Saves its log, removes it with its volumes and runs `spec` under its name.
    fn recreate(&mut self, spec: RunSpec) -> anyhow::Result<()> {
        self.save_log();
        docker(&["rm", "-f", "-v", &self.name])?;
        self.spec = spec;
        self.create()
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        docker_output(&["logs", &self.name])
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    fn save_log(&self) {
        use std::io::Write;
        let log = self.log();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = f.write_all(log.as_bytes());
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.save_log();
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}
