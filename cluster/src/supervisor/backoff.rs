//! Restart policy for workers that keep dying: exponential backoff for deaths soon after
//! start, and a circuit breaker that gives up on a slot that crashes too often.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use crate::config::RestartPolicy;

/// A worker that served (was ready) at least this long is considered healthy: its death resets
/// the backoff.
pub(super) const STABLE_UPTIME: Duration = Duration::from_secs(5);

/// Longest delay between retries of a start that failed for want of descriptors or memory:
/// a failed start costs nothing, and the slot should be back within a second of the shortage
/// ending.
const SHORTAGE_RETRY_CAP: Duration = Duration::from_secs(1);

/// One slot's recent deaths.
#[derive(Debug, Default, Clone)]
pub(super) struct Backoff {
    /// Consecutive deaths soon after start.
    streak: u32,
    /// Consecutive starts that failed for want of descriptors or memory (not deaths).
    shortages: u32,
    /// When the slot's workers died, within the policy's window.
    deaths: VecDeque<Instant>,
}

/// What to do after a death.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Restart after this delay (zero: at once).
    RestartIn(Duration),
    /// Too many deaths within the window: leave the slot down.
    GiveUp,
}

impl Backoff {
    /// Records a death after `uptime` of serving: nothing after a healthy run, then `base`, 2×`base`,
    /// 4×`base` … up to `cap`; [`Verdict::GiveUp`] once `max_restarts` deaths fall within
    /// `window`.
    pub(super) fn on_exit(&mut self, uptime: Duration, now: Instant, policy: &RestartPolicy) -> Verdict {
        self.shortages = 0; // a worker ran, so the last start found what it needed
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

    /// The delay before retrying a start that failed because the primary or the machine was
    /// out of descriptors or memory: the same doubling as for deaths, but never recorded as a
    /// death, so a shortage can never mark the slot errored.
    pub(super) fn on_shortage(&mut self, policy: &RestartPolicy) -> Duration {
        self.shortages = self.shortages.saturating_add(1);
        let doublings = (self.shortages - 1).min(16);
        policy.backoff_base.saturating_mul(1 << doublings).min(policy.backoff_cap).min(SHORTAGE_RETRY_CAP)
    }

    /// Forgets the history (an operator restarted the slot by hand).
    pub(super) fn reset(&mut self) {
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
            .map(|_| match b.on_exit(Duration::from_millis(10), Instant::now(), policy) {
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
        b.on_exit(Duration::ZERO, Instant::now(), &p);
        b.on_exit(Duration::ZERO, Instant::now(), &p);
        assert_eq!(b.on_exit(STABLE_UPTIME, Instant::now(), &p), Verdict::RestartIn(Duration::ZERO));
        assert_eq!(b.on_exit(Duration::ZERO, Instant::now(), &p), Verdict::RestartIn(Duration::from_millis(100)));
    }

    #[test]
    fn shortages_back_off_but_never_count_toward_giving_up() {
        let mut b = Backoff::default();
        let p = policy(3);
        let delays: Vec<u128> = (0..20).map(|_| b.on_shortage(&p).as_millis()).collect();
        assert_eq!(delays[..5], [100, 200, 400, 800, 1000]);
        assert_eq!(delays[19], 1000);
        // Twenty failed starts later, the slot still has its whole crash allowance.
        for _ in 0..3 {
            assert!(matches!(b.on_exit(Duration::ZERO, Instant::now(), &p), Verdict::RestartIn(_)));
        }
        assert_eq!(b.on_shortage(&p), Duration::from_millis(100), "a worker ran: the shortage streak restarts");
    }

    #[test]
    fn too_many_deaths_in_the_window_give_up() {
        let mut b = Backoff::default();
        let p = policy(3);
        for _ in 0..3 {
            assert!(matches!(b.on_exit(Duration::ZERO, Instant::now(), &p), Verdict::RestartIn(_)));
        }
        assert_eq!(b.on_exit(Duration::ZERO, Instant::now(), &p), Verdict::GiveUp);
        b.reset();
        assert!(matches!(b.on_exit(Duration::ZERO, Instant::now(), &p), Verdict::RestartIn(_)));
    }
}
