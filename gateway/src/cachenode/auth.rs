//! Who may call a cache node, and for what.
//!
//! Three roles, each authenticated on every call:
//!
//! - **peer**: the Raft RPCs (`AppendEntries`, `Vote`, `InstallSnapshot`), i.e. other cache
//!   nodes. Nothing else may touch the log.
//! - **gateway**: the `TokenCache` calls gateway nodes make (entries, leases, the change stream).
//! - **operator**: `Admin`, and the listing and steering calls `cachectl` makes (`List`,
//!   `MarkDue`, and the reads and evictions it shares with gateways).
//!
//! A caller proves a role by its client certificate under mutual TLS (a SAN or subject CN
//! matching the role's `--<role>-identity` pattern), or by the role's secret in
//! `authorization: Bearer <secret>` metadata, compared in constant time. No credential, or a
//! wrong one, is `UNAUTHENTICATED`; the right credential for the wrong role is
//! `PERMISSION_DENIED`. The table [`allowed`] names the roles of every RPC, and a call whose path
//! is not in it is refused: an RPC added to a `.proto` file is closed until it is listed.
//!
//! A node with no credential configured at all serves everyone, and refuses to start on a
//! non-loopback address unless told `--insecure-no-auth`.

use std::future::Ready;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;

use prometheus::IntCounterVec;
use subtle::ConstantTimeEq;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::secret::Secret;

/// A caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Another cache node.
    Peer,
    /// A gateway node.
    Gateway,
    /// An operator (cachectl, or a node asking to join).
    Operator,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 3] = [Role::Peer, Role::Gateway, Role::Operator];

    /// Its name in flags, metrics and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Gateway => "gateway",
            Self::Operator => "operator",
        }
    }
}

const PEER: &[Role] = &[Role::Peer];
const GATEWAY: &[Role] = &[Role::Gateway];
const OPERATOR: &[Role] = &[Role::Operator];
const GATEWAY_OR_OPERATOR: &[Role] = &[Role::Gateway, Role::Operator];

/// The one call anyone may make: the standard gRPC health check, which says `SERVING` or
/// `NOT_SERVING` and nothing else, for probes that carry no credential (a kubelet's `grpc`
/// probe). Its streaming sibling `Watch` is not offered: a stream held open costs the node.
pub const PUBLIC: &str = "/grpc.health.v1.Health/Check";

/// The roles that may make the call at `path` (`/<package>.<Service>/<Method>`); `None`: nobody.
pub fn allowed(path: &str) -> Option<&'static [Role]> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    Some(match (service, method) {
        ("tokengate.raft.v1.RaftTransport", "AppendEntries" | "Vote" | "InstallSnapshot") => PEER,
        ("tokengate.admin.v1.Admin", _) => OPERATOR,
        ("tokengate.cache.v1.TokenCache", m) => match m {
            // What cachectl alone does: list every entry, mark one due.
            "List" | "MarkDue" => OPERATOR,
            // Read, evict, follow changes, see the refresh lease: both.
            "Get" | "Delete" | "Watch" | "RefreshLease" => GATEWAY_OR_OPERATOR,
            "Lookup" | "Put" | "AcquireLease" | "ReleaseLease" | "TryFillLease"
            | "ReleaseFillLease" | "DueForRefresh" | "Touch" | "ClaimOnce" | "Postpone"
            | "TakeRate" => GATEWAY,
            _ => return None,
        },
        _ => return None,
    })
}

/// A certificate identity pattern: exact, or `*` standing for any run of characters
/// (`*.gateways.tokengate.svc`, `spiffe://prod/ns/tokengate/sa/*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPattern(String);

impl IdentityPattern {
    /// A pattern; empty is refused.
    pub fn new(pattern: &str) -> Option<Self> {
        (!pattern.is_empty()).then(|| Self(pattern.to_owned()))
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or_default();
        let Some(mut rest) = name.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for p in middle {
            match rest.find(p) {
                Some(i) => rest = &rest[i + p.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }
}

/// How one role proves itself.
#[derive(Debug, Clone, Default)]
pub struct RoleCredential {
    /// Its bearer secret.
    pub secret: Option<Secret>,
    /// Client-certificate identities (SAN DNS or URI, or subject CN) that hold it.
    pub identities: Vec<IdentityPattern>,
}

impl RoleCredential {
    fn is_set(&self) -> bool {
        self.secret.is_some() || !self.identities.is_empty()
    }
}

/// The credentials a node accepts, per role.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Peers.
    pub peer: RoleCredential,
    /// Gateways.
    pub gateway: RoleCredential,
    /// Operators.
    pub operator: RoleCredential,
}

/// Why a node's credentials cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// Some roles have credentials, this one has none: nobody could act in it.
    #[error("--{0}-token or --{0}-identity is required once any role has a credential")]
    MissingRole(&'static str),
    /// Two roles share a secret: a holder of one would hold both.
    #[error("the {0} and {1} secrets must differ")]
    SharedSecret(&'static str, &'static str),
    /// No credential at all, on an address others can reach.
    #[error(
        "{0} is not a loopback address and no role has a credential: set --peer-token, --gateway-token and --admin-token (or --*-identity with mutual TLS), or pass --insecure-no-auth"
    )]
    Unauthenticated(SocketAddr),
}

impl Credentials {
    fn of(&self, role: Role) -> &RoleCredential {
        match role {
            Role::Peer => &self.peer,
            Role::Gateway => &self.gateway,
            Role::Operator => &self.operator,
        }
    }

    /// Whether any role is proven by a bearer token (which then crosses the network with every
    /// call).
    pub fn has_tokens(&self) -> bool {
        Role::ALL.iter().any(|r| self.of(*r).secret.is_some())
    }

    /// Whether any role has a credential (authentication is on).
    pub fn enabled(&self) -> bool {
        Role::ALL.iter().any(|r| self.of(*r).is_set())
    }

    /// Checks the set for a node listening on `listen`: all roles or none, distinct secrets,
    /// and none only on loopback or when `insecure` says so.
    pub fn check(&self, listen: SocketAddr, insecure: bool) -> Result<(), CredentialsError> {
        if !self.enabled() {
            return match listen.ip().is_loopback() || insecure {
                true => Ok(()),
                false => Err(CredentialsError::Unauthenticated(listen)),
            };
        }
        for role in Role::ALL {
            if !self.of(role).is_set() {
                return Err(CredentialsError::MissingRole(role.name()));
            }
        }
        for (i, a) in Role::ALL.iter().enumerate() {
            for b in &Role::ALL[i + 1..] {
                if let (Some(x), Some(y)) = (&self.of(*a).secret, &self.of(*b).secret)
                    && bool::from(x.expose().as_bytes().ct_eq(y.expose().as_bytes()))
                {
                    return Err(CredentialsError::SharedSecret(a.name(), b.name()));
                }
            }
        }
        Ok(())
    }

    /// The roles a request proves: those its client certificate's identities hold, and the one
    /// its bearer secret is.
    pub fn roles_of<B>(&self, req: &http::Request<B>) -> Vec<Role> {
        let mut roles: Vec<Role> = match peer_identities(req) {
            Some(names) => Role::ALL
                .into_iter()
                .filter(|r| {
                    self.of(*r)
                        .identities
                        .iter()
                        .any(|p| names.iter().any(|n| p.matches(n)))
                })
                .collect(),
            None => Vec::new(),
        };
        let presented = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(presented) = presented else {
            return roles;
        };
        // Every role's secret is compared, so the time taken does not say which one matched.
        for role in Role::ALL {
            if let Some(s) = &self.of(role).secret
                && bool::from(s.expose().as_bytes().ct_eq(presented.as_bytes()))
                && !roles.contains(&role)
            {
                roles.push(role);
            }
        }
        roles
    }
}

/// The names a client certificate carries: SAN DNS names and URIs, and the subject CN.
fn peer_identities<B>(req: &http::Request<B>) -> Option<Vec<String>> {
    let certs = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    let der = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(n)
                | x509_parser::extensions::GeneralName::URI(n) => names.push((*n).to_owned()),
                _ => {}
            }
        }
    }
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        names.push(cn.to_owned());
    }
    Some(names)
}

/// Refusals, by outcome and the role the call needed (`tokengate_cache_auth_refused_total` on
/// the node's metrics listener).
pub fn refusals() -> &'static IntCounterVec {
    static REFUSED: std::sync::LazyLock<IntCounterVec> = std::sync::LazyLock::new(|| {
        IntCounterVec::new(
            prometheus::Opts::new(
                "auth_refused_total",
                "Calls refused: unauthenticated (no or a wrong credential) or permission_denied (another role's), by the role the call needed",
            ),
            &["outcome", "role"],
        )
        .expect("valid metric")
    });
    &REFUSED
}

/// The tower layer that authenticates and authorises every call before it reaches a service.
#[derive(Clone)]
pub struct AuthLayer {
    credentials: Option<Arc<Credentials>>,
}

impl AuthLayer {
    /// Checks calls against `credentials`; with none enabled, lets everything through.
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials: credentials.enabled().then(|| Arc::new(credentials)),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authorised<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorised {
            inner,
            credentials: self.credentials.clone(),
        }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Clone)]
pub struct Authorised<S> {
    inner: S,
    credentials: Option<Arc<Credentials>>,
}

impl<S, B> tower::Service<http::Request<B>> for Authorised<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    /// The refusal at once, or the service's own future: nothing boxed on the way through.
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if let Some(credentials) = &self.credentials
            && let Err(status) = check(credentials, &req)
        {
            return Either::Left(std::future::ready(Ok(status.into_http())));
        }
        Either::Right(self.inner.call(req))
    }
}

/// The verdict on one call.
fn check<B>(credentials: &Credentials, req: &http::Request<B>) -> Result<(), tonic::Status> {
    if req.uri().path() == PUBLIC {
        return Ok(());
    }
    let Some(needed) = allowed(req.uri().path()) else {
        return Err(tonic::Status::permission_denied(
            "no role may make this call",
        ));
    };
    let role = needed[0].name();
    let roles = credentials.roles_of(req);
    if roles.is_empty() {
        refusals()
            .with_label_values(&["unauthenticated", role])
            .inc();
        return Err(tonic::Status::unauthenticated(format!(
            "this call needs the {role} credential"
        )));
    }
    if !roles.iter().any(|r| needed.contains(r)) {
        refusals()
            .with_label_values(&["permission_denied", role])
            .inc();
        return Err(tonic::Status::permission_denied(format!(
            "this call is for the {} role",
            needed
                .iter()
                .map(|r| r.name())
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_declared_rpc_has_roles() {
        let rpcs = tokengate_proto::rpcs();
        assert!(rpcs.len() >= 20, "{rpcs:?}");
        for rpc in rpcs {
            assert!(
                allowed(&rpc.path).is_some_and(|r| !r.is_empty()),
                "{} has no roles: list it in cachenode::auth::allowed",
                rpc.path
            );
        }
        assert_eq!(allowed("/tokengate.cache.v1.TokenCache/Nope"), None);
        assert_eq!(allowed("/grpc.reflection.v1.ServerReflection/X"), None);
    }

    #[test]
    fn identity_patterns_match_like_globs() {
        let p = IdentityPattern::new("*.gw.tokengate.svc").unwrap();
        assert!(p.matches("a.gw.tokengate.svc"));
        assert!(!p.matches("gw.tokengate.svc.evil"));
        assert!(!p.matches("a.gw.tokengate.svc.evil"));
        let exact = IdentityPattern::new("cachectl").unwrap();
        assert!(exact.matches("cachectl") && !exact.matches("cachectl2"));
        let mid = IdentityPattern::new("spiffe://prod/*/sa/gateway").unwrap();
        assert!(mid.matches("spiffe://prod/ns/tokengate/sa/gateway"));
        assert!(!mid.matches("spiffe://prod/sa/gateway-x"));
    }

    fn secret(s: &str) -> RoleCredential {
        RoleCredential {
            secret: Some(Secret::new(s)),
            identities: Vec::new(),
        }
    }

    #[test]
    fn credentials_are_all_or_none_and_none_only_on_loopback() {
        let none = Credentials::default();
        assert!(none.check("127.0.0.1:7000".parse().unwrap(), false).is_ok());
        assert!(none.check("[::1]:7000".parse().unwrap(), false).is_ok());
        assert_eq!(
            none.check("0.0.0.0:7000".parse().unwrap(), false),
            Err(CredentialsError::Unauthenticated(
                "0.0.0.0:7000".parse().unwrap()
            ))
        );
        assert!(none.check("0.0.0.0:7000".parse().unwrap(), true).is_ok());
        let partial = Credentials {
            operator: secret("o"),
            ..Default::default()
        };
        assert_eq!(
            partial.check("127.0.0.1:7000".parse().unwrap(), false),
            Err(CredentialsError::MissingRole("peer"))
        );
        let shared = Credentials {
            peer: secret("same"),
            gateway: secret("g"),
            operator: secret("same"),
        };
        assert_eq!(
            shared.check("0.0.0.0:7000".parse().unwrap(), false),
            Err(CredentialsError::SharedSecret("peer", "operator"))
        );
    }

    #[test]
    fn a_call_needs_the_credential_of_its_role() {
        let c = Credentials {
            peer: secret("p"),
            gateway: secret("g"),
            operator: secret("o"),
        };
        let call = |path: &str, token: Option<&str>| {
            let mut b = http::Request::builder().uri(path);
            if let Some(t) = token {
                b = b.header("authorization", format!("Bearer {t}"));
            }
            check(&c, &b.body(()).unwrap()).map_err(|s| s.code())
        };
        let append = "/tokengate.raft.v1.RaftTransport/AppendEntries";
        assert_eq!(call(append, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(append, Some("x")), Err(tonic::Code::Unauthenticated));
        assert_eq!(call(append, Some("g")), Err(tonic::Code::PermissionDenied));
        assert_eq!(call(append, Some("p")), Ok(()));
        let list = "/tokengate.cache.v1.TokenCache/List";
        assert_eq!(call(list, Some("g")), Err(tonic::Code::PermissionDenied));
        assert_eq!(call(list, Some("o")), Ok(()));
        let get = "/tokengate.cache.v1.TokenCache/Get";
        assert_eq!(call(get, Some("g")), Ok(()));
        assert_eq!(call(get, Some("o")), Ok(()));
        assert_eq!(call(get, Some("p")), Err(tonic::Code::PermissionDenied));
        let status = "/tokengate.admin.v1.Admin/Status";
        assert_eq!(call(status, Some("g")), Err(tonic::Code::PermissionDenied));
        assert_eq!(call(status, Some("o")), Ok(()));
    }
}
