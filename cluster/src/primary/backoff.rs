//! How long to wait before restarting a worker that keeps dying young.

use std::time::Duration;

/// A worker that lived at least this long is considered healthy: its death resets the backoff.
pub(crate) const STABLE_UPTIME: Duration = Duration::from_secs(5);
/// First delay after a young death; doubles with every further young death.
const BASE: Duration = Duration::from_millis(100);
/// Longest delay between restarts.
const CAP: Duration = Duration::from_secs(15);

/// Consecutive young deaths of one slot, and the delay they earn.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Backoff {
    streak: u32,
}

impl Backoff {
    /// Records a death after `uptime` and returns how long to wait before the restart: nothing
    /// after a healthy run, then 100 ms, 200 ms, 400 ms … up to 15 s.
    pub(crate) fn on_exit(&mut self, uptime: Duration) -> Duration {
        if uptime >= STABLE_UPTIME {
            self.streak = 0;
            return Duration::ZERO;
        }
        self.streak = self.streak.saturating_add(1);
        let doublings = (self.streak - 1).min(16);
        BASE.saturating_mul(1 << doublings).min(CAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn young_deaths_back_off_exponentially_up_to_the_cap() {
        let mut b = Backoff::default();
        let young = Duration::from_millis(10);
        let delays: Vec<_> = (0..10).map(|_| b.on_exit(young).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000]);
    }

    #[test]
    fn a_healthy_run_resets_the_streak() {
        let mut b = Backoff::default();
        b.on_exit(Duration::ZERO);
        b.on_exit(Duration::ZERO);
        assert_eq!(b.on_exit(STABLE_UPTIME), Duration::ZERO);
        assert_eq!(b.on_exit(Duration::ZERO), Duration::from_millis(100));
    }
}
