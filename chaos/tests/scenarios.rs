//! Every scenario in its short form on both stores, against real processes; and the checks
//! themselves catching a fleet whose tokens are bad.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chaos::fleet::{Hosting, StoreKind};
use chaos::run::{Live, Report, RunSpec, run};
use chaos::scenario::{self, SCENARIOS};

/// One fleet at a time: this machine has two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `gateway` binary, built once.
fn gateway_bin() -> PathBuf {
    testkit::procs::sibling_binary("gateway", std::path::Path::new(env!("CARGO_BIN_EXE_chaos")))
}

/// The short form: 12 s of load on 3 gateways, tokens living 8 s (renewed from 5.25 s on).
fn short(name: &str, store: StoreKind, dir: &tempfile::TempDir) -> RunSpec {
    on(name, store, Hosting::Processes, dir)
}

/// The short form on `hosting`.
fn on(name: &str, store: StoreKind, hosting: Hosting, dir: &tempfile::TempDir) -> RunSpec {
    RunSpec {
        scenario: scenario::find(name).expect("a scenario"),
        store,
        hosting,
        gateways: 3,
        duration: Duration::from_secs(12),
        rps: 80,
        seed: 7,
        clients: 10,
        token_lifetime: Duration::from_secs(8),
        gateway_bin: gateway_bin(),
        dir: dir.path().join(format!("{name}-{store}")),
        lies: testkit::Lies::default(),
        log_level: "info".into(),
    }
}

async fn every_scenario_passes(store: StoreKind) {
    let all: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
    scenarios_pass_on(store, Hosting::Processes, &all).await;
}

/// Runs the scenarios `names` that apply to `store` and `hosting`.
async fn scenarios_pass_on(store: StoreKind, hosting: Hosting, names: &[&str]) {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut failed = Vec::new();
    for s in SCENARIOS.iter().filter(|s| {
        names.contains(&s.name) && s.stores.contains(&store) && s.hostings.contains(&hosting)
    }) {
        let spec = on(s.name, store, hosting, &dir);
        let report = run(&spec, Arc::new(Live::default()))
            .await
            .unwrap_or_else(|e| panic!("{} on {store} could not run: {e:#}", s.name));
        chaos::report::write(&report, &spec.dir).unwrap();
        assert!(spec.dir.join("timeline.svg").exists());
        check_report(&report);
        if !report.passed() {
            failed.push(chaos::report::table(&report));
        }
    }
    assert!(
        failed.is_empty(),
        "scenarios failed:\n{}",
        failed.join("\n")
    );
}

/// What every report must show, pass or fail.
fn check_report(r: &Report) {
    assert!(
        r.requests >= 12 * 80 * 9 / 10,
        "the driver kept its rate: {}",
        r.requests
    );
    assert!(
        r.tokens.checked >= r.requests - r.failed,
        "the upstream checked every token"
    );
    let faults = r.events.iter().filter(|e| e.kind == "fault").count();
    assert_eq!(
        faults == 0,
        r.scenario == "baseline",
        "{}: faults {:?}",
        r.scenario,
        r.events
    );
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(
        json["invariants"].as_array().unwrap().len(),
        r.invariants.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_keeps_every_invariant_on_redis() {
    every_scenario_passes(StoreKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_keeps_every_invariant_on_raft() {
    every_scenario_passes(StoreKind::Raft).await;
}

// Containers: a fleet of containers from the images, each a host on a network of its own,
// behind HAProxy, with the faults that only a network has, and the partitions and kills whose
// timing a real network changes (a killed host sends no reset). The other scenarios run on
// containers too (`chaos run NAME --hosting containers`); these are the ones CI keeps. They need
// Docker and `scripts/images`; `scripts/test` runs them in a step of its own with `--ignored`.

/// The scenarios CI runs on containers.
const ON_CONTAINERS: &[&str] = &[
    "partition-leader",
    "kill-store-leader-repeatedly",
    "cut-gateway-from-store",
    "cut-idp-from-leader",
    "lossy-link",
    "isolate-leader-mid-refresh",
    "rolling-upgrade",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the images: scripts/images, then --ignored (scripts/test does)"]
async fn network_faults_keep_every_invariant_on_containers_with_redis() {
    let names = [
        "partition-leader",
        "cut-gateway-from-store",
        "isolate-leader-mid-refresh",
    ];
    scenarios_pass_on(StoreKind::Redis, Hosting::Containers, &names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the images: scripts/images, then --ignored (scripts/test does)"]
async fn network_faults_keep_every_invariant_on_containers_with_raft() {
    scenarios_pass_on(StoreKind::Raft, Hosting::Containers, ON_CONTAINERS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_catch_expired_and_cross_client_tokens() {
    let _one = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = short("baseline", StoreKind::Redis, &dir);
    spec.duration = Duration::from_secs(4);
    spec.lies = testkit::Lies {
        expired: true,
        other_client: true,
    };
    let report = run(&spec, Arc::new(Live::default())).await.unwrap();
    let held = |name: &str| {
        report
            .invariants
            .iter()
            .find(|i| i.name == name)
            .unwrap_or_else(|| panic!("no invariant {name}"))
            .held
    };
    assert!(!report.passed(), "{}", chaos::report::table(&report));
    assert!(!held("no expired token at the upstream"));
    assert!(!held("no cross-client token at the upstream"));
    // What the lies do not touch still holds: requests succeed, tokens are genuine.
    assert!(held("no failed request"));
    assert!(held("every token genuine"));
    assert!(chaos::report::table(&report).contains("FAILED: an invariant broke"));
}

#[test]
fn the_cli_lists_scenarios_and_refuses_bad_runs() {
    let chaos = env!("CARGO_BIN_EXE_chaos");
    let list = Command::new(chaos).arg("list").output().unwrap();
    assert!(list.status.success());
    let text = String::from_utf8(list.stdout).unwrap();
    for s in SCENARIOS {
        assert!(
            text.contains(s.name),
            "{} missing from `chaos list`",
            s.name
        );
    }
    let unknown = Command::new(chaos)
        .args(["run", "no-such"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("chaos list"));
    let no_binary = Command::new(chaos)
        .args(["run", "baseline", "--gateway-bin", "/nonexistent/gateway"])
        .output()
        .unwrap();
    assert_eq!(no_binary.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&no_binary.stderr)
            .contains("no gateway binary at /nonexistent/gateway")
    );
}
