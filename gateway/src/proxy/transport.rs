//! `serversTransports`: how the gateway connects to upstreams (Traefik's `ServersTransport`).
//!
//! Every route's upstreams are reached through one transport: its own (`upstream.serversTransport`
//! names it) or the default one. A transport is a pooled keep-alive client that speaks plain
//! HTTP to `http://` upstreams and TLS to `https://` ones: verified against the system's roots
//! plus `rootCAs`, with SNI and the verified name taken from the upstream URL's host unless
//! `serverName` says otherwise, presenting a client certificate when one is configured (mutual
//! TLS), and offering HTTP/2 by ALPN (used where the upstream accepts it, HTTP/1.1 otherwise)
//! unless `disableHTTP2`. A proxy worker reaches `http://` upstreams on connections of its
//! own ([`super::connections`]).

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{CertificateDer, ServerName};

use http::{Request, Response};
use http_body_util::BodyExt;

use super::connections::Http1Connections;
use crate::http::{BoxBody, BoxError};
use crate::outbound::tls::{ClientIdentity, rustls_client};

/// Idle upstream connections are kept this long for reuse.
pub const DEFAULT_IDLE_CONN_TIMEOUT: Duration = Duration::from_secs(90);
/// Connecting to an upstream on a healthy network takes milliseconds; fail fast otherwise.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// `forwardingTimeouts` (Traefik's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardingTimeouts {
    /// Connecting (TCP and TLS handshake).
    pub dial: Duration,
    /// From the request sent to the answer's head; `None`: only the route's request timeout.
    pub response_header: Option<Duration>,
    /// How long an idle pooled connection is kept.
    pub idle_conn: Duration,
}

impl Default for ForwardingTimeouts {
    fn default() -> Self {
        Self {
            dial: DEFAULT_DIAL_TIMEOUT,
            response_header: None,
            idle_conn: DEFAULT_IDLE_CONN_TIMEOUT,
        }
    }
}

/// One `serversTransports` entry, validated (files read and parsed at load).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServersTransport {
    /// SNI and the name the upstream's certificate must carry; `None`: the upstream URL's host.
    pub server_name: Option<ServerName<'static>>,
    /// CA certificates trusted in addition to the system's.
    pub root_cas: Vec<CertificateDer<'static>>,
    /// Client certificate presented to upstreams that ask for one.
    pub client_certificate: Option<ClientIdentity>,
    /// Accept any upstream certificate. For tests only: refused unless
    /// `allowInsecureSkipVerify` is set.
    pub insecure_skip_verify: bool,
    /// Speak HTTP/1.1 only, even to upstreams that offer HTTP/2.
    pub disable_http2: bool,
    /// Timeouts of connections and requests.
    pub timeouts: ForwardingTimeouts,
}

/// The general pooled client towards upstreams: TLS, HTTP/2 by ALPN, upgrades.
pub type GeneralClient = Client<HttpsConnector<HttpConnector>, BoxBody>;

/// A client towards upstreams: a proxy worker's reaches `http://` servers on connections of
/// its own ([`Http1Connections`]); the rest goes through the general client.
#[derive(Clone)]
pub struct UpstreamClient {
    general: GeneralClient,
    plain: Option<Arc<Http1Connections>>,
}

impl UpstreamClient {
    /// Sends `req` (an absolute URI) and gives the answer's head. `sent` follows a streamed
    /// body (hyper's own pool keeps a connection only once it is ready for another request).
    pub async fn request(
        &self,
        req: Request<BoxBody>,
        sent: Option<&Arc<super::caller_body::Sent>>,
    ) -> Result<Response<BoxBody>, BoxError> {
        if let Some(plain) = &self.plain
            && req.uri().scheme() == Some(&http::uri::Scheme::HTTP)
        {
            return plain.send(req, sent).await;
        }
        // Boxed: the general client's future is large, and most requests do not take it.
        let resp = Box::pin(self.general.request(req)).await?;
        Ok(resp.map(|body| body.map_err(BoxError::from).boxed_unsync()))
    }
}

/// A transport's clients: the pooled ones for requests, and an HTTP/1.1-only one for upgrades
/// (a `Connection: Upgrade` request exists only in HTTP/1.1).
#[derive(Clone)]
pub struct UpstreamClients {
    /// Requests: a pool per proxy worker (see [`crate::http::workers`]), so that a worker's
    /// requests go out on connections its own event loop drives; one without workers.
    pooled: Arc<[UpstreamClient]>,
    /// Upgrade requests (WebSocket and others).
    pub http1: UpstreamClient,
}

impl UpstreamClients {
    /// The pool of the calling proxy worker (the first elsewhere: health checks).
    pub fn pooled(&self) -> &UpstreamClient {
        let i = crate::http::worker().unwrap_or(0);
        &self.pooled[i % self.pooled.len()]
    }
}

impl ServersTransport {
    /// Builds the transport's clients. Fails only on material the TLS library refuses.
    pub fn clients(&self) -> Result<UpstreamClients, rustls::Error> {
        let pools = crate::http::workers().max(1);
        Ok(UpstreamClients {
            pooled: (0..pools)
                .map(|_| {
                    Ok::<_, rustls::Error>(UpstreamClient {
                        general: self.client(!self.disable_http2)?,
                        plain: Some(Arc::new(Http1Connections::new(
                            self.timeouts.dial,
                            self.timeouts.idle_conn,
                        ))),
                    })
                })
                .collect::<Result<_, _>>()?,
            // The general client alone carries upgrades: it hands the connection over on 101.
            http1: UpstreamClient {
                general: self.client(false)?,
                plain: None,
            },
        })
    }

    fn client(&self, http2: bool) -> Result<GeneralClient, rustls::Error> {
        let tls = rustls_client(
            &self.root_cas,
            self.client_certificate.as_ref(),
            self.insecure_skip_verify,
        )?;
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(self.timeouts.dial));
        tcp.enforce_http(false);
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let builder = match &self.server_name {
            Some(name) => {
                builder.with_server_name_resolver(FixedServerNameResolver::new(name.clone()))
            }
            None => builder,
        };
        let connector = if http2 {
            builder.enable_all_versions().wrap_connector(tcp)
        } else {
            builder.enable_http1().wrap_connector(tcp)
        };
        Ok(Client::builder(TokioExecutor::new())
            .pool_idle_timeout(self.timeouts.idle_conn)
            .build(connector))
    }
}

/// The transports by name, with the default one for routes that name none.
pub struct Transports {
    default: (Arc<ServersTransport>, UpstreamClients),
    named: std::collections::BTreeMap<String, (Arc<ServersTransport>, UpstreamClients)>,
}

impl Transports {
    /// Builds every transport once; routes naming the same one share its pool.
    pub fn new(
        configured: &std::collections::BTreeMap<String, Arc<ServersTransport>>,
    ) -> Result<Self, rustls::Error> {
        let default = Arc::new(ServersTransport::default());
        Ok(Self {
            default: (Arc::clone(&default), default.clients()?),
            named: configured
                .iter()
                .map(|(name, t)| Ok((name.clone(), (Arc::clone(t), t.clients()?))))
                .collect::<Result<_, rustls::Error>>()?,
        })
    }

    /// The transport named `name` (validated to exist), or the default one, with `timeouts`
    /// overriding its own when given: its clients (shared with every route that uses it as it
    /// is) and the response-header timeout.
    pub fn get(
        &self,
        name: Option<&str>,
        timeouts: Option<ForwardingTimeouts>,
    ) -> Result<(UpstreamClients, Option<Duration>), rustls::Error> {
        let (transport, clients) = name
            .and_then(|n| self.named.get(n))
            .unwrap_or(&self.default);
        match timeouts {
            Some(t) if t != transport.timeouts => {
                let own = ServersTransport {
                    timeouts: t,
                    ..(**transport).clone()
                };
                Ok((own.clients()?, t.response_header))
            }
            _ => Ok((clients.clone(), transport.timeouts.response_header)),
        }
    }
}
