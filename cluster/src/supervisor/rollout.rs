//! Replacing slots one at a time (a reload, an operator's restart, recycling): start the
//! successor while the old worker keeps serving, wait for it to report ready (within
//! `--ready-timeout`), then retire the old one and go on to the next slot. A successor that
//! dies, cannot start or times out aborts the rollout: it is killed, the old workers keep
//! serving, and every waiting `herd ctl` gets the reason.

use std::{collections::VecDeque, time::Instant};

use super::{Core, Effect, ReplyTo};
use crate::control::Response;

/// A rolling replacement in progress.
#[derive(Debug)]
pub(super) struct Rollout {
    /// Slots still to replace, in order.
    pending: VecDeque<usize>,
    /// The slot whose successor is starting, and when it must be ready.
    current: Option<(usize, Instant)>,
    /// `herd ctl` clients waiting for the outcome.
    waiters: Vec<ReplyTo>,
    what: &'static str,
}

impl Rollout {
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.current.map(|(_, deadline)| deadline)
    }

    /// The slot whose successor is starting.
    pub(super) fn current(&self) -> Option<usize> {
        self.current.map(|(slot, _)| slot)
    }

    /// True if `slot` is being or will be replaced.
    pub(super) fn includes(&self, slot: usize) -> bool {
        self.current() == Some(slot) || self.pending.contains(&slot)
    }

    /// The slot was removed (scaled away): nothing is starting there any more.
    pub(super) fn slot_removed(&mut self, slot: usize) {
        if self.current() == Some(slot) {
            self.current = None;
        }
    }
}

impl Core {
    /// Replaces every slot, one at a time.
    pub(super) fn reload(&mut self, waiter: Option<ReplyTo>, now: Instant) {
        let slots = (0..self.slots.len()).collect();
        self.replace(slots, waiter, "reload", now);
    }

    pub(super) fn replace(&mut self, slots: Vec<usize>, waiter: Option<ReplyTo>, what: &'static str, now: Instant) {
        match &mut self.rollout {
            // Join the one in progress rather than starting a second over the same slots.
            Some(rollout) => {
                for slot in slots {
                    if !rollout.includes(slot) {
                        rollout.pending.push_back(slot);
                    }
                }
                rollout.waiters.extend(waiter);
            }
            None => {
                self.rollout =
                    Some(Rollout { pending: slots.into(), current: None, waiters: waiter.into_iter().collect(), what });
                self.advance_rollout(now);
            }
        }
    }

    /// Starts the next successor, or finishes the rollout when none is left.
    pub(super) fn advance_rollout(&mut self, now: Instant) {
        let Some(rollout) = &mut self.rollout else { return };
        if rollout.current.is_some() {
            return;
        }
        while let Some(slot) = rollout.pending.pop_front() {
            if slot >= self.slots.len() {
                continue; // scaled away meanwhile
            }
            rollout.current = Some((slot, now + self.config.ready_timeout));
            let successor = self.spawn_worker(slot, now);
            if let Some(s) = self.slots.slot_mut(slot) {
                s.respawn_at = None; // the successor is the slot's next worker
                s.successor = Some(successor);
            }
            return;
        }
        if let Some(rollout) = self.rollout.take() {
            tracing::info!("{} complete: every slot runs a new worker", rollout.what);
            self.last_reload = Some(format!("{} succeeded", rollout.what));
            self.counters.rollout(rollout.what, true);
            for to in rollout.waiters {
                self.effects.push(Effect::Reply { to, response: Response::ok() });
            }
        }
    }

    /// The successor of `slot` is ready: it takes over and the old worker retires.
    pub(super) fn promote_successor(&mut self, slot: usize, now: Instant) {
        let Some(s) = self.slots.slot_mut(slot) else { return };
        let Some(mut successor) = s.successor.take() else { return };
        successor.become_ready(now);
        if s.errored {
            // A reload or restart brought the slot back.
            s.errored = false;
            s.backoff.reset();
        }
        let new_pid = successor.pid;
        match s.worker.replace(successor) {
            Some(old) => {
                tracing::info!(
                    slot,
                    worker_pid = new_pid,
                    old_pid = old.pid,
                    "new worker reported ready, retiring the old one"
                );
                self.retire(old);
            }
            None => tracing::info!(slot, worker_pid = new_pid, "new worker reported ready"),
        }
        self.flush_queue(now);
        if let Some(rollout) = &mut self.rollout {
            if rollout.current() == Some(slot) {
                rollout.current = None;
            }
        }
        self.advance_rollout(now);
    }

    pub(super) fn rollout_timed_out(&mut self, now: Instant) {
        let Some(slot) = self.rollout.as_ref().and_then(Rollout::current) else { return };
        let reason = format!("the new worker for slot {slot} was not ready within {:?}", self.config.ready_timeout);
        self.abort_rollout(&reason, now);
    }

    /// Stops the rollout: kills the successor being started, keeps the old workers, and tells
    /// everyone waiting why.
    pub(super) fn abort_rollout(&mut self, reason: &str, now: Instant) {
        let Some(rollout) = self.rollout.take() else { return };
        if let Some(slot) = rollout.current() {
            if let Some(successor) = self.slots.slot_mut(slot).and_then(|s| s.successor.take()) {
                self.discard(successor);
            }
            let empty = self.slots.slot(slot).is_some_and(|s| s.worker.is_none() && !s.errored);
            if empty && self.stopping.is_none() {
                self.start(slot, now); // its old worker died meanwhile
            }
        }
        tracing::error!("{} failed: {reason}; the old workers keep serving", rollout.what);
        let outcome = format!("{} failed: {reason}", rollout.what);
        self.counters.rollout(rollout.what, false);
        for to in rollout.waiters {
            self.effects.push(Effect::Reply { to, response: Response::error(outcome.clone()) });
        }
        self.last_reload = Some(outcome);
    }
}
