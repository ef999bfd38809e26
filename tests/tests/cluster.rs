//! The primary's supervision as an operator sees it: workers replaced in their slot, backoff
//! for workers that die young, graceful shutdown, and no orphaned workers.

use std::{thread, time::Duration};

use herd_e2e::{
    herd::{about_worker, restart_delay_ms, workers, HEAVY_LOGS},
    process_alive, wait_for, Herd, RedisServer,
};
use nix::sys::signal::Signal;

/// Supervision must not depend on who accepts connections.
const MODES: [&str; 2] = ["shared", "round-robin"];

#[test]
fn killed_workers_are_replaced_in_their_slot_and_the_session_survives() {
    for mode in MODES {
        killed_workers_are_replaced(mode);
    }
}

fn killed_workers_are_replaced(mode: &str) {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3", "--balance", mode]);
    let mut client = herd.client();
    client.login();
    let mut visits = 0;
    let mut get = || {
        let body = client.get("/").expect("every request succeeds").json();
        visits += 1;
        assert_eq!(body["user"], "alice", "session lost");
        assert_eq!(body["visits"], visits, "visit count lost or skipped");
        (body["worker"].as_u64().expect("worker"), body["pid"].as_u64().expect("pid") as u32)
    };

    for _ in 0..5 {
        let (slot, pid) = get();
        let mark = herd.log_len();
        herd_e2e::signal(pid, Signal::SIGKILL);
        // The line is the contract: it is how an operator learns why a worker died.
        herd.wait_log_from(mark, "the death to be logged", Duration::from_secs(10), |l| {
            l.contains("worker killed by SIGKILL, restarting") && about_worker(l, Some(slot), Some(pid))
        });
        let new_pid = herd.wait_replaced(slot, pid, Duration::from_secs(30));
        // The replacement serves: keep asking until the kernel hands a connection to that slot.
        wait_for("the replacement to serve a request", Duration::from_secs(30), || {
            let (s, p) = get();
            (s == slot).then(|| assert_eq!(p, new_pid, "slot {slot} served by an unexpected pid"))
        });
    }
}

#[test]
fn workers_that_die_young_restart_with_growing_backoff() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1"]);
    let mut delays = Vec::new();
    let mut killed = None;
    for round in 0..4 {
        // Whether starting or ready: killed right after it started, it dies young.
        let pid = herd.wait_status("slot 0's next worker", Duration::from_secs(10), |status| {
            workers(status).iter().find(|w| w.slot == 0 && w.pid.is_some() && w.pid != killed)?.pid
        });
        let mark = herd.log_len();
        herd_e2e::signal(pid, Signal::SIGKILL);
        killed = Some(pid);
        // The line is the contract: the backoff delay is only ever shown there.
        let death = herd.wait_log_from(mark, "the death", Duration::from_secs(10), |l| {
            l.contains("killed by SIGKILL") && about_worker(l, None, Some(pid))
        });
        match restart_delay_ms(&death) {
            Some(delay) => delays.push(delay),
            // Only the first worker can have lived past 5 s (a slow start): a healthy death.
            None => assert_eq!(round, 0, "a worker killed right after starting must back off: {death}"),
        }
    }
    assert!(delays.len() >= 3 && delays[0] == 100, "100 ms first: {delays:?}");
    assert!(delays.windows(2).all(|w| w[1] == w[0] * 2), "then doubling: {delays:?}");
    // After the storm the slot serves again.
    wait_for("the slot to serve again", Duration::from_secs(30), || {
        herd.client().get("/healthz").ok().filter(|r| r.status == 200)
    });
}

#[test]
fn a_worker_that_exits_by_itself_is_replaced() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let body = herd.client().get("/").expect("GET /").json();
    let (slot, pid) = (body["worker"].as_u64().expect("slot"), body["pid"].as_u64().expect("pid") as u32);
    let mark = herd.log_len();
    herd_e2e::signal(pid, Signal::SIGTERM);
    // The line is the contract: a clean exit is told apart from a crash there.
    let line = herd.wait_log_from(mark, "the exit", Duration::from_secs(10), |l| {
        l.contains(" exited") && about_worker(l, None, Some(pid))
    });
    assert!(line.contains("exited cleanly, restarting"), "{line}");
    herd.wait_replaced(slot, pid, Duration::from_secs(30));
}

#[test]
fn sigterm_finishes_in_flight_requests_serves_open_connections_once_and_exits_zero() {
    for mode in MODES {
        graceful_sigterm(mode);
    }
}

fn graceful_sigterm(mode: &str) {
    let redis = RedisServer::start();
    let mut herd =
        Herd::start_with_env(&redis, &["--workers", "1", "--shutdown-timeout", "60s", "--balance", mode], &HEAVY_LOGS);
    let workers = herd.worker_pids();
    let mut idle = herd.client().connect().expect("keep-alive connection");
    assert_eq!(idle.get("/healthz", None).expect("first request").status, 200);

    let slow = {
        let client = herd.client();
        thread::spawn(move || client.get("/heavy?n=300000000"))
    };
    // No status shows a computation in progress: HEAVY_LOGS turns this line on for tests.
    herd.wait_log("the slow request to start", Duration::from_secs(10), |l| l.contains("heavy computation started"));
    herd.signal(Signal::SIGTERM);
    // During a shutdown the status does not show the worker draining (it stays `ready`): the
    // worker's own line is the only sign that it has begun.
    herd.wait_log("the worker to drain", Duration::from_secs(10), |l| l.contains("worker draining"));

    // A request arriving on an already-open keep-alive connection is served (it reached a
    // worker), and the connection is closed after that answer rather than under the client.
    let last = idle.get("/healthz", None).expect("an answer on the open connection, not a reset");
    assert_eq!(last.status, 200, "{}", last.body);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(idle.get("/healthz", None).is_err(), "and then the connection is closed");

    let done = slow.join().expect("client thread").expect("the in-flight request completes");
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["result"], 44_999_999_850_000_000u64);

    let status = herd.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "clean shutdown exits 0");
    for pid in workers {
        assert!(!process_alive(pid), "worker {pid} outlived the primary");
    }
}

#[test]
fn shutdown_timeout_kills_workers_that_do_not_drain() {
    let redis = RedisServer::start();
    // Above the default --heavy-max-n: this request must outlast the shutdown timeout.
    let mut herd = Herd::start_with_env(
        &redis,
        &["--workers", "1", "--shutdown-timeout", "1s", "--heavy-max-n", "1e10"],
        &HEAVY_LOGS,
    );
    let workers = herd.worker_pids();
    let endless = {
        let client = herd.client();
        thread::spawn(move || client.get("/heavy?n=1e10"))
    };
    // No status shows a computation in progress: HEAVY_LOGS turns this line on for tests.
    herd.wait_log("the endless request to start", Duration::from_secs(10), |l| l.contains("heavy computation started"));
    herd.signal(Signal::SIGTERM);
    let status = herd.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "a forced shutdown is reported");
    // The line is the contract: the operator is told the shutdown was forced.
    assert!(herd.log().iter().any(|l| l.contains("did not stop within the shutdown timeout")));
    for pid in workers {
        assert!(!process_alive(pid), "worker {pid} outlived the primary");
    }
    assert!(endless.join().expect("client thread").is_err(), "the killed request cannot have succeeded");
}

#[test]
fn workers_exit_by_themselves_when_the_primary_dies() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3"]);
    let workers = herd.worker_pids();
    assert_eq!(workers.len(), 3);
    herd.signal(Signal::SIGKILL);
    wait_for("every worker to exit after the primary's death", Duration::from_secs(10), || {
        workers.iter().all(|pid| !process_alive(*pid)).then_some(())
    });
}
