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
    let (back, unavailable) = herd_e2e::redis::ride_out_failover(&alice, failed);
    redis.wait_master(redis.replica.port);
    eprintln!("Sentinel failover ({failure:?}): served again {back:?} after the failure; {unavailable} requests answered 503 meanwhile");
    // The session and its counter came through the promotion, and writes go to the new master.
    // A worker that had no request during the failover meets the frozen master only now: its
    // first requests wait out a command timeout and get a fast 503 (which may have counted).
    let (home, late) = once_served(|| alice.get("/").expect("GET /"));
    let visits = home.json()["visits"].as_u64().expect("a count");
    assert!((4..=4 + late).contains(&visits), "{visits} visits after 3 and {late} late 503s: {}", home.body);
    let mut bob = herd.client();
    assert_eq!(once_served(|| bob.try_login()).0.status, 200, "new sessions are written to the promoted replica");
    assert_eq!(once_served(|| bob.get("/me").expect("GET /me")).0.json()["user"], "alice");
    assert!(redis.replica.cli(&["ROLE"]).is_some_and(|role| role.starts_with("master")), "the replica was promoted");
}

/// `request`'s first answer that is not a 503 (within 10 s), and how many 503s came first.
fn once_served(mut request: impl FnMut() -> herd_e2e::Response) -> (herd_e2e::Response, u64) {
    let mut unavailable = 0;
    let res = herd_e2e::poll_every(Duration::from_millis(100), Duration::from_secs(10), || {
        let res = request();
        if res.status == 503 {
            unavailable += 1;
            return None;
        }
        Some(res)
    })
    .expect("served within 10 s of the failover");
    assert_eq!(res.status, 200, "{}", res.body);
    (res, unavailable)
}

/// `POST /logout` as `client`: its status and how long it took.
fn logout(client: &herd_e2e::Client) -> (u16, Duration) {
    let asked = Instant::now();
    let status = client.request("POST", "/logout", &[], b"").expect("logout").status;
    (status, asked.elapsed())
}

/// A logout is confirmed only once the replica has it (`WAIT`): while the replica is frozen
/// the logout waits, and if it stays frozen past `--redis-wait-timeout` the logout is a 503,
/// not a success a failover could undo. After a confirmed logout the master is killed: the
/// promoted replica does not know the old cookie.
#[test]
fn a_logout_is_confirmed_by_a_replica_and_survives_a_failover() {
    let mut redis = RedisSentinels::start();
    let url = redis.url();
    let herd = Herd::start_at(&url, &["--workers", "1", "--redis-wait-timeout", "1500ms"], &[]);
    let replica = redis.replica.pid();

    // A replica that stays away: the logout is not confirmed.
    let mut bob = herd.client();
    bob.login();
    herd_e2e::signal(replica, Signal::SIGSTOP);
    let (status, took) = logout(&bob);
    herd_e2e::signal(replica, Signal::SIGCONT);
    assert_eq!(status, 503, "no replica confirmed it within the timeout");
    assert!(took >= Duration::from_millis(1400), "it waited for the replica: {took:?}");

    // A replica that is late: the logout waits for it, then succeeds.
    let mut alice = herd.client();
    alice.login();
    let before = alice.clone();
    redis.wait_replicated();
    herd_e2e::signal(replica, Signal::SIGSTOP);
    let wake = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        herd_e2e::signal(replica, Signal::SIGCONT);
    });
    let (status, took) = logout(&alice);
    wake.join().expect("the waking thread");
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(500), "confirmed only once the replica woke: {took:?}");

    // The master dies right after: the replica it hands over to knows of the logout.
    redis.master.kill();
    redis.wait_master(redis.replica.port);
    let me = herd_e2e::wait_for("herd to reach the promoted replica", Duration::from_secs(30), || {
        let res = before.get("/me").ok()?;
        (res.status == 200).then(|| res.json())
    });
    assert!(me["user"].is_null(), "the old cookie works again after the failover: {me}");
}
