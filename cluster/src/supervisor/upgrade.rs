//! The primary hand-over, as the core sees it (`crate::upgrade` has the protocol and the
//! processes).
//!
//! The old primary: one hand-over at a time, refused while the cluster stops or a reload runs.
//! The new primary gets `--ready-timeout` to report ready; otherwise it is killed and this
//! primary serves on, unchanged. On ready, this primary stops as for `SIGTERM`, except that it
//! does not tell systemd it stops (the new primary is the service's main process now).
//!
//! The new primary ([`Core::take_over`]): it accepts nothing, and never answers 503 on the
//! listener itself, until all of its workers are ready: until then the old primary serves.

use std::time::Instant;

use super::{Core, Effect, ReplyTo};
use crate::control::Response;

/// A hand-over under way.
#[derive(Debug)]
pub(super) struct Upgrade {
    /// The `herd ctl upgrade` client waiting for the outcome (none for `SIGUSR2`, or once told).
    reply: Option<ReplyTo>,
    started: Instant,
    /// When the new primary must be ready by; `None` once it was killed for missing it.
    deadline: Option<Instant>,
    /// The new primary's pid, once it runs.
    pid: Option<u32>,
}

impl Upgrade {
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

impl Core {
    /// This core runs in a new primary taking over from an old one.
    pub(crate) fn take_over(mut self) -> Self {
        self.taking_over = true;
        self
    }

    /// All workers are ready: a new primary takes its share of the listener now.
    pub(super) fn took_over(&mut self) {
        self.taking_over = false;
    }

    /// `herd ctl upgrade` (with `reply`) or `SIGUSR2`.
    pub(super) fn upgrade(&mut self, reply: Option<ReplyTo>, now: Instant) {
        let refusal = if self.stopping.is_some() {
            Some(super::shutdown::WHY.to_owned())
        } else if let Some(upgrade) = &self.upgrade {
            let pid = upgrade.pid.map_or_else(|| "starting".to_owned(), |pid| format!("pid {pid}"));
            let ago = now.saturating_duration_since(upgrade.started);
            Some(format!("an upgrade is already in progress (new primary {pid}, started {ago:.1?} ago)"))
        } else if self.rollout.is_some() {
            Some("a reload is in progress: upgrade once it has finished".to_owned())
        } else {
            None
        };
        if let Some(reason) = refusal {
            tracing::warn!("upgrade refused: {reason}");
            if let Some(to) = reply {
                self.effects.push(Effect::Reply { to, response: Response::error(reason) });
            }
            return;
        }
        tracing::info!(
            ready_timeout = ?self.config.ready_timeout,
            "upgrade: starting the binary on disk as a new primary"
        );
        self.upgrade =
            Some(Upgrade { reply, started: now, deadline: Some(now + self.config.ready_timeout), pid: None });
        self.effects.push(Effect::StartSuccessor { workers: self.slots.len() });
    }

    pub(super) fn on_successor_started(&mut self, pid: u32) {
        if let Some(upgrade) = &mut self.upgrade {
            tracing::info!(new_primary_pid = pid, "upgrade: the new primary started");
            upgrade.pid = Some(pid);
        }
    }

    /// The new primary serves: answer the operator, then stop.
    pub(super) fn on_successor_ready(&mut self, pid: u32, now: Instant) {
        let Some(upgrade) = self.upgrade.take() else { return };
        let took = now.saturating_duration_since(upgrade.started);
        tracing::info!(new_primary_pid = pid, "upgrade: the new primary is ready after {took:.1?}: handing over");
        if let Some(to) = upgrade.reply {
            self.effects.push(Effect::Reply { to, response: Response { pid: Some(pid), ..Response::ok() } });
        }
        self.handed_over = true;
        self.stop("the hand-over", now);
    }

    /// The new primary will not take over: this one serves on.
    pub(super) fn on_successor_failed(&mut self, reason: &str) {
        let Some(upgrade) = self.upgrade.take() else { return };
        self.steer_again();
        if upgrade.deadline.is_none() {
            return; // killed for missing its deadline, already reported
        }
        tracing::error!("upgrade failed: {reason}; this primary keeps serving");
        if let Some(to) = upgrade.reply {
            self.effects.push(Effect::Reply { to, response: Response::error(format!("upgrade failed: {reason}")) });
        }
    }

    /// The deadline passed without a ready new primary: kill it. The upgrade stays under way
    /// (refusing another) until its exit is reported.
    pub(super) fn upgrade_timed_out(&mut self, now: Instant) {
        let Some(upgrade) = self.upgrade.as_mut().filter(|u| u.deadline.is_some_and(|d| d <= now)) else { return };
        upgrade.deadline = None;
        let reason = format!(
            "the new primary was not ready within --ready-timeout {:?}; it was killed and this primary keeps serving",
            self.config.ready_timeout
        );
        tracing::error!("upgrade failed: {reason}");
        if let Some(to) = upgrade.reply.take() {
            self.effects.push(Effect::Reply { to, response: Response::error(format!("upgrade failed: {reason}")) });
        }
        self.effects.push(Effect::KillSuccessor);
    }

    /// The cluster stops while a new primary starts: it will not take over.
    pub(super) fn abort_upgrade(&mut self) {
        let Some(upgrade) = self.upgrade.as_mut() else { return };
        if let Some(to) = upgrade.reply.take() {
            let response = Response::error("upgrade abandoned: this primary is stopping");
            self.effects.push(Effect::Reply { to, response });
        }
        upgrade.deadline = None;
        self.effects.push(Effect::KillSuccessor);
    }
}
