//! Log lines a client can trigger at will (a shed connection, a refusal, a 503 answered for
//! want of a worker) are counted and written at most once per interval, each with the count
//! since the last, so an attack costs the log a line per interval instead of one per event.

use std::time::{Duration, Instant};

/// Counts events and says when to log them: the first at once, then at most one line per
/// interval, carrying the count since the previous line.
#[derive(Debug)]
pub(crate) struct Tally {
    interval: Duration,
    last_line: Option<Instant>,
    unlogged: u64,
}

impl Tally {
    pub(crate) fn new(interval: Duration) -> Self {
        Self { interval, last_line: None, unlogged: 0 }
    }

    /// Records `count` more events at `now`; `Some(total)` when a line is due, with the number
    /// since the last line.
    pub(crate) fn due(&mut self, count: u64, now: Instant) -> Option<u64> {
        self.unlogged = self.unlogged.saturating_add(count);
        if self.last_line.is_some_and(|last| now.duration_since(last) < self.interval) {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_per_interval_with_the_count_since_the_last() {
        let mut log = Tally::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(log.due(1, t0), Some(1), "the first shed is logged at once");
        assert_eq!(log.due(5, t0 + Duration::from_secs(1)), None);
        assert_eq!(log.due(3, t0 + Duration::from_secs(9)), None);
        assert_eq!(log.due(1, t0 + Duration::from_secs(10)), Some(9));
        assert_eq!(log.due(2, t0 + Duration::from_secs(11)), None);
        assert_eq!(log.due(0, t0 + Duration::from_secs(30)), Some(2));
    }
}
