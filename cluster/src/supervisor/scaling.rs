//! Adding slots (each starts its worker) and removing the highest ones (their workers retire,
//! a successor starting there is killed).

use std::time::Instant;

use super::Core;
use crate::config::MAX_WORKERS;

impl Core {
    pub(super) fn scale_by(&mut self, delta: isize, now: Instant) {
        let target = self.slots.len().saturating_add_signed(delta);
        if let Err(reason) = self.scale_to(target, now) {
            tracing::warn!("cannot scale: {reason}");
        }
    }

    pub(super) fn scale_to(&mut self, target: usize, now: Instant) -> Result<(), String> {
        if !(1..=MAX_WORKERS).contains(&target) {
            return Err(format!("the worker count must be between 1 and {MAX_WORKERS}, not {target}"));
        }
        let before = self.slots.len();
        if target == before {
            return Ok(());
        }
        tracing::info!("scaling from {before} to {target} workers");
        while self.slots.len() < target {
            self.slots.push();
            self.start(self.slots.len() - 1, now);
        }
        while self.slots.len() > target {
            let slot = self.slots.len() - 1;
            let Some(removed) = self.slots.pop() else { break };
            if let Some(successor) = removed.successor {
                self.discard(successor);
                if let Some(rollout) = &mut self.rollout {
                    rollout.slot_removed(slot);
                }
            }
            if let Some(worker) = removed.worker {
                self.retire(worker);
            }
        }
        self.all_ready_logged = false;
        self.advance_rollout(now);
        Ok(())
    }
}
