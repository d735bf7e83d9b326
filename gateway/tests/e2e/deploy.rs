//! `deploy/` and `docker-compose.yml`: every gateway configuration in them is valid, the files
//! agree with each other (names, ports, members), the tools that read them accept them, and the
//! cache-node StatefulSet's start script gives each pod the right id and role.
//!
//! The tool checks need `docker-compose`, `haproxy`, `promtool` and the Python package
//! `kubernetes-validate`, which `.ci/run` installs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

use crate::support::gateway_command;

/// The environment the deploy files' secret references name.
const SECRETS: &[(&str, &str)] = &[
    ("GW_SECRET", "example-secret"),
    (
        "TOKENGATE_FLEET_KEY",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ),
    ("GATEWAY_CLIENT_SECRET", "k8s-secret"),
    ("CACHE_ADMIN_TOKEN", "admin-token"),
    ("CACHE_PEER_TOKEN", "peer-token"),
    ("CACHE_GATEWAY_TOKEN", "gateway-token"),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(text: &str) -> Value {
    let mut v: Value = serde_yaml_ng::from_str(text).unwrap();
    v.apply_merge().unwrap();
    v
}

fn documents(path: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(&read(path))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

/// The value after `flag` in an argument list.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

/// The gateway configuration inside the Kubernetes ConfigMap.
fn kubernetes_gateway_config() -> String {
    documents("deploy/kubernetes/20-gateway.yaml")
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["gateway.yaml"].as_str().map(str::to_owned))
        .expect("a ConfigMap with gateway.yaml")
}

fn check_config(name: &str, config: &str) {
    let (mut cmd, _dir) = gateway_command(&["check-config"], config, SECRETS);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_gateway_configuration_in_deploy_is_valid() {
    for path in [
        "deploy/gateway.example.yaml",
        "deploy/compose/gateway-raft.yaml",
        "deploy/compose/gateway-redis.yaml",
    ] {
        check_config(path, &read(path));
    }
    check_config("the Kubernetes ConfigMap", &kubernetes_gateway_config());
}

/// The host of `host:port` or of a URL.
fn host(addr: &str) -> &str {
    let addr = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let addr = addr.split(['/', '?']).next().unwrap();
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// Every URL a gateway configuration sends requests to.
fn urls_in(config: &Value, found: &mut Vec<String>) {
    match config {
        Value::Mapping(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    (Some("url" | "issuer" | "endpoint"), Value::String(s)) => {
                        found.push(s.clone());
                    }
                    (Some("urls"), _) => found.extend(strings(v)),
                    _ => urls_in(v, found),
                }
            }
        }
        Value::Sequence(s) => s.iter().for_each(|v| urls_in(v, found)),
        _ => {}
    }
}

#[test]
fn the_compose_fleet_agrees_with_its_configuration() {
    let compose = yaml(&read("docker-compose.yml"));
    let services = compose["services"].as_mapping().unwrap();
    let names: BTreeSet<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    let command = |name: &str| strings(&services[name]["command"]);

    // The two gateway configurations differ in their store only.
    let mut raft = yaml(&read("deploy/compose/gateway-raft.yaml"));
    let mut redis = yaml(&read("deploy/compose/gateway-redis.yaml"));
    let raft_store = raft.as_mapping_mut().unwrap().remove("store").unwrap();
    let redis_store = redis.as_mapping_mut().unwrap().remove("store").unwrap();
    assert_eq!(
        raft, redis,
        "gateway-raft.yaml and gateway-redis.yaml drifted apart"
    );

    // The Raft endpoints are the cache nodes, which bootstrap with exactly these members.
    let cache_nodes: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| command(n).first().is_some_and(|c| c == "cache-node"))
        .collect();
    assert_eq!(cache_nodes.len(), 3, "three cache nodes: {cache_nodes:?}");
    let endpoints = strings(&raft_store["raft"]["endpoints"]);
    let mut members = Vec::new();
    for node in &cache_nodes {
        let args = command(node);
        let advertise = flag(&args, "--advertise").unwrap();
        assert_eq!(host(advertise), *node, "{node} advertises another host");
        assert!(
            endpoints.iter().any(|e| e == advertise),
            "{node}: {endpoints:?}"
        );
        members.push(format!("{}={advertise}", flag(&args, "--id").unwrap()));
    }
    for node in &cache_nodes {
        let args = command(node);
        let init: BTreeSet<&str> = flag(&args, "--init").unwrap().split(',').collect();
        let expected: BTreeSet<&str> = members.iter().map(String::as_str).collect();
        assert_eq!(init, expected, "{node}'s --init");
    }
    let redis_endpoints = strings(&redis_store["redis"]["endpoints"]);
    assert!(redis_endpoints.iter().all(|e| names.contains(host(e))));

    // Every party a gateway calls is a service of the fleet.
    let mut urls = Vec::new();
    urls_in(&raft, &mut urls);
    assert!(!urls.is_empty());
    for url in &urls {
        assert!(names.contains(host(url)), "{url} is not a compose service");
    }

    // The balancer and Prometheus know every gateway and cache node, at their ports.
    let gateways: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| command(n).first().is_some_and(|c| c == "run"))
        .collect();
    assert_eq!(gateways.len(), 3, "three gateways: {gateways:?}");
    let proxy_port = raft["listen"].as_str().unwrap().rsplit(':').next().unwrap();
    let admin_port = raft["admin"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    let haproxy = read("deploy/compose/haproxy.cfg");
    let servers: BTreeSet<String> = haproxy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = gateways
        .iter()
        .map(|g| format!("{g}:{proxy_port}"))
        .collect();
    assert_eq!(servers, expected, "haproxy.cfg's servers");
    assert!(haproxy.contains(&format!("check port {admin_port}")));
    let prometheus = yaml(&read("deploy/compose/prometheus.yml"));
    let targets: BTreeSet<String> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| strings(&job["static_configs"][0]["targets"]))
        .collect();
    let metrics_port = |node: &str| {
        let args = command(node);
        let listen = flag(&args, "--metrics-listen").unwrap().to_owned();
        listen.rsplit(':').next().unwrap().to_owned()
    };
    let expected: BTreeSet<String> = gateways
        .iter()
        .map(|g| format!("{g}:{admin_port}"))
        .chain(
            cache_nodes
                .iter()
                .map(|n| format!("{n}:{}", metrics_port(n))),
        )
        .collect();
    assert_eq!(targets, expected, "prometheus.yml's targets");

    // Every file mounted from the repository exists.
    for (name, service) in services {
        for volume in strings(&service["volumes"]) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(
                    root().join(source).exists(),
                    "{}: {source} does not exist",
                    name.as_str().unwrap()
                );
            }
        }
    }
}

/// Runs the cache-node StatefulSet's start script as pod `ordinal` would, with a `gateway` on
/// the PATH that prints its arguments, and returns them.
fn statefulset_args(script: &str, ordinal: u32) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let shim = dir.path().join("gateway");
    std::fs::write(&shim, "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\n").unwrap();
    let mut perms = std::fs::metadata(&shim).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&shim, perms).unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap()
    );
    let out = Command::new("/bin/sh")
        .args(["-c", script])
        .env("HOSTNAME", format!("tokengate-cache-{ordinal}"))
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The long flags `gateway cache-node --help` documents.
fn cache_node_flags() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["cache-node", "--help"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches([',', '.']).to_owned())
        .collect()
}

#[test]
fn the_statefulset_gives_each_pod_its_id_and_role() {
    let docs = documents("deploy/kubernetes/10-cache-node.yaml");
    let set = docs.iter().find(|d| d["kind"] == "StatefulSet").unwrap();
    let service = set["spec"]["serviceName"].as_str().unwrap();
    let replicas = set["spec"]["replicas"].as_u64().unwrap();
    let script = set["spec"]["template"]["spec"]["containers"][0]["args"][0]
        .as_str()
        .unwrap();
    let known = cache_node_flags();
    let pod = |i: u64| format!("tokengate-cache-{i}.{service}:7000");

    let initial: Vec<String> = (0..replicas)
        .map(|i| format!("{}={}", i + 1, pod(i)))
        .collect();
    for ordinal in 0..replicas as u32 {
        let args = statefulset_args(script, ordinal);
        assert_eq!(args[0], "cache-node");
        assert_eq!(
            flag(&args, "--id"),
            Some((ordinal + 1).to_string().as_str())
        );
        assert_eq!(
            flag(&args, "--advertise"),
            Some(pod(ordinal.into()).as_str())
        );
        assert_eq!(flag(&args, "--init"), Some(initial.join(",").as_str()));
        for a in args.iter().filter(|a| a.starts_with("--")) {
            assert!(known.contains(a), "cache-node has no flag {a}");
        }
    }
    // A pod added by scaling up joins instead of bootstrapping a cluster of its own.
    let args = statefulset_args(script, 3);
    assert_eq!(flag(&args, "--id"), Some("4"));
    assert_eq!(
        flag(&args, "--join"),
        Some((0..3).map(pod).collect::<Vec<_>>().join(",").as_str()),
        "joins through the initial members: the operator token goes to them only"
    );
    assert!(flag(&args, "--init").is_none());

    // The gateways' ConfigMap names the same pods.
    let config = yaml(&kubernetes_gateway_config());
    let endpoints = strings(&config["store"]["raft"]["endpoints"]);
    assert_eq!(endpoints, (0..replicas).map(pod).collect::<Vec<_>>());
}

/// Runs a checker; it must be installed (`.ci/run` installs them all).
fn accepts(tool: &str, args: &[&str], env: &[(&str, &str)]) {
    let out = Command::new(tool)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (.ci/run installs it)"));
    assert!(
        out.status.success(),
        "{tool} {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_tools_that_read_the_deploy_files_accept_them() {
    accepts(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "-q"],
        SECRETS,
    );
    accepts(
        "haproxy",
        &["-c", "-q", "-f", "deploy/compose/haproxy.cfg"],
        &[],
    );
    accepts(
        "promtool",
        &["check", "config", "deploy/compose/prometheus.yml"],
        &[],
    );
    accepts(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yaml"],
        &[],
    );
    accepts(
        "promtool",
        &["test", "rules", "deploy/prometheus/alerts_test.yaml"],
        &[],
    );
    let manifests: Vec<String> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        // The kustomization is kustomize's, not a Kubernetes resource (checked below).
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .map(|p| p.display().to_string())
        .collect();
    let mut args = vec!["-m", "kubernetes_validate", "--strict", "--quiet"];
    args.extend(manifests.iter().map(String::as_str));
    accepts("python3", &args, &[]);
}

#[test]
fn the_kustomization_names_the_image_once_and_the_services_keep_admin_apart() {
    let kustomization = yaml(&read("deploy/kubernetes/kustomization.yaml"));
    let listed = strings(&kustomization["resources"]);
    let mut present: Vec<String> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "kustomization.yaml")
        .collect();
    present.sort();
    assert_eq!(listed, present, "every manifest is in the kustomization");
    let image = &kustomization["images"][0];
    let tag = image["newTag"].as_str().unwrap();
    assert!(
        !tag.is_empty() && tag != "latest",
        "a release, never latest"
    );

    let mut services = Vec::new();
    for file in &listed {
        for doc in documents(&format!("deploy/kubernetes/{file}")) {
            for container in doc["spec"]["template"]["spec"]["containers"]
                .as_sequence()
                .into_iter()
                .flatten()
            {
                assert_eq!(
                    container["image"].as_str(),
                    image["name"].as_str(),
                    "{file}: every container's image is the kustomization's to set"
                );
            }
            if doc["kind"] == "Service" {
                let ports: Vec<String> = doc["spec"]["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|p| p["name"].as_str().unwrap().to_owned())
                    .collect();
                services.push((doc["metadata"]["name"].as_str().unwrap().to_owned(), ports));
            }
            if doc["kind"] == "StatefulSet" {
                let probe = &doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"];
                assert_eq!(
                    probe["httpGet"]["path"], "/readyz",
                    "cache nodes are ready with a quorum"
                );
                let retention = &doc["spec"]["persistentVolumeClaimRetentionPolicy"];
                assert_eq!(retention["whenScaled"], "Retain");
                assert_eq!(retention["whenDeleted"], "Retain");
            }
        }
    }
    let ports = |name: &str| {
        services
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        ports("tokengate"),
        ["http"],
        "the Service behind the ingress has no admin port"
    );
    assert_eq!(ports("tokengate-admin"), ["admin"]);
}
