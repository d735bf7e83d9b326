//! Logging (`tracing` to stdout, as text or JSON, one access-log line per request), metrics
//! and distributed tracing.
//!
//! Nothing logged, exported or counted here or elsewhere carries a token or a secret: the
//! access log records the path without its query string (queries may carry credentials) and
//! never a header value; spans carry the same kind of fields as log lines.

pub mod metrics;
pub mod otel;
pub mod output;

use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, StatusCode};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{FilterExt, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use otel::{TracingConfig, TracingError};

/// Log output options.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Text for people, JSON for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter directive.
    pub level: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// What [`init`] started; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[must_use = "call shutdown() before exiting so that buffered spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}

/// Installs the global subscriber: log lines per `cfg` (`RUST_LOG`, when set, overrides the
/// configured level) and, when tracing is on (see [`otel`]), span export for a process of
/// `role` (`instance` names this member of the role, e.g. a cache node's id). Spans go only
/// to the exporter; log lines carry their own fields.
pub fn init(
    cfg: &LogConfig,
    tracing: Option<&TracingConfig>,
    role: &str,
    instance: Option<&str>,
) -> Result<Telemetry, TracingError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(output::Stdout)
        .with_target(true)
        .with_ansi(ansi);
    let fmt = match cfg.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    }
    .with_filter(filter.and(filter_fn(|m| m.is_event())));
    let exported = otel::provider(tracing, role, instance)?;
    let (provider, otel_layer) = match exported {
        Some((provider, tracer, rate)) => {
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false)
                // Spans start when first needed, not when entered, so the request span can
                // take its route's name once routing is done.
                .with_context_activation(false)
                .with_filter(Targets::new().with_target("gateway", tracing::Level::INFO));
            (Some((provider, rate)), Some(layer))
        }
        None => (None, None),
    };
    let installed = tracing_subscriber::registry()
        .with(fmt)
        .with(otel_layer)
        .try_init()
        .is_ok();
    if installed {
        ACCESS_JSON.store(
            cfg.format == LogFormat::Json,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    // A second call (tests embedding several nodes) keeps the first subscriber.
    let provider = provider.filter(|_| installed).map(|(provider, rate)| {
        otel::set_enabled(rate);
        provider
    });
    Ok(Telemetry { provider })
}

/// Longest request path written to the access log; a caller controls it, the log's size is the
/// operator's.
const LOGGED_PATH_MAX: usize = 512;
/// Longest method written (extension methods are caller text).
const LOGGED_METHOD_MAX: usize = 32;
/// Longest user name written (a claim's value).
const LOGGED_USER_MAX: usize = 256;

/// `text`, cut at a character boundary to at most `max` bytes, marked `…` when cut.
pub fn bounded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// The access-log record of one request, filled in as the request progresses.
pub struct AccessLog {
    method: http::Method,
    /// The request's target as it came (cut to its path when written): a clone shares the
    /// bytes the request head was read into.
    target: http::Uri,
    client: SocketAddr,
    /// The matched route.
    pub route: Option<std::sync::Arc<str>>,
    /// The user named by a middleware's `usernameClaim`.
    pub user: Option<String>,
    /// The request's trace id (see [`otel::span_trace_id`], [`otel::caller_trace_id`]).
    pub trace_id: Option<String>,
    /// The subject of the caller's verified TLS client certificate (mutual TLS listeners).
    pub tls_client: Option<std::sync::Arc<str>>,
}

impl AccessLog {
    /// Starts the record for `req`.
    pub fn new<B>(req: &Request<B>, client: SocketAddr) -> Self {
        Self {
            method: req.method().clone(),
            target: req.uri().clone(),
            client,
            route: None,
            user: None,
            trace_id: None,
            tls_client: None,
        }
    }

    /// Writes the line.
    pub fn finish(self, status: StatusCode, latency: Duration) {
        metrics::metrics().request(
            self.route.as_deref().unwrap_or("none"),
            status.as_u16(),
            latency.as_secs_f64(),
        );
        if !tracing::enabled!(
            kind: tracing::metadata::Kind::EVENT,
            target: "tokengate::access",
            tracing::Level::INFO
        ) {
            return;
        }
        if ACCESS_JSON.load(std::sync::atomic::Ordering::Relaxed) {
            output::write_line(|line| self.json_line(line, status, latency));
        } else {
            self.event(status, latency);
        }
    }

    /// The line as a `tracing` event, for the installed formatter.
    fn event(&self, status: StatusCode, latency: Duration) {
        tracing::info!(
            target: "tokengate::access",
            method = %bounded(self.method.as_str(), LOGGED_METHOD_MAX),
            path = %bounded(self.target.path(), LOGGED_PATH_MAX),
            status = status.as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            route = self.route.as_deref().unwrap_or("-"),
            user = %bounded(self.user.as_deref().unwrap_or("-"), LOGGED_USER_MAX),
            client = %self.client.ip(),
            trace_id = self.trace_id.as_deref().unwrap_or("-"),
            tls_client = %bounded(self.tls_client.as_deref().unwrap_or("-"), LOGGED_USER_MAX),
        );
    }

    /// The line as the JSON log format writes an event (`tracing-subscriber`'s, flattened:
    /// the same keys in the same order), built straight into the output buffer: this line is
    /// written once per request, and the generic formatter's field visitors cost more than
    /// the rest of the request's own work.
    fn json_line(&self, line: &mut Vec<u8>, status: StatusCode, latency: Duration) {
        use std::io::Write as _;
        fn text(line: &mut Vec<u8>, key: &str, value: &str) {
            line.extend_from_slice(b",\"");
            line.extend_from_slice(key.as_bytes());
            line.extend_from_slice(b"\":");
            // Writing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *line, value);
        }
        line.extend_from_slice(b"{\"timestamp\":\"");
        rfc3339_micros(std::time::SystemTime::now(), line);
        line.extend_from_slice(b"\",\"level\":\"INFO\"");
        text(
            line,
            "method",
            &bounded(self.method.as_str(), LOGGED_METHOD_MAX),
        );
        text(line, "path", &bounded(self.target.path(), LOGGED_PATH_MAX));
        line.extend_from_slice(b",\"status\":");
        line.extend_from_slice(itoa::Buffer::new().format(status.as_u16()).as_bytes());
        line.extend_from_slice(b",\"latency_ms\":");
        let _ = serde_json::to_writer(&mut *line, &(latency.as_secs_f64() * 1000.0));
        text(line, "route", self.route.as_deref().unwrap_or("-"));
        text(
            line,
            "user",
            &bounded(self.user.as_deref().unwrap_or("-"), LOGGED_USER_MAX),
        );
        let _ = write!(line, ",\"client\":\"{}\"", self.client.ip());
        text(line, "trace_id", self.trace_id.as_deref().unwrap_or("-"));
        text(
            line,
            "tls_client",
            &bounded(self.tls_client.as_deref().unwrap_or("-"), LOGGED_USER_MAX),
        );
        line.extend_from_slice(b",\"target\":\"tokengate::access\"}\n");
    }
}

/// Writes `at` as RFC 3339 in UTC with microseconds (`2026-11-30T15:02:03.123456Z`), as
/// `humantime` does. The calendar part is worked out once per second per thread.
fn rfc3339_micros(at: std::time::SystemTime, line: &mut Vec<u8>) {
    use std::time::UNIX_EPOCH;
    thread_local! {
        /// The second last written, and its text up to the fraction (`…:03.`).
        static SECOND: std::cell::Cell<(u64, [u8; 20])> = const { std::cell::Cell::new((0, [0; 20])) };
    }
    let second = |secs: u64| {
        let (cached, prefix) = SECOND.get();
        if cached == secs && prefix[0] != 0 {
            return Some(prefix);
        }
        // `2026-11-30T15:02:03Z`: all but the `Z`, then the fraction's dot. Another length
        // (a year past 9999) is not cached.
        let whole =
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
        let mut prefix = [b'.'; 20];
        prefix[..19].copy_from_slice(whole.as_bytes().get(..19).filter(|_| whole.len() == 20)?);
        SECOND.set((secs, prefix));
        Some(prefix)
    };
    // Before 1970 this machine's clock is wrong; it is written as humantime writes it.
    let Some((prefix, mut micros)) = at
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|since| Some((second(since.as_secs())?, since.subsec_micros())))
    else {
        let _ = std::io::Write::write_fmt(
            line,
            format_args!("{}", humantime::format_rfc3339_micros(at)),
        );
        return;
    };
    line.extend_from_slice(&prefix);
    let mut digits = [b'0'; 6];
    for d in digits.iter_mut().rev() {
        *d = b'0' + u8::try_from(micros % 10).unwrap_or(0);
        micros /= 10;
    }
    line.extend_from_slice(&digits);
    line.push(b'Z');
}

/// Whether the installed log format is JSON (access-log lines are then written by
/// [`AccessLog`] itself).
static ACCESS_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line without its timestamp (the two lines are written at different instants).
    fn untimed(line: &[u8]) -> String {
        let line = String::from_utf8(line.to_vec()).unwrap();
        let (_, rest) = line.split_once("\",\"level\"").expect(&line);
        rest.to_owned()
    }

    #[test]
    fn timestamps_are_humantimes_across_seconds() {
        use std::time::{Duration, SystemTime, UNIX_EPOCH};
        let base = UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        // Within one second, across seconds (the cached part must change), back again, the
        // first and last microsecond, and a day boundary.
        let offsets_us: [u64; 8] = [
            0,
            999_999,
            1_000_000,
            1_000_001,
            7,
            86_400_000_000,
            5,
            61_000_123,
        ];
        for us in offsets_us {
            let at = base + Duration::from_micros(us);
            let mut ours = Vec::new();
            rfc3339_micros(at, &mut ours);
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                humantime::format_rfc3339_micros(at).to_string()
            );
        }
        let mut now = Vec::new();
        rfc3339_micros(SystemTime::now(), &mut now);
        assert!(humantime::parse_rfc3339(std::str::from_utf8(&now).unwrap()).is_ok());
    }

    #[test]
    fn the_json_access_line_is_the_json_formatters_line() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .json()
            .flatten_event(true)
            .with_target(true)
            .finish();
        let status = StatusCode::UNPROCESSABLE_ENTITY;
        let latency = Duration::from_micros(1234);
        let mut record = AccessLog::new(
            &Request::get("/a/%C3%A9?token=secret").body(()).unwrap(),
            "[2001:db8::1]:443".parse().unwrap(),
        );
        assert_eq!(record.target.path(), "/a/%C3%A9", "no query string");
        // A path longer than the log keeps (the caller's text is cut in both lines alike);
        // the fields below carry the characters that need escaping.
        record.target = http::Uri::try_from(format!("/a'b(c)*/{}", "x".repeat(600))).unwrap();
        record.method = http::Method::from_bytes(b"PROPFIND").unwrap();
        record.route = Some("orders \"v1\"".into());
        record.user = Some("zoë\n\t\u{1}".into());
        record.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        record.tls_client = Some(Arc::from("CN=caller,O=\"Acme\""));
        tracing::subscriber::with_default(subscriber, || record.event(status, latency));
        let mut ours = Vec::new();
        record.json_line(&mut ours, status, latency);

        let theirs = captured.0.lock().unwrap().clone();
        assert_eq!(untimed(&ours), untimed(&theirs));
        let parsed: serde_json::Value = serde_json::from_slice(&ours).unwrap();
        let path = parsed["path"].as_str().unwrap();
        assert!(
            path.starts_with("/a'b(c)*/xxx") && path.ends_with('…'),
            "{path}"
        );
        assert_eq!(path.len(), LOGGED_PATH_MAX + '…'.len_utf8());
        let stamp = parsed["timestamp"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(stamp).is_ok(), "{stamp}");
    }
}
