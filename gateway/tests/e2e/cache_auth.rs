//! Every call to a cache node is authenticated and authorised by role: checked for every RPC the
//! `.proto` files declare (read from the compiled descriptors, so a new RPC is covered the day it
//! is added), without a credential, with another role's, and with its own.

use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::Duration;

use bytes::{Buf, BufMut};
use gateway::cachenode::auth::{Role, allowed};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::cluster::{ADMIN_TOKEN, Cluster, GATEWAY_TOKEN, PEER_TOKEN};

/// Message bytes as they are: the test calls every RPC with an empty (default) message.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = src.chunk().to_vec();
        src.advance(bytes.len());
        Ok(Some(bytes))
    }
}

fn token(role: Role) -> &'static str {
    match role {
        Role::Peer => PEER_TOKEN,
        Role::Gateway => GATEWAY_TOKEN,
        Role::Operator => ADMIN_TOKEN,
    }
}

/// Calls `rpc` on `addr` with an empty message and `bearer`; the status code it ends with.
async fn call(addr: &str, rpc: &tokengate_proto::Rpc, bearer: Option<&str>) -> tonic::Code {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(Vec::new());
    req.set_timeout(Duration::from_secs(5));
    if let Some(b) = bearer {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {b}").parse().unwrap());
    }
    let path = http::uri::PathAndQuery::from_str(&rpc.path).unwrap();
    let outcome = if rpc.server_streaming {
        grpc.server_streaming(req, path, Raw).await.map(|_| ())
    } else {
        grpc.unary(req, path, Raw).await.map(|_| ())
    };
    outcome.map_or_else(|s| s.code(), |()| tonic::Code::Ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_needs_its_role_and_nothing_else_will_do() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let addr = cluster.nodes[leader as usize - 1].addr.clone();
    let rpcs = tokengate_proto::rpcs();
    assert!(rpcs.len() >= 20, "{rpcs:?}");
    for rpc in &rpcs {
        let roles = allowed(&rpc.path).expect("every declared RPC has roles");
        assert_eq!(
            call(&addr, rpc, None).await,
            tonic::Code::Unauthenticated,
            "{} without a credential",
            rpc.path
        );
        assert_eq!(
            call(&addr, rpc, Some("not-a-token")).await,
            tonic::Code::Unauthenticated,
            "{} with a wrong credential",
            rpc.path
        );
        for other in Role::ALL.iter().filter(|r| !roles.contains(r)) {
            assert_eq!(
                call(&addr, rpc, Some(token(*other))).await,
                tonic::Code::PermissionDenied,
                "{} as {}",
                rpc.path,
                other.name()
            );
        }
    }
    // With the right role every call gets past the door (what it then says is its own
    // business: an empty message is often INVALID_ARGUMENT). Membership changes last, so an
    // empty voter set cannot disturb the other calls.
    let mut ordered = rpcs.clone();
    ordered.sort_by_key(|r| r.path.ends_with("/ChangeMembership"));
    for rpc in &ordered {
        let role = allowed(&rpc.path).unwrap()[0];
        let code = call(&addr, rpc, Some(token(role))).await;
        assert!(
            !matches!(
                code,
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
            ),
            "{} as {}: {code:?}",
            rpc.path,
            role.name()
        );
    }
    // A path no role may call is refused by the door, not passed on: one no service declares,
    // and the health service's stream.
    for path in [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.health.v1.Health/Watch",
    ] {
        let unknown = tokengate_proto::Rpc {
            path: path.into(),
            server_streaming: true,
        };
        assert_eq!(
            call(&addr, &unknown, Some(ADMIN_TOKEN)).await,
            tonic::Code::PermissionDenied,
            "{path}"
        );
    }
    // The health check alone needs no credential.
    let check = tokengate_proto::Rpc {
        path: gateway::cachenode::auth::PUBLIC.into(),
        server_streaming: false,
    };
    assert_eq!(call(&addr, &check, None).await, tonic::Code::Ok);
    // The refusals are counted.
    let metrics =
        crate::support::metrics_text(cluster.nodes[leader as usize - 1].metrics_addr()).await;
    assert!(
        metrics.contains(
            "tokengate_cache_auth_refused_total{outcome=\"permission_denied\",role=\"peer\"}"
        ),
        "{metrics}"
    );
}

#[test]
fn a_node_refuses_to_serve_others_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let start_on = |listen: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.args(["cache-node", "--id", "1", "--listen", listen])
            .arg("--data-dir")
            .arg(dir.path())
            .args(extra)
            .env_remove("TOKENGATE_ADMIN_TOKEN")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let start = |extra: &[&str], env: &[(&str, &str)]| start_on("0.0.0.0:0", extra, env);
    // Whether the node, started, logs a line holding `warning` among its first lines.
    let warns = |mut cmd: Command, warning: &str| {
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let warned = std::io::BufRead::lines(std::io::BufReader::new(stdout))
            .map_while(Result::ok)
            .take(20)
            .any(|l| l.contains(warning));
        let _ = child.kill();
        let _ = child.wait();
        warned
    };
    // No credential on a non-loopback address: refused before it listens.
    let said = |out: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let out = start(&[], &[]).output().unwrap();
    assert!(!out.status.success());
    let err = said(&out);
    assert!(err.contains("0.0.0.0:0 is not a loopback address"), "{err}");
    // Only some roles: refused too, naming the missing one.
    let out = start(&[], &[("TOKENGATE_ADMIN_TOKEN", "a-secret")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = said(&out);
    assert!(
        err.contains("--peer-token or --peer-identity is required"),
        "{err}"
    );
    assert!(!err.contains("a-secret"), "{err}");
    // Told explicitly, it serves, and says so loudly.
    assert!(
        warns(
            start(&["--insecure-no-auth", "--log-format", "json"], &[]),
            "--insecure-no-auth: anyone who can reach this port"
        ),
        "the insecure mode is logged as a warning"
    );

    // Tokens for every role but no TLS on a non-loopback address: the tokens would cross the
    // network in clear, so the node refuses to start unless told, naming neither token.
    let tokens = [
        ("TOKENGATE_ADMIN_TOKEN", "env:T_ADMIN"),
        ("T_ADMIN", "admin-secret-value"),
        ("TOKENGATE_PEER_TOKEN", "env:T_PEER"),
        ("T_PEER", "peer-secret-value"),
        ("TOKENGATE_GATEWAY_TOKEN", "env:T_GATEWAY"),
        ("T_GATEWAY", "gateway-secret-value"),
    ];
    let out = start(&[], &tokens).output().unwrap();
    assert!(!out.status.success());
    let err = said(&out);
    assert!(
        err.contains("role tokens would cross the network in clear (0.0.0.0:0"),
        "{err}"
    );
    assert!(!err.contains("secret-value"), "{err}");
    // On loopback, but naming a peer elsewhere: the peer token would travel in clear too.
    let out = start_on(
        "127.0.0.1:0",
        &["--init", "1=127.0.0.1:7000,2=10.0.0.12:7000"],
        &tokens,
    )
    .output()
    .unwrap();
    let err = said(&out);
    assert!(
        !out.status.success() && err.contains("(10.0.0.12:7000 is not on this host)"),
        "{err}"
    );
    // Told explicitly, it serves, and warns.
    assert!(
        warns(
            start(&["--allow-plaintext", "--log-format", "json"], &tokens),
            "--allow-plaintext: role tokens cross the network in clear"
        ),
        "plaintext is logged as a warning"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_overflowing_writes_are_refused_and_replication_goes_on() {
    use gateway::store::{PutOutcome, StoreError, TokenStore, conformance};
    use tokengate_proto::cache as pc;
    use tokengate_proto::cache::token_cache_client::TokenCacheClient;

    let cluster = Cluster::start(3).await;
    let leader = cluster.leader(Duration::from_secs(20)).await;
    let store = cluster.store();
    let key = |n: u8| gateway::token::TokenKey::from_bytes([n; 32]);

    let mut big = conformance::entry(1, 60_000, 120_000);
    big.ciphertext = vec![7; 100 * 1024];
    let refused = store.put(&key(1), big, None).await;
    assert!(
        matches!(&refused, Err(StoreError::Refused(m)) if m.contains("at most 65536")),
        "{refused:?}"
    );
    let mut forever = conformance::entry(1, 60_000, 120_000);
    forever.meta.expires_at = u64::MAX;
    assert!(store.put(&key(2), forever, None).await.is_err());

    // Leases for ten years, and times that would overflow `now + ttl` on every replica.
    let mut raw = TokenCacheClient::new(
        tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            cluster.nodes[leader as usize - 1].addr
        ))
        .unwrap()
        .connect()
        .await
        .unwrap(),
    );
    fn authed<T>(msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {GATEWAY_TOKEN}").parse().unwrap(),
        );
        r
    }
    let lease = raw
        .acquire_lease(authed(pc::LeaseRequest {
            holder: "squatter".into(),
            ttl_ms: u64::MAX,
        }))
        .await
        .unwrap_err();
    assert_eq!(lease.code(), tonic::Code::InvalidArgument);
    let claim = raw
        .claim_once(authed(pc::ClaimRequest {
            key: vec![3; 32],
            until: u64::MAX,
        }))
        .await
        .unwrap_err();
    assert_eq!(claim.code(), tonic::Code::InvalidArgument);

    // The cluster is unharmed: a normal write commits on a majority and is read back.
    assert_eq!(
        store
            .put(&key(4), conformance::entry(1, 60_000, 120_000), None)
            .await
            .unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        store.get(&key(4)).await.unwrap().map(|e| e.meta.version),
        Some(1)
    );
    assert!(
        store.refresh_lease().await.unwrap().is_none(),
        "no squatter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_follow_a_redirect_outside_the_configured_endpoints() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use gateway::store::RaftStoreConfig;
    use gateway::store::{RaftStore, TokenStore};

    // Where a lying node points: it counts every connection it is offered.
    let planted = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let planted_addr = planted.local_addr().unwrap().to_string();
    let visits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&visits);
    tokio::spawn(async move {
        while planted.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    // The configured node answers every call "not the leader, ask <planted>".
    let liar = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liar_addr = liar.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = liar.accept().await else {
                return;
            };
            let planted = planted_addr.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let planted = planted.clone();
                    async move {
                        http::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("grpc-status", "14")
                            .header("grpc-message", "not the leader")
                            .header("tokengate-leader", planted)
                            .body(http_body_util::Empty::<bytes::Bytes>::new())
                    }
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    let store = RaftStore::new(&RaftStoreConfig {
        endpoints: vec![liar_addr],
        timeout: Duration::from_millis(800),
        tls: None,
        token: Some(gateway::secret::Secret::new(GATEWAY_TOKEN)),
    });
    let key = gateway::token::TokenKey::from_bytes([5; 32]);
    assert!(store.get(&key).await.is_err());
    assert_eq!(
        visits.load(Ordering::Relaxed),
        0,
        "the credential went to an address no operator configured"
    );
}
