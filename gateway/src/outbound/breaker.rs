//! The circuit breaker in front of each IdP endpoint (`idpCircuitBreaker`).
//!
//! After `failures` failed calls in a row the endpoint's circuit opens: calls fail fast for
//! `cooldown`, then one trial call goes through. Its success closes the circuit; its failure opens
//! it again. Only an unreachable or failing IdP counts (transport errors, timeouts, 5xx, 429): any
//! other answer may have been provoked by what a caller sent and says nothing about the IdP.
//!
//! Time is tokio's, so tests pause and advance it instead of sleeping through a cooldown.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::IdpError;

/// Consecutive failed calls (each after its retries) that open the breaker.
const BREAKER_THRESHOLD: u32 = 3;
/// How long an open breaker fails fast before letting one trial call through.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(5);

/// The breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Failed calls in a row that open it.
    pub failures: u32,
    /// How long it stays open before one trial call goes through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failures: BREAKER_THRESHOLD,
            cooldown: BREAKER_COOLDOWN,
        }
    }
}

/// One endpoint's circuit.
#[derive(Default)]
struct Circuit {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    trial_in_flight: bool,
}

/// The circuits of every endpoint a node calls, keyed by URL.
pub struct Breakers {
    circuits: Mutex<HashMap<String, Circuit>>,
    cfg: BreakerConfig,
}

/// A call let through by the breaker. If the call is dropped before its outcome is recorded
/// (its task was cancelled), a half-open trial slot is given back, so the breaker never stays
/// open because of a call that will never report.
pub struct Admitted<'a> {
    breakers: &'a Breakers,
    endpoint: &'a str,
    recorded: bool,
}

impl Admitted<'_> {
    /// Records the call's outcome: an [`IdpError::Unavailable`] counts as a failure, anything
    /// else (success or an answer) closes the circuit.
    pub fn record(mut self, error: Option<&IdpError>) {
        self.recorded = true;
        self.breakers.record(self.endpoint, error);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.recorded
            && let Some(c) = self.breakers.circuits().get_mut(self.endpoint)
        {
            c.trial_in_flight = false;
        }
    }
}

impl Breakers {
    /// Closed circuits with these settings.
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            circuits: Mutex::new(HashMap::new()),
            cfg,
        }
    }

    /// Fails fast while the endpoint's circuit is open; lets one trial through after cooldown.
    pub fn admit<'a>(&'a self, endpoint: &'a str) -> Result<Admitted<'a>, IdpError> {
        let mut circuits = self.circuits();
        let c = circuits.entry(endpoint.to_owned()).or_default();
        match c.open_until {
            Some(until) if Instant::now() < until || c.trial_in_flight => {
                let retry_after = until
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_secs(1));
                return Err(IdpError::Unavailable {
                    reason: "circuit open".into(),
                    retry_after,
                });
            }
            Some(_) => c.trial_in_flight = true,
            None => {}
        }
        Ok(Admitted {
            breakers: self,
            endpoint,
            recorded: false,
        })
    }

    /// Whether the endpoint's circuit is open (failing fast or waiting for its trial).
    pub fn is_open(&self, endpoint: &str) -> bool {
        self.circuits()
            .get(endpoint)
            .is_some_and(|c| c.open_until.is_some())
    }

    fn circuits(&self) -> MutexGuard<'_, HashMap<String, Circuit>> {
        // Updates are single assignments: a poisoned lock still holds a usable state.
        self.circuits.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, endpoint: &str, error: Option<&IdpError>) {
        let mut circuits = self.circuits();
        let c = circuits.entry(endpoint.to_owned()).or_default();
        c.trial_in_flight = false;
        // Only an unreachable or failing IdP counts (transport errors, timeouts, 5xx, 429). Any
        // other answer, 4xx or odd, may have been provoked by what a caller sent (a 20 KB client
        // id, a malformed token) and says nothing about the IdP's health: counting it would let
        // any anonymous caller lock every new client out.
        if matches!(error, Some(IdpError::Unavailable { .. })) {
            c.consecutive_failures += 1;
            if c.consecutive_failures >= self.cfg.failures {
                if c.open_until.is_none() {
                    crate::telemetry::metrics::metrics().idp_circuits_open.inc();
                    tracing::warn!(
                        token_url = endpoint,
                        "identity provider failing; circuit opened"
                    );
                }
                c.open_until = Some(Instant::now() + self.cfg.cooldown);
            }
        } else {
            if c.open_until.is_some() {
                crate::telemetry::metrics::metrics().idp_circuits_open.dec();
                tracing::info!(
                    token_url = endpoint,
                    "identity provider answering again; circuit closed"
                );
            }
            *c = Circuit::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://idp.example/token";

    fn down() -> IdpError {
        IdpError::unavailable("connect failed")
    }

    fn breakers() -> Breakers {
        Breakers::new(BreakerConfig {
            failures: 3,
            cooldown: Duration::from_secs(5),
        })
    }

    fn fail(b: &Breakers) {
        b.admit(URL).unwrap().record(Some(&down()));
    }

    fn is_circuit_open(r: Result<Admitted<'_>, IdpError>) -> bool {
        matches!(r, Err(IdpError::Unavailable { ref reason, .. }) if reason == "circuit open")
    }

    #[tokio::test(start_paused = true)]
    async fn the_circuit_opens_after_the_threshold_and_fails_fast_for_the_cooldown() {
        let b = breakers();
        fail(&b);
        fail(&b);
        assert!(!b.is_open(URL), "two failures are under the threshold");
        fail(&b);
        assert!(b.is_open(URL));
        let Err(IdpError::Unavailable { retry_after, .. }) = b.admit(URL) else {
            panic!("an open circuit fails fast");
        };
        assert_eq!(retry_after, Duration::from_secs(5));
        tokio::time::advance(Duration::from_millis(4_900)).await;
        assert!(is_circuit_open(b.admit(URL)), "still cooling down");
        // Another endpoint is not affected.
        assert!(b.admit("https://other.example/token").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cooldown_one_trial_goes_through_and_its_outcome_decides() {
        let b = breakers();
        (0..3).for_each(|_| fail(&b));
        tokio::time::advance(Duration::from_secs(5)).await;
        let trial = b.admit(URL).expect("the trial is admitted");
        assert!(is_circuit_open(b.admit(URL)), "one trial at a time");
        trial.record(Some(&down()));
        assert!(is_circuit_open(b.admit(URL)), "a failed trial reopens it");
        tokio::time::advance(Duration::from_secs(5)).await;
        b.admit(URL).unwrap().record(None);
        assert!(!b.is_open(URL), "a successful trial closes it");
        // Closed means counting from zero again.
        fail(&b);
        fail(&b);
        assert!(b.admit(URL).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_dropped_before_its_outcome_frees_the_slot() {
        let b = breakers();
        (0..3).for_each(|_| fail(&b));
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(b.admit(URL).expect("the trial is admitted"));
        assert!(b.admit(URL).is_ok(), "the next call is the new trial");
    }

    #[tokio::test(start_paused = true)]
    async fn answers_other_than_unavailable_close_the_circuit() {
        let b = breakers();
        fail(&b);
        fail(&b);
        b.admit(URL)
            .unwrap()
            .record(Some(&IdpError::Protocol("400 with HTML".into())));
        fail(&b);
        fail(&b);
        assert!(!b.is_open(URL), "the count restarted after the answer");
        b.admit(URL).unwrap().record(Some(&IdpError::InvalidClient));
        assert!(!b.is_open(URL));
    }
}
