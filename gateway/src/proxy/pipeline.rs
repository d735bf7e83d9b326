//! Serving one request: the edge's checks, routing, CORS preflights, the middleware chain and
//! rate limits, then sending it (`send`), and replaying it once with a fresh token after an
//! upstream 401.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{CONTENT_LENGTH, HOST};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use tracing::Instrument;

use super::router::Route;
use super::rule::RequestView;
use super::send::{CloneForRetry, answer};
use super::{
    Gateway, REPLAY_LIMIT, caller_body, cors, edge, forward, middleware, ratelimit, upgrade,
};
use crate::auth::{Applied, Caller, Middleware, UsedToken};
use crate::http::response::{self, IntoResponse};
use crate::http::{BoxBody, full};
use crate::issuer::Issuer;
use crate::telemetry::{AccessLog, otel};

impl Gateway {
    /// Serves one request end to end, writing one access log line.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        remote: SocketAddr,
    ) -> Response<BoxBody> {
        let started = Instant::now();
        let peer = remote.ip();
        let trusted_peer = self.forwarded.trusts(peer);
        let caller = Caller {
            address: self.forwarded.caller(req.headers(), peer),
        };
        let mut log = AccessLog::new(&req, SocketAddr::new(caller.address, remote.port()));
        if let Some(session) = req.extensions().get::<Arc<crate::http::tls::TlsSession>>() {
            log.tls_client = session
                .client_certificate
                .as_ref()
                .map(|c| Arc::clone(&c.subject));
            // RFC 9110 §15.5.20: a request for another name than the handshake's (HTTP/2
            // connection reuse, or a caller choosing its certificate by one name and its route
            // by another) is misdirected.
            if self.sni_strict
                && let Some(name) = &session.server_name
                && request_host(&req).is_some_and(|host| host != **name)
            {
                let resp = response::error(
                    StatusCode::MISDIRECTED_REQUEST,
                    "misdirected_request",
                    "this connection was opened for another host; open one for this host",
                );
                log.finish(resp.status(), started.elapsed());
                return resp;
            }
        }
        // The log names the trace: the caller's when tracing is off; the span's when the
        // request is recorded (read at the end, once the span has its route in its name).
        let mut trace_id = None;
        let trust_sampling = trusted_peer || self.trust_caller_sampling;
        let span = match otel::Incoming::decide(req.headers(), trust_sampling) {
            otel::Incoming::Off => {
                trace_id = otel::caller_trace_id(req.headers());
                tracing::Span::none()
            }
            otel::Incoming::Unrecorded {
                trace_id: id,
                traceparent,
            } => {
                trace_id = Some(id.to_string());
                req.headers_mut().insert(otel::TRACEPARENT, traceparent);
                tracing::Span::none()
            }
            recorded => {
                let span = tracing::info_span!(
                    "request",
                    otel.name = %req.method(),
                    otel.kind = "server",
                    http.request.method = %req.method(),
                    url.path = req.uri().path(),
                    http.route = tracing::field::Empty,
                    http.response.status_code = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                );
                recorded.apply_to(&span);
                span
            }
        };
        let resp = {
            // Pinned where it is built: the timeout and the span wrap a pointer to it, so the
            // route's future (most of this one) is not copied into each wrapper in turn.
            let route = std::pin::pin!(self.route(req, peer, caller, &mut log));
            match tokio::time::timeout(self.request_timeout, route.instrument(span.clone())).await {
                Ok(resp) => resp,
                Err(_) => response::error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "gateway_timeout",
                    "the upstream did not answer in time",
                ),
            }
        };
        span.record("http.response.status_code", resp.status().as_u16());
        if resp.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        log.trace_id = trace_id.or_else(|| otel::span_trace_id(&span));
        log.finish(resp.status(), started.elapsed());
        resp
    }

    async fn route(
        &self,
        mut req: Request<Incoming>,
        peer: IpAddr,
        caller: Caller,
        log: &mut AccessLog,
    ) -> Response<BoxBody> {
        let encoded = match edge::check(&mut req, &self.paths) {
            Ok(encoded) => encoded,
            Err(refusal) => return refusal.into_response(),
        };
        if let Some(issuer) = &self.issuer
            && Issuer::serves(req.uri().path())
        {
            log.route = Some("issuer".into());
            name_request(&req, req.uri().path());
            // Boxed: the issuer's future is large, and a proxied request should not carry
            // (and copy) room for it.
            return Box::pin(issuer.handle(req, caller.address)).await;
        }
        let host = request_host(&req);
        let found = self.router.find(&RequestView {
            method: req.method(),
            host: host.as_deref(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            peer,
        });
        let Some(route) = found else {
            return response::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no route matches this request",
            );
        };
        log.route = Some(Arc::clone(&route.name));
        name_request(&req, route.template());
        if let Some(refused) = encoded.first_refused(route.encoded_characters()) {
            return edge::Refusal::EncodedCharacter(refused).into_response();
        }
        let mut origin = None;
        if let Some(cors) = &route.cors {
            // Preflights come without credentials: answered here, before authentication.
            if cors::Cors::is_preflight(req.method(), req.headers()) {
                return cors.preflight(req.headers());
            }
            origin = req.headers().get(http::header::ORIGIN).cloned();
        }
        // Awaited at one place only: each place would take room of its own in this future.
        let mut resp = self.proxy_to(route, req, peer, caller, log).await;
        if let Some(cors) = &route.cors {
            cors.decorate(origin.as_ref(), resp.headers_mut());
        }
        resp
    }

    /// Authenticates, shapes and forwards a request `route` took.
    async fn proxy_to(
        &self,
        route: &Route,
        req: Request<Incoming>,
        peer: IpAddr,
        caller: Caller,
        log: &mut AccessLog,
    ) -> Response<BoxBody> {
        let secure = req
            .extensions()
            .get::<Arc<crate::http::tls::TlsSession>>()
            .is_some();
        let upgrade = match upgrade::requested(req.headers(), req.version()) {
            upgrade::Requested::None => None,
            upgrade::Requested::To(protocols) => Some(protocols),
            upgrade::Requested::Refused => {
                return edge::Refusal::Upgrade.into_response();
            }
        };
        let (mut parts, body) = req.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        let original_host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| http::HeaderValue::try_from(a.as_str()).ok())
        });
        self.forwarded.apply(
            &mut parts.headers,
            peer,
            caller.address,
            original_host.as_ref(),
            secure,
        );
        if let Some(h) = &original_host {
            parts.headers.insert(HOST, h.clone());
        }

        // A small body can be held, so that the request can be sent again: once after an
        // upstream 401 to a token of ours (an idempotent request, or any if the middleware says
        // so), or by the route's `retry` if it is idempotent. A larger body is streamed, and a
        // streamed request is never sent twice.
        let small_body = body.is_end_stream()
            || parts
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .is_some_and(|n| n <= REPLAY_LIMIT);
        let may_replay = route.replays_after_401(&parts.method) && small_body;
        let may_retry =
            route.retry.is_some() && crate::http::idempotent(&parts.method) && small_body;
        // The caller's own request, for the second run of the middlewares.
        let original = may_replay.then(|| parts.clone_for_retry());
        // The middlewares first: nothing of the body is read for a caller they refuse.
        let used = match self.apply_chain(route, &mut parts, &caller, log).await {
            Ok(used) => used,
            Err(resp) => return resp,
        };
        if let Some(protocols) = upgrade {
            return Box::pin(self.upgrade(route, parts, body, protocols)).await;
        }
        let replayable = may_replay && !used.is_empty();
        let mut sent = None;
        let (body, held) = if replayable || may_retry {
            match Limited::new(body, REPLAY_LIMIT as usize).collect().await {
                Ok(collected) => {
                    let bytes = collected.to_bytes();
                    (full(bytes.clone()), Some(bytes))
                }
                Err(_) => {
                    return response::error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "request body could not be read",
                    );
                }
            }
        } else {
            // Streamed: the response header timeout waits until the caller has sent it all, and
            // the upstream connection is kept only once it has.
            sent = (!body.is_end_stream()).then(|| Arc::new(caller_body::Sent::default()));
            (
                caller_body::CallerBody::new(body, sent.clone()).boxed_unsync(),
                None,
            )
        };

        let resp = match self
            .send(route, parts, body, held.as_ref(), sent.as_ref())
            .await
        {
            Ok(resp) => resp,
            Err(resp) => return resp,
        };
        if resp.status() != StatusCode::UNAUTHORIZED || used.is_empty() {
            return answer(route, resp);
        }
        // The upstream rejected the token: evict exactly that token fleet-wide, unless every
        // token used is too young to be the culprit (then the upstream refuses for its own
        // reasons, and a new token would not help). A request that may be sent again is, once,
        // with a fresh one; another gets the 401, and its caller's next request the new token.
        let mut evicted = false;
        for (m, token) in &used {
            // Boxed: a store's round trip, on a path most requests never take.
            evicted |= Box::pin(m.reject_token(token)).await;
        }
        let (Some(bytes), Some(mut parts), true) = (held.filter(|_| replayable), original, evicted)
        else {
            return answer(route, resp);
        };
        tracing::info!(route = %route.name, "upstream rejected the token; evicted and retrying once with a fresh one");
        // Boxed: the second run is rare, and would otherwise take room in every request.
        Box::pin(async move {
            if let Err(resp) = self.apply_chain(route, &mut parts, &caller, log).await {
                return resp;
            }
            match self
                .send(route, parts, full(bytes.clone()), Some(&bytes), None)
                .await
            {
                Ok(resp) => answer(route, resp),
                Err(resp) => resp,
            }
        })
        .await
    }
}

impl Gateway {
    /// Runs the route's authentication middlewares in order, then its traffic middlewares;
    /// the tokens attached, or the refusal.
    async fn apply_chain<'r>(
        &self,
        route: &'r Route,
        parts: &mut http::request::Parts,
        caller: &Caller,
        log: &mut AccessLog,
    ) -> Result<Vec<(&'r Arc<Middleware>, UsedToken)>, Response<BoxBody>> {
        let (used, client) = authenticate(route, parts, caller, log).await?;
        if !route.rate_limits.is_empty() {
            let host = host_of(&parts.headers, &parts.uri);
            let subject = ratelimit::Subject {
                client: client.as_deref(),
                address: caller.address,
                headers: &parts.headers,
                host: host.as_deref(),
            };
            for limit in &route.rate_limits {
                // Boxed: a store's round trip is a large future, awaited only with a limit.
                Box::pin(limit.check(&subject)).await?;
            }
        }
        for m in &route.shaping {
            match &**m {
                middleware::HttpMiddleware::Path(rewrite) => {
                    rewrite
                        .apply(&mut parts.uri, &mut parts.headers, &self.paths)
                        .map_err(|e| edge::Refusal::Path(e).into_response())?;
                }
                middleware::HttpMiddleware::Headers(h) => h.request.apply(&mut parts.headers),
                middleware::HttpMiddleware::Retry(_) | middleware::HttpMiddleware::RateLimit(_) => {
                }
            }
        }
        Ok(used)
    }
}

/// The tokens the authentication middlewares attached, and the client identity they
/// established.
type Authenticated<'r> = (Vec<(&'r Arc<Middleware>, UsedToken)>, Option<String>);

/// Runs the route's authentication middlewares in order; the tokens they attached and the
/// client they established (the last that named one), or the refusal.
async fn authenticate<'r>(
    route: &'r Route,
    parts: &mut http::request::Parts,
    caller: &Caller,
    log: &mut AccessLog,
) -> Result<Authenticated<'r>, Response<BoxBody>> {
    let mut used = Vec::new();
    let mut client = None;
    for m in &route.middlewares {
        let span = otel::child_span!(
            "middleware",
            otel.name = %format_args!("middleware {}", m.name()),
            tokengate.middleware = m.name(),
            tokengate.middleware.kind = m.kind(),
        );
        match m.apply(parts, caller).instrument(span).await {
            Ok(Applied {
                username,
                token,
                client: named,
            }) => {
                if username.is_some() {
                    log.user = username;
                }
                used.extend(token.map(|t| (m, t)));
                client = named.or(client);
            }
            Err(e) => return Err(e.into_response()),
        }
    }
    Ok((used, client))
}

/// Names the request span `METHOD route` (OpenTelemetry's `{method} {http.route}`).
fn name_request<B>(req: &Request<B>, route: &str) {
    let span = tracing::Span::current();
    if !span.is_disabled() {
        span.record("otel.name", format!("{} {route}", req.method()));
        span.record("http.route", route);
    }
}

/// The request's host, lower-case and without port.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    host_of(req.headers(), req.uri())
}

/// The host of a request with these headers and target, lower-case and without port.
fn host_of(headers: &http::HeaderMap, uri: &http::Uri) -> Option<String> {
    let raw = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.host())?;
    // `[::1]:8080` keeps its brackets; `name:8080` loses the port.
    let host = match raw.find(']') {
        Some(end) => &raw[..=end],
        None => raw.split(':').next().unwrap_or(raw),
    };
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every request's future is allocated, and copied as it is built up, at its whole size:
    /// a rare path awaited inline (a store's round trip, a key fetch, the general client) would
    /// add its room to every request. Those are boxed; this keeps it so.
    #[test]
    fn a_requests_future_stays_small() {
        fn size_of_future<F: Future>(
            _: fn(Arc<Gateway>, Request<Incoming>, SocketAddr) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        let size = size_of_future(Gateway::handle);
        assert!(size <= 7 * 1024, "a request's future takes {size} bytes");
    }
}
