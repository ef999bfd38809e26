//! Restart policy for workers that keep dying: exponential backoff for deaths soon after
//! start, and a circuit breaker that gives up on a slot that crashes too often.

use std::{collections::VecDeque, time::Duration};

use tokio::time::Instant;

use crate::config::RestartPolicy;

/// A worker that served (was ready) at least this long is considered healthy: its death resets
/// the backoff.
pub(crate) const STABLE_UPTIME: Duration = Duration::from_secs(5);

/// One slot's recent deaths.
#[derive(Debug, Default, Clone)]
pub(crate) struct Backoff {
    /// Consecutive deaths soon after start.
    streak: u32,
    /// When the slot's workers died, within the policy's window.
    deaths: VecDeque<Instant>,
}

/// What to do after a death.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Restart after this delay (zero: at once).
    RestartIn(Duration),
    /// Too many deaths within the window: leave the slot down.
    GiveUp,
}

impl Backoff {
    /// Records a death after `uptime` of serving: nothing after a healthy run, then `base`, 2×`base`,
    /// 4×`base` … up to `cap`; [`Verdict::GiveUp`] once `max_restarts` deaths fall within
    /// `window`.
    pub(crate) fn on_exit(&mut self, uptime: Duration, policy: &RestartPolicy) -> Verdict {
        let now = Instant::now();
        self.deaths.push_back(now);
        while self.deaths.front().is_some_and(|t| now.duration_since(*t) > policy.window) {
            self.deaths.pop_front();
        }
        if policy.max_restarts > 0 && self.deaths.len() > policy.max_restarts as usize {
            return Verdict::GiveUp;
        }
        if uptime >= STABLE_UPTIME {
            self.streak = 0;
            return Verdict::RestartIn(Duration::ZERO);
        }
        self.streak = self.streak.saturating_add(1);
        let doublings = (self.streak - 1).min(16);
        Verdict::RestartIn(policy.backoff_base.saturating_mul(1 << doublings).min(policy.backoff_cap))
    }

    /// Forgets the history (an operator restarted the slot by hand).
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_restarts: u32) -> RestartPolicy {
        RestartPolicy { max_restarts, ..RestartPolicy::default() }
    }

    fn delays(b: &mut Backoff, policy: &RestartPolicy, n: usize) -> Vec<u128> {
        (0..n)
            .map(|_| match b.on_exit(Duration::from_millis(10), policy) {
                Verdict::RestartIn(d) => d.as_millis(),
                Verdict::GiveUp => 0,
            })
            .collect()
    }

    #[test]
    fn young_deaths_back_off_exponentially_up_to_the_cap() {
        let mut b = Backoff::default();
        assert_eq!(delays(&mut b, &policy(0), 10), [100, 200, 400, 800, 1600, 3200, 6400, 12800, 15000, 15000]);
    }

    #[test]
    fn a_healthy_run_resets_the_streak() {
        let mut b = Backoff::default();
        let p = policy(0);
        b.on_exit(Duration::ZERO, &p);
        b.on_exit(Duration::ZERO, &p);
        assert_eq!(b.on_exit(STABLE_UPTIME, &p), Verdict::RestartIn(Duration::ZERO));
        assert_eq!(b.on_exit(Duration::ZERO, &p), Verdict::RestartIn(Duration::from_millis(100)));
    }

    #[test]
    fn too_many_deaths_in_the_window_give_up() {
        let mut b = Backoff::default();
        let p = policy(3);
        for _ in 0..3 {
            assert!(matches!(b.on_exit(Duration::ZERO, &p), Verdict::RestartIn(_)));
        }
        assert_eq!(b.on_exit(Duration::ZERO, &p), Verdict::GiveUp);
        b.reset();
        assert!(matches!(b.on_exit(Duration::ZERO, &p), Verdict::RestartIn(_)));
    }
}
