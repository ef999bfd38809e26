//! The primary's side of application messaging: relaying broadcasts, and running gathers
//! (ask every ready worker, collect the answers, hand them to the asker).
//!
//! Every payload is checked against [`MAX_PAYLOAD`] before it is queued for a link, so an
//! operator's (or a worker's) oversized message is refused with a reason instead of failing on
//! the socket; a reply set bigger than one message goes to the asker in parts.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use tokio::time::Instant;

use super::Supervisor;
use crate::{
    messaging::{self, MessagingError, Reply, GATHER_TIMEOUT, MAX_PAYLOAD},
    proto::{ToWorker, Unanswered},
};

/// How many bytes of replies go in one [`ToWorker::GatheredPart`]: one message, less room for
/// its envelope.
const PART_BUDGET: usize = crate::channel::MAX_MESSAGE - 512;

/// One gather in progress.
pub(super) struct Gathering {
    /// The asking worker, and its own id for the question.
    asker: (usize, u64),
    asker_id: u64,
    /// Workers (slot, generation) that have not answered yet.
    waiting: HashSet<(usize, u64)>,
    replies: Vec<Reply>,
    /// Workers that said they cannot answer.
    unanswered: Vec<Unanswered>,
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
    /// Sends `payload` to every serving worker; returns how many it went to, or why it was
    /// refused (then it went to none).
    pub(super) fn relay_broadcast(&self, from: Option<usize>, payload: &Value) -> Result<usize, MessagingError> {
        messaging::check_size(payload)?;
        let mut sent = 0;
        for s in &self.slots {
            if let Some(w) = &s.worker {
                w.tell(ToWorker::Message { from, payload: payload.clone() });
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Sends `payload` to one slot's worker; false if the slot has none.
    pub(super) fn relay_to(&self, slot: usize, payload: Value) -> Result<bool, MessagingError> {
        messaging::check_size(&payload)?;
        Ok(match self.slots.get(slot).and_then(|s| s.worker.as_ref()) {
            Some(w) => {
                w.tell(ToWorker::Message { from: None, payload });
                true
            }
            None => false,
        })
    }

    pub(super) fn start_gather(&mut self, asker: (usize, u64), asker_id: u64, payload: Value) {
        if let Err(err) = messaging::check_size(&payload) {
            // The asker checks this itself; a worker that does not is answered, not relayed.
            if let Some(w) = self.worker_mut(asker.0, asker.1) {
                let unanswered = vec![Unanswered { slot: asker.0, reason: format!("the question was refused: {err}") }];
                w.tell(ToWorker::Gathered { id: asker_id, replies: Vec::new(), unanswered });
            }
            return;
        }
        let id = self.gatherings.next_id;
        self.gatherings.next_id += 1;
        let mut waiting = HashSet::new();
        // A suspect worker would only make everyone wait for the deadline.
        let (now, worker_timeout) = (std::time::Instant::now(), self.config.recycling.worker_timeout);
        for (slot, s) in self.slots.iter().enumerate() {
            if let Some(w) = s.worker.as_ref().filter(|w| w.is_responsive(now, worker_timeout)) {
                w.tell(ToWorker::Query { id, payload: payload.clone() });
                waiting.insert((slot, w.generation));
            }
        }
        let gathering = Gathering {
            asker,
            asker_id,
            waiting,
            replies: Vec::new(),
            unanswered: Vec::new(),
            deadline: Instant::now() + GATHER_TIMEOUT,
        };
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

    /// A worker cannot answer gather `id`.
    pub(super) fn on_unanswered(&mut self, slot: usize, generation: u64, id: u64, reason: String) {
        if let Some(g) = self.gatherings.open.get_mut(&id) {
            if g.waiting.remove(&(slot, generation)) {
                g.unanswered.push(Unanswered { slot, reason });
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
                let mut parts = split_replies(g.replies);
                let last = parts.pop().unwrap_or_default();
                for replies in parts {
                    asker.tell(ToWorker::GatheredPart { id: g.asker_id, replies });
                }
                asker.tell(ToWorker::Gathered { id: g.asker_id, replies: last, unanswered: g.unanswered });
            }
        }
    }
}

/// Splits a reply set into runs that each fit in one message ([`PART_BUDGET`]). Each reply
/// fits on its own: workers send at most [`MAX_PAYLOAD`] bytes of answer.
fn split_replies(replies: Vec<Reply>) -> Vec<Vec<Reply>> {
    let mut parts = vec![Vec::new()];
    let mut used = 0;
    for reply in replies {
        let size = serde_json::to_vec(&reply).map_or(MAX_PAYLOAD, |b| b.len()) + 1;
        if used + size > PART_BUDGET && parts.last().is_some_and(|p| !p.is_empty()) {
            parts.push(Vec::new());
            used = 0;
        }
        used += size;
        if let Some(part) = parts.last_mut() {
            part.push(reply);
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(slot: usize, bytes: usize) -> Reply {
        Reply { slot, pid: 1, payload: Value::String("x".repeat(bytes)) }
    }

    #[test]
    fn a_reply_set_bigger_than_one_message_is_split_into_parts_that_fit() {
        let replies: Vec<Reply> = (0..10).map(|slot| reply(slot, MAX_PAYLOAD - 100)).collect();
        let parts = split_replies(replies);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 10);
        for part in &parts {
            let msg = ToWorker::GatheredPart { id: u64::MAX, replies: part.clone() };
            crate::channel::encode(&msg).expect("each part fits in one message");
        }
        assert_eq!(split_replies(Vec::new()), vec![Vec::<Reply>::new()], "an empty set is one empty part");
        assert_eq!(split_replies(vec![reply(0, 10), reply(1, 10)]).len(), 1, "small sets stay whole");
    }
}
