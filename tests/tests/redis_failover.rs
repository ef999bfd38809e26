//! herd on a Redis that fails over: a master, a replica and three sentinels on loopback
//! (`redis-sentinel://` URL). The master is killed, or hangs; the sentinels promote the replica; herd
//! follows without a restart, answering a fast 503 meanwhile (never a hang, never a 500, never
//! "logged out"), and every session that existed before the kill still works after it.

use std::time::{Duration, Instant};

use herd_e2e::{Herd, RedisSentinels};
use nix::sys::signal::Signal;

/// How the master fails.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// `SIGKILL`: its connections close.
    Crash,
    /// `SIGSTOP`: its connections stay open and nothing answers (fred#307): only the command
    /// timeout and fred's unresponsive-connection check notice.
    Hang,
}

#[test]
fn a_killed_master_is_replaced_and_sessions_survive() {
    failover(Failure::Crash);
}

#[test]
fn a_hung_master_is_replaced_and_sessions_survive() {
    failover(Failure::Hang);
}

fn failover(failure: Failure) {
    let mut redis = RedisSentinels::start();
    let url = redis.url();
    let herd = Herd::start_at(&url, &["--workers", "2"], &[]);
    let mut alice = herd.client();
    assert_eq!(alice.login().status, 200);
    for visit in 1..=3 {
        assert_eq!(alice.get("/").expect("GET /").json()["visits"], visit);
    }
    redis.wait_replicated();

    let failed = Instant::now();
    match failure {
        Failure::Crash => redis.master.kill(),
        Failure::Hang => herd_e2e::signal(redis.master.pid(), Signal::SIGSTOP),
    }
    let mut answers = Vec::new();
    let back = loop {
        let asked = Instant::now();
        let res = alice.get("/me").expect("an answer, not a hang or a reset");
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(3), "{failure:?}: a request during the failover took {took:?}");
        assert!([200, 503].contains(&res.status), "only 200 or a fast 503: {} {}", res.status, res.body);
        answers.push(res.status);
        if res.status == 200 {
            assert_eq!(res.json()["user"], "alice", "still logged in: {}", res.body);
            if answers.contains(&503) {
                break failed.elapsed();
            }
        }
        assert!(failed.elapsed() < Duration::from_secs(30), "{failure:?}: no new master within 30 s: {answers:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    redis.wait_master(redis.replica.port);
    eprintln!(
        "Sentinel failover ({failure:?}): served again {back:?} after the failure; {} requests answered 503 meanwhile",
        answers.iter().filter(|s| **s == 503).count()
    );
    // The session and its counter came through the promotion, and writes go to the new master.
    assert_eq!(alice.get("/").expect("GET /").json()["visits"], 4);
    let mut bob = herd.client();
    assert_eq!(bob.login().status, 200, "new sessions are written to the promoted replica");
    assert_eq!(bob.get("/me").expect("GET /me").json()["user"], "alice");
    assert!(redis.replica.cli(&["ROLE"]).is_some_and(|role| role.starts_with("master")), "the replica was promoted");
}
