//! The slots and their workers: starting a slot's worker, what a death means (restart now,
//! later, or mark the slot errored), and the workers that left their slot and are on their way
//! out (retired after a reload or a scale-down, or killed as a failed successor).
//!
//! A slot normally holds one worker. During a rollout it briefly holds two: the `successor`
//! starts while the current worker keeps serving (see `rollout.rs`).

use std::time::{Duration, Instant};

use super::{
    backoff::{Backoff, Verdict},
    health::Liveness,
    Core, WorkerId,
};
use crate::proto::ToWorker;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Starting,
    Ready,
    /// Said it drains (it got a signal itself, or was told to), or its link is closing.
    Draining,
}

/// What the core knows of one worker process.
#[derive(Debug, Clone)]
pub(super) struct Worker {
    pub(super) id: WorkerId,
    /// `None` only between [`super::Effect::Spawn`] and the shell's answer.
    pub(super) pid: Option<u32>,
    pub(super) started: Instant,
    pub(super) state: State,
    /// When it reported ready: a death is judged by how long the worker served, so a slow
    /// start followed by a crash still counts as dying young.
    pub(super) ready_since: Option<Instant>,
    /// Connections handed to it and not yet reported closed (least-conn's measure; workers
    /// report closes only in least-conn mode, so the other modes leave it at 0).
    pub(super) open: usize,
    /// Open connections, as of its last heartbeat (what `herd ctl status` shows, in every mode).
    pub(super) open_reported: Option<u64>,
    pub(super) liveness: Liveness,
    /// Requests served, as of its last heartbeat.
    pub(super) requests: u64,
    /// Served requests after which it is recycled (`--max-requests` plus its jitter).
    pub(super) recycle_after: Option<u64>,
    /// It was sent a SIGKILL (so a hung worker is killed once, not every check).
    pub(super) killed: bool,
}

impl Worker {
    fn new(id: WorkerId, now: Instant, recycle_after: Option<u64>) -> Self {
        Self {
            id,
            pid: None,
            started: now,
            state: State::Starting,
            ready_since: None,
            open: 0,
            open_reported: None,
            liveness: Liveness::new(now),
            requests: 0,
            recycle_after,
            killed: false,
        }
    }

    pub(super) fn become_ready(&mut self, now: Instant) {
        self.state = State::Ready;
        self.liveness = Liveness::new(now);
        self.ready_since = Some(now);
    }

    /// Ready, and not suspect of being stopped or stuck: new connections (and gathers) may go
    /// to it.
    pub(super) fn is_responsive(&self, now: Instant, worker_timeout: Duration) -> bool {
        self.state == State::Ready && !self.liveness.is_suspect(now, worker_timeout)
    }

    fn serving_for(&self, now: Instant) -> Duration {
        self.ready_since.map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }
}

/// One worker position.
#[derive(Debug, Default)]
pub(super) struct Slot {
    /// The worker serving this slot.
    pub(super) worker: Option<Worker>,
    /// Its replacement while a rollout starts it.
    pub(super) successor: Option<Worker>,
    pub(super) backoff: Backoff,
    /// When its next worker is due after a backoff delay.
    pub(super) respawn_at: Option<Instant>,
    /// Workers of this slot that died and were replaced.
    pub(super) restarts: u64,
    /// Its workers died too often: left down until an operator restarts it.
    pub(super) errored: bool,
}

/// Every slot, and the processes that left theirs.
#[derive(Debug)]
pub(super) struct Slots {
    slots: Vec<Slot>,
    /// Workers out of their slot, on their way out: retired (draining) or killed. Their slot
    /// may have been removed since.
    pub(super) departing: Vec<Worker>,
    next_generation: u64,
    seed: u64,
}

impl Slots {
    pub(super) fn new(count: usize, seed: u64) -> Self {
        Self { slots: (0..count).map(|_| Slot::default()).collect(), departing: Vec::new(), next_generation: 0, seed }
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn slot(&self, slot: usize) -> Option<&Slot> {
        self.slots.get(slot)
    }

    pub(super) fn slot_mut(&mut self, slot: usize) -> Option<&mut Slot> {
        self.slots.get_mut(slot)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slots.iter_mut()
    }

    pub(super) fn push(&mut self) {
        self.slots.push(Slot::default());
    }

    pub(super) fn pop(&mut self) -> Option<Slot> {
        self.slots.pop()
    }

    /// A new worker record for `slot` (the caller puts it in place and asks for the spawn).
    pub(super) fn new_worker(&mut self, slot: usize, now: Instant, max_requests: Option<u64>, jitter: u64) -> Worker {
        let id = WorkerId { slot, generation: self.next_generation };
        self.next_generation += 1;
        let recycle_after = max_requests.map(|max| {
            // Jitter, so that workers started together do not all recycle together.
            max + splitmix(self.seed ^ id.generation) % (jitter + 1)
        });
        Worker::new(id, now, recycle_after)
    }

    /// Every process: serving, starting as a successor, or departing.
    pub(super) fn all(&self) -> impl Iterator<Item = &Worker> {
        self.slots.iter().flat_map(|s| s.worker.iter().chain(s.successor.iter())).chain(self.departing.iter())
    }

    pub(super) fn processes(&self) -> usize {
        self.all().count()
    }

    /// The slots' serving workers (not successors, not departing).
    pub(super) fn serving(&self) -> impl Iterator<Item = &Worker> {
        self.slots.iter().filter_map(|s| s.worker.as_ref())
    }

    /// The process `id`, wherever it is.
    pub(super) fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        let is = |w: &&mut Worker| w.id == id;
        if let Some(s) = self.slots.get_mut(id.slot) {
            if let Some(w) = s.worker.as_mut().filter(is) {
                return Some(w);
            }
            if let Some(w) = s.successor.as_mut().filter(is) {
                return Some(w);
            }
        }
        self.departing.iter_mut().find(|w| w.id == id)
    }

    pub(super) fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.all().find(|w| w.id == id)
    }

    /// True when no worker will serve again without an operator: every slot is errored, with no
    /// process starting in it (a reload or a restart may start one there).
    pub(super) fn no_worker_coming(&self) -> bool {
        !self.slots.is_empty() && self.slots.iter().all(|s| s.errored && s.worker.is_none() && s.successor.is_none())
    }

    pub(super) fn any_responsive(&self, now: Instant, worker_timeout: Duration) -> bool {
        self.serving().any(|w| w.is_responsive(now, worker_timeout))
    }

    pub(super) fn next_respawn(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.respawn_at).min()
    }

    /// Slots whose backoff delay is over (their timers are cleared).
    pub(super) fn respawns_due(&mut self, now: Instant) -> Vec<usize> {
        let mut due = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.respawn_at.is_some_and(|at| at <= now) {
                s.respawn_at = None;
                if s.worker.is_none() && s.successor.is_none() && !s.errored {
                    due.push(i);
                }
            }
        }
        due
    }
}

/// SplitMix64: a well-mixed 64-bit value from any input, for reproducible jitter.
pub(super) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Core {
    /// Starts a worker in `slot`'s serving place.
    pub(super) fn start(&mut self, slot: usize, now: Instant) {
        let worker = self.spawn_worker(slot, now);
        if let Some(s) = self.slots.slot_mut(slot) {
            s.respawn_at = None;
            s.worker = Some(worker);
        }
    }

    /// A new worker record for `slot`, and the effect that starts its process.
    pub(super) fn spawn_worker(&mut self, slot: usize, now: Instant) -> Worker {
        let recycling = &self.config.recycling;
        let worker = self.slots.new_worker(slot, now, recycling.max_requests, recycling.max_requests_jitter);
        self.effects.push(super::Effect::Spawn { worker: worker.id });
        worker
    }

    pub(super) fn on_spawned(&mut self, id: WorkerId, pid: u32) {
        if let Some(w) = self.slots.get_mut(id) {
            w.pid = Some(pid);
            tracing::info!(slot = id.slot, worker_pid = pid, generation = id.generation, "worker process started");
        }
    }

    pub(super) fn on_spawn_failed(&mut self, id: WorkerId, error: &str, exhaustion: bool, now: Instant) {
        let Some(s) = self.slots.slot_mut(id.slot) else { return };
        if s.successor.take_if(|w| w.id == id).is_some() {
            self.abort_rollout(&format!("cannot start a new worker for slot {}: {error}", id.slot), now);
            return;
        }
        if s.worker.take_if(|w| w.id == id).is_none() {
            return;
        }
        let policy = &self.config.restart;
        // Out of descriptors or memory is the machine's state, not the worker's fault, and
        // passes as connections close: retry, and never count it toward `errored`.
        if exhaustion {
            let delay = s.backoff.on_shortage(policy);
            tracing::warn!(
                slot = id.slot,
                "cannot start worker: {error}; retrying in {delay:?} (not counted as a crash)"
            );
            s.respawn_at = Some(now + delay);
            return;
        }
        match s.backoff.on_exit(Duration::ZERO, now, policy) {
            Verdict::RestartIn(delay) => {
                tracing::warn!(slot = id.slot, "cannot start worker: {error}; retrying in {delay:?}");
                s.respawn_at = Some(now + delay);
            }
            Verdict::GiveUp => {
                s.errored = true;
                tracing::error!(slot = id.slot, "worker cannot be started ({error}): slot marked errored");
            }
        }
    }

    pub(super) fn on_exit(&mut self, id: WorkerId, how: &str, death: super::Death, now: Instant) {
        if let Some(i) = self.slots.departing.iter().position(|w| w.id == id) {
            let worker = self.slots.departing.swap_remove(i);
            tracing::info!(slot = id.slot, worker_pid = worker.pid, "worker retired ({how})");
            return;
        }
        let stopping = self.stopping.is_some();
        let Some(s) = self.slots.slot_mut(id.slot) else { return };
        if let Some(successor) = s.successor.take_if(|w| w.id == id) {
            let reason = format!(
                "the new worker for slot {} (pid {}) {how} before it was ready",
                id.slot,
                successor.pid.unwrap_or_default()
            );
            self.abort_rollout(&reason, now);
            return;
        }
        let Some(worker) = s.worker.take_if(|w| w.id == id) else { return };
        let pid = worker.pid;
        if stopping {
            tracing::info!(slot = id.slot, worker_pid = pid, "worker {how}");
            return;
        }
        s.restarts += 1;
        self.counters.death(id.slot, death, worker.killed);
        if s.successor.is_some() {
            // A rollout is already starting its replacement.
            tracing::warn!(slot = id.slot, worker_pid = pid, "worker {how}; its successor is starting");
            return;
        }
        let policy = &self.config.restart;
        match s.backoff.on_exit(worker.serving_for(now), now, policy) {
            Verdict::RestartIn(delay) if delay.is_zero() => {
                tracing::warn!(slot = id.slot, worker_pid = pid, "worker {how}, restarting");
                self.start(id.slot, now);
            }
            Verdict::RestartIn(delay) => {
                tracing::warn!(slot = id.slot, worker_pid = pid, "worker {how}, restarting in {delay:?}");
                s.respawn_at = Some(now + delay);
            }
            Verdict::GiveUp => {
                s.errored = true;
                tracing::error!(
                    slot = id.slot,
                    worker_pid = pid,
                    "worker {how}; slot {} died more than {} times within {:?}: marked errored and left down \
                     (`herd ctl restart {}` brings it back)",
                    id.slot,
                    policy.max_restarts,
                    policy.window,
                    id.slot
                );
            }
        }
    }

    pub(super) fn on_ready(&mut self, id: WorkerId, now: Instant) {
        let is_successor = self.slots.slot(id.slot).is_some_and(|s| s.successor.as_ref().is_some_and(|w| w.id == id));
        if is_successor {
            self.promote_successor(id.slot, now);
            return;
        }
        let Some(w) = self.slots.slot_mut(id.slot).and_then(|s| s.worker.as_mut()).filter(|w| w.id == id) else {
            return; // a departing worker does not serve again
        };
        if w.state != State::Starting {
            return;
        }
        w.become_ready(now);
        tracing::info!(slot = id.slot, worker_pid = w.pid, "worker reported ready");
        let ready = self.slots.serving().filter(|w| w.state == State::Ready).count();
        if ready == self.slots.len() && !self.all_ready_logged {
            self.all_ready_logged = true;
            self.took_over();
            tracing::info!("all {ready} workers ready");
            self.effects.push(super::Effect::Notify(format!("READY=1\nSTATUS={ready} workers ready")));
        }
        self.flush_queue(now);
    }

    /// Moves a replaced worker aside to drain: no new connections, requests on its open ones
    /// answered with `Connection: close`, exit when idle.
    pub(super) fn retire(&mut self, mut worker: Worker) {
        worker.state = State::Draining;
        self.tell(worker.id, ToWorker::Retire);
        self.slots.departing.push(worker);
    }

    /// Kills a worker that will not serve (a successor whose rollout failed or whose slot was
    /// removed); it departs until its exit arrives.
    pub(super) fn discard(&mut self, mut worker: Worker) {
        worker.state = State::Draining;
        worker.killed = true;
        self.effects.push(super::Effect::Kill { worker: worker.id });
        self.slots.departing.push(worker);
    }
}
