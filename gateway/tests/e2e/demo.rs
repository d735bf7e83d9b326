//! `gateway demo`: it starts with nothing else running, and every command it prints works when
//! run, in order, in one shell, as a newcomer would paste them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};
use testkit::procs::Owned;

struct Step {
    command: String,
    expect: Option<String>,
}

/// Reads the guide up to its last line and returns the steps it lists.
fn read_guide(demo: &mut Owned) -> (String, Vec<Step>) {
    let stdout = demo.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut guide, mut steps) = (String::new(), Vec::<Step>::new());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the demo did not print its guide; so far:\n{guide}"));
        guide.push_str(&line);
        guide.push('\n');
        if let Some(cmd) = line.strip_prefix("   $ ") {
            steps.push(Step {
                command: cmd.to_owned(),
                expect: None,
            });
        } else if let Some(expect) = line.strip_prefix("   expect: ") {
            steps.last_mut().unwrap().expect = Some(expect.to_owned());
        } else if line.starts_with("Stop with Ctrl-C") {
            return (guide, steps);
        }
    }
}

#[test]
fn every_command_the_demo_prints_works() {
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut demo = Owned(child);
    let (guide, steps) = read_guide(&mut demo);
    assert!(steps.len() >= 8, "too few steps:\n{guide}");
    assert!(
        steps.iter().filter(|s| s.expect.is_some()).count() >= steps.len() - 1,
        "every step but the variable assignment states its expected output:\n{guide}"
    );

    // One shell, in order: later steps use the $TOKEN an earlier one set.
    let mut script = String::from("set -u\n");
    for (i, s) in steps.iter().enumerate() {
        script.push_str(&format!("echo '@@step {i}'\n{}\necho\n", s.command));
    }
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the commands failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8(out.stdout).unwrap();
    for (i, s) in steps.iter().enumerate() {
        let start = out.find(&format!("@@step {i}\n")).unwrap();
        let rest = &out[start..];
        let end = rest[1..].find("@@step ").map_or(rest.len(), |e| e + 1);
        let output = &rest[..end];
        if let Some(expect) = &s.expect {
            assert!(
                output.contains(expect.as_str()),
                "step {}: `{}`\nexpected output containing {expect:?}, got:\n{output}",
                i + 1,
                s.command
            );
        }
    }
}

#[test]
fn print_config_is_a_valid_configuration() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--print-config",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.yaml");
    std::fs::write(&path, &out.stdout).unwrap();
    let check = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // The CA kept for the printed configuration.
    let note = String::from_utf8_lossy(&out.stderr);
    let kept = note
        .split(" in ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("the note names the CA's directory");
    std::fs::remove_dir_all(kept).unwrap();
}
