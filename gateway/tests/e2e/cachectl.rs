//! `cachectl` against a real Raft cache cluster and a real Redis, each shared by gateway nodes
//! with cached tokens: every command in both output formats, the errors scripts rely on, an
//! eviction every gateway sees, and no token in any output.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{ADMIN_TOKEN, CacheNode};
use crate::support::{eventually, free_port};

/// The `cachectl` binary, built once per test run (it is another package of the workspace).
/// Starts `cachectl` with `args` (a `watch`) and `env`, and returns once it says on stderr that
/// its stream is open, so that a change made afterwards cannot be missed; joining gives its
/// output once it exits.
fn open_watcher(args: &[&str], env: &[(&str, &str)]) -> std::thread::JoinHandle<Output> {
    let (open_tx, open_rx) = std::sync::mpsc::channel();
    let mut child = Command::new(cachectl_bin())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.starts_with("watching ") {
                let _ = open_tx.send(());
            }
        }
    });
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    open_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("cachectl watch opened its stream");
    waiter
}

pub(crate) fn cachectl_bin() -> PathBuf {
    testkit::procs::sibling_binary(
        "cachectl",
        std::path::Path::new(env!("CARGO_BIN_EXE_gateway")),
    )
}

/// The outputs of every command run, checked for tokens at the end.
#[derive(Default)]
pub(crate) struct Transcript(Vec<String>);

impl Transcript {
    pub(crate) fn run(&mut self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(cachectl_bin());
        cmd.args(args)
            .env_remove("CACHECTL_TOKEN")
            .env_remove("CACHECTL_ENDPOINTS");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        self.0.push(format!(
            "$ cachectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        out
    }

    /// Runs and expects success; returns stdout.
    pub(crate) fn ok(&mut self, args: &[&str], env: &[(&str, &str)]) -> String {
        let out = self.run(args, env);
        assert!(
            out.status.success(),
            "cachectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs with `-o json` and parses stdout.
    pub(crate) fn json(&mut self, args: &[&str], env: &[(&str, &str)]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all, env)).unwrap()
    }

    /// Runs and expects exit `code` with a one-line error containing `says`.
    pub(crate) fn fails(&mut self, args: &[&str], env: &[(&str, &str)], code: i32, says: &str) {
        let out = self.run(args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "cachectl {args:?}: {err}");
        assert!(
            err.contains(says),
            "cachectl {args:?} said {err:?}, not {says:?}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }

    fn assert_no_secret(&self, secrets: &[String]) {
        for out in &self.0 {
            for s in secrets {
                assert!(
                    !out.contains(s.as_str()),
                    "a token or secret was printed:\n{out}"
                );
            }
        }
    }
}

/// Tokens the upstream received, and the clients' secrets.
fn secrets(upstream: &testkit::EchoUpstream) -> Vec<String> {
    let mut s: Vec<String> = upstream
        .seen()
        .iter()
        .filter_map(|r| r.bearer().map(str::to_owned))
        .collect();
    s.extend((0..20).map(|i| format!("secret-{i}")));
    s.push(crate::redis::FLEET_KEY.to_owned());
    s.push(ADMIN_TOKEN.to_owned());
    assert!(s.len() > 22, "tokens were captured");
    s
}

fn entry_for<'a>(list: &'a Value, client: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["client_id"] == client)
        .unwrap_or_else(|| panic!("no entry for {client} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cachectl_inspects_and_steers_the_raft_cache() {
    // Built before the tokens are fetched: a cold build must not eat into their lifetime.
    cachectl_bin();
    let f = crate::cluster::fleet(Duration::from_secs(300), "{ interval: 100ms }").await;
    for (node, client) in [(0, 0), (1, 1), (2, 2)] {
        assert_eq!(f.call(node, client).await.status(), 200);
    }
    let endpoints = f.cluster.endpoints().join(",");
    let env = [
        ("CACHECTL_ENDPOINTS", endpoints.as_str()),
        ("CACHECTL_TOKEN", ADMIN_TOKEN),
    ];
    let mut t = Transcript::default();

    // status: every node, one leader (asked again while an election under load settles).
    eventually(
        "one leader among the three nodes",
        Duration::from_secs(10),
        async || {
            let status = t.json(&["status"], &env);
            let nodes = status.as_array().unwrap();
            assert_eq!(nodes.len(), 3);
            nodes.iter().filter(|n| n["state"] == "leader").count() == 1
        },
    )
    .await;
    let table = t.ok(&["status"], &env);
    assert!(
        table.contains("LEADER") && table.contains("leader"),
        "{table}"
    );

    // ls and its filters.
    let list = t.json(&["ls"], &env);
    assert_eq!(list.as_array().unwrap().len(), 3);
    let e0 = entry_for(&list, "client-0").clone();
    assert_eq!(e0["scopes"], serde_json::json!(["read"]));
    let expires_in = e0["expires_in_ms"].as_i64().unwrap();
    assert!((1..=300_000).contains(&expires_in), "{e0}");
    let only = t.json(&["ls", "--client", "client-1"], &env);
    assert_eq!(only.as_array().unwrap().len(), 1);
    let none = t.json(&["ls", "--expiring-within", "30s"], &env);
    assert!(none.as_array().unwrap().is_empty());
    let table = t.ok(&["ls", "--sort", "client"], &env);
    assert!(
        table.contains("client-2") && table.contains("3 entries"),
        "{table}"
    );

    // get by key prefix, both formats.
    let key = e0["key"].as_str().unwrap().to_owned();
    let prefix = &key[..12];
    let one = t.json(&["get", prefix], &env);
    assert_eq!(one["key"], key.as_str());
    assert!(one["sealed_bytes"].as_u64().unwrap() > 0);
    let table = t.ok(&["get", prefix], &env);
    assert!(table.contains("not readable here"), "{table}");

    // leases: one gateway holds the refresh lease.
    let leases = t.json(&["leases"], &env);
    assert!(leases["fence"].as_u64().unwrap() > 0, "{leases}");
    assert!(t.ok(&["leases"], &env).contains("refresh"));

    // refresh: the leader renews it at once.
    let issued = f.idp.issued("client-0");
    t.ok(&["refresh", prefix], &env);
    eventually("the entry is renewed", Duration::from_secs(5), async || {
        f.idp.issued("client-0") > issued
    })
    .await;
    // The IdP counts the request before the leader has stored its answer.
    let before = e0["version"].as_u64().unwrap();
    eventually(
        "the renewal is stored",
        Duration::from_secs(5),
        async || t.json(&["get", prefix], &env)["version"].as_u64().unwrap() > before,
    )
    .await;

    // watch sees an eviction, which every gateway's L1 drops at once.
    let last_bearer = || {
        f.upstream
            .seen()
            .last()
            .and_then(|s| s.bearer().map(str::to_owned))
    };
    // Every gateway's L1 takes the renewed token when the store's event reaches it, not at
    // the same instant everywhere: one token fleet-wide, once the events are in.
    let mut before = Vec::new();
    eventually(
        "one token fleet-wide",
        Duration::from_secs(10),
        async || {
            before.clear();
            for node in 0..3 {
                assert_eq!(f.call(node, 0).await.status(), 200);
                before.push(last_bearer().unwrap());
            }
            before.iter().all(|b| *b == before[0])
        },
    )
    .await;
    let old = before[0].clone();
    let watcher = open_watcher(
        &[
            "watch",
            "--count",
            "1",
            "-o",
            "json",
            "--endpoints",
            &endpoints,
        ],
        &[("CACHECTL_TOKEN", ADMIN_TOKEN)],
    );
    let evicted = t.json(&["evict", "--client", "client-0"], &env);
    assert_eq!(evicted["evicted"], 1);
    let evicted_at = Instant::now();
    for node in 0..3 {
        loop {
            assert_eq!(f.call(node, 0).await.status(), 200);
            if last_bearer().unwrap() != old {
                break;
            }
            // Tokens live 300 s: without the eviction being pushed to every L1, they would be
            // served for minutes. (A bound, not a speed: this machine may be loaded.)
            assert!(
                evicted_at.elapsed() < Duration::from_secs(30),
                "gateway {node} still serves the evicted token"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    println!(
        "all three gateways served a new token {:?} after the eviction",
        evicted_at.elapsed()
    );
    let watched = watcher.join().unwrap();
    let line: Value = serde_json::from_slice(&watched.stdout).unwrap();
    assert_eq!(
        (line["change"].as_str(), line["key"].as_str()),
        (Some("evicted"), Some(key.as_str()))
    );

    // members and snapshot: a fourth node joins as a learner, is promoted, then removed.
    let addr = format!("127.0.0.1:{}", free_port());
    let _four = CacheNode::spawn_bare(4, addr.clone());
    t.ok(&["members", "add-learner", "4", &addr], &env);
    t.json(&["members", "promote", "4"], &env);
    let voters = |s: &Value| {
        s.as_array().unwrap()[0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "voter")
            .count()
    };
    assert_eq!(voters(&t.json(&["status"], &env)), 4);
    t.ok(&["members", "remove", "4"], &env);
    assert_eq!(voters(&t.json(&["status"], &env)), 3);
    let snap = t.json(&["snapshot"], &env);
    assert!(
        snap.as_array()
            .unwrap()
            .iter()
            .all(|n| n["snapshot_index"].as_u64().is_some()),
        "{snap}"
    );
    t.ok(&["snapshot"], &env);

    // evict --all, with confirmation.
    t.fails(&["evict", "--all"], &env, 2, "add --yes");
    let all = t.json(&["evict", "--all", "--yes"], &env);
    assert_eq!(all["evicted"], 3);

    // Errors scripts can tell apart.
    let wrong = [
        ("CACHECTL_ENDPOINTS", endpoints.as_str()),
        ("CACHECTL_TOKEN", "wrong"),
    ];
    t.fails(&["status"], &wrong, 1, "refused the admin token");
    let nobody = format!("127.0.0.1:{}", free_port());
    t.fails(
        &["--endpoints", &nobody, "--timeout", "1s", "ls"],
        &[],
        1,
        "cannot reach",
    );
    t.fails(&["get", "ffffffffff"], &env, 1, "no cached entry");
    t.fails(&["get", "xyz"], &env, 2, "a key is hex");
    t.fails(&["ls"], &[], 2, "name the cache");
    let bash = t.ok(&["completions", "bash"], &[]);
    assert!(bash.contains("cachectl"));

    t.assert_no_secret(&secrets(&f.upstream));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cachectl_inspects_and_steers_a_redis_cache() {
    cachectl_bin();
    let f = crate::redis::fleet(2, Duration::from_secs(300), "{ interval: 100ms }").await;
    for (node, client) in [(0, 0), (1, 1)] {
        assert_eq!(f.call(node, client).await.status(), 200);
    }
    let url = format!("redis://{}", f.redis.endpoint());
    let env = [("CACHECTL_REDIS", url.as_str())];
    let mut t = Transcript::default();

    let status = t.json(&["status"], &env);
    assert_eq!(status["entries"], 2);
    assert!(status["fence"].as_u64().is_some(), "{status}");
    assert!(t.ok(&["status"], &env).contains("LEASE HOLDER"));
    let list = t.json(&["ls"], &env);
    let e1 = entry_for(&list, "client-1");
    let prefix = e1["key"].as_str().unwrap()[..10].to_owned();
    assert!(t.ok(&["ls"], &env).contains("2 entries"));
    assert_eq!(t.json(&["get", &prefix], &env)["client_id"], "client-1");
    assert!(t.ok(&["get", &prefix], &env).contains("client-1"));
    assert!(t.json(&["leases"], &env)["holder"].as_str().is_some());
    assert!(t.ok(&["leases"], &env).contains("refresh"));

    let issued = f.idp.issued("client-1");
    t.ok(&["refresh", &prefix], &env);
    eventually("the entry is renewed", Duration::from_secs(5), async || {
        f.idp.issued("client-1") > issued
    })
    .await;
    let before = e1["version"].as_u64().unwrap();
    eventually(
        "the renewal is stored",
        Duration::from_secs(5),
        async || t.json(&["get", &prefix], &env)["version"].as_u64().unwrap() > before,
    )
    .await;

    let watcher = open_watcher(&["watch", "--count", "1", "--redis", &url], &[]);
    assert_eq!(t.json(&["evict", &prefix], &env)["evicted"], 1);
    let watched = String::from_utf8(watcher.join().unwrap().stdout).unwrap();
    assert!(watched.starts_with("evicted"), "{watched}");
    assert!(
        t.ok(&["evict", "--client", "client-0"], &env)
            .contains("evicted: 1")
    );
    assert!(t.json(&["ls"], &env).as_array().unwrap().is_empty());

    t.fails(
        &["members", "remove", "1"],
        &env,
        2,
        "needs the Raft cache service",
    );
    t.fails(&["--redis", "http://x", "ls"], &[], 2, "--redis");
    // A secret never leaves for another host in clear unless told: refused before any call.
    t.fails(
        &["--endpoints", "10.0.0.5:7000", "ls"],
        &[("CACHECTL_TOKEN", "operator-token-value")],
        2,
        "--token would cross the network to 10.0.0.5:7000 in clear",
    );
    t.fails(
        &["--redis", "redis://:pa55word@10.0.0.5:6379", "ls"],
        &[],
        2,
        "the password would cross the network to 10.0.0.5:6379 in clear",
    );
    let nobody = format!("redis://127.0.0.1:{}", free_port());
    t.fails(
        &["--redis", &nobody, "--timeout", "1s", "ls"],
        &[],
        1,
        "cannot reach",
    );
    t.assert_no_secret(&secrets(&f.upstream));
}

/// A cache cluster that requires mutual TLS: the nodes replicate over it, a gateway's store and
/// cachectl with the client certificate get through, and callers without one (or without TLS)
/// are turned away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_service_over_mutual_tls() {
    use gateway::outbound::StoreTls;
    use gateway::secret::Secret;
    use gateway::store::RaftStoreConfig;
    use gateway::store::raft::RaftStore;
    use gateway::store::{PutOutcome, StoreError, TokenStore, conformance};

    let tls = crate::support::TlsFixture::new();
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let init = crate::cluster::init_members(&addrs);
    let env = vec![
        ("TOKENGATE_TLS_CERT".to_owned(), tls.path("node.crt")),
        ("TOKENGATE_TLS_KEY".to_owned(), tls.path("node.key")),
        ("TOKENGATE_TLS_CA".to_owned(), tls.path("ca.crt")),
        ("TOKENGATE_TLS_CLIENT_CA".to_owned(), tls.path("ca.crt")),
        // Roles by certificate: the nodes' own (CN), the gateways' (CN), the operator's (URI).
        ("TOKENGATE_PEER_IDENTITY".to_owned(), "node".to_owned()),
        ("TOKENGATE_GATEWAY_IDENTITY".to_owned(), "client".to_owned()),
        (
            "TOKENGATE_OPERATOR_IDENTITY".to_owned(),
            "spiffe://tokengate.test/*".to_owned(),
        ),
    ];
    let _nodes: Vec<CacheNode> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let id = i as u64 + 1;
            CacheNode::spawn_with(
                id,
                a.clone(),
                init.clone(),
                None,
                String::new(),
                env.clone(),
            )
        })
        .collect();

    let read = |name: &str| std::fs::read(tls.path(name)).unwrap();
    let store = |tls: Option<StoreTls>| {
        RaftStore::new(&RaftStoreConfig {
            endpoints: addrs.clone(),
            timeout: Duration::from_secs(3),
            tls,
            // The client certificate alone proves the gateway role.
            token: None,
        })
    };
    let with_cert = store(Some(StoreTls {
        ca: Some(read("ca.crt")),
        client: Some((
            read("client.crt"),
            Secret::new(String::from_utf8(read("client.key")).unwrap()),
        )),
        insecure_skip_verify: false,
    }));
    // A put is committed only once a majority has it: the nodes replicate over mutual TLS.
    let key = gateway::token::TokenKey::from_bytes([9; 32]);
    let entry = conformance::entry(1, 60_000, 120_000);
    eventually(
        "a put commits over mutual TLS",
        Duration::from_secs(30),
        async || {
            // Stale: an earlier attempt committed without the client seeing the answer.
            matches!(
                with_cert.put(&key, entry.clone(), None).await,
                Ok(PutOutcome::Stored | PutOutcome::Stale)
            )
        },
    )
    .await;
    assert_eq!(
        with_cert.get(&key).await.unwrap().map(|e| e.meta.version),
        Some(1)
    );

    // TLS without a client certificate, and plain gRPC, are refused.
    let no_cert = store(Some(StoreTls {
        ca: Some(read("ca.crt")),
        client: None,
        insecure_skip_verify: false,
    }));
    assert!(matches!(
        no_cert.get(&key).await,
        Err(StoreError::Unavailable(_))
    ));
    let plain = store(None).get(&key).await;
    assert!(
        matches!(plain, Err(StoreError::Unavailable(_))),
        "{plain:?}"
    );

    // cachectl, with and without the files.
    let mut t = Transcript::default();
    let (ca, cert, key) = (
        tls.path("ca.crt"),
        tls.path("client.crt"),
        tls.path("client.key"),
    );
    let endpoints = addrs.join(",");
    let args = |command: &'static str, files: &[&str]| -> Vec<String> {
        [command, "--endpoints", &endpoints, "--timeout", "2s"]
            .iter()
            .chain(files)
            .map(|a| (*a).to_owned())
            .collect()
    };
    let all_files = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    let admin = [("CACHECTL_TOKEN", ADMIN_TOKEN)];
    let view = t.json(&as_str(&args("status", &all_files)), &admin);
    let nodes = view.as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{view}");
    assert!(
        nodes
            .iter()
            .all(|n| n["members"].as_array().unwrap().len() == 3),
        "{view}"
    );
    // Listing is the operator's: a gateway's certificate is refused, the operator's is not.
    t.fails(
        &as_str(&args("ls", &all_files)),
        &[],
        1,
        "this call is for the operator role",
    );
    let (op_cert, op_key) = (tls.path("operator.crt"), tls.path("operator.key"));
    let operator_files = ["--cacert", &ca, "--cert", &op_cert, "--key", &op_key];
    let list = t.json(&as_str(&args("ls", &operator_files)), &[]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let no_cert = args("ls", &["--cacert", &ca]);
    t.fails(&as_str(&no_cert), &[], 1, "cannot reach the cache");
    // A certificate without its key is a usage error (clap's, several lines long).
    let half = t.run(&as_str(&args("ls", &["--cert", &cert])), &[]);
    assert_eq!(half.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&half.stderr).contains("--key"));
    let missing = args("ls", &["--cacert", "/nonexistent/ca.pem"]);
    t.fails(
        &as_str(&missing),
        &[],
        2,
        "--cacert: cannot read /nonexistent/ca.pem",
    );
    let key_pem = String::from_utf8(read("client.key")).unwrap();
    t.assert_no_secret(&[key_pem.lines().nth(1).unwrap().to_owned()]);
}

fn as_str(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}
