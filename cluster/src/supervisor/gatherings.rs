//! The primary's side of application messaging (the data is the core's; the shell only
//! delivers the messages): relaying broadcasts, and running gathers
//! (ask every ready worker, collect the answers, hand them to the asker).
//!
//! Every payload is checked against [`MAX_PAYLOAD`] before it is queued for a link, so an
//! operator's (or a worker's) oversized message is refused with a reason instead of failing on
//! the socket; a reply set bigger than one message goes to the asker in parts.

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use serde_json::Value;

use super::{slots::State, Core, Effect, ReplyTo, Scrape, WorkerId};
use crate::{
    messaging::{self, MessagingError, Reply, GATHER_TIMEOUT, MAX_PAYLOAD},
    proto::{ToWorker, Unanswered},
};

/// How many bytes of replies go in one [`ToWorker::GatheredPart`]: one message, less room for
/// its envelope.
const PART_BUDGET: usize = crate::channel::MAX_MESSAGE - 512;

/// Who asked a gather.
#[derive(Debug, Clone, Copy)]
enum Asker {
    /// A worker, with its own id for the question.
    Worker { worker: WorkerId, id: u64 },
    /// A metrics request (`herd ctl metrics`, the admin listener).
    Scrape(ReplyTo),
}

/// One gather in progress.
#[derive(Debug)]
pub(super) struct Gathering {
    asker: Asker,
    /// Workers that have not answered yet.
    waiting: HashSet<WorkerId>,
    replies: Vec<Reply>,
    /// Workers that said they cannot answer.
    unanswered: Vec<Unanswered>,
    deadline: Instant,
}

/// Gathers in progress, by the primary's id.
#[derive(Debug, Default)]
pub(super) struct Gatherings {
    next_id: u64,
    open: HashMap<u64, Gathering>,
}

impl Gatherings {
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.open.values().map(|g| g.deadline).min()
    }
}

impl Core {
    /// Sends `payload` to every serving worker; returns how many it went to, or why it was
    /// refused (then it went to none).
    pub(super) fn relay_broadcast(&mut self, from: Option<usize>, payload: &Value) -> Result<usize, MessagingError> {
        messaging::check_size(payload)?;
        let to: Vec<WorkerId> = self.slots.serving().map(|w| w.id).collect();
        for &worker in &to {
            self.tell(worker, ToWorker::Message { from, payload: payload.clone() });
        }
        Ok(to.len())
    }

    /// Sends `payload` to one slot's worker; false if the slot has none.
    pub(super) fn relay_to(&mut self, slot: usize, payload: Value) -> Result<bool, MessagingError> {
        messaging::check_size(&payload)?;
        let Some(worker) = self.slots.slot(slot).and_then(|s| s.worker.as_ref()).map(|w| w.id) else {
            return Ok(false);
        };
        self.tell(worker, ToWorker::Message { from: None, payload });
        Ok(true)
    }

    pub(super) fn start_gather(&mut self, asker: WorkerId, asker_id: u64, payload: Value, now: Instant) {
        if let Err(err) = messaging::check_size(&payload) {
            // The asker checks this itself; a worker that does not is answered, not relayed.
            let unanswered = vec![Unanswered { slot: asker.slot, reason: format!("the question was refused: {err}") }];
            self.tell(asker, ToWorker::Gathered { id: asker_id, replies: Vec::new(), unanswered });
            return;
        }
        let id = self.gatherings.next_id;
        self.gatherings.next_id += 1;
        // A suspect worker would only make everyone wait for the deadline.
        let worker_timeout = self.config.recycling.worker_timeout;
        let asked: Vec<WorkerId> =
            self.slots.serving().filter(|w| w.is_responsive(now, worker_timeout)).map(|w| w.id).collect();
        for &worker in &asked {
            self.tell(worker, ToWorker::Query { id, payload: payload.clone() });
        }
        self.open_gathering(id, Asker::Worker { worker: asker, id: asker_id }, asked, now);
    }

    /// Waits for `asked`'s answers for `asker` (each has been told): closed once all answered,
    /// or at [`GATHER_TIMEOUT`].
    fn open_gathering(&mut self, id: u64, asker: Asker, asked: Vec<WorkerId>, now: Instant) {
        let gathering = Gathering {
            asker,
            waiting: asked.into_iter().collect(),
            replies: Vec::new(),
            unanswered: Vec::new(),
            deadline: now + GATHER_TIMEOUT,
        };
        self.gatherings.open.insert(id, gathering);
        self.finish_gathers(now, false);
    }

    /// Asks every worker that can answer (ready or draining, not suspect) for its metrics; the
    /// answer goes to `reply` as [`Effect::Scraped`] once all have answered or after
    /// [`GATHER_TIMEOUT`].
    pub(super) fn start_scrape(&mut self, reply: ReplyTo, now: Instant) {
        let id = self.gatherings.next_id;
        self.gatherings.next_id += 1;
        let worker_timeout = self.config.recycling.worker_timeout;
        // Retiring workers still serve their open connections: their counts belong in the totals.
        let asked: Vec<WorkerId> = self
            .slots
            .all()
            .filter(|w| w.pid.is_some() && !w.killed && w.state != State::Starting)
            .filter(|w| !w.liveness.is_suspect(now, worker_timeout))
            .map(|w| w.id)
            .collect();
        for &worker in &asked {
            self.tell(worker, ToWorker::Scrape { id });
        }
        self.open_gathering(id, Asker::Scrape(reply), asked, now);
    }

    pub(super) fn on_reply(&mut self, from: WorkerId, id: u64, payload: Value, now: Instant) {
        let pid = self.slots.get(from).and_then(|w| w.pid);
        if let (Some(g), Some(pid)) = (self.gatherings.open.get_mut(&id), pid) {
            if g.waiting.remove(&from) {
                g.replies.push(Reply { slot: from.slot, pid, payload });
            }
        }
        self.finish_gathers(now, false);
    }

    /// A worker cannot answer gather `id`.
    pub(super) fn on_unanswered(&mut self, from: WorkerId, id: u64, reason: String, now: Instant) {
        if let Some(g) = self.gatherings.open.get_mut(&id) {
            if g.waiting.remove(&from) {
                g.unanswered.push(Unanswered { slot: from.slot, reason });
            }
        }
        self.finish_gathers(now, false);
    }

    /// A worker is gone: nobody should wait for its answer.
    pub(super) fn forget_in_gathers(&mut self, gone: WorkerId, now: Instant) {
        for g in self.gatherings.open.values_mut() {
            g.waiting.remove(&gone);
        }
        self.finish_gathers(now, false);
    }

    /// Hands complete gathers (and, with `expire`, those past their deadline) to their askers.
    pub(super) fn finish_gathers(&mut self, now: Instant, expire: bool) {
        let done: Vec<u64> = self
            .gatherings
            .open
            .iter()
            .filter(|(_, g)| g.waiting.is_empty() || (expire && g.deadline <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let Some(mut g) = self.gatherings.open.remove(&id) else { continue };
            g.replies.sort_by_key(|r| r.slot);
            let (asker, asker_id) = match g.asker {
                Asker::Worker { worker, id } => (worker, id),
                Asker::Scrape(to) => {
                    // Those still waiting at the deadline did not answer either.
                    let unanswered = g.unanswered.len() + g.waiting.len();
                    let status = self.status(now);
                    let scrape = Scrape { status, counters: self.counters.clone(), replies: g.replies, unanswered };
                    self.effects.push(Effect::Scraped { to, scrape: Box::new(scrape) });
                    continue;
                }
            };
            if self.slots.get(asker).is_none() {
                continue; // the asker is gone
            }
            let mut parts = split_replies(g.replies);
            let last = parts.pop().unwrap_or_default();
            for replies in parts {
                self.tell(asker, ToWorker::GatheredPart { id: asker_id, replies });
            }
            self.tell(asker, ToWorker::Gathered { id: asker_id, replies: last, unanswered: g.unanswered });
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
