//! The wall clock a token's life is judged by.
//!
//! Entries cross nodes, so their times (`issued_at`, `refresh_at`, `expires_at`, `last_used`) are
//! wall-clock milliseconds, not `Instant`s. The lifecycle reads them from a [`Clock`] it is given
//! instead of calling the system directly, so that tests can run a token's whole life (refresh
//! window, lease hand-over, negative caching, idle expiry) in milliseconds: a clock made with
//! [`Clock::following_tokio`] moves only when tokio's clock does, and a test pauses and advances
//! that one.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. Entries cross nodes, so times are wall-clock, not
/// `Instant`s.
pub type UnixMillis = u64;

/// A source of wall-clock time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock(Source);

#[derive(Debug, Clone, Copy, Default)]
enum Source {
    /// The system's clock.
    #[default]
    System,
    /// `wall` at `origin`, advancing with tokio's clock.
    Tokio {
        wall: UnixMillis,
        origin: tokio::time::Instant,
    },
}

impl Clock {
    /// The system's wall clock: what every node runs with.
    pub const fn system() -> Self {
        Self(Source::System)
    }

    /// A clock reading `wall` now and advancing exactly as tokio's clock does (which a test can
    /// pause and advance). Call it inside a runtime.
    pub fn following_tokio(wall: UnixMillis) -> Self {
        Self(Source::Tokio {
            wall,
            origin: tokio::time::Instant::now(),
        })
    }

    /// Now, in milliseconds since the Unix epoch.
    #[inline]
    pub fn now(&self) -> UnixMillis {
        match self.0 {
            Source::System => system_now(),
            Source::Tokio { wall, origin } => wall + origin.elapsed().as_millis() as u64,
        }
    }
}

/// The system's wall-clock time.
pub fn system_now() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_clock_following_tokio_moves_only_with_tokio_time() {
        let clock = Clock::following_tokio(1_000_000);
        assert_eq!(clock.now(), 1_000_000);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now(), 1_090_000);
    }

    #[test]
    fn the_system_clock_reads_the_system() {
        let before = system_now();
        let read = Clock::system().now();
        assert!(read >= before && read <= system_now());
    }
}
