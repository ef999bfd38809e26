//! The primary: owns the listening socket for its whole life, keeps one worker per slot,
//! restarts workers that die, replaces them one by one on reload, scales, shuts them down
//! gracefully, and in primary-accept modes accepts connections and hands each to a worker.
//!
//! All state lives in one task ([`Supervisor::run`]); link tasks, the acceptor, the control
//! socket and timers talk to it through events and `select!` arms, so no lock is needed.
//!
//! A slot normally holds one worker. During a reload it briefly holds two: the `successor`
//! starts while the current worker keeps serving, and only when the successor reports ready is
//! the old one moved to `retiring`, where it drains (see [`crate::drain`]) and exits.

mod acceptor;
mod backoff;
mod exit;
mod health;
mod link;
mod notify;
mod queue;
mod relay;
mod rollout;
mod unavailable;

use std::{
    collections::VecDeque,
    ffi::OsString,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::{
    signal::unix::{signal, Signal as UnixSignal, SignalKind},
    sync::mpsc,
};

use crate::{
    config::ClusterConfig,
    control,
    dispatch::{Chooser, Conn},
    error::ClusterError,
    fdlimit::{self, FdBudget, ShedLog},
    proto::{ToPrimary, ToWorker},
};
use acceptor::Acceptor;
use backoff::{Backoff, Verdict};
use health::Liveness;
use link::{Event, Link, ShedReason, SpawnError, Spawner};
use relay::Gatherings;
use rollout::Rollout;
use unavailable::Unavailable;

/// How often the primary checks heartbeats, memory and request counts.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Connections the primary holds while no worker can take them. Beyond this, new connections
/// wait in the kernel's accept queue (the listen backlog) until workers catch up.
const MAX_QUEUED: usize = 1024;

/// How a graceful shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Workers that were still running at the deadline (or at a second signal) and were killed.
    pub killed: usize,
}

impl ShutdownReport {
    /// True when every worker finished draining by itself.
    pub fn is_clean(&self) -> bool {
        self.killed == 0
    }
}

/// Binds the listening socket. The primary keeps it open until it exits, so connections that
/// arrive while workers restart wait instead of being refused.
pub(crate) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ClusterError> {
    use socket2::{Domain, Socket, Type};
    let err = |source| ClusterError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket.listen(1024).map_err(err)?;
    Ok(socket.into())
}

pub(crate) async fn run(
    mut config: ClusterConfig,
    listener: std::net::TcpListener,
) -> Result<ShutdownReport, ClusterError> {
    let local = listener.local_addr().map_err(|source| ClusterError::Bind { addr: config.bind, source })?;
    // What was bound (port 0 resolved), as the status reports it.
    config.bind = local;
    fdlimit::raise_to_hard_limit();
    let budget = FdBudget::current(config.fd_reserve);
    let acceptor = if config.balance.primary_accepts() {
        Some(Acceptor::new(&listener, budget).map_err(|source| ClusterError::Bind { addr: local, source })?)
    } else {
        None
    };
    let control_path = config.control_socket.clone().unwrap_or_else(|| control::default_path(local.port()));
    let (commands_tx, commands) = mpsc::channel(16);
    let _control = control::serve(&control_path, commands_tx, config.logs.clone())
        .map_err(|source| ClusterError::ControlSocket { path: control_path.clone(), source })?;

    let (events_tx, events) = mpsc::unbounded_channel();
    let mut argv = std::env::args_os();
    let exe = current_exe()?;
    let spawner = Spawner {
        arg0: argv.next().unwrap_or_else(|| exe.clone().into_os_string()),
        exe,
        args: config.worker_args.clone().unwrap_or_else(|| argv.collect::<Vec<OsString>>()),
        env: config.worker_env.clone(),
        logs: config.logs.clone(),
        // The primary keeps `listener` itself, open, in every mode (dropped only on return).
        shared_listener: if acceptor.is_none() {
            Some(listener.try_clone().map_err(|source| ClusterError::Bind { addr: local, source })?)
        } else {
            None
        },
        events: events_tx,
    };
    tracing::info!(
        workers = config.workers,
        balance = config.balance.as_str(),
        control = %control_path.display(),
        "listening on {local}"
    );
    let mut supervisor = Supervisor {
        slots: (0..config.workers).map(|_| Slot::default()).collect(),
        retiring: Vec::new(),
        spawner,
        chooser: Chooser::new(config.balance),
        queue: VecDeque::new(),
        next_conn_id: 0,
        rollout: None,
        last_reload: None,
        gatherings: Gatherings::default(),
        config,
        all_ready_logged: false,
        queue_full_logged: false,
        shed_log: ShedLog::default(),
        unavailable: Unavailable::default(),
        unserved_since: Some(Instant::now()),
    };
    let report = supervisor.run(events, commands, acceptor.as_ref(), &listener).await;
    drop(listener);
    report
}

/// The binary to re-execute. After the file was replaced on disk (a rebuild or a deploy), Linux
/// reports the old inode as "path (deleted)"; the path itself is what we want to start, so a
/// reload deploys the binary that is on disk now.
fn current_exe() -> Result<PathBuf, ClusterError> {
    let exe = std::env::current_exe().map_err(ClusterError::CurrentExe)?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// One worker position. Its generation counts the processes it has had.
#[derive(Default)]
struct Slot {
    next_generation: u64,
    /// The worker serving this slot.
    worker: Option<Worker>,
    /// Its replacement while a reload starts it.
    successor: Option<Worker>,
    backoff: Backoff,
    /// Workers of this slot that died and were replaced.
    restarts: u64,
    /// Its workers died too often: left down until an operator restarts it.
    errored: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    /// Said it drains (it got a signal itself, or was told to).
    Draining,
}

struct Worker {
    generation: u64,
    pid: u32,
    started: Instant,
    state: State,
    /// When it reported ready: the backoff judges a death by how long the worker served, so a
    /// slow start followed by a crash still counts as dying young.
    ready_since: Option<Instant>,
    /// Connections handed to it and not yet reported closed (least-conn's measure; workers
    /// report closes only in least-conn mode, so the other modes leave it at 0).
    open: usize,
    /// Open connections, as of its last heartbeat (what `herd ctl status` shows, in every mode).
    open_reported: Option<u64>,
    /// When it last proved its runtime makes progress (or became ready), and whether it is
    /// suspect.
    liveness: Liveness,
    /// Requests served, as of its last heartbeat.
    requests: u64,
    /// Served requests after which it is recycled (`--max-requests` plus its jitter).
    recycle_after: Option<u64>,
    kill: mpsc::Sender<()>,
    outbox: mpsc::UnboundedSender<Conn>,
    mailbox: mpsc::UnboundedSender<ToWorker>,
}

impl Worker {
    /// Queues a message for the worker's link task, which sends messages in order without
    /// holding up the supervisor. A failure means the worker is dying, and its link task
    /// reports that.
    fn tell(&self, msg: ToWorker) {
        let _ = self.mailbox.send(msg);
    }

    fn kill(&self) {
        let _ = self.kill.try_send(());
    }

    fn become_ready(&mut self) {
        let now = Instant::now();
        self.state = State::Ready;
        self.liveness = Liveness::new(now);
        self.ready_since = Some(now);
    }

    /// Ready, and not suspect of being stopped or stuck: new connections (and gathers) may go
    /// to it.
    fn is_responsive(&self, now: Instant, worker_timeout: Duration) -> bool {
        self.state == State::Ready && !self.liveness.is_suspect(now, worker_timeout)
    }

    /// How long it has been serving (zero if it never became ready).
    fn serving_for(&self) -> Duration {
        self.ready_since.map_or(Duration::ZERO, |since| since.elapsed())
    }
}

struct Supervisor {
    slots: Vec<Slot>,
    /// Replaced workers draining before they exit, with their former slot.
    retiring: Vec<(usize, Worker)>,
    spawner: Spawner,
    chooser: Chooser,
    /// Accepted connections waiting for a ready worker.
    queue: VecDeque<Conn>,
    next_conn_id: u64,
    rollout: Option<Rollout>,
    last_reload: Option<String>,
    /// Application gathers waiting for answers.
    gatherings: Gatherings,
    config: ClusterConfig,
    all_ready_logged: bool,
    queue_full_logged: bool,
    /// Connections closed because a worker, or passing to it, ran out of descriptors.
    shed_log: ShedLog,
    /// Answers `503` to connections no worker can serve.
    unavailable: Unavailable,
    /// Shared mode: since when no worker has been able to take connections (`None` while one
    /// can).
    unserved_since: Option<Instant>,
}

/// Set once the cluster is shutting down.
struct Stopping {
    deadline: tokio::time::Instant,
    killed: usize,
}

/// The Unix signals the primary acts on.
struct Signals {
    term: UnixSignal,
    int: UnixSignal,
    hup: UnixSignal,
    ttin: UnixSignal,
    ttou: UnixSignal,
    usr1: UnixSignal,
}

impl Signals {
    fn install() -> Result<Self, ClusterError> {
        let on = |kind| signal(kind).map_err(ClusterError::Signals);
        Ok(Self {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
            ttin: on(SignalKind::from_raw(nix::libc::SIGTTIN))?,
            ttou: on(SignalKind::from_raw(nix::libc::SIGTTOU))?,
            usr1: on(SignalKind::user_defined1())?,
        })
    }
}

impl Supervisor {
    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut commands: mpsc::Receiver<control::Command>,
        acceptor: Option<&Acceptor>,
        listener: &std::net::TcpListener,
    ) -> Result<ShutdownReport, ClusterError> {
        let mut signals = Signals::install()?;
        for slot in 0..self.slots.len() {
            self.start(slot);
        }
        let mut stopping: Option<Stopping> = None;
        let mut checks = tokio::time::interval(CHECK_INTERVAL);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Shared mode's stand-in for the workers: accepts on the listener to answer 503 while
        // no worker serves (see `update_stand_in`).
        let mut stand_in: Option<Acceptor> = None;
        loop {
            if let Some(stop) = &stopping {
                if self.processes() == 0 {
                    return Ok(ShutdownReport { killed: stop.killed });
                }
            }
            let accepting = acceptor.is_some() && stopping.is_none() && self.queue.len() < MAX_QUEUED;
            let deadline = stopping.as_ref().map(|s| s.deadline);
            let rollout_deadline = self.rollout.as_ref().and_then(Rollout::deadline);
            let gather_deadline = self.gatherings.next_deadline();
            let queue_deadline = self.queue_deadline();
            let stand_in_deadline = if acceptor.is_none() && stopping.is_none() {
                self.update_stand_in(&mut stand_in, listener)
            } else {
                stand_in = None;
                None
            };
            tokio::select! {
                Some(event) = events.recv() => self.handle(event, stopping.is_some()),
                (stream, peer) = accept(acceptor), if accepting => {
                    let id = self.next_conn_id;
                    self.next_conn_id += 1;
                    self.dispatch(Conn { id, stream, peer, accepted_at: Instant::now() });
                }
                (stream, _) = accept(stand_in.as_ref()) => self.unavailable.answer(stream, "no worker is serving"),
                _ = sleep_until(queue_deadline) => self.answer_overdue(),
                // Only wakes the loop, which then starts the stand-in.
                _ = sleep_until(stand_in_deadline) => {}
                Some((request, reply)) = commands.recv() => {
                    if request == control::Request::Stop {
                        let _ = reply.send(control::Response::ok());
                        self.on_stop("a stop request", &mut stopping);
                    } else {
                        self.on_request(request, reply, stopping.is_some());
                    }
                }
                _ = signals.term.recv() => self.on_stop("SIGTERM", &mut stopping),
                _ = signals.int.recv() => self.on_stop("SIGINT", &mut stopping),
                _ = signals.hup.recv(), if stopping.is_none() => {
                    tracing::info!("SIGHUP received: rolling reload");
                    self.reload(None);
                }
                _ = signals.ttin.recv(), if stopping.is_none() => self.scale_by(1),
                _ = signals.ttou.recv(), if stopping.is_none() => self.scale_by(-1),
                _ = signals.usr1.recv() => self.reopen_logs(),
                _ = sleep_until(rollout_deadline) => self.rollout_timed_out(),
                _ = sleep_until(gather_deadline) => self.finish_gathers(true),
                _ = checks.tick(), if stopping.is_none() => {
                    self.check_workers();
                    self.drop_departed();
                }
                _ = sleep_until(deadline) => {
                    if let Some(stop) = &mut stopping {
                        stop.killed += self.kill_all("did not stop within the shutdown timeout");
                        // Killed workers still report their exit; wait for that, not again for
                        // this deadline.
                        stop.deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
                    }
                }
            }
        }
    }

    fn handle(&mut self, event: Event, stopping: bool) {
        match event {
            Event::Message { slot, generation, msg } => self.on_message(slot, generation, msg),
            Event::Refused { slot, generation, conns } => {
                if let Some(worker) = self.worker_mut(slot, generation) {
                    worker.state = State::Draining;
                    worker.open = worker.open.saturating_sub(conns.len());
                }
                self.redispatch(conns, stopping);
            }
            Event::Shed { slot, generation, count, why } => {
                if let Some(worker) = self.worker_mut(slot, generation) {
                    worker.open = worker.open.saturating_sub(count);
                }
                let why = match why {
                    ShedReason::WorkerFull => "workers are at their open files limit less --fd-reserve",
                    ShedReason::SendExhausted => "too many descriptors in flight to the workers",
                };
                self.shed_log.shed(u64::try_from(count).unwrap_or(u64::MAX), why);
            }
            Event::Reclaimed { slot, generation, conns } => {
                if let Some(worker) = self.worker_mut(slot, generation) {
                    worker.open = worker.open.saturating_sub(conns.len());
                    // Once per episode: later batches of the same silence are no news.
                    if worker.liveness.missed_handoff() {
                        tracing::warn!(
                            "worker {slot} pid {} acknowledged none of {} connection(s) within {:?}: handing them to \
                             other workers, and no new ones to it until it answers again",
                            worker.pid,
                            conns.len(),
                            link::RECLAIM_AFTER
                        );
                    }
                }
                self.redispatch(conns, stopping);
            }
            Event::Exited { slot, generation, status, orphans } => {
                self.forget_in_gathers(slot, generation);
                self.on_exit(slot, generation, &exit::describe(&status), stopping);
                self.redispatch(orphans, stopping);
            }
            Event::RespawnDue { slot, generation } => {
                let due = self.slots.get(slot).is_some_and(|s| s.worker.is_none() && s.next_generation == generation);
                if !stopping && due {
                    self.start(slot);
                }
            }
        }
    }

    fn on_exit(&mut self, slot: usize, generation: u64, how: &str, stopping: bool) {
        if let Some(i) = self.retiring.iter().position(|(s, w)| *s == slot && w.generation == generation) {
            let (_, worker) = self.retiring.swap_remove(i);
            tracing::info!("worker {slot} pid {} retired ({how})", worker.pid);
            return;
        }
        let Some(s) = self.slots.get_mut(slot) else { return };
        if let Some(successor) = s.successor.take_if(|w| w.generation == generation) {
            let reason = format!("the new worker for slot {slot} (pid {}) {how} before it was ready", successor.pid);
            self.abort_rollout(&reason);
            return;
        }
        let Some(worker) = s.worker.take_if(|w| w.generation == generation) else { return };
        if stopping {
            tracing::info!("worker {slot} pid {} {how}", worker.pid);
            return;
        }
        s.restarts += 1;
        if s.successor.is_some() {
            // A reload is already starting its replacement.
            tracing::warn!("worker {slot} pid {} {how}; its successor is starting", worker.pid);
            return;
        }
        match s.backoff.on_exit(worker.serving_for(), &self.config.restart) {
            Verdict::RestartIn(delay) if delay.is_zero() => {
                tracing::warn!("worker {slot} pid {} {how}, restarting", worker.pid);
                self.start(slot);
            }
            Verdict::RestartIn(delay) => {
                tracing::warn!("worker {slot} pid {} {how}, restarting in {delay:?}", worker.pid);
                self.respawn_after(slot, delay);
            }
            Verdict::GiveUp => {
                s.errored = true;
                let policy = &self.config.restart;
                tracing::error!(
                    "worker {slot} pid {} {how}; slot {slot} died more than {} times within {:?}: \
                     marked errored and left down (`herd ctl restart {slot}` brings it back)",
                    worker.pid,
                    policy.max_restarts,
                    policy.window
                );
            }
        }
    }

    fn on_message(&mut self, slot: usize, generation: u64, msg: ToPrimary) {
        match msg {
            ToPrimary::Ready { .. } => {
                let is_successor = self
                    .slots
                    .get(slot)
                    .is_some_and(|s| s.successor.as_ref().is_some_and(|w| w.generation == generation));
                if is_successor {
                    self.promote_successor(slot);
                    return;
                }
            }
            ToPrimary::Broadcast { payload } => {
                if let Err(err) = self.relay_broadcast(Some(slot), &payload) {
                    tracing::warn!("worker {slot}'s broadcast was not relayed: {err}");
                }
                return;
            }
            ToPrimary::Unanswered { id, reason } => {
                self.on_unanswered(slot, generation, id, reason);
                return;
            }
            ToPrimary::Gather { id, payload } => {
                self.start_gather((slot, generation), id, payload);
                return;
            }
            ToPrimary::Reply { id, payload } => {
                self.on_reply(slot, generation, id, payload);
                return;
            }
            _ => {}
        }
        let worker_timeout = self.config.recycling.worker_timeout;
        let Some(worker) = self.worker_mut(slot, generation) else {
            return;
        };
        match msg {
            ToPrimary::Ready { .. } => {
                worker.become_ready();
                tracing::info!("worker {slot} pid {} ready", worker.pid);
                let ready =
                    self.slots.iter().filter(|s| s.worker.as_ref().is_some_and(|w| w.state == State::Ready)).count();
                if ready == self.slots.len() && !self.all_ready_logged {
                    self.all_ready_logged = true;
                    tracing::info!("all {ready} workers ready");
                    notify::notify(&format!("READY=1\nSTATUS={ready} workers ready"));
                }
                self.flush_queue();
            }
            ToPrimary::Draining => {
                worker.state = State::Draining;
                tracing::debug!("worker {slot} pid {} draining", worker.pid);
            }
            ToPrimary::Closed { count } => {
                worker.open = worker.open.saturating_sub(usize::try_from(count).unwrap_or(usize::MAX));
                tracing::debug!("worker {slot} pid {} closed {count} connection(s), {} open", worker.pid, worker.open);
            }
            ToPrimary::Heartbeat { requests, open } => {
                worker.requests = requests;
                worker.open_reported = open.or(worker.open_reported);
                if worker.liveness.heartbeat(Instant::now(), worker_timeout) && worker.state == State::Ready {
                    tracing::info!("worker {slot} pid {} answers again: handing it connections", worker.pid);
                    self.flush_queue();
                }
            }
            // Handled above, or by the link task.
            ToPrimary::Broadcast { .. }
            | ToPrimary::Gather { .. }
            | ToPrimary::Reply { .. }
            | ToPrimary::Unanswered { .. }
            | ToPrimary::Accepted { .. }
            | ToPrimary::Refused { .. }
            | ToPrimary::Shed { .. } => {}
        }
    }

    /// Starts a worker process for `slot`; `None` (logged) if it could not.
    fn spawn(&mut self, slot: usize) -> Option<Worker> {
        self.try_spawn(slot).inspect_err(|err| tracing::error!("cannot start worker {slot}: {err}")).ok()
    }

    fn try_spawn(&mut self, slot: usize) -> Result<Worker, SpawnError> {
        let generation = self.slots[slot].next_generation;
        self.slots[slot].next_generation += 1;
        match self.spawner.spawn(slot, generation) {
            Ok(Link { pid, kill, outbox, mailbox }) => {
                tracing::info!("worker {slot} pid {pid} started");
                let recycling = &self.config.recycling;
                let recycle_after = recycling.max_requests.map(|max| {
                    use std::hash::BuildHasher;
                    // Jitter, so that workers started together do not all recycle together.
                    let random = std::collections::hash_map::RandomState::new().hash_one((slot, generation));
                    max + random % (recycling.max_requests_jitter + 1)
                });
                Ok(Worker {
                    generation,
                    pid,
                    started: Instant::now(),
                    state: State::Starting,
                    ready_since: None,
                    open: 0,
                    open_reported: None,
                    liveness: Liveness::new(Instant::now()),
                    requests: 0,
                    recycle_after,
                    kill,
                    outbox,
                    mailbox,
                })
            }
            Err(err) => Err(err),
        }
    }

    fn start(&mut self, slot: usize) {
        match self.try_spawn(slot) {
            Ok(worker) => self.slots[slot].worker = Some(worker),
            // Out of descriptors or memory is the machine's state, not the worker's fault, and
            // passes as connections close: retry, and never count it toward `errored`.
            Err(err) if err.is_exhaustion() => {
                let delay = self.slots[slot].backoff.on_shortage(&self.config.restart);
                tracing::warn!("cannot start worker {slot}: {err}; retrying in {delay:?} (not counted as a crash)");
                self.respawn_after(slot, delay);
            }
            Err(err) => match self.slots[slot].backoff.on_exit(Duration::ZERO, &self.config.restart) {
                Verdict::RestartIn(delay) => {
                    tracing::warn!("cannot start worker {slot}: {err}; retrying in {delay:?}");
                    self.respawn_after(slot, delay);
                }
                Verdict::GiveUp => {
                    self.slots[slot].errored = true;
                    tracing::error!("worker {slot} cannot be started ({err}): slot marked errored");
                }
            },
        }
    }

    fn respawn_after(&self, slot: usize, delay: Duration) {
        let generation = self.slots[slot].next_generation;
        let events = self.spawner.events.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::RespawnDue { slot, generation });
        });
    }

    fn on_stop(&mut self, why: &str, stopping: &mut Option<Stopping>) {
        if let Some(stop) = stopping {
            tracing::warn!("{why} again: killing workers now");
            stop.killed += self.kill_all("killed on a second signal");
            return;
        }
        let timeout = self.config.shutdown_timeout;
        tracing::info!("{why} received: shutting down gracefully (timeout {timeout:?})");
        *stopping = Some(Stopping { deadline: tokio::time::Instant::now() + timeout, killed: 0 });
        notify::notify("STOPPING=1");
        self.abort_rollout("the cluster is shutting down");
        for conn in std::mem::take(&mut self.queue) {
            self.unavailable.answer(conn.stream, "the cluster is shutting down");
        }
        for (_, worker) in self.all_workers() {
            worker.tell(ToWorker::Shutdown);
        }
    }

    fn reopen_logs(&self) {
        match self.config.logs.as_ref().map(|sink| sink.reopen()) {
            Some(Ok(())) => tracing::info!("SIGUSR1: log files reopened"),
            Some(Err(err)) => tracing::error!("SIGUSR1: cannot reopen the log files: {err}"),
            None => tracing::info!("SIGUSR1: no log files to reopen"),
        }
    }

    fn kill_all(&self, why: &str) -> usize {
        let mut killed = 0;
        for (slot, worker) in self.all_workers() {
            tracing::warn!("worker {slot} pid {} {why}, killing it", worker.pid);
            worker.kill();
            killed += 1;
        }
        killed
    }

    /// Every worker process the primary is responsible for, with its slot.
    fn all_workers(&self) -> impl Iterator<Item = (usize, &Worker)> {
        let in_slots = self
            .slots
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.worker.iter().chain(s.successor.iter()).map(move |w| (i, w)));
        in_slots.chain(self.retiring.iter().map(|(slot, w)| (*slot, w)))
    }

    fn processes(&self) -> usize {
        self.all_workers().count()
    }

    /// The worker process `(slot, generation)`, wherever it is: serving, starting as a
    /// successor, or retiring (possibly from a slot that scaling removed).
    fn worker_mut(&mut self, slot: usize, generation: u64) -> Option<&mut Worker> {
        let is = |w: &Option<Worker>| w.as_ref().is_some_and(|w| w.generation == generation);
        match self.slots.get(slot).map(|s| (is(&s.worker), is(&s.successor))) {
            Some((true, _)) => self.slots[slot].worker.as_mut(),
            Some((_, true)) => self.slots[slot].successor.as_mut(),
            _ => self.retiring.iter_mut().find(|(s, w)| *s == slot && w.generation == generation).map(|(_, w)| w),
        }
    }
}

/// The next accepted connection, or never without an acceptor (shared mode).
async fn accept(acceptor: Option<&Acceptor>) -> (std::net::TcpStream, SocketAddr) {
    match acceptor {
        Some(acceptor) => acceptor.accept().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever without one.
pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
