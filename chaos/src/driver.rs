//! The load driver: a fixed request rate (open loop: a slow fleet does not slow the arrivals),
//! spread over many client identities, with every request's outcome and latency kept.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use testkit::upstream::CALLER_HEADER;

/// Requests in flight at most; beyond, arrivals are counted as failed (the fleet is not keeping
/// up, which is a failure too).
const MAX_IN_FLIGHT: usize = 2_000;
/// A request is abandoned (and failed) after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One request's fate.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// When it was sent, ms since the run started.
    pub at_ms: u64,
    /// Which client identity sent it.
    pub client: usize,
    /// The HTTP status, or 0 when no answer came.
    pub status: u16,
    /// From sending to the full answer.
    pub latency_us: u64,
    /// Whether it was sent a second time after the first connection failed before any answer
    /// (what an HTTP client does for an idempotent request when a node dies under it).
    pub retried: bool,
}

impl Outcome {
    /// Whether the caller got what it asked for.
    pub fn ok(&self) -> bool {
        self.status == 200
    }
}

/// Client identity `i`: its id and secret at the fake IdP.
pub fn identity(i: usize) -> (String, String) {
    (format!("client-{i}"), format!("secret-{i}"))
}

/// Sends `rps` requests a second to `url` until `stop`, round robin over `clients` identities.
/// `sent` is called for each request as it completes.
pub async fn drive(
    url: String,
    clients: usize,
    rps: u32,
    stop: CancellationToken,
    started: Instant,
    on_done: Arc<dyn Fn(&Outcome) + Send + Sync>,
) -> Vec<Outcome> {
    // A new connection per request, as from many independent callers: the balancer spreads
    // them, and a node's death costs only the requests it holds at that moment.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("HTTP client");
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let tasks = tokio_util::task::TaskTracker::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n = 0usize;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let client = n % clients;
        n += 1;
        let at_ms = started.elapsed().as_millis() as u64;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            let o = Outcome {
                at_ms,
                client,
                status: 0,
                latency_us: 0,
                retried: false,
            };
            on_done(&o);
            outcomes.lock().unwrap().push(o);
            continue;
        };
        let (http, url, outcomes, on_done) = (
            http.clone(),
            url.clone(),
            Arc::clone(&outcomes),
            Arc::clone(&on_done),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let sent = Instant::now();
            let (mut status, mut retried) = (send(&http, &url, client).await, false);
            if status.is_none() {
                retried = true;
                tokio::time::sleep(Duration::from_millis(20)).await;
                status = send(&http, &url, client).await;
            }
            let o = Outcome {
                at_ms,
                client,
                status: status.unwrap_or(0),
                latency_us: sent.elapsed().as_micros() as u64,
                retried,
            };
            on_done(&o);
            outcomes.lock().unwrap().push(o);
        });
    }
    tasks.close();
    tasks.wait().await;
    let mut all = std::mem::take(&mut *outcomes.lock().unwrap());
    all.sort_by_key(|o| o.at_ms);
    all
}

/// One request; `None` when the connection failed before an answer.
async fn send(http: &reqwest::Client, url: &str, client: usize) -> Option<u16> {
    let (id, secret) = identity(client);
    let resp = http
        .get(url)
        .basic_auth(&id, Some(secret))
        .header(CALLER_HEADER, &id)
        .send()
        .await
        .ok()?;
    let status = resp.status().as_u16();
    // The body is read whole: a node dying mid-body is a failed request.
    resp.bytes().await.ok()?;
    Some(status)
}
