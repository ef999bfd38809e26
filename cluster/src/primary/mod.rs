//! The primary's shell around the supervisor core ([`crate::supervisor`]): it owns the
//! listening socket for its whole life, the worker processes (through their link tasks), the
//! accepted connections, the control socket and the signals, and does what the core decides.
//!
//! One task runs [`Shell::run`]: a `select!` over link events, accepted connections, control
//! requests, signals and the core's next deadline. Each becomes an [`Event`] for
//! [`Core::on`]; the [`Effect`]s that come back are carried out in order, and an effect whose
//! outcome the core must know (a spawn, a hand-off to a link that has closed, a probe) feeds an
//! event back, handled before the next `select!`. No decision is taken here.

mod acceptor;
mod admin;
mod exit;
mod link;
mod metrics;
mod notify;
mod probe;
mod unavailable;

use std::{
    collections::{HashMap, VecDeque},
    ffi::OsString,
    net::SocketAddr,
    path::PathBuf,
    time::Instant,
};

use tokio::{
    signal::unix::{signal, Signal as UnixSignal, SignalKind},
    sync::{mpsc, oneshot},
};

use crate::steering::Steering;
use crate::upgrade::{Hello, Predecessor, Successor, SuccessorEvent};
use crate::{
    config::ClusterConfig,
    control::{self, Response},
    dispatch::Conn,
    error::ClusterError,
    fdlimit::{self, FdBudget, ShedLog},
    proto::ToPrimary,
    proxy_protocol::{self, PendingHeaders, Proxied},
    supervisor::{Core, Effect, Event, ReplyTo, Signal, Ticket, WorkerId},
};
use acceptor::Acceptor;
use link::{Link, ShedReason, Spawner};
use unavailable::Unavailable;

pub use crate::supervisor::ShutdownReport;

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

/// Where the listening socket came from, for the startup line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerOrigin {
    /// [`bind`] made it from `--bind`.
    Bound,
    /// Socket activation: the service manager holds it too (see `crate::activation`).
    Inherited,
}

/// The rest of a hand-over, for a new primary (see `crate::upgrade`): once every worker is
/// ready, take the control socket's path and tell the old primary to stop.
struct TakeOver {
    predecessor: Predecessor,
    control_path: PathBuf,
    commands: mpsc::Sender<control::Command>,
}

pub(crate) async fn run(
    mut config: ClusterConfig,
    listener: std::net::TcpListener,
    origin: ListenerOrigin,
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
    // Under --proxy-protocol the headers are read here, before a worker is chosen, and the
    // rejected ones counted in the primary's series.
    let proxy_rejections = (acceptor.is_some() && config.proxy_protocol.is_some()).then(proxy_protocol::rejections);
    let mut pending = match (&proxy_rejections, config.proxy_protocol) {
        (Some(counted), Some(proxy)) => {
            Some(PendingHeaders::new(proxy, config.trusted_proxies.clone(), std::sync::Arc::clone(counted)))
        }
        _ => None,
    };
    let control_path = config.control_socket.clone().unwrap_or_else(|| control::default_path(local.port()));
    let (commands_tx, commands) = mpsc::channel(16);
    let mut predecessor = Predecessor::from_env().await?;
    if let Some(hello) = predecessor.as_ref().map(|p| &p.hello) {
        // What the old primary runs now, which `herd ctl scale` may have changed.
        config.workers = hello.workers;
    }
    // The old primary's, in a hand-over: a sticky client keeps its slot.
    let seed = match &predecessor {
        Some(predecessor) => predecessor.hello.seed,
        None => {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::process::id())
        }
    };
    let steering = if config.kernel_steers() {
        let inherited = predecessor.as_mut().map(|p| std::mem::take(&mut p.slot_listeners)).unwrap_or_default();
        match Steering::new(&listener, config.balance, seed, config.workers, inherited) {
            Ok(steering) => Some(steering),
            Err(err) => {
                tracing::warn!("the kernel cannot steer connections here ({err}): the primary hands each one over");
                config.steering = crate::config::Steering::Primary;
                None
            }
        }
    } else {
        None
    };
    // Bound before the control socket and any worker: a port in use stops the primary at once.
    let inherited_admin = predecessor.as_mut().and_then(|p| p.admin.take());
    let admin =
        config.admin.as_ref().map(|admin| admin::serve(admin, inherited_admin, commands_tx.clone())).transpose()?;
    // A new primary takes the control socket's path only once it serves (see `TakeOver`).
    let (control, take_over) = match predecessor {
        Some(predecessor) => {
            (None, Some(TakeOver { predecessor, control_path: control_path.clone(), commands: commands_tx }))
        }
        None => {
            let control = control::serve(&control_path, commands_tx, config.logs.clone())
                .map_err(|source| ClusterError::ControlSocket { path: control_path.clone(), source })?;
            (Some(control), None)
        }
    };

    let (events_tx, events) = mpsc::unbounded_channel();
    let mut argv = std::env::args_os();
    let arg0 = argv.next();
    // Its own arguments, for a new primary in a hand-over; the workers' too unless the app
    // chose theirs.
    let primary_args: Vec<OsString> = argv.collect();
    let exe = current_exe()?;
    let spawner = Spawner {
        arg0: arg0.unwrap_or_else(|| exe.clone().into_os_string()),
        exe,
        args: config.worker_args.clone().unwrap_or_else(|| primary_args.clone()),
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
    let inherited = match (origin, &take_over) {
        (_, Some(take_over)) => {
            format!(", the socket of the old primary (pid {}), which it hands over", take_over.predecessor.hello.from)
        }
        (ListenerOrigin::Bound, None) => String::new(),
        (ListenerOrigin::Inherited, None) => {
            ", a socket inherited by socket activation (LISTEN_FDS; --bind is not used)".to_owned()
        }
    };
    tracing::info!(
        workers = config.workers,
        balance = config.balance.as_str(),
        steering = if steering.is_some() { "kernel" } else { "primary" },
        control = %control_path.display(),
        "listening on {local}{inherited}"
    );
    let core = Core::new(config.clone(), std::process::id(), seed);
    let (successor_events, successor_rx) = mpsc::unbounded_channel();
    let (orphans_tx, orphans_rx) = mpsc::unbounded_channel();
    let mut shell = Shell {
        core: if take_over.is_some() { core.take_over() } else { core },
        seed,
        primary_args,
        admin,
        control,
        take_over,
        successor: None,
        successor_events,
        metrics: metrics::ShellMetrics::new(config.balance.as_str(), proxy_rejections),
        config,
        spawner,
        links: HashMap::new(),
        conns: HashMap::new(),
        next_conn: 0,
        replies: HashMap::new(),
        next_reply: 0,
        stand_in: None,
        steering,
        orphans: HashMap::new(),
        orphans_for: None,
        orphans_tx,
        unavailable: Unavailable::default(),
        shed_log: ShedLog::default(),
        feedback: VecDeque::new(),
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs()),
        started: false,
    };
    let channels = Channels { events, commands, successor: successor_rx, orphans: orphans_rx };
    let report = shell.run(channels, acceptor.as_ref(), pending.as_mut(), &listener).await;
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

/// Everything with I/O that the core refers to by id.
struct Shell {
    core: Core,
    /// The core's seed (ip-hash's key), passed on in a hand-over.
    seed: u64,
    /// This primary's own arguments, for a new primary (workers may get others).
    primary_args: Vec<OsString>,
    admin: Option<admin::AdminListener>,
    /// `None` in a new primary until it takes over.
    control: Option<control::ControlSocket>,
    take_over: Option<TakeOver>,
    /// A new primary this one hands over to, until it is ready or failed.
    successor: Option<Successor>,
    successor_events: mpsc::UnboundedSender<SuccessorEvent>,
    config: ClusterConfig,
    /// What only the shell can measure, and the workers' last snapshots.
    metrics: metrics::ShellMetrics,
    spawner: Spawner,
    links: HashMap<WorkerId, Link>,
    /// Connections the core holds (queued, or between a worker and the next): the core knows
    /// them by id.
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    /// `herd ctl` clients waiting for an answer.
    replies: HashMap<ReplyTo, oneshot::Sender<Response>>,
    next_reply: ReplyTo,
    /// Shared mode: the primary's own acceptor while no worker serves (to answer 503).
    stand_in: Option<Acceptor>,
    /// Kernel steering's listeners and program (`crate::steering`); `None` when the primary
    /// steers.
    steering: Option<Steering>,
    /// Kernel steering: the tasks accepting on the listeners of slots the kernel does not send
    /// connections to (see `Shell::refresh_orphans`), by slot.
    orphans: HashMap<usize, tokio::task::AbortHandle>,
    /// What `orphans` was last made for: the listeners, whether the primary was idle, the
    /// steered slots.
    orphans_for: Option<(usize, bool, Vec<usize>)>,
    orphans_tx: mpsc::UnboundedSender<(std::net::TcpStream, SocketAddr)>,
    unavailable: Unavailable,
    /// Connections closed because a worker, or passing to it, ran out of descriptors.
    shed_log: ShedLog,
    /// Events the effects produced, for the core before anything else happens.
    feedback: VecDeque<Event>,
    /// When this primary started (seconds since the Unix epoch), for the status.
    started_unix_s: u64,
    /// Every worker was ready once (`READY=1`): start-up is over.
    started: bool,
}

/// The Unix signals the primary acts on.
struct Signals {
    term: UnixSignal,
    int: UnixSignal,
    hup: UnixSignal,
    ttin: UnixSignal,
    ttou: UnixSignal,
    usr1: UnixSignal,
    usr2: UnixSignal,
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
            usr2: on(SignalKind::user_defined2())?,
        })
    }
}

impl Shell {
    async fn run(
        &mut self,
        channels: Channels,
        acceptor: Option<&Acceptor>,
        mut pending: Option<&mut PendingHeaders>,
        listener: &std::net::TcpListener,
    ) -> Result<ShutdownReport, ClusterError> {
        let Channels { mut events, mut commands, mut successor, mut orphans } = channels;
        let mut signals = Signals::install()?;
        self.feedback.push_back(Event::Boot);
        loop {
            while let Some(event) = self.feedback.pop_front() {
                for effect in self.core.on(event, Instant::now()) {
                    self.execute(effect, listener);
                }
            }
            self.refresh_orphans();
            if let Some(report) = self.core.finished() {
                return Ok(report);
            }
            let deadline = self.core.next_deadline().map(tokio::time::Instant::from_std);
            let event = tokio::select! {
                Some(event) = events.recv() => match self.link_event(event) {
                    Some(event) => event,
                    None => continue,
                },
                Some((stream, peer)) = accept_either(acceptor, &mut orphans, self.core.accepting()), if pending.as_ref().is_none_or(|p| p.has_room()) => {
                    match pending.as_deref_mut() {
                        Some(pending) => {
                            read_header(pending, stream, peer);
                            continue;
                        }
                        None => Event::Accepted(self.accepted(stream, peer, peer, Instant::now())),
                    }
                }
                Some(proxied) = next_proxied(pending.as_deref_mut()) => {
                    let Proxied { stream, peer, client, accepted_at } = proxied;
                    match stream.into_std() {
                        Ok(stream) => Event::Accepted(self.accepted(stream, peer, client, accepted_at)),
                        Err(err) => {
                            tracing::warn!(%peer, "cannot take back a connection after its PROXY header: {err}");
                            continue;
                        }
                    }
                }
                (stream, _) = accept(self.stand_in.as_ref()) => {
                    self.unavailable.answer(stream, "no worker is serving");
                    continue;
                }
                Some((request, reply)) = commands.recv() => {
                    let id = self.next_reply;
                    self.next_reply += 1;
                    self.replies.insert(id, reply);
                    Event::Control { request, reply: id }
                }
                _ = signals.term.recv() => Event::Signal(Signal::Terminate),
                _ = signals.int.recv() => Event::Signal(Signal::Interrupt),
                _ = signals.hup.recv() => Event::Signal(Signal::Hangup),
                _ = signals.ttin.recv() => Event::Signal(Signal::AddWorker),
                _ = signals.ttou.recv() => Event::Signal(Signal::RemoveWorker),
                _ = signals.usr2.recv() => Event::Signal(Signal::Upgrade),
                Some(event) = successor.recv() => {
                    self.successor = None;
                    match event {
                        SuccessorEvent::Ready { pid } => Event::SuccessorReady { pid },
                        SuccessorEvent::Failed { reason } => Event::SuccessorFailed { reason },
                    }
                }
                _ = signals.usr1.recv() => {
                    self.reopen_logs();
                    continue;
                }
                _ = sleep_until(deadline) => Event::Timer,
            };
            self.feedback.push_back(event);
        }
    }

    /// A new connection from `client` (through `peer`), for the core.
    fn accepted(&mut self, stream: std::net::TcpStream, peer: SocketAddr, client: SocketAddr, at: Instant) -> Ticket {
        let conn = Conn { id: self.next_conn, stream, peer, client, accepted_at: at };
        self.next_conn += 1;
        self.hold(conn)
    }

    /// Keeps the connection's socket; the core gets its ticket.
    fn hold(&mut self, conn: Conn) -> Ticket {
        let ticket = Ticket { id: conn.id, client: conn.client.ip(), accepted_at: conn.accepted_at };
        self.conns.insert(conn.id, conn);
        ticket
    }

    fn hold_all(&mut self, conns: Vec<Conn>) -> Vec<Ticket> {
        conns.into_iter().map(|conn| self.hold(conn)).collect()
    }

    /// The core's event for a link's, if the core needs to know.
    fn link_event(&mut self, event: link::Event) -> Option<Event> {
        Some(match event {
            link::Event::Message { worker, msg: ToPrimary::Final { snapshot } } => {
                self.metrics.last_words(worker, snapshot);
                return None;
            }
            link::Event::Message { worker, msg } => Event::Message { worker, msg },
            link::Event::Refused { worker, conns } => Event::Refused { worker, conns: self.hold_all(conns) },
            link::Event::Reclaimed { worker, conns } => Event::Reclaimed { worker, conns: self.hold_all(conns) },
            link::Event::Shed { worker, count, why } => {
                let why = match why {
                    ShedReason::WorkerFull => "workers are at their open files limit less --fd-reserve",
                    ShedReason::SendExhausted => "too many descriptors in flight to the workers",
                };
                self.shed_log.shed(u64::try_from(count).unwrap_or(u64::MAX), why);
                Event::Shed { worker, count }
            }
            link::Event::Exited { worker, status, orphans } => {
                self.links.remove(&worker);
                self.metrics.departed(worker);
                let (how, death) = (exit::describe(&status), exit::death(&status));
                Event::Exited { worker, how, death, orphans: self.hold_all(orphans) }
            }
        })
    }

    fn execute(&mut self, effect: Effect, listener: &std::net::TcpListener) {
        match effect {
            Effect::Spawn { worker } => match slot_listener(&mut self.steering, worker.slot)
                .and_then(|listener| self.spawner.spawn(worker, listener))
            {
                Ok(link) => {
                    self.feedback.push_back(Event::Spawned { worker, pid: link.pid });
                    self.links.insert(worker, link);
                }
                Err(err) => {
                    let exhaustion = err.is_exhaustion();
                    self.feedback.push_back(Event::SpawnFailed { worker, error: err.to_string(), exhaustion });
                }
            },
            Effect::Kill { worker } => {
                if let Some(link) = self.links.get(&worker) {
                    link.kill();
                }
            }
            Effect::Tell { worker, msg } => {
                if let Some(link) = self.links.get(&worker) {
                    link.tell(msg);
                }
            }
            Effect::Hand { worker, conn } => {
                let Some(conn) = self.conns.remove(&conn) else { return };
                self.metrics.handed(conn.accepted_at.elapsed());
                let returned = match self.links.get(&worker) {
                    Some(link) => link.outbox.send(conn).err().map(|returned| returned.0),
                    None => Some(conn),
                };
                // Its link task has ended: the exit event is on its way.
                if let Some(conn) = returned {
                    let conn = self.hold(conn);
                    self.feedback.push_back(Event::HandFailed { worker, conn });
                }
            }
            Effect::Answer503 { conn, why } => {
                if let Some(conn) = self.conns.remove(&conn) {
                    self.unavailable.answer(conn.stream, why);
                }
            }
            Effect::Probe { conns } => {
                let held: Vec<&Conn> = conns.iter().filter_map(|id| self.conns.get(id)).collect();
                let gone = probe::departed(held.iter().map(|c| &c.stream));
                let gone: Vec<u64> = held.iter().zip(gone).filter(|(_, gone)| *gone).map(|(c, _)| c.id).collect();
                for id in &gone {
                    self.conns.remove(id); // closes it
                }
                if !gone.is_empty() {
                    self.feedback.push_back(Event::Departed { conns: gone });
                }
            }
            Effect::MeasureMemory { workers } => {
                for (worker, pid) in workers {
                    if let Some(rss_bytes) = rss_bytes(pid) {
                        self.feedback.push_back(Event::Memory { worker, rss_bytes });
                    }
                }
            }
            Effect::Reply { to, mut response } => {
                if let Some(status) = &mut response.status {
                    status.started_unix_s = self.started_unix_s;
                    for worker in &mut status.workers {
                        worker.rss_bytes = worker.pid.and_then(rss_bytes);
                        worker.cpu_seconds = worker.pid.and_then(metrics::cpu_seconds);
                    }
                }
                if let Some(reply) = self.replies.remove(&to) {
                    let _ = reply.send(response);
                }
            }
            Effect::StandIn(true) => match Acceptor::new(listener, FdBudget::current(self.config.fd_reserve)) {
                Ok(acceptor) => self.stand_in = Some(acceptor),
                Err(err) => {
                    tracing::error!("cannot accept on the listener to answer 503 while no worker serves: {err}");
                    self.feedback.push_back(Event::StandInFailed);
                }
            },
            Effect::StandIn(false) => self.stand_in = None,
            Effect::Steer { slots } => {
                if let Some(steering) = &self.steering {
                    if let Err(err) = steering.steer(&slots) {
                        // The program before stays; the primary accepts on every slot that
                        // is not ready, so nothing waits for a worker that is gone.
                        tracing::error!("cannot steer connections to slots {slots:?}: {err}");
                    }
                }
            }
            // A new primary's first `READY=1` is its moment to take over.
            Effect::Notify(state) => {
                let ready = state.starts_with("READY=1");
                match self.take_over.take_if(|_| ready) {
                    Some(take_over) => self.take_over(take_over, &state),
                    None => notify::notify(&state),
                }
                // Started: the code that did it is not needed again.
                if ready && !std::mem::replace(&mut self.started, true) {
                    let released = crate::code_pages::release();
                    tracing::debug!("released the page-table entries of {} KiB of start-up code", released / 1024);
                }
            }
            Effect::StartSuccessor { workers } => {
                let launch = crate::upgrade::Launch {
                    exe: &self.spawner.exe,
                    arg0: &self.spawner.arg0,
                    args: &self.primary_args,
                    listener,
                    admin: self.admin.as_ref().map(|admin| &admin.socket),
                    slot_listeners: self.steering.as_ref().map_or(&[], |s| s.listeners()),
                    hello: Hello { from: std::process::id(), seed: self.seed, workers },
                };
                match Successor::start(launch, self.successor_events.clone()) {
                    Ok(successor) => {
                        self.feedback.push_back(Event::SuccessorStarted { pid: successor.pid });
                        self.successor = Some(successor);
                    }
                    Err(err) => self.feedback.push_back(Event::SuccessorFailed { reason: err.to_string() }),
                }
            }
            Effect::KillSuccessor => {
                if let Some(successor) = &self.successor {
                    successor.kill();
                }
            }
            Effect::Scraped { to, mut scrape } => {
                for worker in &mut scrape.status.workers {
                    worker.rss_bytes = worker.pid.and_then(rss_bytes);
                }
                let processes: Vec<(WorkerId, u32)> = self.links.iter().map(|(id, link)| (*id, link.pid)).collect();
                let text = self.metrics.render(&scrape, &processes);
                if let Some(reply) = self.replies.remove(&to) {
                    let _ = reply.send(Response { metrics: Some(text), ..Response::ok() });
                }
            }
        }
    }

    /// Kernel steering: accepts on the listener of every slot the kernel does not send new
    /// connections to, so that what is queued there (a dead worker's backlog, a removed slot's,
    /// a connection that raced a new program) is handed to a worker that serves. Not while the
    /// cluster stops (the draining workers take their own queues then), nor in a new primary
    /// before it takes over (the old primary's workers serve those listeners meanwhile).
    ///
    /// Called on every turn of the loop; it does its work only when what it depends on changed.
    fn refresh_orphans(&mut self) {
        let Some(steering) = &self.steering else { return };
        let steered = self.core.steered().unwrap_or(&[]);
        let idle = self.core.stopping() || self.core.taking_over();
        let inputs = (steering.listeners().len(), idle, steered);
        if self.orphans_for.as_ref().is_some_and(|(n, i, s)| (*n, *i, s.as_slice()) == inputs) {
            return;
        }
        self.orphans_for = Some((inputs.0, idle, steered.to_vec()));
        for (slot, listener) in steering.listeners().iter().enumerate() {
            // `steered` is sorted (see `Effect::Steer`).
            let orphan = !idle && steered.binary_search(&slot).is_err();
            if !orphan {
                if let Some(task) = self.orphans.remove(&slot) {
                    task.abort();
                }
                continue;
            }
            if self.orphans.contains_key(&slot) {
                continue;
            }
            match Acceptor::new(listener, FdBudget::current(self.config.fd_reserve)) {
                Ok(acceptor) => {
                    let accepted = self.orphans_tx.clone();
                    // Unbounded, so the task's only wait is in `accept`: aborting it never
                    // drops a connection it took.
                    let task = tokio::spawn(async move { while accepted.send(acceptor.accept().await).is_ok() {} });
                    self.orphans.insert(slot, task.abort_handle());
                }
                Err(err) => tracing::error!(slot, "cannot accept on the slot's listener: {err}"),
            }
        }
    }

    /// A new primary's workers are all ready: take the control socket's path, tell systemd
    /// this is the service's main process now, and tell the old primary to stop.
    fn take_over(&mut self, take_over: TakeOver, ready: &str) {
        let TakeOver { predecessor, control_path, commands } = take_over;
        let from = predecessor.hello.from;
        match control::serve_in_place_of(&control_path, commands, self.config.logs.clone()) {
            Ok(control) => {
                self.control = Some(control);
                let pid = std::process::id();
                notify::notify(&format!("MAINPID={pid}\n{ready}"));
                tracing::info!(old_primary_pid = from, "taking over: the old primary stops now");
                tokio::spawn(async move {
                    if let Err(err) = predecessor.ready(pid).await {
                        tracing::warn!("cannot tell the old primary (pid {from}) to stop: {err}");
                    }
                });
            }
            Err(err) => {
                let reason = format!("cannot take the control socket {}: {err}", control_path.display());
                tracing::error!(old_primary_pid = from, "{reason}; stopping, the old primary keeps serving");
                tokio::spawn(predecessor.failed(reason));
                self.feedback.push_back(Event::Signal(Signal::Terminate));
            }
        }
    }

    fn reopen_logs(&self) {
        match self.config.logs.as_ref().map(|sink| sink.reopen()) {
            Some(Ok(())) => tracing::info!("SIGUSR1: log files reopened"),
            Some(Err(err)) => tracing::error!("SIGUSR1: cannot reopen the log files: {err}"),
            None => tracing::info!("SIGUSR1: no log files to reopen"),
        }
    }
}

/// Resident set size of a process, from the `VmRSS` line of `/proc/<pid>/status`.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Kernel steering: the listener for a worker of `slot` (opened on first use).
fn slot_listener(
    steering: &mut Option<Steering>,
    slot: usize,
) -> Result<Option<&std::net::TcpListener>, link::SpawnError> {
    match steering {
        Some(steering) => steering.listener(slot).map(Some).map_err(link::SpawnError::DupListener),
        None => Ok(None),
    }
}

/// What the shell's loop receives from its tasks.
struct Channels {
    events: mpsc::UnboundedReceiver<link::Event>,
    commands: mpsc::Receiver<control::Command>,
    successor: mpsc::UnboundedReceiver<SuccessorEvent>,
    /// Kernel steering: connections the primary took from slots that are not ready.
    orphans: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
}

/// The next connection the primary accepted: on its own listener while the core takes them
/// (`accepting`), or on a slot's that is not ready (kernel steering) at any time: those were
/// accepted already, and the core answers them even while it stops.
async fn accept_either(
    acceptor: Option<&Acceptor>,
    orphans: &mut mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr)>,
    accepting: bool,
) -> Option<(std::net::TcpStream, SocketAddr)> {
    let own = async {
        match acceptor {
            Some(acceptor) if accepting => acceptor.accept().await,
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        accepted = own => Some(accepted),
        orphan = orphans.recv() => orphan,
    }
}

/// The next accepted connection, or never without an acceptor.
async fn accept(acceptor: Option<&Acceptor>) -> (std::net::TcpStream, SocketAddr) {
    match acceptor {
        Some(acceptor) => acceptor.accept().await,
        None => std::future::pending().await,
    }
}

/// Starts reading the PROXY header of a connection the acceptor took (on the runtime, so that
/// it waits for its bytes without blocking the loop).
fn read_header(pending: &mut PendingHeaders, stream: std::net::TcpStream, peer: SocketAddr) {
    let adopted = stream.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(stream));
    match adopted {
        Ok(stream) => pending.start(stream, peer),
        Err(err) => tracing::warn!(%peer, "cannot read a connection's PROXY header: {err}"),
    }
}

/// The next connection whose PROXY header is complete; never without `--proxy-protocol`, and
/// `None` at once (disabling its `select!` branch for one turn) while no header is pending.
async fn next_proxied(pending: Option<&mut PendingHeaders>) -> Option<Proxied> {
    match pending {
        Some(pending) => pending.next().await,
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
