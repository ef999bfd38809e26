//! Problems only an operator can fix, logged where the operator looks and not once per request.
//!
//! A full Redis (`maxmemory` reached with nothing it may evict) refuses every write until
//! someone frees memory or raises the limit. Each refused request is answered 507 by whoever
//! met it; the log gets one ERROR line per [`REPORT_INTERVAL`] per process, saying how many
//! more were held back, so a flood of requests cannot turn into a flood of log lines.

use std::{
    fmt::Display,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

/// At most one ERROR line per problem per process in this interval.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The text of the 507 answer a client gets while Redis is full: distinct from the 503's
/// "retry shortly", because retrying does not help until an operator acts.
pub const STORE_FULL: &str = "session store is full (Redis maxmemory reached); an operator must act";

/// Reports that Redis refused a write for lack of memory: an ERROR line now if none was
/// written in the last [`REPORT_INTERVAL`], else counted for the next one.
pub fn redis_full(cause: &dyn Display) {
    static FULL: Throttle = Throttle::new();
    if let Some(suppressed) = FULL.admit(Instant::now()) {
        tracing::error!(
            %cause,
            suppressed,
            "Redis is out of memory and refuses writes: logins, session saves and cache writes \
             answer 507 until an operator frees memory or raises maxmemory (operator problem, \
             reported once per {}s)",
            REPORT_INTERVAL.as_secs()
        );
    }
}

/// Lets one report through per interval and counts the ones it holds back.
pub(crate) struct Throttle {
    last: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl Throttle {
    pub(crate) const fn new() -> Self {
        Self { last: Mutex::new(None), held_back: AtomicU64::new(0) }
    }

    /// `Some(reports held back since the last one)` when this report may be logged.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked while logging: keep reporting.
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *last {
            Some(at) if now.saturating_duration_since(at) < REPORT_INTERVAL => {
                self.held_back.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.held_back.swap(0, Ordering::Relaxed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_report_per_interval_with_the_count_held_back() {
        let throttle = Throttle::new();
        let start = Instant::now();
        assert_eq!(throttle.admit(start), Some(0));
        for i in 1..=5 {
            assert_eq!(throttle.admit(start + Duration::from_millis(i)), None);
        }
        assert_eq!(throttle.admit(start + REPORT_INTERVAL), Some(5));
        assert_eq!(throttle.admit(start + REPORT_INTERVAL + Duration::from_secs(1)), None);
    }
}
