//! `herd ctl` requests, and the status report they read.

use std::time::Instant;

use super::{slots::State, Core, Effect, ReplyTo};
use crate::control::{Request, Response, Status, WorkerStatus};

impl Core {
    pub(super) fn on_request(&mut self, request: Request, reply: ReplyTo, now: Instant) {
        let answer = |response| Effect::Reply { to: reply, response };
        if request == Request::Stop {
            self.effects.push(answer(Response::ok()));
            return self.stop("a stop request", now);
        }
        if self.stopping.is_some() {
            return self.effects.push(answer(Response::error(super::shutdown::WHY)));
        }
        let reshapes = matches!(request, Request::Reload | Request::Restart { .. } | Request::Scale { .. });
        if reshapes && self.upgrade.is_some() {
            let response = Response::error("an upgrade is in progress: try again once it has ended");
            return self.effects.push(answer(response));
        }
        let response = match request {
            Request::Upgrade => return self.upgrade(Some(reply), now),
            Request::Metrics => return self.start_scrape(reply, now),
            Request::Status => Response { status: Some(self.status(now)), ..Response::ok() },
            Request::Reload => {
                tracing::info!("reload requested over the control socket");
                return self.reload(Some(reply), now);
            }
            Request::Restart { slot } if slot >= self.slots.len() => {
                Response::error(format!("no slot {slot} (slots are 0..{})", self.slots.len()))
            }
            Request::Restart { slot } => {
                if let Some(s) = self.slots.slot_mut(slot).filter(|s| s.errored) {
                    tracing::info!(slot, "slot restarted by an operator after being errored");
                    s.errored = false;
                    s.backoff.reset();
                }
                return self.replace(vec![slot], Some(reply), "restart", now);
            }
            Request::Scale { to, by } => {
                let target = match (to, by) {
                    (Some(n), None) => Ok(n),
                    (None, Some(k)) => {
                        Ok(self.slots.len().saturating_add_signed(isize::try_from(k).unwrap_or(isize::MIN)))
                    }
                    _ => Err("scale needs exactly one of `to` and `by`".to_owned()),
                };
                match target.and_then(|n| self.scale_to(n, now)) {
                    Ok(()) => Response { workers: Some(self.slots.len()), ..Response::ok() },
                    Err(reason) => Response::error(reason),
                }
            }
            Request::Send { slot: Some(slot), payload } => match self.relay_to(slot, payload) {
                Ok(true) => Response { workers: Some(1), ..Response::ok() },
                Ok(false) => Response::error(format!("no worker in slot {slot}")),
                Err(err) => Response::error(format!("not sent: {err}")),
            },
            Request::Send { slot: None, payload } => match self.relay_broadcast(None, &payload) {
                Ok(sent) => Response { workers: Some(sent), ..Response::ok() },
                Err(err) => Response::error(format!("not sent: {err}")),
            },
            // The control socket answers `logs` itself; `stop` is handled above.
            Request::Stop | Request::Logs => Response::error("not a request for the supervisor"),
        };
        self.effects.push(answer(response));
    }

    /// The cluster as `herd ctl status` shows it; `rss_bytes` are left for the shell to read.
    pub(super) fn status(&self, now: Instant) -> Status {
        let worker_timeout = self.config.recycling.worker_timeout;
        let restarts = |slot: usize| self.slots.slot(slot).map_or(0, |s| s.restarts);
        let departing = |w: &super::slots::Worker| self.slots.departing.iter().any(|d| d.id == w.id);
        let least_conn = self.config.balance == crate::config::Balance::LeastConn;
        let workers = self
            .slots
            .all()
            .map(|w| {
                let state = match w.state {
                    _ if departing(w) => "retiring",
                    State::Starting => "starting",
                    State::Ready if !w.is_responsive(now, worker_timeout) => "suspect",
                    State::Ready => "ready",
                    State::Draining => "draining",
                };
                WorkerStatus {
                    slot: w.id.slot,
                    pid: w.pid,
                    state: state.to_owned(),
                    uptime_s: now.saturating_duration_since(w.started).as_secs(),
                    restarts: restarts(w.id.slot),
                    rss_bytes: None,
                    open_connections: w.open_reported.and_then(|open| usize::try_from(open).ok()),
                    assigned: least_conn.then_some(w.open),
                    requests: w.requests,
                    cpu_seconds: None,
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
                    assigned: None,
                    requests: 0,
                    cpu_seconds: None,
                }
            }))
            .collect();
        Status {
            balance: self.config.balance.as_str().to_owned(),
            steering: if self.steered.is_some() { "kernel" } else { "primary" }.to_owned(),
            accepted: self.counters.accepted,
            listen: self.config.bind,
            pid: self.primary_pid,
            version: self.config.version.clone(),
            // The core has no wall clock; the shell fills it in.
            started_unix_s: 0,
            workers,
            queued: self.queue.len(),
            last_reload: self.last_reload.clone(),
        }
    }
}
