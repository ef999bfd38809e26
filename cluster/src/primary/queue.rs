//! Handing accepted connections to workers (primary-accept modes), and holding them while no
//! worker can take them (for `--queue-timeout` at most: see [`super::unavailable`]).

use std::time::Instant;

use tokio::sync::mpsc;

use super::{State, Supervisor, MAX_QUEUED};
use crate::{
    config::Balance,
    dispatch::{Candidate, Conn},
};

impl Supervisor {
    /// Hands `conn` to the worker the policy picks, or queues it until one is ready.
    pub(super) fn dispatch(&mut self, conn: Conn) {
        let mut conn = conn;
        let (now, worker_timeout) = (Instant::now(), self.config.recycling.worker_timeout);
        loop {
            let candidates: Vec<Candidate> = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(slot, s)| {
                    let w = s.worker.as_ref().filter(|w| w.state == State::Ready)?;
                    Some(Candidate { slot, open: w.open, suspect: w.liveness.is_suspect(now, worker_timeout) })
                })
                .collect();
            let Some(slot) = self.chooser.choose(conn.peer.ip(), &candidates) else {
                return self.enqueue(conn);
            };
            let Some(worker) = self.slots[slot].worker.as_mut() else {
                return self.enqueue(conn);
            };
            match worker.outbox.send(conn) {
                Ok(()) => {
                    if self.config.balance == Balance::LeastConn {
                        worker.open += 1;
                    }
                    return;
                }
                Err(mpsc::error::SendError(returned)) => {
                    // Its link task has ended: the exit event is on its way. Choose again.
                    worker.state = State::Draining;
                    conn = returned;
                }
            }
        }
    }

    pub(super) fn redispatch(&mut self, conns: Vec<Conn>, stopping: bool) {
        if stopping {
            // Nobody is left to serve them.
            for conn in conns {
                self.unavailable.answer(conn.stream, "the cluster is shutting down");
            }
            return;
        }
        for conn in conns {
            self.dispatch(conn);
        }
    }

    fn enqueue(&mut self, conn: Conn) {
        if self.no_worker_coming() {
            return self.unavailable.answer(conn.stream, "every slot is errored");
        }
        if self.queue.is_empty() {
            // Once per episode: `flush_queue` empties the queue when a worker is ready again.
            tracing::info!(
                "no worker can take connections: holding new connections until one can (then 503 after --queue-timeout {:?})",
                self.config.queue_timeout
            );
        }
        self.queue.push_back(conn);
        if self.queue.len() >= MAX_QUEUED && !self.queue_full_logged {
            self.queue_full_logged = true;
            tracing::warn!(
                "dispatch queue full: {MAX_QUEUED} connections wait for a ready worker; further \
                 connections wait in the kernel's accept queue"
            );
        }
    }

    /// Hands queued connections to workers, oldest first, as long as one can take them.
    pub(super) fn flush_queue(&mut self) {
        let (now, worker_timeout) = (Instant::now(), self.config.recycling.worker_timeout);
        let has_candidate =
            self.slots.iter().any(|s| s.worker.as_ref().is_some_and(|w| w.is_responsive(now, worker_timeout)));
        if !has_candidate || self.queue.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.queue);
        tracing::info!("handing {} queued connection(s) to workers", queued.len());
        self.queue_full_logged = false;
        for conn in queued {
            self.dispatch(conn);
        }
    }
}
