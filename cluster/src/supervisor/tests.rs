//! The core's main stories, step by step (the simulation in `sim.rs` covers the orderings).

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use super::{Core, Effect, Event, Signal, Ticket, WorkerId};
use crate::{
    config::ClusterConfig,
    control::{Request, Response},
    proto::{ToPrimary, ToWorker},
};

/// Drives a core the way the shell does: every spawn succeeds at once.
struct Harness {
    core: Core,
    now: Instant,
    next_pid: u32,
}

impl Harness {
    fn new(workers: usize, configure: impl FnOnce(&mut ClusterConfig)) -> (Self, Vec<WorkerId>) {
        let mut config = ClusterConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        config.workers = workers;
        configure(&mut config);
        let mut h = Self { core: Core::new(config, 1, 7), now: Instant::now(), next_pid: 100 };
        let effects = h.on(Event::Boot);
        (h, spawned(&effects))
    }

    fn on(&mut self, event: Event) -> Vec<Effect> {
        let mut all = Vec::new();
        let mut pending = vec![event];
        while let Some(event) = pending.pop() {
            for effect in self.core.on(event, self.now) {
                if let Effect::Spawn { worker } = effect {
                    self.next_pid += 1;
                    pending.push(Event::Spawned { worker, pid: self.next_pid });
                }
                all.push(effect);
            }
        }
        all
    }

    fn ready(&mut self, worker: WorkerId) -> Vec<Effect> {
        self.on(Event::Message { worker, msg: ToPrimary::Ready { pid: 0 } })
    }

    fn exited(&mut self, worker: WorkerId, how: &str) -> Vec<Effect> {
        let death = if how.starts_with("killed") { super::Death::Signal } else { super::Death::Failed };
        self.on(Event::Exited { worker, how: how.to_owned(), death, orphans: Vec::new() })
    }

    /// Moves the clock on and fires the timer if it is due.
    fn advance(&mut self, by: Duration) -> Vec<Effect> {
        self.now += by;
        match self.core.next_deadline() {
            Some(due) if due <= self.now => self.on(Event::Timer),
            _ => Vec::new(),
        }
    }

    fn request(&mut self, request: Request) -> Vec<Effect> {
        self.on(Event::Control { request, reply: 9 })
    }

    fn states(&self) -> Vec<(usize, String)> {
        let status = self.core.status(self.now);
        status.workers.into_iter().map(|w| (w.slot, w.state)).collect()
    }
}

fn spawned(effects: &[Effect]) -> Vec<WorkerId> {
    effects.iter().filter_map(|e| if let Effect::Spawn { worker } = e { Some(*worker) } else { None }).collect()
}

fn told(effects: &[Effect], msg: &ToWorker) -> Vec<WorkerId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Tell { worker, msg: m } if m == msg => Some(*worker),
            _ => None,
        })
        .collect()
}

fn reply(effects: &[Effect]) -> Option<&Response> {
    effects.iter().find_map(|e| if let Effect::Reply { response, .. } = e { Some(response) } else { None })
}

#[test]
fn a_reload_replaces_each_slot_only_once_its_successor_is_ready() {
    let (mut h, first) = Harness::new(2, |_| {});
    for &w in &first {
        h.ready(w);
    }
    let effects = h.request(Request::Reload);
    let s0 = spawned(&effects);
    assert_eq!(s0.len(), 1, "one successor at a time: {effects:?}");
    assert!(told(&effects, &ToWorker::Retire).is_empty(), "nobody retires before a successor is ready");
    assert_eq!(reply(&effects), None, "the operator waits for the outcome");

    let effects = h.ready(s0[0]);
    assert_eq!(told(&effects, &ToWorker::Retire), [first[0]], "slot 0's old worker retires");
    let s1 = spawned(&effects);
    assert_eq!(s1.len(), 1, "then slot 1's successor starts");
    let effects = h.ready(s1[0]);
    assert_eq!(told(&effects, &ToWorker::Retire), [first[1]]);
    assert_eq!(reply(&effects), Some(&Response::ok()));
    assert_eq!(h.states(), [(0, "ready".into()), (1, "ready".into()), (0, "retiring".into()), (1, "retiring".into())]);
}

#[test]
fn a_successor_that_dies_aborts_the_rollout_and_the_old_worker_keeps_serving() {
    let (mut h, first) = Harness::new(1, |_| {});
    h.ready(first[0]);
    let successor = spawned(&h.request(Request::Reload))[0];
    let effects = h.exited(successor, "exited with status 1");
    let answer = reply(&effects).expect("the operator hears");
    assert!(!answer.ok && answer.error.as_deref().is_some_and(|e| e.contains("before it was ready")), "{answer:?}");
    assert!(spawned(&effects).is_empty() && told(&effects, &ToWorker::Retire).is_empty(), "{effects:?}");
    assert_eq!(h.states(), [(0, "ready".into())]);
    let pid = h.core.status(h.now).workers[0].pid;
    assert_eq!(pid, Some(101), "the first worker still serves");
}

#[test]
fn young_deaths_back_off_and_more_than_max_restarts_leave_the_slot_errored() {
    let (mut h, first) = Harness::new(1, |c| c.restart.max_restarts = 2);
    let mut worker = first[0];
    let mut delays = Vec::new();
    for _ in 0..2 {
        assert!(spawned(&h.exited(worker, "killed by SIGSEGV")).is_empty(), "a young death waits");
        let due = h.core.next_deadline().expect("a respawn timer");
        delays.push(due - h.now);
        h.now = due;
        worker = spawned(&h.on(Event::Timer))[0];
    }
    assert_eq!(delays, [Duration::from_millis(100), Duration::from_millis(200)]);
    assert!(spawned(&h.exited(worker, "killed by SIGSEGV")).is_empty());
    assert_eq!(h.states(), [(0, "errored".into())], "the third death within the window");
    // No worker is coming: a connection gets its 503 at once instead of waiting.
    let conn = Ticket { id: 1, client: Ipv4Addr::LOCALHOST.into(), accepted_at: h.now };
    assert!(matches!(h.on(Event::Accepted(conn))[..], [Effect::Answer503 { conn: 1, .. }]));
    // An operator's restart brings it back.
    let successor = spawned(&h.request(Request::Restart { slot: 0 }))[0];
    assert_eq!(reply(&h.ready(successor)), Some(&Response::ok()));
    assert_eq!(h.states(), [(0, "ready".into())]);
}

#[test]
fn a_stop_drains_every_worker_and_kills_the_rest_at_the_deadline() {
    let (mut h, workers) = Harness::new(2, |c| c.shutdown_timeout = Duration::from_secs(5));
    for &w in &workers {
        h.ready(w);
    }
    let effects = h.on(Event::Signal(Signal::Terminate));
    assert_eq!(told(&effects, &ToWorker::Shutdown), workers);
    assert!(h.exited(workers[0], "exited cleanly").is_empty(), "a drained worker is not restarted");
    assert!(h.advance(Duration::from_secs(4)).is_empty());
    assert_eq!(h.advance(Duration::from_secs(1)), [Effect::Kill { worker: workers[1] }]);
    assert_eq!(h.core.finished(), None, "until its exit arrives");
    assert_eq!(h.core.next_deadline(), None, "no timer left: only the exit");
    h.exited(workers[1], "killed by SIGKILL");
    assert_eq!(h.core.finished().map(|r| r.killed), Some(1));
}

#[test]
fn connections_wait_for_a_ready_worker_then_get_503_after_the_queue_timeout() {
    let (mut h, workers) = Harness::new(1, |c| c.queue_timeout = Duration::from_secs(5));
    let ticket = |id| Ticket { id, client: Ipv4Addr::LOCALHOST.into(), accepted_at: Instant::now() };
    let mut first = ticket(1);
    first.accepted_at = h.now;
    assert!(h.on(Event::Accepted(first)).is_empty(), "held while no worker is ready");
    let effects = h.ready(workers[0]);
    assert!(effects.contains(&Effect::Hand { worker: workers[0], conn: 1 }), "{effects:?}");

    h.exited(workers[0], "killed by SIGKILL");
    let mut second = ticket(2);
    second.accepted_at = h.now;
    assert!(h.on(Event::Accepted(second)).is_empty());
    let mut answered = Vec::new();
    for _ in 0..6 {
        answered
            .extend(h.advance(Duration::from_secs(1)).into_iter().filter(|e| matches!(e, Effect::Answer503 { .. })));
    }
    assert!(matches!(answered[..], [Effect::Answer503 { conn: 2, .. }]), "{answered:?}");
}

#[test]
fn a_starting_worker_that_beats_is_left_to_wait_and_a_silent_one_is_killed() {
    let (mut h, workers) = Harness::new(2, |c| c.recycling.worker_timeout = Duration::from_secs(5));
    let beat = |worker| Event::Message { worker, msg: ToPrimary::Heartbeat { requests: 0, open: Some(0) } };
    let mut killed = Vec::new();
    for _ in 0..20 {
        // Slot 0's app waits for Redis and says it is alive; slot 1 is stuck, silent.
        h.on(beat(workers[0]));
        killed.extend(h.advance(Duration::from_secs(1)).into_iter().filter(|e| matches!(e, Effect::Kill { .. })));
    }
    assert_eq!(killed, [Effect::Kill { worker: workers[1] }], "only the silent one, once");
    assert_eq!(h.states()[0], (0, "starting".into()));
}

fn steered(effects: &[Effect]) -> Vec<Vec<usize>> {
    effects.iter().filter_map(|e| if let Effect::Steer { slots } = e { Some(slots.clone()) } else { None }).collect()
}

#[test]
fn the_kernel_is_steered_to_ready_slots_first_and_away_before_a_worker_is_told_to_stop() {
    let (mut h, workers) = Harness::new(2, |_| {});
    assert_eq!(h.core.steered(), Some(&[][..]), "nothing is ready: everything to the primary");
    assert_eq!(steered(&h.ready(workers[0])), [vec![0]]);
    assert_eq!(steered(&h.ready(workers[1])), [vec![0, 1]]);
    // A death: away from its slot at once; back when the replacement is ready.
    let effects = h.exited(workers[0], "killed by SIGKILL");
    assert_eq!(steered(&effects), [vec![1]]);
    let due = h.core.next_deadline().expect("a respawn");
    h.now = due;
    let replacement = spawned(&h.on(Event::Timer))[0];
    assert_eq!(steered(&h.ready(replacement)), [vec![0, 1]]);
    // Scaling down: the program changes before the worker hears it must go.
    let effects = h.request(Request::Scale { to: Some(1), by: None });
    assert!(matches!(effects.first(), Some(Effect::Steer { slots }) if slots == &[0]), "{effects:?}");
    assert_eq!(told(&effects, &ToWorker::Retire).len() + told(&effects, &ToWorker::Shutdown).len(), 1);
    // Stopping: everything to the primary's own listener, first.
    let effects = h.on(Event::Signal(Signal::Terminate));
    assert!(matches!(effects.first(), Some(Effect::Steer { slots }) if slots.is_empty()), "{effects:?}");
}

#[test]
fn the_primary_steers_in_least_conn_and_when_told_to() {
    for configure in
        [(|c: &mut ClusterConfig| c.balance = crate::config::Balance::LeastConn) as fn(&mut ClusterConfig), |c| {
            c.steering = crate::config::Steering::Primary
        }]
    {
        let (mut h, workers) = Harness::new(1, configure);
        assert_eq!(h.core.steered(), None);
        assert!(steered(&h.ready(workers[0])).is_empty());
    }
}
