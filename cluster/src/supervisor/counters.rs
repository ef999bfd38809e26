//! What the core counts about its own decisions, for the metrics: deaths and their causes per
//! slot, rollouts and how they ended, connections accepted and connections shed. The core
//! keeps them (not the shell) because it is the one deciding; the simulation checks them
//! against what it made happen. The shell adds its I/O measurements at scrape time.

use std::collections::BTreeMap;

/// How a worker process ended, as far as the core needs to tell causes apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Death {
    /// A signal (SIGKILL from outside, SIGSEGV, the OOM killer…).
    Signal,
    /// Exit status 0, unasked.
    Clean,
    /// A non-zero exit status, or it could not be waited for.
    Failed,
}

/// The core's counters; every one only goes up.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Counters {
    /// Serving workers that died and were replaced, by slot and cause (`signal`, `exit`,
    /// `failed`, `hung`: killed by the core for silence).
    pub(crate) restarts: BTreeMap<(usize, &'static str), u64>,
    /// Rollouts by kind (`reload`, `restart`, `memory limit`, `max requests`) and outcome
    /// (`succeeded`, `failed`).
    pub(crate) rollouts: BTreeMap<(&'static str, &'static str), u64>,
    /// Connections the primary closed (with a 503, or for want of descriptors) by reason.
    pub(crate) shed: BTreeMap<&'static str, u64>,
    /// Connections the primary accepted (primary-accept modes).
    pub(crate) accepted: u64,
}

impl Counters {
    pub(super) fn death(&mut self, slot: usize, death: Death, killed_by_core: bool) {
        let cause = match death {
            _ if killed_by_core => "hung",
            Death::Signal => "signal",
            Death::Clean => "exit",
            Death::Failed => "failed",
        };
        *self.restarts.entry((slot, cause)).or_default() += 1;
    }

    pub(super) fn rollout(&mut self, what: &'static str, succeeded: bool) {
        *self.rollouts.entry((what, if succeeded { "succeeded" } else { "failed" })).or_default() += 1;
    }

    pub(super) fn shed(&mut self, reason: &'static str, count: u64) {
        *self.shed.entry(reason).or_default() += count;
    }

    /// Deaths of `slot`'s workers, whatever their cause.
    #[cfg(test)]
    pub(crate) fn restarts_of(&self, slot: usize) -> u64 {
        self.restarts.iter().filter(|((s, _), _)| *s == slot).map(|(_, n)| n).sum()
    }
}
