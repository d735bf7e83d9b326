//! Distributed tracing: a gateway, a cache node and the test doubles all export to one
//! in-process OTLP receiver; one request must come out as one trace with correct parent links,
//! background refreshes as traces of their own, and nothing secret in spans or logs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use testkit::otlp::{CollectedSpan, Collector};
use testkit::{EchoUpstream, FakeIdp};

use crate::cluster::Cluster;
use crate::redis::{FLEET_KEY, creds};
use crate::support::{Node, client, eventually};

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// A tracer provider for a test double, exporting to `collector` as `service`.
fn double_provider(collector: &Collector, service: &str) -> SdkTracerProvider {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(collector.endpoint())
        .build()
        .unwrap();
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build()
}

async fn flush(providers: &[&SdkTracerProvider]) {
    for p in providers {
        let p = (*p).clone();
        tokio::task::spawn_blocking(move || p.force_flush())
            .await
            .unwrap()
            .unwrap();
    }
}

/// The spans of one trace, by span id.
fn trace(spans: &[CollectedSpan], trace_id: &str) -> BTreeMap<String, CollectedSpan> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace_id)
        .map(|s| (s.span_id.clone(), s.clone()))
        .collect()
}

/// The one span matching `pred`.
fn one<'a>(
    spans: &'a BTreeMap<String, CollectedSpan>,
    what: &str,
    pred: impl Fn(&CollectedSpan) -> bool,
) -> &'a CollectedSpan {
    let found: Vec<_> = spans.values().filter(|s| pred(s)).collect();
    assert_eq!(found.len(), 1, "exactly one {what} in {spans:#?}");
    found[0]
}

/// Whether `ancestor` is on `span`'s parent chain.
fn descends(spans: &BTreeMap<String, CollectedSpan>, span: &CollectedSpan, ancestor: &str) -> bool {
    let mut cur = span.parent_span_id.clone();
    while let Some(s) = spans.get(&cur) {
        if s.span_id == ancestor {
            return true;
        }
        cur = s.parent_span_id.clone();
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_request_is_one_trace_across_gateway_cache_node_idp_and_upstream() {
    let collector = Collector::start().await;
    let endpoint = collector.endpoint();
    let otel_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let (idp, upstream) = (FakeIdp::start().await, EchoUpstream::start().await);
    let (idp_traces, upstream_traces) = (
        double_provider(&collector, "fake-idp"),
        double_provider(&collector, "echo-upstream"),
    );
    idp.trace_to(idp_traces.tracer("fake-idp"));
    upstream.trace_to(upstream_traces.tracer("echo-upstream"));
    idp.set_token_lifetime(Duration::from_secs(8));
    for i in 0..3 {
        idp.register(&format!("client-{i}"), &format!("secret-{i}"));
    }
    let cluster = Cluster::start_with_env(1, &otel_env).await;
    let store = cluster.store_yaml();
    // The section in the file; the endpoint still comes from the environment.
    let yaml = format!(
        "telemetry: {{ tracing: {{ serviceName: edge-gateway, sampleRate: 1.0, resourceAttributes: {{ deployment.environment.name: test }} }} }}\n{}",
        crate::redis::node_config(
            &idp,
            &upstream,
            store.trim_start_matches("store: "),
            "{ interval: 200ms }"
        )
    );
    let node = Node::start(
        &yaml,
        &[
            ("FLEET_KEY", FLEET_KEY),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );

    // The caller's own trace context, with vendor state to carry along.
    let resp = client()
        .get(node.url("/x"))
        .header("authorization", creds(0))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "vendor=opaque")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = upstream.seen();
    let forwarded = seen.last().unwrap();
    let traceparent = forwarded.header("traceparent").unwrap().to_owned();
    assert!(
        traceparent.starts_with(&format!("00-{CALLER_TRACE}-"))
            && !traceparent.contains(CALLER_SPAN),
        "the upstream gets the caller's trace with the gateway's span as parent: {traceparent}"
    );
    assert_eq!(forwarded.header("tracestate"), Some("vendor=opaque"));

    let wanted = [
        "edge-gateway",
        "tokengate-cache-node",
        "fake-idp",
        "echo-upstream",
    ];
    let complete = |spans: &BTreeMap<String, CollectedSpan>| {
        let services: BTreeSet<&str> = spans.values().map(|s| s.service.as_str()).collect();
        wanted.iter().all(|w| services.contains(w))
            && spans.values().any(|s| s.name == "raft.apply")
            && spans
                .values()
                .any(|s| s.name == "GET /" && s.kind == SERVER)
    };
    eventually(
        "every party exported its spans",
        Duration::from_secs(15),
        async || {
            flush(&[&idp_traces, &upstream_traces]).await;
            complete(&trace(&collector.spans(), CALLER_TRACE))
        },
    )
    .await;
    let spans = trace(&collector.spans(), CALLER_TRACE);

    // The gateway's server span continues the caller's span.
    let request = one(&spans, "gateway server span", |s| {
        s.service == "edge-gateway" && s.kind == SERVER
    });
    assert_eq!(request.parent_span_id, CALLER_SPAN);
    assert_eq!(request.attr("http.route"), Some("/"));
    assert_eq!(request.attr("http.response.status_code"), Some("200"));
    // Every other span of the trace hangs off a span of the trace: nothing is orphaned.
    for s in spans.values().filter(|s| s.span_id != request.span_id) {
        assert!(
            spans.contains_key(&s.parent_span_id),
            "{} ({}) has a parent outside the trace",
            s.name,
            s.service
        );
        assert!(
            descends(&spans, s, &request.span_id),
            "{} is not under the request",
            s.name
        );
    }

    // Upstream: the double's server span is a child of the gateway's client span, whose id
    // is the one the upstream received in `traceparent`.
    let up_client = one(&spans, "upstream client span", |s| {
        s.attr("tokengate.peer") == Some("upstream")
    });
    assert_eq!(up_client.kind, CLIENT);
    assert!(traceparent.contains(&up_client.span_id));
    let up_server = one(&spans, "upstream server span", |s| {
        s.service == "echo-upstream"
    });
    assert_eq!(up_server.parent_span_id, up_client.span_id);

    // IdP: the token request, under the middleware and the cache lookup.
    let idp_client = one(&spans, "IdP client span", |s| {
        s.attr("tokengate.peer") == Some("idp")
    });
    assert_eq!(idp_client.kind, CLIENT);
    assert_eq!(idp_client.attr("http.response.status_code"), Some("200"));
    let idp_server = one(&spans, "IdP server span", |s| s.service == "fake-idp");
    assert_eq!(idp_server.parent_span_id, idp_client.span_id);
    let middleware = one(&spans, "middleware span", |s| {
        s.name == "middleware app-creds"
    });
    let lookup = one(&spans, "cache lookup", |s| s.name == "token.get");
    assert_eq!(lookup.attr("tokengate.cache.layer"), Some("fill"));
    assert_eq!(lookup.parent_span_id, middleware.span_id);
    assert!(descends(&spans, idp_client, &lookup.span_id));

    // Cache node: each gRPC call is a server span under the gateway's store span, and the
    // write's Raft apply joins the trace.
    let store_spans: Vec<&CollectedSpan> = spans
        .values()
        .filter(|s| s.service == "edge-gateway" && s.attr("db.system.name") == Some("raft"))
        .collect();
    // A miss: the lookup (entry, or the fill lease), then the put of the IdP's token.
    assert!(store_spans.iter().any(|s| s.name == "store.lookup"));
    assert!(store_spans.iter().any(|s| s.name == "store.put"));
    let grpc: Vec<&CollectedSpan> = spans
        .values()
        .filter(|s| s.service == "tokengate-cache-node" && s.kind == SERVER)
        .collect();
    assert!(
        grpc.iter()
            .any(|s| s.name == "tokengate.cache.v1.TokenCache/Put"),
        "{grpc:#?}"
    );
    for g in &grpc {
        let parent = &spans[&g.parent_span_id];
        assert_eq!(
            (parent.service.as_str(), parent.attr("db.system.name")),
            ("edge-gateway", Some("raft")),
            "{} is not under a gateway store span",
            g.name
        );
    }
    let apply = one(&spans, "raft.apply of the put", |s| {
        s.name == "raft.apply" && {
            let write = &spans[&s.parent_span_id];
            write.name == "raft.write"
                && spans[&write.parent_span_id].name == "tokengate.cache.v1.TokenCache/Put"
        }
    });
    assert!(apply.attr("raft.log_index").is_some());

    // The access log names the trace.
    let access = node.access_lines(1).await;
    assert_eq!(access[0]["trace_id"], CALLER_TRACE);

    // The refresher renews the token in the background: its own trace, a root span, with the
    // IdP call under it.
    let mut refresh = None;
    eventually(
        "a background refresh is traced",
        Duration::from_secs(20),
        async || {
            flush(&[&idp_traces]).await;
            let all = collector.spans();
            refresh = all
                .iter()
                .find(|s| s.name == "token.refresh" && s.service == "edge-gateway")
                .cloned();
            refresh.as_ref().is_some_and(|r| {
                let t = trace(&all, &r.trace_id);
                t.values().any(|s| s.service == "fake-idp")
            })
        },
    )
    .await;
    let refresh = refresh.unwrap();
    assert!(
        refresh.parent_span_id.is_empty(),
        "a refresh starts its own trace"
    );
    assert_ne!(refresh.trace_id, CALLER_TRACE);
    assert!(refresh.links.is_empty());

    // Under load, with every trace recorded and debug logging, neither spans nor log lines
    // carry a token or a secret.
    let http = client();
    let calls = (0..300).map(|i| {
        let http = http.clone();
        let url = node.url("/x");
        async move {
            http.get(url)
                .header("authorization", creds(i % 3))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    for status in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200);
    }
    // Every request was recorded: wait until the gateway exported all 300 server spans.
    eventually(
        "the gateway exported the spans of every request",
        Duration::from_secs(15),
        async || {
            flush(&[&idp_traces, &upstream_traces]).await;
            let spans = collector.spans();
            let served = spans
                .iter()
                .filter(|s| s.service == "edge-gateway" && s.kind == SERVER)
                .count();
            served >= 300
        },
    )
    .await;
    let mut secrets: Vec<String> = upstream
        .seen()
        .iter()
        .filter_map(|r| r.bearer().map(str::to_owned))
        .collect();
    assert!(secrets.len() > 300);
    secrets.extend((0..3).map(|i| format!("secret-{i}")));
    secrets.push(FLEET_KEY.to_owned());
    secrets.push(
        crate::redis::creds(0)
            .trim_start_matches("Basic ")
            .to_owned(),
    );
    let log = node.settled_log().await;
    let exported = format!("{:?}", collector.spans());
    for s in &secrets {
        assert!(
            !log.contains(s.as_str()),
            "a token or secret is in the gateway log"
        );
        assert!(
            !exported.contains(s.as_str()),
            "a token or secret is in an exported span"
        );
    }
    assert!(log.lines().count() > 300, "the log was captured under load");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracing_trace_headers_pass_through_and_are_logged() {
    let (idp, upstream) = (FakeIdp::start().await, EchoUpstream::start().await);
    idp.register("client-0", "secret-0");
    let yaml = crate::redis::node_config(&idp, &upstream, "{ memory: {} }", "{ interval: 1s }");
    let node = Node::start(
        &yaml,
        &[("FLEET_KEY", FLEET_KEY), ("OTEL_SDK_DISABLED", "true")],
    );
    let sent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let resp = client()
        .get(node.url("/x"))
        .header("authorization", creds(0))
        .header("traceparent", &sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        upstream.seen().last().unwrap().header("traceparent"),
        Some(sent.as_str())
    );
    let access = node.access_lines(1).await;
    assert_eq!(access[0]["trace_id"], CALLER_TRACE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sampling_decision_is_the_callers_or_the_sample_rate_and_is_passed_on() {
    let collector = Collector::start().await;
    let (idp, upstream) = (FakeIdp::start().await, EchoUpstream::start().await);
    idp.register("client-0", "secret-0");
    let yaml = format!(
        "telemetry: {{ tracing: {{ sampleRate: 0.0, trustCallerSampling: true, otlp: {{ grpc: {{ endpoint: \"{}\" }} }} }} }}\n{}",
        collector.endpoint(),
        crate::redis::node_config(&idp, &upstream, "{ memory: {} }", "{ interval: 1s }")
    );
    let env = [("FLEET_KEY", FLEET_KEY), ("OTEL_BSP_SCHEDULE_DELAY", "100")];
    // Without trustCallerSampling (and no trusted proxy), a caller cannot ask for recording.
    let untrusting = Node::start(&yaml.replace("trustCallerSampling: true, ", ""), &env);
    let resp = client()
        .get(untrusting.url("/x"))
        .header("authorization", creds(0))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let passed = upstream
        .seen()
        .last()
        .unwrap()
        .header("traceparent")
        .unwrap()
        .to_owned();
    assert!(
        passed.starts_with(&format!("00-{CALLER_TRACE}-")) && passed.ends_with("-00"),
        "the caller's trace goes on, unrecorded at rate 0: {passed}"
    );
    drop(untrusting);
    let node = Node::start(&yaml, &env);
    let call = async |traceparent: Option<String>| {
        let mut req = client()
            .get(node.url("/x"))
            .header("authorization", creds(0));
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        assert_eq!(req.send().await.unwrap().status(), 200);
        let seen = upstream.seen();
        seen.last()
            .unwrap()
            .header("traceparent")
            .map(str::to_owned)
            .expect("the upstream always gets a trace context")
    };

    // Rate 0, no caller context: not recorded, and the upstream is told so.
    let fresh = call(None).await;
    assert!(
        fresh.starts_with("00-") && fresh.ends_with("-00"),
        "{fresh}"
    );
    // The caller decided not to record: its trace goes on, unrecorded, under a new parent.
    let unsampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00");
    let passed = call(Some(unsampled)).await;
    assert!(
        passed.starts_with(&format!("00-{CALLER_TRACE}-"))
            && passed.ends_with("-00")
            && !passed.contains(CALLER_SPAN),
        "{passed}"
    );
    // The caller decided to record: the gateway records too, whatever its own rate.
    let sampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let recorded = call(Some(format!("00-{sampled_trace}-b7ad6b7169203331-01"))).await;
    assert!(recorded.ends_with("-01"), "{recorded}");
    eventually(
        "the recorded request is exported",
        Duration::from_secs(10),
        async || {
            collector
                .spans()
                .iter()
                .any(|s| s.trace_id == sampled_trace && s.kind == SERVER)
        },
    )
    .await;
    // The unrecorded requests ended before the recorded one, and spans are exported in the
    // order they end: had any of them been recorded, it would be here already.
    let traces: BTreeSet<String> = collector.spans().into_iter().map(|s| s.trace_id).collect();
    assert_eq!(
        traces,
        BTreeSet::from([sampled_trace.to_owned()]),
        "only the caller-sampled request is recorded"
    );
    // Each proxy worker writes its own lines in batches: across workers, in any order.
    let logged: BTreeSet<String> = node
        .access_lines(3)
        .await
        .iter()
        .map(|v| v["trace_id"].as_str().unwrap().to_owned())
        .collect();
    let fresh = fresh.split('-').nth(1).unwrap();
    assert_eq!(
        logged,
        BTreeSet::from([fresh, CALLER_TRACE, sampled_trace].map(str::to_owned))
    );
}
