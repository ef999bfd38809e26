//! The primary's side of application messaging: relaying broadcasts, and running gathers
//! (ask every ready worker, collect the answers, hand them to the asker).

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use tokio::time::Instant;

use super::{State, Supervisor};
use crate::{
    messaging::{Reply, GATHER_TIMEOUT},
    proto::ToWorker,
};

/// One gather in progress.
pub(super) struct Gathering {
    /// The asking worker, and its own id for the question.
    asker: (usize, u64),
    asker_id: u64,
    /// Workers (slot, generation) that have not answered yet.
    waiting: HashSet<(usize, u64)>,
    replies: Vec<Reply>,
    deadline: Instant,
}

/// Gathers in progress, by the primary's id.
#[derive(Default)]
pub(super) struct Gatherings {
    next_id: u64,
    open: HashMap<u64, Gathering>,
}

impl Gatherings {
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|g| g.deadline).min()
    }
}

impl Supervisor {
    /// Sends `payload` to every serving worker; returns how many it went to.
    pub(super) fn relay_broadcast(&self, from: Option<usize>, payload: &Value) -> usize {
        let mut sent = 0;
        for s in &self.slots {
            if let Some(w) = &s.worker {
                w.tell(ToWorker::Message { from, payload: payload.clone() });
                sent += 1;
            }
        }
        sent
    }

    /// Sends `payload` to one slot's worker.
    pub(super) fn relay_to(&self, slot: usize, payload: Value) -> bool {
        match self.slots.get(slot).and_then(|s| s.worker.as_ref()) {
            Some(w) => {
                w.tell(ToWorker::Message { from: None, payload });
                true
            }
            None => false,
        }
    }

    pub(super) fn start_gather(&mut self, asker: (usize, u64), asker_id: u64, payload: Value) {
        let id = self.gatherings.next_id;
        self.gatherings.next_id += 1;
        let mut waiting = HashSet::new();
        for (slot, s) in self.slots.iter().enumerate() {
            if let Some(w) = s.worker.as_ref().filter(|w| w.state == State::Ready) {
                w.tell(ToWorker::Query { id, payload: payload.clone() });
                waiting.insert((slot, w.generation));
            }
        }
        let gathering =
            Gathering { asker, asker_id, waiting, replies: Vec::new(), deadline: Instant::now() + GATHER_TIMEOUT };
        self.gatherings.open.insert(id, gathering);
        self.finish_gathers(false);
    }

    pub(super) fn on_reply(&mut self, slot: usize, generation: u64, id: u64, payload: Value) {
        let pid = self.worker_mut(slot, generation).map(|w| w.pid);
        if let (Some(g), Some(pid)) = (self.gatherings.open.get_mut(&id), pid) {
            if g.waiting.remove(&(slot, generation)) {
                g.replies.push(Reply { slot, pid, payload });
            }
        }
        self.finish_gathers(false);
    }

    /// A worker is gone: nobody should wait for its answer.
    pub(super) fn forget_in_gathers(&mut self, slot: usize, generation: u64) {
        for g in self.gatherings.open.values_mut() {
            g.waiting.remove(&(slot, generation));
        }
        self.finish_gathers(false);
    }

    /// Hands complete gathers (or, with `timed_out`, those past their deadline) to their askers.
    pub(super) fn finish_gathers(&mut self, timed_out: bool) {
        let now = Instant::now();
        let done: Vec<u64> = self
            .gatherings
            .open
            .iter()
            .filter(|(_, g)| g.waiting.is_empty() || (timed_out && g.deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let Some(mut g) = self.gatherings.open.remove(&id) else { continue };
            g.replies.sort_by_key(|r| r.slot);
            let (slot, generation) = g.asker;
            if let Some(asker) = self.worker_mut(slot, generation) {
                asker.tell(ToWorker::Gathered { id: g.asker_id, replies: g.replies });
            }
        }
    }
}
