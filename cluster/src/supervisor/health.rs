//! The once-a-second check of every serving worker: hung (no heartbeat, while it starts or
//! serves), too big (resident memory), or old (requests served). A hung worker is killed, since it cannot drain; the
//! others are replaced gracefully through the rollout queue, which replaces one slot at a time,
//! so two slots never recycle at once.
//!
//! Long before a silent worker is killed it is *suspect*: after about two missed heartbeats
//! (or a hand-off it left unacknowledged) it gets no new connection, because a stopped or
//! stuck process would sit on every connection handed to it until `--worker-timeout`. The
//! first heartbeat it sends again clears it.

use std::time::{Duration, Instant};

use super::{slots::State, Core, Effect, Ticket, WorkerId};
use crate::proto::{HEARTBEAT_INTERVAL, RECLAIM_AFTER};

/// Silence after which a worker is suspect: two heartbeats missed, with half an interval of
/// slack for a busy machine.
const SUSPECT_AFTER: Duration = Duration::from_millis(HEARTBEAT_INTERVAL.as_millis() as u64 * 5 / 2);

/// What the primary knows of one worker's signs of life.
#[derive(Debug, Clone, Copy)]
pub(super) struct Liveness {
    last_heartbeat: Instant,
    /// It left a hand-off unacknowledged until the primary took it back; cleared by the next
    /// heartbeat.
    missed_handoff: bool,
    /// Its suspicion was logged (so it is logged once per episode).
    reported: bool,
}

/// How a worker is doing, judged from its signs of life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Health {
    Healthy,
    /// Gets no new connections.
    Suspect,
    /// Silent for longer than `--worker-timeout`: killed.
    Hung,
}

impl Liveness {
    pub(super) fn new(now: Instant) -> Self {
        Self { last_heartbeat: now, missed_handoff: false, reported: false }
    }

    /// A heartbeat arrived; returns true if the worker was suspect until now.
    pub(super) fn heartbeat(&mut self, now: Instant, worker_timeout: Duration) -> bool {
        let was_suspect = self.judge(now, worker_timeout) != Health::Healthy;
        *self = Self::new(now);
        was_suspect
    }

    /// It left a hand-off unacknowledged; returns true if that is news in this episode.
    pub(super) fn missed_handoff(&mut self) -> bool {
        !std::mem::replace(&mut self.missed_handoff, true)
    }

    pub(super) fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heartbeat)
    }

    pub(super) fn judge(&self, now: Instant, worker_timeout: Duration) -> Health {
        let silent = self.silent_for(now);
        if silent > worker_timeout {
            Health::Hung
        } else if self.missed_handoff || silent > SUSPECT_AFTER.min(worker_timeout) {
            Health::Suspect
        } else {
            Health::Healthy
        }
    }

    pub(super) fn is_suspect(&self, now: Instant, worker_timeout: Duration) -> bool {
        self.judge(now, worker_timeout) != Health::Healthy
    }

    /// True the first time it is called in a suspicion episode: time to log it.
    fn report(&mut self) -> bool {
        !std::mem::replace(&mut self.reported, true)
    }
}

impl Core {
    pub(super) fn on_heartbeat(&mut self, id: WorkerId, requests: u64, open: Option<u64>, now: Instant) {
        let worker_timeout = self.config.recycling.worker_timeout;
        let Some(w) = self.slots.get_mut(id) else { return };
        w.requests = requests;
        w.open_reported = open.or(w.open_reported);
        if w.liveness.heartbeat(now, worker_timeout) && w.state == State::Ready {
            tracing::info!(slot = id.slot, worker_pid = w.pid, "worker answers again: handing it connections");
            self.flush_queue(now);
        }
    }

    /// A worker left hand-offs unacknowledged: it is suspect until its next heartbeat, and the
    /// connections go to other workers.
    pub(super) fn on_reclaimed(&mut self, id: WorkerId, conns: Vec<Ticket>, now: Instant) {
        if let Some(w) = self.slots.get_mut(id) {
            w.open = w.open.saturating_sub(conns.len());
            // Once per episode: later batches of the same silence are no news.
            if w.liveness.missed_handoff() {
                tracing::warn!(
                    slot = id.slot,
                    worker_pid = w.pid,
                    "worker acknowledged none of {} connection(s) within {:?}: handing them to other workers, and no \
                     new ones to it until it answers again",
                    conns.len(),
                    RECLAIM_AFTER
                );
            }
        }
        self.redispatch(conns, now);
    }

    /// The once-a-second check of every serving worker.
    pub(super) fn check_workers(&mut self, now: Instant) {
        let worker_timeout = self.config.recycling.worker_timeout;
        let mut kill = Vec::new();
        let mut measure = Vec::new();
        let mut recycle = Vec::new();
        let rollout = self.rollout.as_ref();
        for (slot, s) in self.slots.iter_mut().enumerate() {
            let Some(w) = s.worker.as_mut().filter(|w| !w.killed) else { continue };
            let silent = w.liveness.silent_for(now);
            let kill_because = match w.state {
                // Workers send heartbeats while they start too: one that waits for its database
                // is left to wait, one that went silent would hold its slot forever.
                State::Starting if w.liveness.judge(now, worker_timeout) == Health::Hung => {
                    Some(format!("sent no heartbeat for {silent:.1?} while starting: stuck"))
                }
                State::Ready => match w.liveness.judge(now, worker_timeout) {
                    Health::Hung => Some(format!("sent no heartbeat for {silent:.1?}: hung")),
                    Health::Suspect if w.liveness.report() => {
                        tracing::warn!(
                            slot,
                            worker_pid = w.pid,
                            "worker silent for {silent:.1?}: no new connections for it until it answers again \
                             (killed after --worker-timeout {worker_timeout:?})"
                        );
                        None
                    }
                    Health::Suspect | Health::Healthy => None,
                },
                State::Starting | State::Draining => None,
            };
            if let Some(why) = kill_because {
                tracing::warn!(slot, worker_pid = w.pid, "worker {why}, killing it");
                w.killed = true;
                kill.push(w.id);
                continue;
            }
            if w.state != State::Ready {
                continue;
            }
            if s.successor.is_some() || rollout.is_some_and(|r| r.includes(slot)) {
                continue;
            }
            if let (Some(_), Some(pid)) = (self.config.recycling.max_memory, w.pid) {
                measure.push((w.id, pid));
            }
            if let Some(limit) = w.recycle_after.filter(|limit| w.requests >= *limit) {
                tracing::info!(
                    slot,
                    worker_pid = w.pid,
                    "worker served {} requests (limit {limit}): recycling it",
                    w.requests
                );
                recycle.push(slot);
            }
        }
        for worker in kill {
            self.effects.push(Effect::Kill { worker });
        }
        if !measure.is_empty() {
            self.effects.push(Effect::MeasureMemory { workers: measure });
        }
        for slot in recycle {
            self.replace(vec![slot], None, "max requests", now);
        }
    }

    /// Replaces a worker that grew past `--max-memory` (gracefully, through the rollout queue).
    pub(super) fn on_memory(&mut self, id: WorkerId, rss: u64, now: Instant) {
        let Some(max) = self.config.recycling.max_memory else { return };
        let replacing = self.rollout.as_ref().is_some_and(|r| r.includes(id.slot));
        let Some(w) = self.slots.slot(id.slot).and_then(|s| s.worker.as_ref()).filter(|w| w.id == id) else { return };
        if rss <= max || replacing || self.stopping.is_some() {
            return;
        }
        tracing::warn!(
            slot = id.slot,
            worker_pid = w.pid,
            "worker uses {} MiB, over --max-memory {} MiB: replacing it",
            rss >> 20,
            max >> 20
        );
        self.replace(vec![id.slot], None, "memory limit", now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[test]
    fn a_worker_is_suspect_after_two_missed_heartbeats_and_hung_after_the_timeout() {
        let start = Instant::now();
        let liveness = Liveness::new(start);
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(liveness.judge(at(1_000), TIMEOUT), Health::Healthy, "one interval late is normal");
        assert_eq!(liveness.judge(at(2_400), TIMEOUT), Health::Healthy);
        assert_eq!(liveness.judge(at(2_600), TIMEOUT), Health::Suspect, "two heartbeats missed");
        assert_eq!(liveness.judge(at(29_000), TIMEOUT), Health::Suspect);
        assert_eq!(liveness.judge(at(30_001), TIMEOUT), Health::Hung);
        // A short --worker-timeout makes it suspect no later than hung.
        assert_eq!(liveness.judge(at(1_500), Duration::from_secs(1)), Health::Hung);
        assert_eq!(liveness.judge(at(900), Duration::from_millis(800)), Health::Hung);
    }

    #[test]
    fn a_heartbeat_clears_suspicion_and_a_missed_handoff_causes_it() {
        let start = Instant::now();
        let mut liveness = Liveness::new(start);
        let later = start + Duration::from_secs(3);
        assert!(liveness.is_suspect(later, TIMEOUT));
        assert!(liveness.report(), "the first suspicion is logged");
        assert!(!liveness.report(), "once");
        assert!(liveness.heartbeat(later, TIMEOUT), "it was suspect until this heartbeat");
        assert!(!liveness.is_suspect(later, TIMEOUT));
        assert!(!liveness.heartbeat(later, TIMEOUT));

        assert!(liveness.missed_handoff(), "news");
        assert!(!liveness.missed_handoff(), "not news the second time");
        assert_eq!(
            liveness.judge(later, TIMEOUT),
            Health::Suspect,
            "a hand-off it did not take makes it suspect, silent or not"
        );
        assert!(liveness.heartbeat(later + Duration::from_millis(10), TIMEOUT));
        assert_eq!(liveness.judge(later + Duration::from_millis(10), TIMEOUT), Health::Healthy);
        assert!(liveness.report(), "a new episode is logged again");
    }
}
