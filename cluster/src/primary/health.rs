//! The once-a-second check of every serving worker: hung (no heartbeat), too big (resident
//! memory), or old (requests served). A hung worker is killed, since it cannot drain; the
//! others are replaced gracefully through the rollout queue, which replaces one slot at a time,
//! so two slots never recycle at once.

use std::time::Instant;

use super::{rollout::rss_bytes, State, Supervisor};

impl Supervisor {
    pub(super) fn check_workers(&mut self) {
        let recycling = self.config.recycling.clone();
        let now = Instant::now();
        let mut recycle = Vec::new();
        for (slot, s) in self.slots.iter().enumerate() {
            let Some(w) = s.worker.as_ref().filter(|w| w.state == State::Ready) else { continue };
            let silent = now.duration_since(w.last_heartbeat);
            if silent > recycling.worker_timeout {
                tracing::warn!("worker {slot} pid {} sent no heartbeat for {silent:.1?}: hung, killing it", w.pid);
                w.kill();
                continue;
            }
            let replacing = s.successor.is_some() || self.rollout.as_ref().is_some_and(|r| r.includes(slot));
            if replacing {
                continue;
            }
            if let (Some(max), Some(rss)) = (recycling.max_memory, recycling.max_memory.and_then(|_| rss_bytes(w.pid)))
            {
                if rss > max {
                    tracing::warn!(
                        "worker {slot} pid {} uses {} MiB, over --max-memory {} MiB: replacing it",
                        w.pid,
                        rss >> 20,
                        max >> 20
                    );
                    recycle.push((slot, "memory limit"));
                    continue;
                }
            }
            if let Some(limit) = w.recycle_after.filter(|limit| w.requests >= *limit) {
                tracing::info!(
                    "worker {slot} pid {} served {} requests (limit {limit}): recycling it",
                    w.pid,
                    w.requests
                );
                recycle.push((slot, "max requests"));
            }
        }
        for (slot, why) in recycle {
            self.replace(vec![slot], None, why);
        }
    }
}
