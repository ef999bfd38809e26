//! The primary's safety valves, triggered on purpose through `--debug-routes`: a hung worker is
//! killed, a bloated one replaced, one that keeps crashing backs off and is finally left down
//! while the others serve, and workers are recycled after a number of requests.

use std::{net::IpAddr, thread, time::Duration};

use herd_e2e::{
    herd::{about_worker, log_field, restart_delay_ms, workers},
    Herd, RedisServer,
};

#[test]
fn a_hung_worker_is_killed_and_replaced() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2", "--worker-timeout", "2s", "--debug-routes"]);
    let before = herd.worker_pids();
    let mark = herd.log_len();
    let client = herd.client();
    let blocked = thread::spawn(move || client.get("/debug/block?ms=60000"));
    // The line is the contract: it tells the operator why the worker was killed.
    let line = herd.wait_log_from(mark, "the hang to be noticed", Duration::from_secs(2 + 2 + 2), |l| {
        l.contains("sent no heartbeat")
    });
    assert!(line.contains("killing it"), "{line}");
    herd.wait_status("the replacement", Duration::from_secs(30), |status| {
        let ready: Vec<u32> = workers(status).iter().filter(|w| w.state == "ready").filter_map(|w| w.pid).collect();
        (ready.len() == 2 && ready.iter().filter(|pid| !before.contains(pid)).count() == 1).then_some(())
    });
    assert!(blocked.join().expect("client thread").is_err(), "the hung request cannot have been answered");
    assert_eq!(herd.client().get("/healthz").expect("the cluster serves").status, 200);
}

#[test]
fn a_worker_over_the_memory_limit_is_replaced_gracefully() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2", "--max-memory", "96MiB", "--debug-routes"]);
    let mark = herd.log_len();
    let res = herd.client().get("/debug/alloc?mib=160").expect("alloc");
    assert_eq!(res.status, 200, "{}", res.body);
    // Checked every second: the limit acts within 3 s of the allocation. The lines are the
    // contract: they say why the worker was replaced, and that it exited cleanly.
    let line = herd
        .wait_log_from(mark, "the memory limit to act", Duration::from_secs(3), |l| l.contains("over --max-memory"));
    let retired =
        herd.wait_log_from(mark, "the bloated worker to retire", Duration::from_secs(30), |l| l.contains("retired"));
    let victim: u32 = log_field(&line, "worker_pid").and_then(|p| p.parse().ok()).expect("pid in the line");
    assert!(about_worker(&retired, None, Some(victim)), "{retired}");
    assert!(retired.contains("exited cleanly"), "replaced gracefully, not killed: {retired}");
}

#[test]
fn a_slot_that_keeps_crashing_backs_off_then_is_left_down() {
    let redis = RedisServer::start();
    let herd = Herd::start(
        &redis,
        &["--workers", "3", "--sticky", "--debug-routes", "--max-restarts", "3", "--restart-backoff", "50ms..10s"],
    );
    // Sticky mode aims every crash at one slot: the one this client address hashes to.
    let crasher = herd.client().from_ip("127.0.0.7".parse::<IpAddr>().expect("literal"));
    let slot = crasher.get("/whoami").expect("whoami").json()["worker"].as_u64().expect("slot");
    let mut delays = Vec::new();
    for round in 0..4 {
        let pid = herd.wait_status("the slot's worker", Duration::from_secs(10), |status| {
            workers(status).iter().find(|w| w.slot == slot && w.state == "ready")?.pid
        });
        let mark = herd.log_len();
        let _ = crasher.get("/debug/crash"); // no answer: the worker aborts
                                             // The line is the contract: the cause, the backoff delay and "marked errored" show there.
        let death = herd.wait_log_from(mark, "the crash", Duration::from_secs(10), |l| {
            about_worker(l, Some(slot), None) && l.contains("SIGABRT")
        });
        if round < 3 {
            // The first victim may have lived past 5 s on a busy machine: a healthy death,
            // restarted at once. Every later one is young.
            if let Some(delay) = restart_delay_ms(&death) {
                delays.push(delay);
            }
            herd.wait_replaced(slot, pid, Duration::from_secs(30));
        } else {
            assert!(death.contains("marked errored"), "{death}");
        }
    }
    assert!(delays.len() >= 2 && delays[0] == 50, "the backoff starts at the configured 50 ms: {delays:?}");
    assert!(delays.windows(2).all(|w| w[1] == w[0] * 2), "and doubles: {delays:?}");

    // The other slots keep serving, including the crasher's address (its second choice).
    for n in 2..12 {
        let client = herd.client().from_ip(format!("127.0.0.{n}").parse::<IpAddr>().expect("literal"));
        assert_eq!(client.get("/healthz").expect("served").status, 200);
    }
    let status = herd.status();
    let errored: Vec<_> =
        status["workers"].as_array().expect("workers").iter().filter(|w| w["state"] == "errored").collect();
    assert_eq!(errored.len(), 1, "{status}");
    assert_eq!(errored[0]["slot"], slot);

    let (code, out, err) = herd.ctl(&["restart", &slot.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    let status = herd.status();
    assert!(status["workers"].as_array().expect("workers").iter().all(|w| w["state"] == "ready"), "{status}");
}

#[test]
fn workers_are_recycled_after_max_requests_one_at_a_time() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2", "--max-requests", "30", "--max-requests-jitter", "10"]);
    let client = herd.client();
    let mut pids = std::collections::HashSet::new();
    // The log is the contract here: the order of starts and take-overs is recorded nowhere else.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while herd.log().iter().filter(|l| l.contains("recycling it")).count() < 2 || pids.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "no recycling after 30 s");
        let res = client.get("/healthz").expect("no request fails while workers recycle");
        assert_eq!(res.status, 200);
        pids.insert(res.json()["pid"].as_u64().expect("pid"));
    }
    assert!(pids.len() >= 3, "recycled workers were replaced by new ones: {pids:?}");
    // Never two slots at once: after start-up, every replacement started must take over
    // ("ready, retiring") before the next one starts.
    let log = herd.log();
    let after_start = log.iter().skip_while(|l| !l.contains("workers ready")).skip(1);
    let mut starting = 0;
    for line in after_start {
        if line.ends_with(" started") {
            starting += 1;
            assert!(starting <= 1, "two replacements were starting at once: {line}");
        } else if line.contains("ready, retiring pid") {
            starting -= 1;
        }
    }
}
