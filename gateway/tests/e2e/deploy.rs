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
    ("REDIS_PASSWORD", "redis-password"),
    ("ADMIN_TOKEN", "gateway-admin-token"),
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

/// The gateways' configuration, which the kustomization makes a ConfigMap.
fn kubernetes_gateway_config() -> String {
    read("deploy/kubernetes/config/gateway.yaml")
}

/// The Kubernetes resource files (the kustomization itself aside).
fn kubernetes_manifests() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    files.sort();
    files
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
    // The ConfigMap verifies the cache nodes against the CA mounted from their Secret: a
    // throw-away CA stands in for it here.
    let ca = testkit::tls::TlsFixture::new();
    let k8s = kubernetes_gateway_config();
    let mounted_ca = "/etc/tokengate-cache/ca.crt";
    assert!(
        k8s.contains(mounted_ca),
        "the gateways reach the cache over TLS"
    );
    check_config(
        "the Kubernetes ConfigMap",
        &k8s.replace(mounted_ca, &ca.path("ca.crt")),
    );
    // Without TLS the same configuration is refused: the token would cross the network.
    let (mut cmd, _dir) = gateway_command(
        &["check-config"],
        &k8s.replace("    tls: { caFile: /etc/tokengate-cache/ca.crt }", ""),
        SECRETS,
    );
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("store.raft.tls: is required"),
        "{stderr}"
    );
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

    // A disk keeps the id it was created under; a new disk takes the id the replacement script
    // recorded for its pod, and joins.
    let data = tempfile::tempdir().unwrap();
    let ids = tempfile::tempdir().unwrap();
    let relocated = script
        .replace("/var/lib/tokengate", data.path().to_str().unwrap())
        .replace("/etc/tokengate/cache-ids", ids.path().to_str().unwrap());
    std::fs::write(ids.path().join("tokengate-cache-1"), "1001\n").unwrap();
    let args = statefulset_args(&relocated, 1);
    assert_eq!(flag(&args, "--id"), Some("1001"));
    assert!(flag(&args, "--init").is_none());
    assert!(flag(&args, "--join").is_some());
    std::fs::write(data.path().join("node-id"), "2\n").unwrap();
    let args = statefulset_args(&relocated, 1);
    assert_eq!(flag(&args, "--id"), Some("2"), "the disk's id wins");
    assert!(flag(&args, "--init").is_some());

    // Every node serves TLS with the mounted certificate, and verifies its peers.
    let flags: BTreeSet<String> = set["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    for env in [
        "TOKENGATE_TLS_CERT",
        "TOKENGATE_TLS_KEY",
        "TOKENGATE_TLS_CA",
        "CACHECTL_CACERT",
    ] {
        assert!(flags.contains(env), "the cache node lacks {env}");
    }

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
    let manifests: Vec<String> = kubernetes_manifests()
        .iter()
        .map(|f| format!("deploy/kubernetes/{f}"))
        .collect();
    let mut args = vec!["-m", "kubernetes_validate", "--strict", "--quiet"];
    args.extend(manifests.iter().map(String::as_str));
    accepts("python3", &args, &[]);
}

/// `kubectl kustomize DIR`: the resources as `kubectl apply -k` would send them.
fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("kubectl: {e} (.ci/run installs it)"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n---\n").map(yaml).collect()
}

/// The name of the ConfigMap the gateways mount.
fn mounted_config(resources: &[Value]) -> String {
    let deployment = resources
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .unwrap();
    deployment["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "config")
        .and_then(|v| v["configMap"]["name"].as_str())
        .unwrap()
        .to_owned()
}

#[test]
fn the_kustomization_renders_one_image_a_rolling_config_and_admin_apart() {
    let kustomization = yaml(&read("deploy/kubernetes/kustomization.yaml"));
    assert_eq!(
        strings(&kustomization["resources"]),
        kubernetes_manifests(),
        "every manifest is in the kustomization"
    );
    let image = &kustomization["images"][0];
    let tag = image["newTag"].as_str().unwrap();
    assert!(
        !tag.is_empty() && tag != "latest",
        "a release, never latest"
    );
    let release = format!("{}:{tag}", image["newName"].as_str().unwrap());
    for file in kubernetes_manifests() {
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
        }
    }

    let rendered = kustomize(&root().join("deploy/kubernetes"));
    let mut services = Vec::new();
    for doc in &rendered {
        for container in doc["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            assert_eq!(container["image"].as_str(), Some(release.as_str()));
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
        if doc["kind"] == "Deployment" {
            let probe = &doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"];
            assert_eq!(probe["httpGet"]["path"], "/readyz");
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

    // The gateways mount the generated ConfigMap, which holds config/gateway.yaml as is...
    let mounted = mounted_config(&rendered);
    let config_map = rendered
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == mounted.as_str())
        .expect("the mounted ConfigMap is rendered");
    assert_eq!(
        config_map["data"]["gateway.yaml"].as_str(),
        Some(kubernetes_gateway_config().as_str())
    );
    // ... under a name that changes with its content: a change rolls the gateways.
    let copy = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-r")
        .arg(root().join("deploy/kubernetes/."))
        .arg(copy.path())
        .status()
        .unwrap();
    assert!(status.success());
    let changed = copy.path().join("config/gateway.yaml");
    let text = std::fs::read_to_string(&changed).unwrap();
    std::fs::write(&changed, text.replace("format: json", "format: text")).unwrap();
    let rolled = mounted_config(&kustomize(copy.path()));
    assert!(rolled.starts_with("tokengate-gateway-") && mounted.starts_with("tokengate-gateway-"));
    assert_ne!(
        rolled, mounted,
        "a changed configuration is a new ConfigMap"
    );

    // What apply -k sends passes strict validation too.
    let all = copy.path().join("rendered.yaml");
    let docs: Vec<String> = rendered
        .iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap())
        .collect();
    std::fs::write(&all, docs.join("---\n")).unwrap();
    accepts(
        "python3",
        &[
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            all.to_str().unwrap(),
        ],
        &[],
    );
}

/// Writes an executable `name` with `script` into `dir`; the `PATH` that finds it first.
fn shim_path(dir: &Path, name: &str, script: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, script).unwrap();
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap())
}

/// Runs `deploy/kubernetes/replace-cache-node.sh` with `args` and a `kubectl` on the PATH that
/// records its arguments and answers from `answers` (`"<args prefix>" => stdout`); returns the
/// exit status and the recorded calls.
fn replace_script(args: &[&str], answers: &[(&str, &str)]) -> (bool, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let mut shim = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$*\" in\n",
        calls.display()
    );
    for (prefix, out) in answers {
        shim.push_str(&format!("  '{prefix}'*) printf '%s' '{out}' ;;\n"));
    }
    shim.push_str("esac\n");
    let status = Command::new("/bin/sh")
        .arg(root().join("deploy/kubernetes/replace-cache-node.sh"))
        .args(args)
        .env("PATH", shim_path(dir.path(), "kubectl", &shim))
        .env_remove("NAMESPACE")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    let recorded = std::fs::read_to_string(&calls).unwrap_or_default();
    (
        status.success(),
        recorded.lines().map(str::to_owned).collect(),
    )
}

#[test]
fn the_replacement_script_gives_the_pod_a_new_id_and_replaces_the_old_member() {
    let status = r#"[{"endpoint":"a","id":1,"members":[{"id":1},{"id":2},{"id":3}]}]"#;
    let (ok, calls) = replace_script(
        &["1"],
        &[(
            "-n tokengate exec tokengate-cache-0 -c cache-node -- cachectl status",
            status,
        )],
    );
    assert!(ok, "{calls:#?}");
    let expected = [
        "-n tokengate get configmap tokengate-cache-ids -o go-template={{ index .data \"tokengate-cache-1\" }}",
        "-n tokengate exec tokengate-cache-0 -c cache-node -- cachectl status -o json",
        "-n tokengate get configmap tokengate-cache-ids",
        "-n tokengate patch configmap tokengate-cache-ids --type merge -p {\"data\":{\"tokengate-cache-1\":\"1001\"}}",
        "-n tokengate delete pvc data-tokengate-cache-1 --wait=false --ignore-not-found",
        "-n tokengate delete pod tokengate-cache-1",
        "-n tokengate get pod tokengate-cache-1",
        "-n tokengate wait --for=condition=Ready pod/tokengate-cache-1 --timeout=10m",
        "-n tokengate exec tokengate-cache-0 -c cache-node -- cachectl members replace 2 1001",
        "-n tokengate exec tokengate-cache-0 -c cache-node -- cachectl status",
    ];
    assert_eq!(calls, expected);

    // A pod replaced before runs under the recorded id; the next id is above every member's;
    // cachectl runs in another pod than the one replaced.
    let status = r#"[{"id":1001,"members":[{"id":1001},{"id":2},{"id":1004}]}]"#;
    let (ok, calls) = replace_script(
        &["0"],
        &[
            ("-n tokengate get configmap tokengate-cache-ids -o", "1001"),
            (
                "-n tokengate exec tokengate-cache-1 -c cache-node -- cachectl status",
                status,
            ),
        ],
    );
    assert!(ok, "{calls:#?}");
    assert!(
        calls
            .iter()
            .any(|c| c.ends_with(r#"{"data":{"tokengate-cache-0":"1005"}}"#)),
        "{calls:#?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.ends_with("cachectl members replace 1001 1005")),
        "{calls:#?}"
    );

    let (ok, calls) = replace_script(&["one"], &[]);
    assert!(!ok && calls.is_empty(), "a bad ordinal touches nothing");
}

/// Runs the Redis image's `redis-start` with `password` (unset: `None`) and a `redis-server` on
/// the PATH that records the configuration it was given; returns whether it started that
/// `redis-server`, its error output, and the configuration file's text and mode.
fn redis_start(password: Option<&str>) -> (bool, String, Option<(String, u32)>) {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let shim = format!(
        "#!/bin/sh\ncat \"$1\" > '{seen}'\nstat -c %a \"$1\" >> '{seen}'\n",
        seen = seen.display()
    );
    let mut start = Command::new("/bin/sh");
    start
        .arg(root().join("deploy/images/redis-start"))
        .env("PATH", shim_path(dir.path(), "redis-server", &shim))
        .env("TMPDIR", dir.path());
    match password {
        Some(p) => start.env("REDIS_PASSWORD", p),
        None => start.env_remove("REDIS_PASSWORD"),
    };
    let out = start.output().unwrap();
    let conf = std::fs::read_to_string(&seen).ok().map(|text| {
        let (conf, mode) = text.trim_end().rsplit_once('\n').unwrap();
        (conf.to_owned(), u32::from_str_radix(mode, 8).unwrap())
    });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        conf,
    )
}

#[test]
fn the_redis_image_takes_only_a_password_that_cannot_write_configuration() {
    let (ok, _, conf) = redis_start(Some("s3cr3t-Pass_word.~+/="));
    let (conf, mode) = conf.expect("redis-server was started");
    assert!(ok);
    assert_eq!(
        conf.lines().next(),
        Some("requirepass s3cr3t-Pass_word.~+/="),
        "{conf}"
    );
    assert_eq!(
        mode, 0o600,
        "the file with the password is the owner's alone"
    );

    // Each of these would write a directive of its own into redis.conf, or break the one line.
    for hostile in [
        "pw\nrename-command CONFIG \"\"",
        "pw\rdir /",
        "two words",
        "\"quoted\"",
        "pw;$(id)",
        "pässword",
        "",
    ] {
        let (ok, stderr, conf) = redis_start(Some(hostile));
        assert!(!ok && conf.is_none(), "{hostile:?} started redis-server");
        assert!(
            stderr.contains("REDIS_PASSWORD") && (hostile.is_empty() || !stderr.contains(hostile)),
            "{hostile:?}: {stderr}"
        );
    }
    let (ok, stderr, conf) = redis_start(None);
    assert!(
        !ok && conf.is_none() && stderr.contains("REDIS_PASSWORD"),
        "{stderr}"
    );
}

#[test]
fn the_dashboard_queries_parse_and_every_panel_reads_the_chosen_prometheus() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/tokengate.json")).unwrap();
    assert_eq!(dashboard["templating"]["list"][0]["type"], "datasource");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "ids are unique");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{panel}");
        for (i, target) in targets.iter().enumerate() {
            // Grafana's range variable, as Prometheus would see it.
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m");
            rules.push_str(&format!(
                "      - record: dashboard:panel{}:{i}\n        expr: {}\n",
                panel["id"],
                serde_json::to_string(&expr).unwrap()
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, rules).unwrap();
    accepts("promtool", &["check", "rules", file.to_str().unwrap()], &[]);
}
