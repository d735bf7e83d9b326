//! Sending a routed, authenticated request upstream: to the next fit server, again to the next
//! as `retry` allows, through the route's transport; upgrades; and the answer written when no
//! upstream answers.

use std::sync::Arc;

use http::header::HOST;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument;

use super::router::Route;
use super::{Gateway, caller_body, edge, forward, middleware, pool, transport, upgrade};
use crate::http::response::{self, IntoResponse};
use crate::http::{BoxBody, BoxError, full};
use crate::telemetry::otel;

impl Gateway {
    /// Sends a request to the route's next fit server, and again to the next ones as its
    /// `retry` allows (only with `held`, the whole body, and an idempotent method). Failures
    /// are reported to the pool for passive health. A streamed body reports to `sent` when it
    /// has been sent in full.
    pub(super) async fn send(
        &self,
        route: &Route,
        mut parts: http::request::Parts,
        body: BoxBody,
        held: Option<&bytes::Bytes>,
        sent: Option<&Arc<caller_body::Sent>>,
    ) -> Result<Response<BoxBody>, Response<BoxBody>> {
        // Nothing the caller's connection put in the request goes on to the upstream's. Emptied
        // by replacing, not clearing: an empty map left allocated is hashed into by every
        // lookup the client makes.
        parts.extensions = http::Extensions::new();
        let retry = route
            .retry
            .as_ref()
            .filter(|_| held.is_some() && crate::http::idempotent(&parts.method));
        if let Some((_, budget, _)) = &route.retry {
            budget.request();
        }
        let mut body = Some(body);
        // Sent as it is when it cannot be sent again; copied per attempt when it can.
        let mut parts = Some(parts);
        let mut next = route.pool.pick();
        let mut attempt = 0;
        loop {
            let Some(picked) = next.take() else {
                return Err(no_upstream());
            };
            let this_body = match body.take() {
                Some(first) => first,
                None => full(held.cloned().unwrap_or_default()),
            };
            let outcome = self
                .forward(
                    route,
                    route.clients.pooled(),
                    &picked,
                    match (&retry, &parts) {
                        (Some(_), Some(p)) => p.clone_for_retry(),
                        _ => parts.take().expect("sent once when it cannot be retried"),
                    },
                    this_body,
                    sent,
                )
                .await;
            let retryable = match &outcome {
                Ok(resp) if resp.status().is_server_error() => {
                    picked.failed();
                    retry.is_some_and(|(p, _, _)| p.retries_status(resp.status()))
                }
                Ok(_) => false,
                Err(e) => {
                    if e.counts_against_server() {
                        picked.failed();
                    }
                    retry.is_some_and(|(p, _, _)| p.on_network_error && e.retryable())
                }
            };
            let outcome = outcome.map_err(ForwardError::into_response);
            let Some((policy, budget, retries)) = retry else {
                return outcome;
            };
            if !retryable || attempt >= policy.attempts {
                return outcome;
            }
            // Only within the budget, and onto a fit server; otherwise this answer stands.
            if !budget.take() {
                return outcome;
            }
            next = picked.again();
            if next.is_none() {
                return outcome;
            }
            attempt += 1;
            retries.inc();
            tracing::debug!(route = %route.name, attempt, "retrying on the next upstream server");
            // The failed answer (and its connection) goes before the wait.
            drop(outcome);
            tokio::time::sleep(policy.backoff(attempt)).await;
        }
    }

    /// Passes an accepted upgrade request on over HTTP/1.1; on the upstream's 101, joins the
    /// two connections.
    pub(super) async fn upgrade(
        &self,
        route: &Route,
        mut parts: http::request::Parts,
        body: Incoming,
        protocols: http::HeaderValue,
    ) -> Response<BoxBody> {
        let Some(caller_side) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return edge::Refusal::Upgrade.into_response();
        };
        // A place among the tunnels first: past the bound, the upstream never sees the request.
        let slot = parts.extensions.remove::<crate::http::ConnectionSlot>();
        let Some(held) = self.tunnels.admit(slot) else {
            tracing::info!(route = %route.name, "upgrade refused: transport.upgrades.maxConnections reached");
            return response::with_retry_after(
                response::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "too many upgraded connections are open; retry later",
                ),
                1,
            );
        };
        upgrade::restore(&mut parts.headers, protocols);
        let body = body.map_err(BoxError::from).boxed_unsync();
        let Some(picked) = route.pool.pick() else {
            return no_upstream();
        };
        let mut resp = match self
            .forward(route, &route.clients.http1, &picked, parts, body, None)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                if e.counts_against_server() {
                    picked.failed();
                }
                return e.into_response();
            }
        };
        drop(picked);
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return answer(route, resp);
        }
        let Some(agreed) = resp.headers().get(http::header::UPGRADE).cloned() else {
            tracing::warn!(route = %route.name, "upstream switched protocols without naming one");
            return response::error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the upstream service sent an invalid response",
            );
        };
        let upstream_side = hyper::upgrade::on(&mut resp);
        self.tunnels
            .join(caller_side, upstream_side, Arc::clone(&route.name), held);
        let mut resp = answer(route, resp);
        upgrade::restore(resp.headers_mut(), agreed);
        resp
    }

    pub(super) async fn forward(
        &self,
        route: &Route,
        client: &transport::UpstreamClient,
        server: &pool::Picked<'_>,
        mut parts: http::request::Parts,
        body: BoxBody,
        sent: Option<&Arc<caller_body::Sent>>,
    ) -> Result<Response<BoxBody>, ForwardError> {
        let upstream = server.url();
        parts.uri = server
            .base()
            .and_then(|base| forward::target(base, &parts.uri).ok())
            .ok_or(ForwardError::Target)?;
        if !route.pass_host_header
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = http::HeaderValue::try_from(authority.as_str())
        {
            parts.headers.insert(HOST, host);
        }
        parts.version = http::Version::HTTP_11;
        let span = otel::child_span!(
            "upstream",
            otel.name = %parts.method,
            otel.kind = "client",
            tokengate.peer = "upstream",
            http.request.method = %parts.method,
            server.address = upstream.host_str().unwrap_or_default(),
            server.port = upstream.port_or_known_default(),
            url.path = parts.uri.path(),
            http.response.status_code = tracing::field::Empty,
        );
        // No future here is kept in a variable before it is awaited: a variable keeps its room
        // in this future after it is moved, and each room is copied when this future moves.
        async {
            otel::inject(&mut parts.headers);
            let request = Request::from_parts(parts, body);
            // The response header timeout runs from when the request has been sent in full.
            let resp = match route.response_header_timeout {
                Some(limit) => tokio::select! {
                    resp = client.request(request, sent) => resp.map_err(ForwardError::from_transport),
                    () = async {
                        if let Some(s) = sent {
                            s.wait().await;
                        }
                        tokio::time::sleep(limit).await;
                    } => Err(ForwardError::Timeout),
                },
                None => client
                    .request(request, sent)
                    .await
                    .map_err(ForwardError::from_transport),
            };
            if let Ok(r) = &resp {
                tracing::Span::current().record("http.response.status_code", r.status().as_u16());
            }
            resp
        }
        .instrument(span)
        .await
        .inspect_err(|error| match error {
            ForwardError::Transport(e) => {
                tracing::warn!(route = %route.name, upstream = %upstream, error = %error_chain(e.as_ref()), "upstream request failed");
            }
            ForwardError::Timeout => {
                tracing::warn!(route = %route.name, upstream = %upstream, "upstream sent no answer within responseHeaderTimeout");
            }
            ForwardError::Caller(e) => {
                tracing::info!(route = %route.name, upstream = %upstream, error = %error_chain(e.as_ref()), "the caller's request body failed");
            }
            ForwardError::Target => {}
        })
    }
}

/// Why a request did not get an answer from an upstream server.
#[derive(Debug)]
pub(super) enum ForwardError {
    /// The target could not be composed from the server's URL and the request's path.
    Target,
    /// No answer's head within `responseHeaderTimeout`.
    Timeout,
    /// Connecting, TLS, or the exchange failed before an answer.
    Transport(BoxError),
    /// The caller's body failed (slow, aborted, gone): not the server's doing.
    Caller(BoxError),
}

impl ForwardError {
    pub(super) fn from_transport(e: BoxError) -> Self {
        if caller_body::CallerBodyFailed::caused(e.as_ref()) {
            Self::Caller(e)
        } else {
            Self::Transport(e)
        }
    }

    /// Whether sending the request again (to another server) may help.
    pub(super) fn retryable(&self) -> bool {
        matches!(self, Self::Transport(_))
    }

    /// Whether the server is to blame (passive health), rather than the request.
    pub(super) fn counts_against_server(&self) -> bool {
        matches!(self, Self::Timeout | Self::Transport(_))
    }

    fn into_response(self) -> Response<BoxBody> {
        match self {
            Self::Target => response::error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "request target is invalid",
            ),
            Self::Timeout => response::error(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                "the upstream did not answer in time",
            ),
            Self::Transport(_) => response::error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the upstream service is unreachable",
            ),
            Self::Caller(_) => response::error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "request body could not be read",
            ),
        }
    }
}

/// 503: every server of the route is down or ejected.
pub(super) fn no_upstream() -> Response<BoxBody> {
    response::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_upstream",
        "no upstream server of this route is available",
    )
}

/// The upstream's answer as the caller gets it: hop-by-hop fields removed, the route's
/// response header rules applied.
pub(super) fn answer(route: &Route, resp: Response<BoxBody>) -> Response<BoxBody> {
    let (mut parts, body) = resp.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers);
    for m in &route.shaping {
        if let middleware::HttpMiddleware::Headers(h) = &**m {
            h.response.apply(&mut parts.headers);
        }
    }
    Response::from_parts(parts, body)
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

pub(super) trait CloneForRetry {
    fn clone_for_retry(&self) -> Self;
}

impl CloneForRetry for http::request::Parts {
    /// `Parts` is not `Clone` (extensions are not); a forwarded request needs none of them.
    fn clone_for_retry(&self) -> Self {
        let mut b = Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone())
            .version(self.version);
        if let Some(h) = b.headers_mut() {
            *h = self.headers.clone();
        }
        b.body(()).expect("parts of a valid request").into_parts().0
    }
}
