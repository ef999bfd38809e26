//! The graceful stop: tell every worker to drain, answer queued connections `503`, and kill
//! whatever still runs at the deadline (or at a second signal). The cluster has stopped when
//! the last process's exit has arrived.

use std::time::Instant;

use super::{Core, Effect};
use crate::proto::ToWorker;

/// Why connections are answered `503` once the cluster stops.
pub(super) const WHY: &str = "the cluster is shutting down";

/// How a graceful shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Workers that were still running at the deadline (or at a second signal) and were killed.
    pub killed: usize,
}

impl ShutdownReport {
    /// True when every worker finished draining by itself.
    pub fn is_clean(&self) -> bool {
        self.killed == 0
    }
}

/// Set once the cluster is shutting down.
#[derive(Debug)]
pub(super) struct Shutdown {
    /// `None` once it passed and the stragglers were killed: then only their exits are awaited.
    deadline: Option<Instant>,
    killed: usize,
}

impl Shutdown {
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub(super) fn deadline_passed(&mut self) {
        self.deadline = None;
    }

    pub(super) fn killed(&mut self, count: usize) {
        self.killed += count;
    }

    pub(super) fn report(&self) -> ShutdownReport {
        ShutdownReport { killed: self.killed }
    }
}

impl Core {
    /// A stop request or signal: the first starts a graceful shutdown, the next kills.
    pub(super) fn stop(&mut self, why: &str, now: Instant) {
        if self.stopping.is_some() {
            tracing::warn!("{why} again: killing workers now");
            let killed = self.kill_all("killed on a second signal");
            if let Some(stop) = &mut self.stopping {
                stop.killed(killed);
            }
            return;
        }
        let timeout = self.config.shutdown_timeout;
        tracing::info!("{why} received: shutting down gracefully (timeout {timeout:?})");
        // Connections that waited for a worker go to one that can take them now, before the
        // workers are told to stop (and ahead of that message: see `primary::link`).
        self.flush_queue(now);
        self.stopping = Some(Shutdown { deadline: Some(now + timeout), killed: 0 });
        if !self.handed_over {
            // After a hand-over the new primary is the service's main process: it still runs.
            self.effects.push(Effect::Notify("STOPPING=1".to_owned()));
        }
        self.abort_rollout(WHY, now);
        self.abort_upgrade();
        for conn in self.queue.ids() {
            self.effects.push(Effect::Answer503 { conn, why: WHY });
        }
        self.queue.forget_all();
        let all: Vec<_> = self.slots.all().map(|w| w.id).collect();
        for worker in all {
            self.tell(worker, ToWorker::Shutdown);
        }
    }
}
