//! The command line itself, without a cache: what `--help` shows and how bad invocations fail.
//! (Operations against real caches are tested end to end in `gateway/tests/e2e/cachectl.rs`,
//! which runs the binary this test makes cargo build.)

use std::process::Command;

fn cachectl(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cachectl"));
    cmd.args(args)
        .env_remove("CACHECTL_TOKEN")
        .env_remove("CACHECTL_REDIS")
        .env_remove("CACHECTL_ENDPOINTS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("cachectl runs")
}

#[test]
fn help_lists_the_commands_and_never_shows_a_secret_from_the_environment() {
    let secret = "admin-token-that-must-not-show";
    let redis = "redis://user:redis-password-that-must-not-show@127.0.0.1:6379";
    let out = cachectl(
        &["--help"],
        &[("CACHECTL_TOKEN", secret), ("CACHECTL_REDIS", redis)],
    );
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for command in ["status", "ls", "get", "evict", "refresh", "watch"] {
        assert!(
            help.contains(command),
            "{command} missing from --help:\n{help}"
        );
    }
    assert!(!help.contains(secret), "the admin token is in --help");
    assert!(
        !help.contains("redis-password"),
        "the Redis password is in --help"
    );
}

#[test]
fn a_command_without_a_cache_fails_with_a_usage_error() {
    let out = cachectl(&["status"], &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--endpoints") || stderr.contains("--redis"),
        "the error says how to name a cache: {stderr}"
    );
}
