//! Kernel steering's part of the core: which slots the kernel may send new connections to
//! (see `crate::steering`). The set is every slot whose worker is ready and answering its
//! heartbeats; none while the cluster stops (new connections then wait on the primary's own
//! listener, which a service manager's socket keeps across a restart). Nothing is decided while
//! a new primary starts in a hand-over (it attaches its own program to the same group, and its
//! is the one that must stand) nor after it took over; if it failed, this core steers again.

use std::time::Instant;

use super::{Core, Effect};

impl Core {
    /// Emits [`Effect::Steer`] when the set of ready slots changed. It goes ahead of this step's
    /// other effects: a slot is steered away from before its worker is told to stop, and a
    /// worker is ready before it is steered to, so no connection is sent where none will serve.
    pub(super) fn update_steering(&mut self, now: Instant) {
        if self.steered.is_none() || self.upgrade.is_some() || self.handed_over {
            return;
        }
        let timeout = self.config.recycling.worker_timeout;
        let mut ready: Vec<usize> = if self.stopping.is_some() {
            Vec::new()
        } else {
            self.slots.serving().filter(|w| w.is_responsive(now, timeout)).map(|w| w.id.slot).collect()
        };
        ready.sort_unstable();
        ready.dedup();
        if self.steered.as_ref() != Some(&ready) {
            self.effects.insert(0, Effect::Steer { slots: ready.clone() });
            self.steered = Some(ready);
        }
    }

    /// A new primary started, may have replaced the group's program, and did not take over:
    /// the next step steers again, whatever this core said last (no set of slots is `[MAX]`).
    pub(super) fn steer_again(&mut self) {
        if let Some(steered) = &mut self.steered {
            *steered = vec![usize::MAX];
        }
    }

    /// Whether a new primary is taking over from an old one and is not ready yet.
    pub(crate) fn taking_over(&self) -> bool {
        self.taking_over
    }

    /// Whether the cluster is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// The slots the kernel sends new connections to now; `None` when the primary steers.
    pub(crate) fn steered(&self) -> Option<&[usize]> {
        self.steered.as_deref()
    }
}
