//! Deterministic simulation of the supervisor core: thousands of random schedules of worker
//! behaviour (slow starts, never ready, crashes young and old, hangs) and operator actions
//! (reloads, restarts, scaling, stops, signals, bursts of connections) run through the real
//! [`Core`], with the world around it (processes, links, clients) modelled here, and the
//! invariants below checked after every step. No process, socket, thread or sleep: a schedule
//! is a few hundred events on a virtual clock.
//!
//! A failing schedule is shrunk (operator actions removed one by one while it still fails)
//! and printed as a readable trace with its seed. Replay one with
//! `HERD_SIM_SEED=<seed> cargo test -p herd-cluster --lib simulation -- --nocapture`;
//! `HERD_SIM_SCHEDULES=<n>` changes how many run (default 10,000).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use super::{slots::State, Core, Effect, Event, Signal, Ticket, WorkerId};
use crate::{
    config::{Balance, ClusterConfig, RestartPolicy, Steering},
    control::Request,
    proto::{ToPrimary, ToWorker, HEARTBEAT_INTERVAL, RECLAIM_AFTER},
};

/// SplitMix64, seeded: reproducible everywhere, and enough for choosing schedules.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        super::slots::splitmix(self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

/// What an operator (or a client) does, at a moment of the schedule.
#[derive(Debug, Clone)]
enum Input {
    Connections(u32),
    Signal(Signal),
    Control(Request),
}

/// How a simulated worker process behaves, drawn when it is spawned.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    /// Reports ready after this long and serves until told to go.
    Healthy { ready_after: Duration },
    /// Never reports ready, but is alive (its app waits for Redis): it sends heartbeats.
    Waits,
    /// Never reports ready and sends nothing (stuck before it gets ready).
    Stuck,
    /// Exits on its own this long after it started (ready before, if `ready_after` is earlier).
    Crashes { ready_after: Duration, after: Duration },
    /// Ready, then stops (no heartbeat, no acknowledgement, deaf to messages) after this long.
    Hangs { ready_after: Duration, after: Duration },
}

#[derive(Debug)]
struct Process {
    started: Instant,
    /// When it last sent a heartbeat (or started).
    last_beat: Instant,
    draining: bool,
    hung: bool,
    exiting: bool,
    /// Hand-offs not yet acknowledged (a hung process acknowledges nothing).
    unacked: Vec<Ticket>,
}

/// Something the simulated world does at a moment.
#[derive(Debug, Clone)]
enum World {
    Ready(WorkerId),
    Heartbeat(WorkerId),
    Hang(WorkerId),
    Exit(WorkerId, &'static str),
    Refuse(WorkerId, Ticket),
    /// It starts draining by itself (someone signalled it), and says so a moment later.
    DrainsItself(WorkerId),
    Says(WorkerId, ToPrimary),
    /// It asks every worker a question (an application gather).
    Asks(WorkerId),
    Reclaim(WorkerId),
    /// The new primary of a hand-over reports: ready (`true`) or gone.
    SuccessorSays(bool),
}

/// Where each accepted connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Core,
    Worker(WorkerId),
    Served,
    Answered,
    Departed,
}

struct Sim {
    core: Core,
    now: Instant,
    start: Instant,
    rng: Rng,
    config: ClusterConfig,
    procs: HashMap<WorkerId, Process>,
    world: BTreeMap<(Instant, u64), World>,
    world_seq: u64,
    conns: HashMap<u64, Owner>,
    tickets: HashMap<u64, Ticket>,
    next_conn: u64,
    next_pid: u32,
    next_reply: u64,
    stop_at: Option<Instant>,
    /// Deaths that count toward `errored`, per slot, since its backoff was last reset.
    deaths: HashMap<usize, Vec<Instant>>,
    /// Serving workers that exited while the cluster was not stopping, per slot: what the
    /// core's restart counters must say.
    exits: BTreeMap<usize, u64>,
    spawns: HashMap<usize, Vec<Instant>>,
    /// Gathers asked and not yet answered, by asker and its id, with when they were asked.
    gathers: HashMap<(WorkerId, u64), Instant>,
    next_gather: u64,
    trace: Vec<String>,
    verbose: bool,
    seen: Coverage,
    /// The new primary of a hand-over, until it reports: its pid, and whether the core had it
    /// killed (then it can no longer report ready).
    successor: Option<(u32, bool)>,
    /// It reported ready: this primary hands over and stops.
    handed_over: bool,
}

/// What the schedules exercised, summed over a run, so the test can tell that they explore.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    rollouts_done: u64,
    rollouts_failed: u64,
    served: u64,
    answered_503: u64,
    errored: u64,
    stand_ins: u64,
    kills: u64,
    refused: u64,
    reclaimed: u64,
    gathers: u64,
    scrapes: u64,
    handovers: u64,
    upgrades_failed: u64,
}

type Failure = String;

impl Sim {
    fn new(seed: u64, verbose: bool) -> Self {
        let mut rng = Rng(seed);
        let start = Instant::now();
        let mut config = ClusterConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        config.workers = 1 + rng.below(4) as usize;
        config.balance =
            [Balance::RoundRobin, Balance::LeastConn, Balance::IpHash, Balance::Shared][rng.below(4) as usize];
        config.steering = if rng.chance(50) { Steering::Kernel } else { Steering::Primary };
        config.restart = RestartPolicy {
            max_restarts: rng.below(6) as u32,
            window: Duration::from_secs(5 + rng.below(60)),
            ..RestartPolicy::default()
        };
        if rng.chance(20) {
            config.recycling.max_memory = Some(100 << 20);
        }
        if rng.chance(20) {
            config.recycling.max_requests = Some(1 + rng.below(50));
            config.recycling.max_requests_jitter = rng.below(5);
        }
        config.recycling.worker_timeout = Duration::from_secs(3 + rng.below(30));
        Self {
            core: Core::new(config.clone(), 1, seed),
            now: start,
            start,
            rng,
            config,
            procs: HashMap::new(),
            world: BTreeMap::new(),
            world_seq: 0,
            conns: HashMap::new(),
            tickets: HashMap::new(),
            next_conn: 0,
            next_pid: 100,
            next_reply: 0,
            stop_at: None,
            deaths: HashMap::new(),
            exits: BTreeMap::new(),
            spawns: HashMap::new(),
            gathers: HashMap::new(),
            next_gather: 0,
            trace: Vec::new(),
            verbose,
            seen: Coverage::default(),
            successor: None,
            handed_over: false,
        }
    }

    fn schedule(&mut self, after: Duration, what: World) {
        self.world_seq += 1;
        self.world.insert((self.now + after, self.world_seq), what);
    }

    fn log(&mut self, line: String) {
        if self.verbose {
            println!("{line}");
        }
        self.trace.push(line);
    }

    fn t(&self) -> String {
        format!("{:>8.3}s", self.now.duration_since(self.start).as_secs_f64())
    }

    /// Feeds one event, carries out its effects (and the events they cause), then checks.
    fn step(&mut self, event: Event) -> Result<(), Failure> {
        let before = self.snapshot();
        let is_timer = matches!(event, Event::Timer);
        let mut pending = std::collections::VecDeque::from([event]);
        while let Some(event) = pending.pop_front() {
            let line = format!("{} {}", self.t(), brief_event(&event));
            self.log(line);
            self.observe_event(&event);
            let effects = self.core.on(event, self.now);
            for effect in effects {
                let line = format!("{}     → {}", self.t(), brief_effect(&effect));
                self.log(line);
                self.execute(effect, &mut pending)?;
            }
        }
        self.check(&before, is_timer)
    }

    /// Records what the invariants need before the core sees the event.
    fn observe_event(&mut self, event: &Event) {
        let stopping = self.core.stopping.is_some();
        let serving = |core: &Core, id: WorkerId| {
            core.slots.slot(id.slot).and_then(|s| s.worker.as_ref()).is_some_and(|w| w.id == id)
        };
        match event {
            Event::Exited { worker, .. } if !stopping && serving(&self.core, *worker) => {
                self.deaths.entry(worker.slot).or_default().push(self.now);
                *self.exits.entry(worker.slot).or_default() += 1;
            }
            Event::SpawnFailed { worker, exhaustion: false, .. } if serving(&self.core, *worker) => {
                self.deaths.entry(worker.slot).or_default().push(self.now);
            }
            _ => {}
        }
    }

    fn execute(&mut self, effect: Effect, pending: &mut std::collections::VecDeque<Event>) -> Result<(), Failure> {
        match effect {
            Effect::Spawn { worker } => {
                self.spawns.entry(worker.slot).or_default().push(self.now);
                if self.rng.chance(4) {
                    let exhaustion = self.rng.chance(50);
                    pending.push_back(Event::SpawnFailed { worker, error: "simulated".into(), exhaustion });
                    return Ok(());
                }
                let behaviour = self.draw_behaviour();
                self.procs.insert(
                    worker,
                    Process {
                        started: self.now,
                        last_beat: self.now,
                        draining: false,
                        hung: false,
                        exiting: false,
                        unacked: Vec::new(),
                    },
                );
                match behaviour {
                    Behaviour::Healthy { ready_after } => {
                        self.schedule(ready_after, World::Ready(worker));
                        if self.rng.chance(5) {
                            let after = ready_after + self.rng.millis(0, 20_000);
                            self.schedule(after, World::DrainsItself(worker));
                        }
                    }
                    Behaviour::Waits | Behaviour::Stuck => {}
                    Behaviour::Crashes { ready_after, after } => {
                        if ready_after < after {
                            self.schedule(ready_after, World::Ready(worker));
                        }
                        self.schedule(after, World::Exit(worker, "exited with status 1"));
                    }
                    Behaviour::Hangs { ready_after, after } => {
                        self.schedule(ready_after, World::Ready(worker));
                        self.schedule(ready_after + after, World::Hang(worker));
                    }
                }
                if !matches!(behaviour, Behaviour::Stuck) {
                    self.schedule(HEARTBEAT_INTERVAL, World::Heartbeat(worker));
                }
                self.next_pid += 1;
                pending.push_back(Event::Spawned { worker, pid: self.next_pid });
            }
            Effect::Kill { worker } => {
                let starting = self.core.slots.serving().any(|w| w.id == worker && w.state == State::Starting);
                let beating = self
                    .procs
                    .get(&worker)
                    .is_some_and(|p| self.now - p.last_beat < self.config.recycling.worker_timeout);
                if starting && beating && self.core.stopping.is_none() {
                    return Err(format!("{worker} was killed while starting, though its heartbeats show it alive"));
                }
                let alive = self.procs.get_mut(&worker).filter(|p| !p.exiting);
                if let Some(p) = alive {
                    p.exiting = true;
                    self.seen.kills += 1;
                    let after = self.rng.millis(0, 50);
                    self.schedule(after, World::Exit(worker, "killed by SIGKILL"));
                }
            }
            Effect::Tell { worker, msg } => self.tell(worker, msg),
            Effect::Hand { worker, conn } => {
                if self.conns.get(&conn) != Some(&Owner::Core) {
                    return Err(format!("connection {conn} handed to {worker} but the core does not hold it"));
                }
                let state = self.core.slots.get(worker).map(|w| w.state);
                let serving = self.core.slots.serving().any(|w| w.id == worker);
                if state != Some(State::Ready) || !serving {
                    return Err(format!("connection {conn} handed to {worker}, which is not a ready serving worker"));
                }
                let ticket = self.tickets[&conn];
                match self.procs.get_mut(&worker) {
                    None => pending.push_back(Event::HandFailed { worker, conn: ticket }),
                    Some(p) if p.exiting => pending.push_back(Event::HandFailed { worker, conn: ticket }),
                    Some(p) if p.hung => {
                        p.unacked.push(ticket);
                        self.conns.insert(conn, Owner::Worker(worker));
                        self.schedule(RECLAIM_AFTER, World::Reclaim(worker));
                    }
                    Some(p) if p.draining => {
                        p.unacked.push(ticket);
                        self.conns.insert(conn, Owner::Worker(worker));
                        let after = self.rng.millis(0, 20);
                        self.schedule(after, World::Refuse(worker, ticket));
                    }
                    Some(_) => {
                        self.conns.insert(conn, Owner::Served);
                        self.seen.served += 1;
                    }
                }
            }
            Effect::Answer503 { conn, .. } => {
                if self.conns.get(&conn) != Some(&Owner::Core) {
                    return Err(format!("connection {conn} answered 503 but the core does not hold it"));
                }
                self.conns.insert(conn, Owner::Answered);
                self.seen.answered_503 += 1;
            }
            Effect::Probe { conns } => {
                let mut gone = Vec::new();
                for id in conns {
                    if self.conns.get(&id) != Some(&Owner::Core) {
                        return Err(format!("probe of connection {id}, which the core does not hold"));
                    }
                    if self.rng.chance(10) {
                        self.conns.insert(id, Owner::Departed);
                        gone.push(id);
                    }
                }
                if !gone.is_empty() {
                    pending.push_back(Event::Departed { conns: gone });
                }
            }
            Effect::MeasureMemory { workers } => {
                for (worker, _) in workers {
                    let rss_bytes = (50 + self.rng.below(70)) << 20;
                    pending.push_back(Event::Memory { worker, rss_bytes });
                }
            }
            Effect::Reply { response, .. } if response.error.as_deref().is_some_and(|e| e.contains(" failed: ")) => {
                self.seen.rollouts_failed += 1;
            }
            Effect::StandIn(true) => self.seen.stand_ins += 1,
            Effect::Scraped { scrape, .. } => {
                self.seen.scrapes += 1;
                // A scrape reports the counters of its moment: never more than the core has now.
                let now = &self.core.counters;
                let behind = scrape.counters.restarts.iter().all(|(k, n)| now.restarts.get(k).is_some_and(|m| n <= m))
                    && scrape.counters.accepted <= now.accepted;
                if !behind {
                    return Err("a scrape reported counters the core never had".to_owned());
                }
            }
            Effect::StartSuccessor { workers } => {
                if self.successor.is_some() || self.core.stopping.is_some() || self.core.rollout.is_some() {
                    return Err("a new primary started while another runs, the cluster stops or a reload runs".into());
                }
                if workers != self.core.slots.len() {
                    return Err(format!(
                        "the new primary gets {workers} workers, the cluster runs {}",
                        self.core.slots.len()
                    ));
                }
                self.next_pid += 1;
                self.successor = Some((self.next_pid, false));
                pending.push_back(Event::SuccessorStarted { pid: self.next_pid });
                match self.rng.below(10) {
                    0..=3 => {
                        let after = self.rng.millis(0, 15_000);
                        self.schedule(after, World::SuccessorSays(true));
                    }
                    4..=6 => {
                        let after = self.rng.millis(0, 5_000);
                        self.schedule(after, World::SuccessorSays(false));
                    }
                    _ => {} // never ready: the core's deadline must kill it
                }
            }
            Effect::KillSuccessor => {
                if let Some((_, killed)) = &mut self.successor {
                    *killed = true;
                    let after = self.rng.millis(0, 50);
                    self.schedule(after, World::SuccessorSays(false));
                }
            }
            Effect::Notify(state) if self.handed_over && state.starts_with("STOPPING") => {
                return Err("told systemd STOPPING after handing over: the new primary is the service now".into());
            }
            Effect::Steer { slots } => {
                if !self.config.kernel_steers() {
                    return Err(format!("steered to {slots:?}, but the primary steers"));
                }
                if !slots.is_empty() && (self.core.stopping.is_some() || self.core.handed_over) {
                    return Err(format!("steered to {slots:?} while stopping or handed over"));
                }
                if self.core.upgrade.is_some() || self.core.handed_over {
                    return Err(format!("steered to {slots:?} while a new primary owns the program"));
                }
                let timeout = self.config.recycling.worker_timeout;
                for &slot in &slots {
                    if !self.core.slots.serving().any(|w| w.id.slot == slot && w.is_responsive(self.now, timeout)) {
                        return Err(format!("steered to slot {slot}, whose worker is not ready"));
                    }
                }
            }
            Effect::Reply { .. } | Effect::StandIn(false) | Effect::Notify(_) => {}
        }
        Ok(())
    }

    fn tell(&mut self, worker: WorkerId, msg: ToWorker) {
        if let ToWorker::Gathered { id, .. } = msg {
            self.gathers.remove(&(worker, id));
            self.seen.gathers += 1;
            return;
        }
        let Some(p) = self.procs.get_mut(&worker) else { return };
        if p.hung || p.exiting {
            return;
        }
        match msg {
            ToWorker::Scrape { id } => {
                let after = self.rng.millis(0, 1500);
                let reply = ToPrimary::Reply { id, payload: serde_json::json!({ "families": [] }) };
                self.schedule(after, World::Says(worker, reply));
            }
            ToWorker::Query { id, .. } => {
                let after = self.rng.millis(0, 1500);
                let reply = ToPrimary::Reply { id, payload: serde_json::json!(worker.slot) };
                self.schedule(after, World::Says(worker, reply));
            }
            ToWorker::Retire | ToWorker::Shutdown if !p.draining => {
                p.draining = true;
                let after = self.rng.millis(1, 3000);
                self.schedule(after, World::Exit(worker, "exited cleanly"));
            }
            _ => {}
        }
    }

    fn draw_behaviour(&mut self) -> Behaviour {
        let ready_after = self.rng.millis(10, 2000);
        match self.rng.below(100) {
            0..=64 => Behaviour::Healthy { ready_after },
            65..=72 => Behaviour::Healthy { ready_after: self.rng.millis(2000, 15_000) },
            73..=75 => Behaviour::Waits,
            76..=77 => Behaviour::Stuck,
            78..=87 => Behaviour::Crashes { ready_after, after: self.rng.millis(0, 3000) },
            88..=93 => Behaviour::Crashes { ready_after, after: self.rng.millis(5000, 60_000) },
            _ => Behaviour::Hangs { ready_after, after: self.rng.millis(500, 20_000) },
        }
    }

    fn world_event(&mut self, what: World) -> Option<Event> {
        match what {
            World::Ready(worker) => {
                self.procs.get(&worker).filter(|p| !p.exiting && !p.hung)?;
                if self.rng.chance(30) {
                    let after = self.rng.millis(0, 10_000);
                    self.schedule(after, World::Asks(worker));
                }
                Some(Event::Message { worker, msg: ToPrimary::Ready { pid: 0 } })
            }
            World::Heartbeat(worker) => {
                let now = self.now;
                let p = self.procs.get_mut(&worker).filter(|p| !p.exiting && !p.hung)?;
                p.last_beat = now;
                let requests = now.duration_since(p.started).as_secs();
                self.schedule(HEARTBEAT_INTERVAL, World::Heartbeat(worker));
                Some(Event::Message { worker, msg: ToPrimary::Heartbeat { requests, open: Some(0) } })
            }
            World::Hang(worker) => {
                let p = self.procs.get_mut(&worker).filter(|p| !p.exiting)?;
                p.hung = true;
                None
            }
            World::Exit(worker, how) => {
                let mut p = self.procs.remove(&worker)?;
                for t in &p.unacked {
                    self.conns.insert(t.id, Owner::Core);
                }
                let death = if how.starts_with("killed") { super::Death::Signal } else { super::Death::Failed };
                Some(Event::Exited { worker, how: how.to_owned(), death, orphans: std::mem::take(&mut p.unacked) })
            }
            World::Refuse(worker, ticket) => {
                let p = self.procs.get_mut(&worker)?;
                let i = p.unacked.iter().position(|t| t.id == ticket.id)?;
                p.unacked.remove(i);
                self.conns.insert(ticket.id, Owner::Core);
                self.seen.refused += 1;
                Some(Event::Refused { worker, conns: vec![ticket] })
            }
            World::DrainsItself(worker) => {
                let p = self.procs.get_mut(&worker).filter(|p| !p.exiting && !p.hung && !p.draining)?;
                p.draining = true;
                let (says, exits) = (self.rng.millis(0, 50), self.rng.millis(100, 3000));
                self.schedule(says, World::Says(worker, ToPrimary::Draining));
                self.schedule(exits, World::Exit(worker, "exited cleanly"));
                None
            }
            World::Asks(worker) => {
                self.procs.get(&worker).filter(|p| !p.exiting && !p.hung)?;
                self.next_gather += 1;
                self.gathers.insert((worker, self.next_gather), self.now);
                let payload = serde_json::json!({"q": self.next_gather});
                Some(Event::Message { worker, msg: ToPrimary::Gather { id: self.next_gather, payload } })
            }
            World::Says(worker, msg) => {
                self.procs.get(&worker)?;
                Some(Event::Message { worker, msg })
            }
            World::SuccessorSays(ready) => {
                let (pid, killed) = self.successor.take()?;
                if ready && !killed {
                    self.seen.handovers += 1;
                    self.handed_over = true;
                    if self.stop_at.is_none() {
                        self.stop_at = Some(self.now);
                    }
                    Some(Event::SuccessorReady { pid })
                } else {
                    self.seen.upgrades_failed += 1;
                    Some(Event::SuccessorFailed { reason: "simulated".into() })
                }
            }
            World::Reclaim(worker) => {
                let p = self.procs.get_mut(&worker)?;
                if p.unacked.is_empty() {
                    return None;
                }
                let conns = std::mem::take(&mut p.unacked);
                for t in &conns {
                    self.conns.insert(t.id, Owner::Core);
                }
                self.seen.reclaimed += 1;
                Some(Event::Reclaimed { worker, conns })
            }
        }
    }

    fn input(&mut self, input: Input) -> Result<(), Failure> {
        let event = match input {
            Input::Connections(n) => {
                for _ in 0..n {
                    // The shell accepts only while the core says so; the rest wait in the
                    // kernel's backlog (here: are never made).
                    if !self.core.accepting() {
                        break;
                    }
                    let id = self.next_conn;
                    self.next_conn += 1;
                    let client = IpAddr::V4(Ipv4Addr::new(10, 0, 0, self.rng.below(8) as u8));
                    let ticket = Ticket { id, client, accepted_at: self.now };
                    self.conns.insert(id, Owner::Core);
                    self.tickets.insert(id, ticket);
                    self.step(Event::Accepted(ticket))?;
                }
                return Ok(());
            }
            Input::Signal(signal) => {
                if matches!(signal, Signal::Terminate | Signal::Interrupt) && self.stop_at.is_none() {
                    self.stop_at = Some(self.now);
                }
                Event::Signal(signal)
            }
            Input::Control(request) => {
                if request == Request::Stop && self.stop_at.is_none() {
                    self.stop_at = Some(self.now);
                }
                self.next_reply += 1;
                Event::Control { request, reply: self.next_reply }
            }
        };
        self.step(event)
    }

    /// What the checks compare across one step.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            serving: self.core.slots.iter().map(|s| s.worker.as_ref().map(|w| w.id)).collect(),
            errored: self.core.slots.iter().map(|s| s.errored).collect(),
        }
    }

    fn check(&mut self, before: &Snapshot, after_timer: bool) -> Result<(), Failure> {
        let core = &self.core;
        // The metrics' restart counters are the deaths this world caused, slot by slot, and
        // every 503 the core answered is counted as a shed connection.
        for (&slot, &exits) in &self.exits {
            let counted = core.counters.restarts_of(slot);
            if counted != exits {
                return Err(format!(
                    "slot {slot}: {exits} serving workers died but the restart counter says {counted}"
                ));
            }
        }
        let shed: u64 = core.counters.shed.iter().filter(|(r, _)| **r != "fd_exhausted").map(|(_, n)| n).sum();
        if shed != self.seen.answered_503 {
            return Err(format!("{} connections were answered 503 but {shed} counted as shed", self.seen.answered_503));
        }
        // Every live process is one the core knows, so none outlives the primary unseen.
        for id in self.procs.keys() {
            if core.slots.get(*id).is_none() {
                return Err(format!("{id} is alive but the core forgot it"));
            }
        }
        // Never more workers in slots than slots plus the one being rolled.
        let successors = core.slots.iter().filter(|s| s.successor.is_some()).count();
        if successors > 1 {
            return Err(format!("{successors} successors start at once"));
        }
        if let Some(slot) = core.slots.iter().position(|s| s.successor.is_some()) {
            if core.rollout.as_ref().and_then(|r| r.current()) != Some(slot) {
                return Err(format!("slot {slot} has a successor outside a rollout"));
            }
        }
        // A slot's serving worker changes only by promoting a ready successor (the old one
        // departs), or after the old one is gone.
        for (slot, (was, now)) in before.serving.iter().zip(self.snapshot().serving).enumerate() {
            let (Some(was), Some(now)) = (*was, now) else { continue };
            if was == now {
                continue;
            }
            let old_departing = core.slots.departing.iter().any(|w| w.id == was);
            let promoted = core.slots.get(now).is_some_and(|w| w.state == State::Ready);
            let old_gone = core.slots.get(was).is_none();
            if !(old_gone || old_departing && promoted) {
                return Err(format!("slot {slot}: {was} replaced by {now} before it was ready"));
            }
        }
        // Every connection the core holds is queued, and the queue holds nothing else.
        let queued: HashSet<u64> = core.queue.ids().into_iter().collect();
        let held: HashSet<u64> = self.conns.iter().filter(|(_, o)| **o == Owner::Core).map(|(id, _)| *id).collect();
        if queued != held {
            let lost: Vec<_> = held.difference(&queued).collect();
            let ghost: Vec<_> = queued.difference(&held).collect();
            return Err(format!("connections lost by the core: {lost:?}; queued but not held: {ghost:?}"));
        }
        if core.queue.len() > super::MAX_QUEUED {
            return Err(format!("{} connections queued", core.queue.len()));
        }
        // A slot is marked errored only after more than max-restarts deaths in the window.
        let policy = &self.config.restart;
        let after = self.snapshot();
        for (slot, (&was, &is)) in before.errored.iter().zip(&after.errored).enumerate() {
            if is && !was {
                self.seen.errored += 1;
                let recent =
                    self.deaths.get(&slot).map_or(0, |d| d.iter().filter(|t| self.now - **t <= policy.window).count());
                if policy.max_restarts == 0 || recent <= policy.max_restarts as usize {
                    return Err(format!(
                        "slot {slot} errored after {recent} deaths within {:?} (max-restarts {})",
                        policy.window, policy.max_restarts
                    ));
                }
            }
            if was && !is {
                self.deaths.remove(&slot);
            }
        }
        for slot in after.errored.len()..before.errored.len() {
            self.deaths.remove(&slot);
            self.spawns.remove(&slot);
        }
        // Backoff never hot-loops: a slot starts at most a handful of processes a second.
        for (slot, spawns) in &mut self.spawns {
            spawns.retain(|t| self.now - *t < Duration::from_secs(1));
            if spawns.len() > 12 {
                return Err(format!("slot {slot} started {} processes within a second", spawns.len()));
            }
        }
        // A worker stuck before it is ready (silent) does not hold its slot beyond
        // --worker-timeout; one that waits (its heartbeats say it is alive) is left to wait.
        let stuck_after = self.config.recycling.worker_timeout + 2 * super::CHECK_INTERVAL;
        let silent = |w: &super::slots::Worker| self.procs.get(&w.id).map(|p| self.now - p.last_beat);
        let stuck =
            core.slots.serving().find(|w| w.state == State::Starting && silent(w).is_some_and(|s| s > stuck_after));
        if let Some(w) = stuck.filter(|_| core.stopping.is_none()) {
            return Err(format!("{} has been starting, silent, for {:?}", w.id, silent(w).unwrap_or_default()));
        }
        // A gather is answered by its deadline, unless its asker is gone.
        let late = crate::messaging::GATHER_TIMEOUT + Duration::from_millis(1);
        self.gathers.retain(|(asker, _), _| self.procs.contains_key(asker));
        if let Some(((asker, id), at)) = self.gathers.iter().find(|(_, at)| self.now - **at > late) {
            return Err(format!("{asker}'s gather {id} (asked at {:?}) is still unanswered", *at - self.start));
        }
        // A timer is never re-armed for a moment already handled.
        if after_timer && core.next_deadline().is_some_and(|d| d <= self.now) {
            return Err("the core asks to be woken at a moment it already handled".to_owned());
        }
        Ok(())
    }

    /// The next thing that happens: a world event, the core's timer, or the next input.
    fn run(&mut self, inputs: &[(Duration, Input)]) -> Result<(), Failure> {
        self.step(Event::Boot)?;
        let mut inputs = inputs.iter().peekable();
        let end = self.start + Duration::from_secs(120);
        loop {
            if let Some(report) = self.core.finished() {
                let stop_at = self.stop_at.ok_or("finished without a stop")?;
                if !self.procs.is_empty() {
                    return Err(format!("finished with {} processes alive", self.procs.len()));
                }
                let late = self.now.saturating_duration_since(stop_at + self.config.shutdown_timeout);
                if late > Duration::from_millis(100) {
                    return Err(format!("shutdown ended {late:?} after its deadline"));
                }
                let unsettled: Vec<_> =
                    self.conns.iter().filter(|(_, o)| matches!(o, Owner::Core | Owner::Worker(_))).collect();
                if !unsettled.is_empty() {
                    return Err(format!("connections neither served nor answered at the end: {unsettled:?}"));
                }
                if self.core.last_reload.as_deref().is_some_and(|r| r.ends_with("succeeded")) {
                    self.seen.rollouts_done += 1;
                }
                let line = format!("{} finished: {report:?}", self.t());
                self.log(line);
                return Ok(());
            }
            if self.now > end {
                return Err("the cluster did not stop".to_owned());
            }
            let world_at = self.world.keys().next().map(|(t, _)| *t);
            let timer_at = self.core.next_deadline();
            let input_at = inputs.peek().map(|(at, _)| self.start + *at);
            let next = [world_at, timer_at, input_at].into_iter().flatten().min().ok_or("nothing happens any more")?;
            self.now = self.now.max(next);
            if world_at == Some(next) {
                let Some((_, what)) = self.world.pop_first() else { continue };
                if let Some(event) = self.world_event(what) {
                    self.step(event)?;
                }
            } else if timer_at == Some(next) {
                self.step(Event::Timer)?;
            } else if let Some((_, input)) = inputs.next() {
                self.input(input.clone())?;
            }
        }
    }
}

struct Snapshot {
    serving: Vec<Option<WorkerId>>,
    errored: Vec<bool>,
}

fn brief_event(event: &Event) -> String {
    match event {
        Event::Message { worker, msg } => format!("{worker}: {}", brief_message(msg)),
        Event::Refused { worker, conns } => format!("{worker} refused {:?}", ids(conns)),
        Event::Reclaimed { worker, conns } => format!("{worker}: reclaimed {:?}", ids(conns)),
        Event::Exited { worker, how, orphans, .. } => format!("{worker} {how}, orphans {:?}", ids(orphans)),
        Event::HandFailed { worker, conn } => format!("hand-off of {} to {worker} failed", conn.id),
        Event::Accepted(t) => format!("accepted connection {} from {}", t.id, t.client),
        other => format!("{other:?}"),
    }
}

fn brief_message(msg: &ToPrimary) -> String {
    match msg {
        ToPrimary::Ready { .. } => "ready".into(),
        ToPrimary::Heartbeat { requests, .. } => format!("heartbeat ({requests} requests)"),
        other => format!("{other:?}"),
    }
}

fn brief_effect(effect: &Effect) -> String {
    match effect {
        Effect::Tell { worker, msg } => format!("tell {worker} {msg:?}"),
        other => format!("{other:?}"),
    }
}

fn ids(tickets: &[Ticket]) -> Vec<u64> {
    tickets.iter().map(|t| t.id).collect()
}

/// The operator's and clients' part of schedule `seed`.
fn inputs(seed: u64) -> Vec<(Duration, Input)> {
    let mut rng = Rng(seed ^ 0xA5A5_A5A5);
    let mut at = Duration::ZERO;
    let mut inputs = Vec::new();
    for _ in 0..rng.below(40) {
        at += rng.millis(0, 3000);
        let input = match rng.below(100) {
            0..=44 => Input::Connections(1 + rng.below(40) as u32),
            45..=54 => Input::Control(Request::Reload),
            55..=59 => Input::Signal(Signal::Hangup),
            60..=66 => Input::Control(Request::Restart { slot: rng.below(5) as usize }),
            67..=72 => Input::Control(Request::Scale { to: Some(rng.below(6) as usize), by: None }),
            73..=76 => Input::Signal(Signal::AddWorker),
            77..=80 => Input::Signal(Signal::RemoveWorker),
            81..=85 => Input::Control(Request::Status),
            86..=87 => Input::Control(Request::Metrics),
            88 => Input::Control(Request::Upgrade),
            89..=92 => Input::Control(Request::Stop),
            93..=95 => Input::Signal(Signal::Terminate),
            96 => Input::Signal(Signal::Upgrade),
            _ => Input::Signal(Signal::Interrupt),
        };
        inputs.push((at, input));
    }
    // Every schedule ends with a stop (an earlier one may have come already).
    inputs.push((at + rng.millis(0, 5000), Input::Signal(Signal::Terminate)));
    inputs
}

fn run_seed(seed: u64, inputs: &[(Duration, Input)], verbose: bool) -> Result<Coverage, (Failure, Vec<String>)> {
    let mut sim = Sim::new(seed, verbose);
    match sim.run(inputs) {
        Ok(()) => Ok(sim.seen),
        Err(failure) => Err((failure, sim.trace)),
    }
}

/// Removes inputs one at a time while the schedule still fails: what is left is what matters.
fn shrink(seed: u64, mut inputs: Vec<(Duration, Input)>) -> Vec<(Duration, Input)> {
    let mut i = 0;
    while i < inputs.len() {
        let mut fewer = inputs.clone();
        fewer.remove(i);
        if run_seed(seed, &fewer, false).is_err() {
            inputs = fewer;
        } else {
            i += 1;
        }
    }
    inputs
}

fn report(seed: u64, inputs: Vec<(Duration, Input)>) -> String {
    let inputs = shrink(seed, inputs);
    let Err((failure, trace)) = run_seed(seed, &inputs, false) else {
        return format!("seed {seed} failed, but not after shrinking");
    };
    let mut out = format!("schedule {seed} failed: {failure}\ninputs:\n");
    for (at, input) in &inputs {
        let _ = writeln!(out, "  {:>8.3}s {input:?}", at.as_secs_f64());
    }
    let _ = writeln!(out, "trace (last 80 steps):");
    for line in trace.iter().rev().take(80).collect::<Vec<_>>().into_iter().rev() {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "replay: HERD_SIM_SEED={seed} cargo test -p herd-cluster --lib simulation -- --nocapture");
    out
}

#[test]
fn simulation_of_random_schedules_keeps_every_invariant() {
    if let Some(seed) = std::env::var("HERD_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        if let Err((failure, _)) = run_seed(seed, &inputs(seed), true) {
            panic!("{}", report(seed, inputs(seed)) + &failure);
        }
        return;
    }
    let count: u64 = std::env::var("HERD_SIM_SCHEDULES").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let mut total = Coverage::default();
    for seed in 0..count {
        match run_seed(seed, &inputs(seed), false) {
            Ok(seen) => total.add(seen),
            Err(_) => panic!("{}", report(seed, inputs(seed))),
        }
    }
    println!("{count} schedules: {total:?}");
    // The schedules reach every corner the invariants are about (with 1,000 or more).
    if count >= 1_000 {
        let c = total;
        for (what, n) in [
            ("successful rollouts", c.rollouts_done),
            ("failed rollouts", c.rollouts_failed),
            ("served connections", c.served),
            ("503 answers", c.answered_503),
            ("errored slots", c.errored),
            ("stand-ins", c.stand_ins),
            ("kills", c.kills),
            ("refusals", c.refused),
            ("reclaims", c.reclaimed),
            ("answered gathers", c.gathers),
            ("scrapes", c.scrapes),
            ("hand-overs", c.handovers),
            ("failed upgrades", c.upgrades_failed),
        ] {
            assert!(n > 0, "no schedule had {what}: {total:?}");
        }
    }
}

impl Coverage {
    fn add(&mut self, o: Coverage) {
        self.rollouts_done += o.rollouts_done;
        self.rollouts_failed += o.rollouts_failed;
        self.served += o.served;
        self.answered_503 += o.answered_503;
        self.errored += o.errored;
        self.stand_ins += o.stand_ins;
        self.kills += o.kills;
        self.refused += o.refused;
        self.reclaimed += o.reclaimed;
        self.gathers += o.gathers;
        self.scrapes += o.scrapes;
        self.handovers += o.handovers;
        self.upgrades_failed += o.upgrades_failed;
    }
}
