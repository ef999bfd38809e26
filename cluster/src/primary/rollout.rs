//! Operator actions on the running cluster: rolling reload, restarting one slot, scaling, and
//! the status report.
//!
//! A rollout replaces slots one at a time: start the successor while the old worker keeps
//! serving, wait for it to report ready (within `ready_timeout`), then retire the old one and
//! go on to the next slot. A successor that dies or times out aborts the rollout: the old
//! workers keep serving and every waiting `herd ctl` gets the reason.

use std::{collections::VecDeque, time::Instant};

use tokio::sync::oneshot;

use super::{State, Supervisor, Worker};
use crate::{
    control::{Request, Response, Status, WorkerStatus},
    proto::ToWorker,
};

/// Most workers `scale` accepts.
const MAX_WORKERS: usize = crate::config::MAX_WORKERS;

/// A rolling replacement in progress.
pub(super) struct Rollout {
    /// Slots still to replace, in order.
    pending: VecDeque<usize>,
    /// The slot whose successor is starting, and when it must be ready.
    current: Option<(usize, tokio::time::Instant)>,
    /// `herd ctl` requests waiting for the outcome.
    waiters: Vec<oneshot::Sender<Response>>,
    what: &'static str,
}

impl Rollout {
    pub(super) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.current.map(|(_, deadline)| deadline)
    }

    /// True if `slot` is being or will be replaced.
    pub(super) fn includes(&self, slot: usize) -> bool {
        self.current.is_some_and(|(s, _)| s == slot) || self.pending.contains(&slot)
    }
}

impl Supervisor {
    pub(super) fn on_request(&mut self, request: Request, reply: oneshot::Sender<Response>, stopping: bool) {
        if stopping {
            let _ = reply.send(Response::error("the cluster is shutting down"));
            return;
        }
        match request {
            Request::Status => {
                let _ = reply.send(Response { status: Some(self.status()), ..Response::ok() });
            }
            Request::Reload => {
                tracing::info!("reload requested over the control socket");
                self.reload(Some(reply));
            }
            Request::Restart { slot } if slot >= self.slots.len() => {
                let _ = reply.send(Response::error(format!("no slot {slot} (slots are 0..{})", self.slots.len())));
            }
            Request::Restart { slot } => {
                let s = &mut self.slots[slot];
                if s.errored {
                    tracing::info!("slot {slot} restarted by an operator after being errored");
                    s.errored = false;
                    s.backoff.reset();
                }
                self.replace(vec![slot], Some(reply), "restart");
            }
            Request::Scale { to, by } => {
                let target = match (to, by) {
                    (Some(n), None) => Ok(n),
                    (None, Some(k)) => Ok(self.slots.len().saturating_add_signed(k as isize)),
                    _ => Err("scale needs exactly one of `to` and `by`"),
                };
                let _ = reply.send(match target {
                    Ok(n) => match self.scale_to(n) {
                        Ok(()) => Response { workers: Some(self.slots.len()), ..Response::ok() },
                        Err(reason) => Response::error(reason),
                    },
                    Err(reason) => Response::error(reason),
                });
            }
            Request::Send { slot: Some(slot), payload } => {
                let _ = reply.send(match self.relay_to(slot, payload) {
                    Ok(true) => Response { workers: Some(1), ..Response::ok() },
                    Ok(false) => Response::error(format!("no worker in slot {slot}")),
                    Err(err) => Response::error(format!("not sent: {err}")),
                });
            }
            Request::Send { slot: None, payload } => {
                let _ = reply.send(match self.relay_broadcast(None, &payload) {
                    Ok(sent) => Response { workers: Some(sent), ..Response::ok() },
                    Err(err) => Response::error(format!("not sent: {err}")),
                });
            }
            Request::Stop | Request::Logs => unreachable!("handled by the run loop and the control socket"),
        }
    }

    /// Replaces every slot, one at a time.
    pub(super) fn reload(&mut self, waiter: Option<oneshot::Sender<Response>>) {
        let slots = (0..self.slots.len()).collect();
        self.replace(slots, waiter, "reload");
    }

    pub(super) fn replace(&mut self, slots: Vec<usize>, waiter: Option<oneshot::Sender<Response>>, what: &'static str) {
        match &mut self.rollout {
            // Join the one in progress rather than starting a second over the same slots.
            Some(rollout) => {
                for slot in slots {
                    if !rollout.pending.contains(&slot) && rollout.current.map(|(s, _)| s) != Some(slot) {
                        rollout.pending.push_back(slot);
                    }
                }
                rollout.waiters.extend(waiter);
            }
            None => {
                self.rollout =
                    Some(Rollout { pending: slots.into(), current: None, waiters: waiter.into_iter().collect(), what });
                self.advance_rollout();
            }
        }
    }

    /// Starts the next successor, or finishes the rollout when none is left.
    fn advance_rollout(&mut self) {
        let Some(rollout) = &mut self.rollout else { return };
        if rollout.current.is_some() {
            return;
        }
        while let Some(slot) = rollout.pending.pop_front() {
            if slot >= self.slots.len() {
                continue; // scaled away meanwhile
            }
            let deadline = tokio::time::Instant::now() + self.config.ready_timeout;
            rollout.current = Some((slot, deadline));
            match self.spawn(slot) {
                Some(successor) => self.slots[slot].successor = Some(successor),
                None => self.abort_rollout(&format!("cannot start a new worker for slot {slot}")),
            }
            return;
        }
        if let Some(rollout) = self.rollout.take() {
            tracing::info!("{} complete: every slot runs a new worker", rollout.what);
            self.last_reload = Some(format!("{} succeeded", rollout.what));
            for waiter in rollout.waiters {
                let _ = waiter.send(Response::ok());
            }
        }
    }

    /// The successor of `slot` is ready: it takes over and the old worker retires.
    pub(super) fn promote_successor(&mut self, slot: usize) {
        let s = &mut self.slots[slot];
        let Some(mut successor) = s.successor.take() else { return };
        successor.become_ready();
        let old = s.worker.replace(successor);
        let new_pid = s.worker.as_ref().map_or(0, |w| w.pid);
        match old {
            Some(old) => {
                tracing::info!("worker {slot} pid {new_pid} ready, retiring pid {}", old.pid);
                self.retire(slot, old);
            }
            None => tracing::info!("worker {slot} pid {new_pid} ready"),
        }
        self.flush_queue();
        if let Some(rollout) = &mut self.rollout {
            if rollout.current.map(|(s, _)| s) == Some(slot) {
                rollout.current = None;
            }
        }
        self.advance_rollout();
    }

    pub(super) fn rollout_timed_out(&mut self) {
        let Some((slot, _)) = self.rollout.as_ref().and_then(|r| r.current) else { return };
        let reason = format!("the new worker for slot {slot} was not ready within {:?}", self.config.ready_timeout);
        self.abort_rollout(&reason);
    }

    /// Stops the rollout: kills the successor being started, keeps the old workers, and tells
    /// everyone waiting why.
    pub(super) fn abort_rollout(&mut self, reason: &str) {
        let Some(rollout) = self.rollout.take() else { return };
        if let Some((slot, _)) = rollout.current {
            if let Some(successor) = self.slots.get_mut(slot).and_then(|s| s.successor.take()) {
                successor.kill();
            }
            if self.slots.get(slot).is_some_and(|s| s.worker.is_none()) {
                self.start(slot); // its old worker died meanwhile
            }
        }
        tracing::error!("{} failed: {reason}; the old workers keep serving", rollout.what);
        self.last_reload = Some(format!("{} failed: {reason}", rollout.what));
        for waiter in rollout.waiters {
            let _ = waiter.send(Response::error(format!("{} failed: {reason}", rollout.what)));
        }
    }

    /// Moves a replaced worker aside to drain: no new connections, requests on its open ones
    /// answered with `Connection: close`, exit when idle.
    fn retire(&mut self, slot: usize, mut worker: Worker) {
        worker.state = State::Draining;
        worker.tell(ToWorker::Retire);
        self.retiring.push((slot, worker));
    }

    pub(super) fn scale_by(&mut self, delta: isize) {
        let target = self.slots.len().saturating_add_signed(delta);
        if let Err(reason) = self.scale_to(target) {
            tracing::warn!("cannot scale: {reason}");
        }
    }

    /// Adds slots (starting their workers) or removes the highest ones (draining their workers).
    fn scale_to(&mut self, target: usize) -> Result<(), String> {
        if !(1..=MAX_WORKERS).contains(&target) {
            return Err(format!("the worker count must be between 1 and {MAX_WORKERS}, not {target}"));
        }
        let before = self.slots.len();
        if target == before {
            return Ok(());
        }
        tracing::info!("scaling from {before} to {target} workers");
        while self.slots.len() < target {
            self.slots.push(super::Slot::default());
            self.start(self.slots.len() - 1);
        }
        while self.slots.len() > target {
            let slot = self.slots.len() - 1;
            let Some(removed) = self.slots.pop() else { break };
            if let Some(successor) = removed.successor {
                successor.kill();
                if let Some(rollout) = &mut self.rollout {
                    if rollout.current.map(|(s, _)| s) == Some(slot) {
                        rollout.current = None;
                    }
                }
            }
            if let Some(worker) = removed.worker {
                self.retire(slot, worker);
            }
        }
        self.all_ready_logged = false;
        self.advance_rollout();
        Ok(())
    }

    pub(super) fn status(&self) -> Status {
        let now = Instant::now();
        let restarts = |slot: usize| self.slots.get(slot).map_or(0, |s| s.restarts);
        let workers: Vec<WorkerStatus> = self
            .all_workers()
            .map(|(slot, w)| {
                let retiring = self.retiring.iter().any(|(_, r)| r.pid == w.pid);
                let state = match (retiring, w.state) {
                    (true, _) => "retiring",
                    (false, State::Starting) => "starting",
                    (false, State::Ready) if !w.is_responsive(now, self.config.recycling.worker_timeout) => "suspect",
                    (false, State::Ready) => "ready",
                    (false, State::Draining) => "draining",
                };
                WorkerStatus {
                    slot,
                    pid: Some(w.pid),
                    state: state.to_owned(),
                    uptime_s: now.duration_since(w.started).as_secs(),
                    restarts: restarts(slot),
                    rss_bytes: rss_bytes(w.pid),
                    open_connections: w.open_reported.and_then(|open| usize::try_from(open).ok()),
                }
            })
            .chain(self.slots.iter().enumerate().filter(|(_, s)| s.errored && s.worker.is_none()).map(|(slot, s)| {
                WorkerStatus {
                    slot,
                    pid: None,
                    state: "errored".to_owned(),
                    uptime_s: 0,
                    restarts: s.restarts,
                    rss_bytes: None,
                    open_connections: None,
                }
            }))
            .collect();
        Status {
            balance: self.config.balance.as_str().to_owned(),
            pid: std::process::id(),
            workers,
            last_reload: self.last_reload.clone(),
        }
    }
}

/// Resident set size of a process, from the `VmRSS` line of `/proc/<pid>/status`.
pub(super) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
