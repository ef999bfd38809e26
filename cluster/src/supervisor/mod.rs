//! The supervisor's decisions, with no I/O: a state machine fed [`Event`]s that answers with
//! [`Effect`]s, the way quinn-proto and rustls keep protocol state apart from sockets.
//!
//! [`Core::on`] takes one event and the current time and returns what the shell must do:
//! start a worker, kill one, send it a message, hand it a connection, answer a connection
//! `503` and close it, reply to a `herd ctl` client, tell systemd. The core owns no socket, no
//! process, no task and no clock; it asks to be woken at [`Core::next_deadline`] (the "arm a
//! timer" effect, as quinn's `poll_timeout`), and the shell then feeds it [`Event::Timer`].
//! Connections and worker processes stay in the shell; the core knows them by [`Ticket`] and
//! [`WorkerId`]. That is what lets `sim` (a test) run thousands of random schedules through the
//! real decisions in seconds, and the shell in `crate::primary` stay a `select!` loop.
//!
//! Each sub-machine owns its data in its own file:
//!
//! | file            | owns                                                            |
//! |-----------------|-----------------------------------------------------------------|
//! | `slots.rs`      | the slots, their workers, departing workers, restarts, errored |
//! | `backoff.rs`    | one slot's restart delays and its circuit breaker               |
//! | `health.rs`     | heartbeats, suspicion, the periodic hung/memory/requests check  |
//! | `rollout.rs`    | replacing slots one by one (reload, restart, recycling)         |
//! | `scaling.rs`    | adding and removing slots                                       |
//! | `queue.rs`      | connections waiting for a worker, and choosing one              |
//! | `stand_in.rs`   | shared mode: when the primary answers 503 on the listener itself|
//! | `steering.rs`   | kernel steering: which slots the kernel may send connections to |
//! | `gatherings.rs` | relayed application messages and gathers                        |
//! | `shutdown.rs`   | the graceful stop and its deadline                              |
//! | `requests.rs`   | `herd ctl` requests, and the status report                      |
//! | `counters.rs`   | what the metrics count of the core's decisions                  |
//! | `upgrade.rs`    | the primary hand-over, on the old side and on the new           |
//!
//! Tests: `tests.rs` tells the main stories step by step; `sim.rs` runs random schedules.

mod backoff;
mod counters;
mod gatherings;
mod health;
mod queue;
mod requests;
mod rollout;
mod scaling;
mod shutdown;
mod slots;
mod stand_in;
mod steering;
mod upgrade;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    config::ClusterConfig,
    control::{Request, Response},
    dispatch::Chooser,
    proto::{ToPrimary, ToWorker},
};
use gatherings::Gatherings;
use queue::Queue;
use rollout::Rollout;
use shutdown::Shutdown;
use slots::Slots;
use stand_in::StandIn;
use upgrade::Upgrade;

pub(crate) use counters::{Counters, Death};
use queue::MAX_QUEUED;
pub use shutdown::ShutdownReport;

/// How often the core checks heartbeats, memory and request counts, and probes queued
/// connections.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// One worker process: its slot and a generation number that no other process of this
/// primary ever had (generations count up across all slots, so a slot removed by scaling and
/// added again cannot confuse a departing worker with a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct WorkerId {
    pub(crate) slot: usize,
    pub(crate) generation: u64,
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "worker {} (generation {})", self.slot, self.generation)
    }
}

/// What the core knows of an accepted connection; the socket itself stays in the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(crate) id: u64,
    pub(crate) client: IpAddr,
    /// When the primary accepted it: how long the client has been waiting for a worker.
    pub(crate) accepted_at: Instant,
}

/// The signals the core acts on (SIGUSR1, reopening log files, is the shell's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGTERM: stop gracefully (a second one kills the workers).
    Terminate,
    /// SIGINT: the same.
    Interrupt,
    /// SIGHUP: rolling reload.
    Hangup,
    /// SIGTTIN: one worker more.
    AddWorker,
    /// SIGTTOU: one worker fewer.
    RemoveWorker,
    /// SIGUSR2: hand over to a new primary (`herd ctl upgrade`).
    Upgrade,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
            Signal::Hangup => "SIGHUP",
            Signal::AddWorker => "SIGTTIN",
            Signal::RemoveWorker => "SIGTTOU",
            Signal::Upgrade => "SIGUSR2",
        }
    }
}

/// Identifies a waiting `herd ctl` client; the shell keeps its reply channel.
pub(crate) type ReplyTo = u64;

/// Something that happened, told to [`Core::on`].
#[derive(Debug)]
pub(crate) enum Event {
    /// The primary starts: fill every slot.
    Boot,
    /// The shell started the process an [`Effect::Spawn`] asked for.
    Spawned {
        worker: WorkerId,
        pid: u32,
    },
    /// It could not; `exhaustion` when the primary or the machine was out of descriptors,
    /// processes or memory (not the worker's fault: never counted as a crash).
    SpawnFailed {
        worker: WorkerId,
        error: String,
        exhaustion: bool,
    },
    /// A worker sent a message.
    Message {
        worker: WorkerId,
        msg: ToPrimary,
    },
    /// A draining worker refused these connections.
    Refused {
        worker: WorkerId,
        conns: Vec<Ticket>,
    },
    /// These many connections handed to this worker were closed for want of descriptors.
    Shed {
        worker: WorkerId,
        count: usize,
    },
    /// A worker left these hand-offs unacknowledged too long: they are the core's again.
    Reclaimed {
        worker: WorkerId,
        conns: Vec<Ticket>,
    },
    /// A worker process ended; `orphans` were handed to it and never acknowledged.
    Exited {
        worker: WorkerId,
        how: String,
        death: Death,
        orphans: Vec<Ticket>,
    },
    /// An [`Effect::Hand`] found the worker's link closed (it is dying): the connection is
    /// the core's again.
    HandFailed {
        worker: WorkerId,
        conn: Ticket,
    },
    /// The primary accepted a connection (primary-accept modes).
    Accepted(Ticket),
    /// Of the connections an [`Effect::Probe`] asked about, the shell closed these: their
    /// clients had gone.
    Departed {
        conns: Vec<u64>,
    },
    /// A worker's resident memory, answering [`Effect::MeasureMemory`].
    Memory {
        worker: WorkerId,
        rss_bytes: u64,
    },
    /// An operator's request ([`Request::Stop`] included).
    Control {
        request: Request,
        reply: ReplyTo,
    },
    Signal(Signal),
    /// The shell could not start the shared-mode stand-in acceptor; the core asks again later.
    StandInFailed,
    /// The new primary an [`Effect::StartSuccessor`] asked for runs.
    SuccessorStarted {
        pid: u32,
    },
    /// It reports ready: this primary stops.
    SuccessorReady {
        pid: u32,
    },
    /// It could not be started, exited, or gave up: this primary serves on.
    SuccessorFailed {
        reason: String,
    },
    /// [`Core::next_deadline`] passed.
    Timer,
}

/// Something the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Start a worker process (answer with [`Event::Spawned`] or [`Event::SpawnFailed`]).
    Spawn {
        worker: WorkerId,
    },
    /// SIGKILL it (its exit still arrives as [`Event::Exited`]).
    Kill {
        worker: WorkerId,
    },
    Tell {
        worker: WorkerId,
        msg: ToWorker,
    },
    /// Hand the connection to the worker (or answer [`Event::HandFailed`]).
    Hand {
        worker: WorkerId,
        conn: u64,
    },
    /// Answer the connection `503` + `Retry-After` and close it.
    Answer503 {
        conn: u64,
        why: &'static str,
    },
    /// Close those of these queued connections whose client has gone, and say which
    /// ([`Event::Departed`]).
    Probe {
        conns: Vec<u64>,
    },
    /// Report these workers' resident memory ([`Event::Memory`]).
    MeasureMemory {
        workers: Vec<(WorkerId, u32)>,
    },
    /// Answer a `herd ctl` client. A status's `rss_bytes` are the shell's to fill in.
    Reply {
        to: ReplyTo,
        response: Response,
    },
    /// Shared mode: accept on the listener to answer 503 (true) or stop (false).
    StandIn(bool),
    /// Kernel steering: send new connections to these slots' listeners (sorted), or to the
    /// primary's own when empty; the primary accepts on the listeners of all other slots.
    Steer {
        slots: Vec<usize>,
    },
    /// Tell systemd (`sd_notify`).
    Notify(String),
    /// Start the binary on disk as a new primary to hand over to, with this many workers
    /// (answer [`Event::SuccessorStarted`], then [`Event::SuccessorReady`] or
    /// [`Event::SuccessorFailed`]).
    StartSuccessor {
        workers: usize,
    },
    /// SIGKILL that new primary (its [`Event::SuccessorFailed`] follows).
    KillSuccessor,
    /// Answer a metrics request with the core's part: the shell adds its measurements and
    /// encodes the text.
    Scraped {
        to: ReplyTo,
        scrape: Box<Scrape>,
    },
}

/// The core's answer to a metrics request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scrape {
    /// The cluster now (workers, their states and pids, the queue).
    pub(crate) status: crate::control::Status,
    pub(crate) counters: Counters,
    /// Each answering worker's snapshot (JSON of [`crate::metrics::Snapshot`]).
    pub(crate) replies: Vec<crate::messaging::Reply>,
    /// Workers that were asked and could not answer.
    pub(crate) unanswered: usize,
}

/// The supervisor's whole state.
pub(crate) struct Core {
    config: ClusterConfig,
    primary_pid: u32,
    slots: Slots,
    chooser: Chooser,
    queue: Queue,
    rollout: Option<Rollout>,
    last_reload: Option<String>,
    gatherings: Gatherings,
    stand_in: StandIn,
    /// Kernel steering: the slots the kernel was last told to send connections to; `None`
    /// when the primary steers.
    steered: Option<Vec<usize>>,
    stopping: Option<Shutdown>,
    /// A hand-over to a new primary under way.
    upgrade: Option<Upgrade>,
    /// This primary stops because a new one took over.
    handed_over: bool,
    /// This is a new primary whose workers are not all ready yet (see `upgrade.rs`).
    taking_over: bool,
    next_check: Option<Instant>,
    all_ready_logged: bool,
    counters: Counters,
    /// What the current [`Core::on`] call decided so far.
    effects: Vec<Effect>,
}

impl Core {
    /// A core for `config`, in the primary `primary_pid`. `seed` makes everything that would
    /// be random (the `--max-requests` jitter, ip-hash's key) reproducible; the shell passes a
    /// random one.
    pub(crate) fn new(config: ClusterConfig, primary_pid: u32, seed: u64) -> Self {
        let slots = Slots::new(config.workers, seed);
        Self {
            chooser: Chooser::new(config.balance, seed),
            stand_in: StandIn::new(!config.balance.primary_accepts()),
            steered: config.kernel_steers().then(Vec::new),
            primary_pid,
            slots,
            queue: Queue::default(),
            rollout: None,
            last_reload: None,
            gatherings: Gatherings::default(),
            stopping: None,
            upgrade: None,
            handed_over: false,
            taking_over: false,
            next_check: None,
            all_ready_logged: false,
            counters: Counters::default(),
            effects: Vec::new(),
            config,
        }
    }

    /// Handles one event at `now`; returns what to do, in order.
    pub(crate) fn on(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        match event {
            Event::Boot => {
                self.next_check = Some(now + CHECK_INTERVAL);
                for slot in 0..self.slots.len() {
                    self.start(slot, now);
                }
            }
            Event::Spawned { worker, pid } => self.on_spawned(worker, pid),
            Event::SpawnFailed { worker, error, exhaustion } => self.on_spawn_failed(worker, &error, exhaustion, now),
            Event::Message { worker, msg } => self.on_message(worker, msg, now),
            Event::Refused { worker, conns } => {
                if let Some(w) = self.slots.get_mut(worker) {
                    w.state = slots::State::Draining;
                    w.open = w.open.saturating_sub(conns.len());
                }
                self.redispatch(conns, now);
            }
            Event::Shed { worker, count } => {
                self.counters.shed("fd_exhausted", u64::try_from(count).unwrap_or(u64::MAX));
                if let Some(w) = self.slots.get_mut(worker) {
                    w.open = w.open.saturating_sub(count);
                }
            }
            Event::Reclaimed { worker, conns } => self.on_reclaimed(worker, conns, now),
            Event::Exited { worker, how, death, orphans } => {
                self.forget_in_gathers(worker, now);
                self.on_exit(worker, &how, death, now);
                self.redispatch(orphans, now);
            }
            Event::HandFailed { worker, conn } => {
                if let Some(w) = self.slots.get_mut(worker) {
                    w.state = slots::State::Draining;
                }
                self.redispatch(vec![conn], now);
            }
            Event::Accepted(ticket) => {
                self.counters.accepted += 1;
                if self.stopping.is_some() {
                    self.effects.push(Effect::Answer503 { conn: ticket.id, why: shutdown::WHY });
                } else {
                    self.dispatch(ticket, now);
                }
            }
            Event::Departed { conns } => self.queue.forget(&conns),
            Event::Memory { worker, rss_bytes } => self.on_memory(worker, rss_bytes, now),
            Event::Control { request, reply } => self.on_request(request, reply, now),
            Event::Signal(signal) => self.on_signal(signal, now),
            Event::StandInFailed => self.stand_in.failed(now),
            Event::SuccessorStarted { pid } => self.on_successor_started(pid),
            Event::SuccessorReady { pid } => self.on_successor_ready(pid, now),
            Event::SuccessorFailed { reason } => self.on_successor_failed(&reason),
            Event::Timer => self.on_timer(now),
        }
        self.update_stand_in(now);
        self.update_steering(now);
        self.count_answers();
        std::mem::take(&mut self.effects)
    }

    /// Counts the connections this step answers 503, by reason: one place for every path
    /// that sheds (queue timeout, errored slots, shutdown).
    fn count_answers(&mut self) {
        for effect in &self.effects {
            if let Effect::Answer503 { why, .. } = effect {
                let reason = match *why {
                    shutdown::WHY => "stopping",
                    queue::ERRORED => "errored",
                    _ => "queue_timeout",
                };
                self.counters.shed(reason, 1);
            }
        }
    }

    /// When the core must next be told [`Event::Timer`]; `None`: only events wake it.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let stopping = self.stopping.is_some();
        [
            self.next_check.filter(|_| !stopping),
            self.stopping.as_ref().and_then(Shutdown::deadline),
            self.rollout.as_ref().and_then(Rollout::deadline),
            self.gatherings.next_deadline(),
            self.queue.deadline(self.config.queue_timeout, self.slots.no_worker_coming()),
            self.slots.next_respawn().filter(|_| !stopping),
            self.stand_in_deadline(),
            self.upgrade.as_ref().and_then(Upgrade::deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether the shell should accept new connections now (primary-accept modes only).
    pub(crate) fn accepting(&self) -> bool {
        self.config.balance.primary_accepts()
            && self.stopping.is_none()
            && !self.taking_over
            && self.queue.len() < MAX_QUEUED
    }

    /// Once the cluster has stopped: how it ended.
    pub(crate) fn finished(&self) -> Option<ShutdownReport> {
        let stop = self.stopping.as_ref()?;
        (self.slots.processes() == 0).then(|| stop.report())
    }

    fn on_timer(&mut self, now: Instant) {
        if let Some(stop) = &mut self.stopping {
            if stop.deadline().is_some_and(|d| d <= now) {
                stop.deadline_passed();
                let killed = self.kill_all("did not stop within the shutdown timeout");
                if let Some(stop) = &mut self.stopping {
                    stop.killed(killed);
                }
            }
        } else {
            for slot in self.slots.respawns_due(now) {
                self.start(slot, now);
            }
            if self.next_check.is_some_and(|at| at <= now) {
                self.next_check = Some(now + CHECK_INTERVAL);
                self.check_workers(now);
                if !self.queue.is_empty() {
                    self.effects.push(Effect::Probe { conns: self.queue.ids() });
                }
            }
        }
        if self.rollout.as_ref().and_then(Rollout::deadline).is_some_and(|d| d <= now) {
            self.rollout_timed_out(now);
        }
        self.upgrade_timed_out(now);
        self.finish_gathers(now, true);
        self.answer_overdue(now);
    }

    fn on_signal(&mut self, signal: Signal, now: Instant) {
        match signal {
            Signal::Terminate | Signal::Interrupt => self.stop(signal.name(), now),
            _ if self.stopping.is_some() => {}
            Signal::Hangup | Signal::AddWorker | Signal::RemoveWorker if self.upgrade.is_some() => {
                tracing::warn!("{} ignored: an upgrade is in progress", signal.name());
            }
            Signal::Hangup => {
                tracing::info!("SIGHUP received: rolling reload");
                self.reload(None, now);
            }
            Signal::AddWorker => self.scale_by(1, now),
            Signal::RemoveWorker => self.scale_by(-1, now),
            Signal::Upgrade => {
                tracing::info!("SIGUSR2 received: upgrade");
                self.upgrade(None, now);
            }
        }
    }

    fn on_message(&mut self, worker: WorkerId, msg: ToPrimary, now: Instant) {
        match msg {
            ToPrimary::Ready { .. } => self.on_ready(worker, now),
            ToPrimary::Draining => {
                if let Some(w) = self.slots.get_mut(worker) {
                    w.state = slots::State::Draining;
                    tracing::debug!(slot = worker.slot, worker_pid = w.pid, "worker says it drains");
                }
            }
            ToPrimary::Closed { count } => {
                if let Some(w) = self.slots.get_mut(worker) {
                    w.open = w.open.saturating_sub(usize::try_from(count).unwrap_or(usize::MAX));
                    tracing::debug!(
                        slot = worker.slot,
                        worker_pid = w.pid,
                        open = w.open,
                        "worker closed {count} connection(s)"
                    );
                }
            }
            ToPrimary::Heartbeat { requests, open } => self.on_heartbeat(worker, requests, open, now),
            ToPrimary::Broadcast { payload } => {
                if let Err(err) = self.relay_broadcast(Some(worker.slot), &payload) {
                    tracing::warn!(slot = worker.slot, "a worker's broadcast was not relayed: {err}");
                }
            }
            ToPrimary::Gather { id, payload } => self.start_gather(worker, id, payload, now),
            ToPrimary::Reply { id, payload } => self.on_reply(worker, id, payload, now),
            ToPrimary::Unanswered { id, reason } => self.on_unanswered(worker, id, reason, now),
            // The link task handles these itself; the shell keeps `Final` for the metrics.
            ToPrimary::Accepted { .. }
            | ToPrimary::Refused { .. }
            | ToPrimary::Shed { .. }
            | ToPrimary::Final { .. } => {}
        }
    }

    fn tell(&mut self, worker: WorkerId, msg: ToWorker) {
        self.effects.push(Effect::Tell { worker, msg });
    }

    /// Kills every process; returns how many.
    fn kill_all(&mut self, why: &str) -> usize {
        let all: Vec<(WorkerId, Option<u32>)> = self.slots.all().map(|w| (w.id, w.pid)).collect();
        for (worker, pid) in &all {
            tracing::warn!(slot = worker.slot, worker_pid = pid, "worker {why}, killing it");
            self.effects.push(Effect::Kill { worker: *worker });
        }
        all.len()
    }
}
