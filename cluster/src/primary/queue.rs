//! Handing accepted connections to workers (primary-accept modes), and holding them while no
//! worker is ready.

use tokio::sync::mpsc;

use super::{State, Supervisor, MAX_QUEUED};
use crate::dispatch::{Candidate, Conn};

impl Supervisor {
    /// Hands `conn` to the worker the policy picks, or queues it until one is ready.
    pub(super) fn dispatch(&mut self, conn: Conn) {
        let mut conn = conn;
        loop {
            let candidates: Vec<Candidate> = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(slot, s)| {
                    s.worker.as_ref().filter(|w| w.state == State::Ready).map(|w| Candidate { slot, open: w.open })
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
                    worker.open += 1;
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
            return; // dropping them closes them: nobody is left to serve them
        }
        for conn in conns {
            self.dispatch(conn);
        }
    }

    fn enqueue(&mut self, conn: Conn) {
        if self.queue.is_empty() {
            // Once per episode: `flush_queue` empties the queue when a worker is ready again.
            tracing::info!("no worker is ready: holding new connections until one is");
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
        let has_candidate = self.slots.iter().any(|s| s.worker.as_ref().is_some_and(|w| w.state == State::Ready));
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
