//! The middlewares that shape traffic rather than authenticate it: path rewrites, the
//! `headers` middleware (custom headers, CORS), `retry` and `rateLimit`. A route runs its authentication middlewares
//! first, in their order, then these, in theirs: nothing a rewrite or a header rule does can
//! change what authentication saw or let a caller past it.

use super::cors::Cors;
use super::ratelimit::RateLimitPolicy;
use super::retry::RetryPolicy;
use super::rewrite::{HeaderRules, PathRewrite};

/// One traffic middleware, validated.
#[derive(Debug, Clone)]
pub enum HttpMiddleware {
    /// `stripPrefix`, `addPrefix`, `replacePath`, `replacePathRegex`.
    Path(PathRewrite),
    /// `headers`.
    Headers(Box<Headers>),
    /// `retry`: how the route sends a failed request again.
    Retry(RetryPolicy),
    /// `rateLimit`.
    RateLimit(RateLimitPolicy),
}

/// The `headers` middleware.
#[derive(Debug, Clone, Default)]
pub struct Headers {
    /// Changes to the request, after authentication.
    pub request: HeaderRules,
    /// Changes to the upstream's answer.
    pub response: HeaderRules,
    /// The CORS policy, if any.
    pub cors: Option<Cors>,
}
