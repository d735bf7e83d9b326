//! What a cache node serves and calls besides Raft's core: the metrics and readiness listener,
//! joining a cluster, and the span of each gRPC call.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use tokengate_proto::admin::admin_server::AdminServer;
use tokengate_proto::cache::token_cache_server::TokenCacheServer;
use tokengate_proto::raft::raft_transport_server::RaftTransportServer;

use super::admin::AdminService;
use super::auth::{AuthLayer, Credentials};
use super::cache_service::CacheService;
use super::context::NodeContext;
use super::raft_service::RaftService;
use super::settings::MAX_REQUEST_BYTES;
use super::{metrics, network};
use crate::secret::Secret;

/// Serves the node's gRPC services on `listener` until `shutdown`: Raft's transport for peers,
/// `TokenCache` for gateways, `Admin` for operators, and gRPC health, each call authorised by
/// role.
pub(super) fn serve_grpc(
    builder: tonic::transport::Server,
    listener: tokio::net::TcpListener,
    ctx: &Arc<NodeContext>,
    credentials: &Credentials,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = Result<(), tonic::transport::Error>> {
    builder
        .trace_fn(grpc_span)
        .layer(AuthLayer::new(credentials.clone()))
        .add_service(
            RaftTransportServer::new(RaftService(Arc::clone(ctx)))
                .max_decoding_message_size(network::MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(network::MAX_RAFT_MESSAGE_BYTES),
        )
        .add_service(
            TokenCacheServer::new(CacheService(Arc::clone(ctx)))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            AdminServer::new(AdminService(Arc::clone(ctx)))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(health)
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY an answer written after an unacknowledged one waits for the
            // peer's delayed ACK: ~40 ms on a commit's every hop.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
}

/// Serves `GET /metrics` and `GET /readyz` (200 while the node leads with a quorum or follows a
/// known leader, 503 otherwise: the probe that keeps a node without quorum out of rotation) on
/// `listener` until `stop`.
pub(super) fn serve_metrics(
    listener: tokio::net::TcpListener,
    ctx: Arc<NodeContext>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use futures_util::FutureExt;
    let gauges = Arc::new(metrics::RaftMetrics::new());
    let handler: crate::http::Handler = Arc::new(move |req, _| {
        let resp = match req.uri().path() {
            "/metrics" => {
                let mut r = crate::http::response::json(
                    http::StatusCode::OK,
                    gauges.render(&ctx.raft, &ctx.shared),
                );
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            "/readyz" => {
                let (status, body) = match ctx.readiness() {
                    Ok(role) => (
                        http::StatusCode::OK,
                        serde_json::json!({ "status": "ready", "role": role }),
                    ),
                    Err(reason) => (
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({ "status": "unready", "reason": reason }),
                    ),
                };
                crate::http::response::json(status, body.to_string())
            }
            _ => crate::http::response::error(
                http::StatusCode::NOT_FOUND,
                "not_found",
                "try /metrics or /readyz",
            ),
        };
        async move { resp }.boxed()
    });
    if let Ok(bound) = listener.local_addr() {
        tracing::info!(addr = %bound, "cache node metrics listening");
    }
    tokio::spawn(crate::http::serve(
        listener,
        handler,
        stop,
        Duration::from_secs(1),
        None,
    ))
}

/// Asks `members` (following redirects to the leader) to add this node as a learner, until it
/// succeeds. Promotion to voter is the operator's decision (`Admin.ChangeMembership`).
///
/// The operator token is sent only to a configured member, or to a redirect target whose TLS
/// certificate proves the address: without TLS a redirect names an address no one vouched for.
pub(super) async fn join(
    members: Vec<String>,
    id: u64,
    addr: String,
    token: Option<Secret>,
    dialer: crate::cacheclient::Dialer,
    stop: CancellationToken,
) {
    use tokengate_proto::admin::AddLearnerRequest;
    use tokengate_proto::admin::admin_client::AdminClient;
    let bearer = crate::cacheclient::bearer(token.as_ref());
    let mut next = 0;
    let mut target = members[0].clone();
    loop {
        let attempt = async {
            let channel = dialer.channel(&target).map_err(|e| (e.to_string(), None))?;
            let mut client = AdminClient::new(channel);
            let mut req = tonic::Request::new(AddLearnerRequest {
                id,
                addr: addr.clone(),
            });
            if let Some(b) = &bearer {
                req.metadata_mut().insert("authorization", b.clone());
            }
            client.add_learner(req).await.map_err(|s| {
                let leader = crate::cacheclient::leader_hint(&s).map(str::to_owned);
                (s.message().to_owned(), leader)
            })
        };
        match attempt.await {
            Ok(_) => {
                tracing::info!(via = %target, "joined the cluster as a learner");
                return;
            }
            Err((message, leader)) => {
                tracing::info!(via = %target, reason = %message, "cannot join yet; retrying");
                target = match leader {
                    Some(l) if members.contains(&l) || dialer.verifies_servers() => l,
                    _ => {
                        next = (next + 1) % members.len();
                        members[next].clone()
                    }
                };
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The span of one gRPC call that continues a caller's trace. A cache node only ever joins
/// traces: calls without trace context (Raft's own heartbeats, a refresher's lease ticks,
/// cachectl) record nothing, so background chatter does not flood the trace store.
fn grpc_span(req: &http::Request<()>) -> tracing::Span {
    let path = req.uri().path();
    if !crate::telemetry::otel::enabled()
        || !req
            .headers()
            .contains_key(crate::telemetry::otel::TRACEPARENT)
    {
        return tracing::Span::none();
    }
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
    );
    crate::telemetry::otel::continue_from(&span, req.headers());
    span
}
