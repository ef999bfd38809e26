//! The primary: owns the listening socket for its whole life, keeps one worker per slot,
//! restarts workers that die, shuts them down gracefully, and in primary-accept modes accepts
//! connections and hands each to a worker.
//!
//! All state lives in one task ([`Supervisor::run`]); link tasks, the acceptor and timers talk
//! to it through [`Event`]s and `select!` arms, so no lock is needed.

mod acceptor;
mod backoff;
mod exit;
mod link;

use std::{
    collections::VecDeque,
    ffi::OsString,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

use crate::{
    channel::Channel,
    config::ClusterConfig,
    dispatch::{Candidate, Chooser, Conn},
    error::ClusterError,
    proto::{ToPrimary, ToWorker},
};
use acceptor::Acceptor;
use backoff::Backoff;
use link::{Event, Link, Spawner};

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
    config: ClusterConfig,
    listener: std::net::TcpListener,
) -> Result<ShutdownReport, ClusterError> {
    let local = listener.local_addr().map_err(|source| ClusterError::Bind { addr: config.bind, source })?;
    let acceptor = if config.balance.primary_accepts() {
        Some(Acceptor::new(&listener).map_err(|source| ClusterError::Bind { addr: local, source })?)
    } else {
        None
    };
    let (events_tx, events) = mpsc::unbounded_channel();
    let mut argv = std::env::args_os();
    let exe = current_exe()?;
    let spawner = Spawner {
        arg0: argv.next().unwrap_or_else(|| exe.clone().into_os_string()),
        exe,
        args: argv.collect::<Vec<OsString>>(),
        env: config.worker_env.clone(),
        // The primary keeps `listener` itself, open, in every mode (dropped only on return).
        shared_listener: if acceptor.is_none() {
            Some(listener.try_clone().map_err(|source| ClusterError::Bind { addr: local, source })?)
        } else {
            None
        },
        events: events_tx,
    };
    tracing::info!(workers = config.workers, balance = config.balance.as_str(), "listening on {local}");
    let mut supervisor = Supervisor {
        slots: (0..config.workers).map(|_| Slot::default()).collect(),
        spawner,
        chooser: Chooser::new(config.balance),
        queue: VecDeque::new(),
        next_conn_id: 0,
        config,
        all_ready_logged: false,
        queue_full_logged: false,
    };
    let report = supervisor.run(events, acceptor.as_ref()).await;
    drop(listener);
    report
}

/// The binary to re-execute. After the file was replaced on disk (a rebuild or a deploy), Linux
/// reports the old inode as "path (deleted)"; the path itself is what we want to start.
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
    worker: Option<Worker>,
    backoff: Backoff,
}

struct Worker {
    generation: u64,
    pid: u32,
    started: Instant,
    /// Reported ready and not draining: may receive connections.
    ready: bool,
    /// Connections handed to it and not yet reported closed (least-conn's measure).
    open: usize,
    channel: Channel,
    kill: mpsc::Sender<()>,
    outbox: mpsc::UnboundedSender<Conn>,
}

struct Supervisor {
    slots: Vec<Slot>,
    spawner: Spawner,
    chooser: Chooser,
    /// Accepted connections waiting for a ready worker.
    queue: VecDeque<Conn>,
    next_conn_id: u64,
    config: ClusterConfig,
    all_ready_logged: bool,
    queue_full_logged: bool,
}

/// Set once SIGTERM/SIGINT arrived.
struct Stopping {
    deadline: tokio::time::Instant,
    killed: usize,
}

impl Supervisor {
    async fn run(
        &mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        acceptor: Option<&Acceptor>,
    ) -> Result<ShutdownReport, ClusterError> {
        let mut term = signal(SignalKind::terminate()).map_err(ClusterError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(ClusterError::Signals)?;
        for slot in 0..self.slots.len() {
            self.start(slot);
        }
        let mut stopping: Option<Stopping> = None;
        loop {
            if let Some(stop) = &stopping {
                if self.workers().next().is_none() {
                    return Ok(ShutdownReport { killed: stop.killed });
                }
            }
            let accepting = acceptor.is_some() && stopping.is_none() && self.queue.len() < MAX_QUEUED;
            let deadline = stopping.as_ref().map(|s| s.deadline);
            tokio::select! {
                Some(event) = events.recv() => self.handle(event, stopping.is_some()),
                (stream, peer) = accept(acceptor), if accepting => {
                    let id = self.next_conn_id;
                    self.next_conn_id += 1;
                    self.dispatch(Conn { id, stream, peer });
                }
                _ = term.recv() => self.on_stop_signal("SIGTERM", &mut stopping).await,
                _ = int.recv() => self.on_stop_signal("SIGINT", &mut stopping).await,
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
                    worker.ready = false;
                    worker.open = worker.open.saturating_sub(conns.len());
                }
                self.redispatch(conns, stopping);
            }
            Event::Exited { slot, generation, status, orphans } => {
                let Some(worker) = self.slots[slot].worker.take_if(|w| w.generation == generation) else {
                    return;
                };
                let how = exit::describe(&status);
                if stopping {
                    tracing::info!("worker {slot} pid {} {how}", worker.pid);
                } else {
                    let delay = self.slots[slot].backoff.on_exit(worker.started.elapsed());
                    if delay.is_zero() {
                        tracing::warn!("worker {slot} pid {} {how}, restarting", worker.pid);
                        self.start(slot);
                    } else {
                        tracing::warn!("worker {slot} pid {} {how}, restarting in {delay:?}", worker.pid);
                        self.respawn_after(slot, delay);
                    }
                }
                self.redispatch(orphans, stopping);
            }
            Event::RespawnDue { slot, generation } => {
                let s = &self.slots[slot];
                if !stopping && s.worker.is_none() && s.next_generation == generation {
                    self.start(slot);
                }
            }
        }
    }

    fn on_message(&mut self, slot: usize, generation: u64, msg: ToPrimary) {
        let Some(worker) = self.worker_mut(slot, generation) else {
            return;
        };
        match msg {
            ToPrimary::Ready { .. } => {
                worker.ready = true;
                tracing::info!("worker {slot} pid {} ready", worker.pid);
                let ready = self.workers().filter(|(_, w)| w.ready).count();
                if ready == self.slots.len() && !self.all_ready_logged {
                    self.all_ready_logged = true;
                    tracing::info!("all {ready} workers ready");
                }
                self.flush_queue();
            }
            ToPrimary::Draining => {
                worker.ready = false;
                tracing::debug!("worker {slot} pid {} draining", worker.pid);
            }
            ToPrimary::Closed { count } => {
                worker.open = worker.open.saturating_sub(usize::try_from(count).unwrap_or(usize::MAX));
                tracing::debug!("worker {slot} pid {} closed {count} connection(s), {} open", worker.pid, worker.open);
            }
            // Handled by the link task.
            ToPrimary::Accepted { .. } | ToPrimary::Refused { .. } => {}
        }
    }

    /// Hands `conn` to the worker the policy picks, or queues it until one is ready.
    fn dispatch(&mut self, conn: Conn) {
        let mut conn = conn;
        loop {
            let candidates: Vec<Candidate> = self
                .workers()
                .filter(|(_, w)| w.ready)
                .map(|(slot, w)| Candidate { slot, open: w.open })
                .collect();
            let Some(slot) = self.chooser.choose(conn.peer.ip(), &candidates) else {
                return self.enqueue(conn);
            };
            let Some(worker) = self.slots[slot].worker.as_mut() else {
                return self.enqueue(conn);
            };
            match worker.outbox.send(conn) {
                Ok(()) => {
                    worker.open += 1;
                    return;
                }
                Err(mpsc::error::SendError(returned)) => {
                    // Its link task has ended: the exit event is on its way. Choose again.
                    worker.ready = false;
                    conn = returned;
                }
            }
        }
    }

    fn redispatch(&mut self, conns: Vec<Conn>, stopping: bool) {
        if stopping {
            return; // dropping them closes them: nobody is left to serve them
        }
        for conn in conns {
            self.dispatch(conn);
        }
    }

    fn enqueue(&mut self, conn: Conn) {
        self.queue.push_back(conn);
        if self.queue.len() >= MAX_QUEUED && !self.queue_full_logged {
            self.queue_full_logged = true;
            tracing::warn!(
                "dispatch queue full: {MAX_QUEUED} connections wait for a ready worker; further \
                 connections wait in the kernel's accept queue"
            );
        }
    }

    /// Hands queued connections to workers, oldest first, as long as one can take them.
    fn flush_queue(&mut self) {
        let has_candidate = self.workers().any(|(_, w)| w.ready);
        if !has_candidate {
            return;
        }
        let queued = std::mem::take(&mut self.queue);
        if !queued.is_empty() {
            tracing::info!("handing {} queued connection(s) to workers", queued.len());
        }
        self.queue_full_logged = false;
        for conn in queued {
            self.dispatch(conn);
        }
    }

    fn start(&mut self, slot: usize) {
        let generation = self.slots[slot].next_generation;
        self.slots[slot].next_generation += 1;
        match self.spawner.spawn(slot, generation) {
            Ok(Link { pid, channel, kill, outbox }) => {
                tracing::info!("worker {slot} pid {pid} started");
                self.slots[slot].worker = Some(Worker {
                    generation,
                    pid,
                    started: Instant::now(),
                    ready: false,
                    open: 0,
                    channel,
                    kill,
                    outbox,
                });
            }
            Err(err) => {
                let delay = self.slots[slot].backoff.on_exit(Duration::ZERO);
                tracing::error!("cannot start worker {slot}: {err}; retrying in {delay:?}");
                self.respawn_after(slot, delay);
            }
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

    async fn on_stop_signal(&mut self, name: &str, stopping: &mut Option<Stopping>) {
        if let Some(stop) = stopping {
            tracing::warn!("{name} again: killing workers now");
            stop.killed += self.kill_all("killed on a second signal");
            return;
        }
        let timeout = self.config.shutdown_timeout;
        tracing::info!("{name} received: shutting down gracefully (timeout {timeout:?})");
        *stopping = Some(Stopping { deadline: tokio::time::Instant::now() + timeout, killed: 0 });
        self.queue.clear();
        for (slot, worker) in self.workers() {
            if let Err(err) = worker.channel.send(&ToWorker::Shutdown).await {
                // Its link task will report the exit that this error foreshadows.
                tracing::debug!(slot, pid = worker.pid, error = %err, "cannot ask worker to shut down");
            }
        }
    }

    fn kill_all(&self, why: &str) -> usize {
        let mut killed = 0;
        for (slot, worker) in self.workers() {
            tracing::warn!("worker {slot} pid {} {why}, killing it", worker.pid);
            let _ = worker.kill.try_send(());
            killed += 1;
        }
        killed
    }

    fn workers(&self) -> impl Iterator<Item = (usize, &Worker)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| s.worker.as_ref().map(|w| (i, w)))
    }

    fn worker_mut(&mut self, slot: usize, generation: u64) -> Option<&mut Worker> {
        self.slots[slot].worker.as_mut().filter(|w| w.generation == generation)
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
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
