//! Shared mode's stand-in for the workers. There the workers accept on the listener
//! themselves, so without a serving worker the kernel would queue connections forever: once
//! none has served for `--queue-timeout` (at once when every slot is errored) the primary
//! accepts on the listener itself to answer `503`, until a worker serves again.

use std::time::{Duration, Instant};

use super::{Core, Effect};

/// How long after a failed start of the stand-in the core asks again.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct StandIn {
    /// Only shared mode has one.
    enabled: bool,
    /// The shell was asked to answer on the listener.
    active: bool,
    /// Since when no worker has been able to serve (`None` while one can).
    unserved_since: Option<Instant>,
    /// After a failed start: not before then.
    retry_at: Option<Instant>,
}

impl StandIn {
    pub(super) fn new(enabled: bool) -> Self {
        Self { enabled, active: false, unserved_since: None, retry_at: None }
    }

    pub(super) fn failed(&mut self, now: Instant) {
        self.active = false;
        self.retry_at = Some(now + RETRY);
    }
}

impl Core {
    /// Starts or stops the stand-in, after every event.
    pub(super) fn update_stand_in(&mut self, now: Instant) {
        // A new primary taking over leaves the listener to the old one until it serves.
        if !self.stand_in.enabled || self.taking_over {
            return;
        }
        let serving = self.slots.any_responsive(now, self.config.recycling.worker_timeout);
        let stand_in = &mut self.stand_in;
        if serving || self.stopping.is_some() {
            stand_in.unserved_since = None;
            if std::mem::take(&mut stand_in.active) {
                if serving {
                    tracing::info!("a worker serves again: the primary stops answering connections itself");
                }
                self.effects.push(Effect::StandIn(false));
            }
            return;
        }
        let since = *stand_in.unserved_since.get_or_insert(now);
        let due = since + self.config.queue_timeout;
        let retry_due = stand_in.retry_at.is_none_or(|at| at <= now);
        if !stand_in.active && retry_due && (now >= due || self.slots.no_worker_coming()) {
            tracing::warn!("no worker can serve: the primary answers new connections with 503 until one does");
            stand_in.active = true;
            stand_in.retry_at = None;
            self.effects.push(Effect::StandIn(true));
        }
    }

    /// When the stand-in may be due.
    pub(super) fn stand_in_deadline(&self) -> Option<Instant> {
        let s = &self.stand_in;
        if !s.enabled || s.active || self.stopping.is_some() || self.taking_over {
            return None;
        }
        let due = s.unserved_since? + self.config.queue_timeout;
        Some(s.retry_at.map_or(due, |retry| retry.max(due)))
    }
}
