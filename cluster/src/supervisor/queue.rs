//! Connections the primary accepted (primary-accept modes): handing each to the worker the
//! policy picks, and holding them while no worker can take them, for `--queue-timeout` at
//! most; then, or at once when every slot is errored, the shell answers them `503`.

use std::{collections::VecDeque, time::Duration, time::Instant};

use super::{slots::State, Core, Effect, Ticket};
use crate::{config::Balance, dispatch::Candidate};

/// Connections the primary holds while no worker can take them. Beyond this, new connections
/// wait in the kernel's accept queue (the listen backlog) until workers catch up.
pub(super) const MAX_QUEUED: usize = 1024;

/// Why a queued connection is answered `503`.
const OVERDUE: &str = "no worker could take them within --queue-timeout";
pub(super) const ERRORED: &str = "every slot is errored";

/// Accepted connections waiting for a worker, oldest first.
#[derive(Debug, Default)]
pub(super) struct Queue {
    waiting: VecDeque<Ticket>,
    full_logged: bool,
}

impl Queue {
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub(super) fn ids(&self) -> Vec<u64> {
        self.waiting.iter().map(|t| t.id).collect()
    }

    /// Forgets connections the shell closed (their clients had gone).
    pub(super) fn forget(&mut self, ids: &[u64]) {
        let before = self.waiting.len();
        let gone: std::collections::HashSet<u64> = ids.iter().copied().collect();
        self.waiting.retain(|t| !gone.contains(&t.id));
        let dropped = before - self.waiting.len();
        if dropped > 0 {
            tracing::info!(
                "dropped {dropped} queued connection(s) whose client had gone; {} still queued",
                self.waiting.len()
            );
        }
    }

    /// When the longest-waiting connection is due for its 503 (now, when no worker is coming).
    pub(super) fn deadline(&self, timeout: Duration, no_worker_coming: bool) -> Option<Instant> {
        let oldest = self.waiting.front()?.accepted_at;
        Some(if no_worker_coming { oldest } else { oldest + timeout })
    }

    pub(super) fn forget_all(&mut self) {
        self.take_all();
    }

    fn take_all(&mut self) -> VecDeque<Ticket> {
        self.full_logged = false;
        std::mem::take(&mut self.waiting)
    }
}

impl Core {
    /// Hands `conn` to the worker the policy picks, or queues it until one can take it.
    pub(super) fn dispatch(&mut self, conn: Ticket, now: Instant) {
        let worker_timeout = self.config.recycling.worker_timeout;
        let candidates: Vec<Candidate> = self
            .slots
            .serving()
            .filter(|w| w.state == State::Ready)
            .map(|w| Candidate { slot: w.id.slot, open: w.open, suspect: w.liveness.is_suspect(now, worker_timeout) })
            .collect();
        let chosen = self.chooser.choose(conn.client, &candidates);
        let Some(worker) = chosen.and_then(|slot| self.slots.slot_mut(slot)).and_then(|s| s.worker.as_mut()) else {
            return self.enqueue(conn);
        };
        if self.config.balance == Balance::LeastConn {
            worker.open += 1;
        }
        self.effects.push(Effect::Hand { worker: worker.id, conn: conn.id });
    }

    /// Connections that came back from a worker (refused, reclaimed, orphaned by its death).
    pub(super) fn redispatch(&mut self, conns: Vec<Ticket>, now: Instant) {
        for conn in conns {
            if self.stopping.is_some() {
                // Nobody is left to serve them.
                self.effects.push(Effect::Answer503 { conn: conn.id, why: super::shutdown::WHY });
            } else {
                self.dispatch(conn, now);
            }
        }
    }

    fn enqueue(&mut self, conn: Ticket) {
        if self.slots.no_worker_coming() {
            return self.effects.push(Effect::Answer503 { conn: conn.id, why: ERRORED });
        }
        let queue = &mut self.queue;
        if queue.waiting.is_empty() {
            // Once per episode: `flush_queue` empties the queue when a worker can take them.
            tracing::info!(
                "no worker can take connections: holding new connections until one can (then 503 after \
                 --queue-timeout {:?})",
                self.config.queue_timeout
            );
        }
        // Keep the queue in order of acceptance: a connection that came back from a worker
        // waited longer than the ones accepted since.
        let at = queue.waiting.partition_point(|t| t.accepted_at <= conn.accepted_at);
        queue.waiting.insert(at, conn);
        if queue.waiting.len() >= MAX_QUEUED && !queue.full_logged {
            queue.full_logged = true;
            tracing::warn!(
                "dispatch queue full: {MAX_QUEUED} connections wait for a ready worker; further connections wait in \
                 the kernel's accept queue"
            );
        }
    }

    /// Hands queued connections to workers, oldest first, as long as one can take them.
    pub(super) fn flush_queue(&mut self, now: Instant) {
        if self.queue.is_empty() || !self.slots.any_responsive(now, self.config.recycling.worker_timeout) {
            return;
        }
        let queued = self.queue.take_all();
        tracing::info!("handing {} queued connection(s) to workers", queued.len());
        for conn in queued {
            self.dispatch(conn, now);
        }
    }

    /// Answers 503 to every queued connection that waited `--queue-timeout` (all of them when
    /// every slot is errored).
    pub(super) fn answer_overdue(&mut self, now: Instant) {
        let every = self.slots.no_worker_coming();
        let timeout = self.config.queue_timeout;
        let why = if every { ERRORED } else { OVERDUE };
        while let Some(oldest) = self.queue.waiting.front() {
            if !every && now.saturating_duration_since(oldest.accepted_at) < timeout {
                break;
            }
            if let Some(conn) = self.queue.waiting.pop_front() {
                self.effects.push(Effect::Answer503 { conn: conn.id, why });
            }
        }
    }
}
