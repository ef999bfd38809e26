//! Primary-accept dispatch: the primary accepts every connection and hands it to a worker over
//! `SCM_RIGHTS`. Distinct clients come from distinct source addresses in 127.0.0.0/8.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use herd_e2e::{herd::workers, wait_for, Client, Herd, RedisServer};
use nix::sys::signal::Signal;

fn client_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// (slot, pid) that served one fresh-connection request.
fn served_by(client: &Client) -> (u64, u64) {
    let body = client.get("/").expect("request").json();
    (body["worker"].as_u64().expect("worker"), body["pid"].as_u64().expect("pid"))
}

#[test]
fn round_robin_spreads_fresh_connections_evenly() {
    let redis = RedisServer::start();
    // Strict turns are the primary's: the kernel's choice is random (tests/tests/steering.rs).
    let herd = Herd::start(&redis, &["--workers", "4", "--balance", "round-robin", "--steering", "primary"]);
    let mut per_worker: HashMap<u64, usize> = HashMap::new();
    for _ in 0..40 {
        *per_worker.entry(served_by(&herd.client()).0).or_default() += 1;
    }
    assert_eq!(per_worker.len(), 4, "{per_worker:?}");
    for (slot, count) in &per_worker {
        assert!((8..=12).contains(count), "worker {slot} served {count} of 40: {per_worker:?}");
    }
    assert_eq!(herd.client().get("/").expect("GET /").json()["balance"], "round-robin");
}

#[test]
fn handed_off_connections_show_the_real_client_address() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let mut client = herd.client().from_ip(client_ip(9));
    client.login();
    // The line is the contract: the log names the real client, not the primary.
    herd.wait_log("the login line", Duration::from_secs(5), |l| l.contains("login") && l.contains("client=127.0.0.9"));
}

#[test]
fn sticky_clients_always_reach_the_same_worker() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "4", "--sticky"]);
    let mut used = HashSet::new();
    for n in 2..22 {
        let client = herd.client().from_ip(client_ip(n));
        let homes: HashSet<u64> = (0..5).map(|_| served_by(&client).0).collect();
        assert_eq!(homes.len(), 1, "client 127.0.0.{n} reached workers {homes:?}");
        used.extend(homes);
    }
    assert!(used.len() >= 3, "20 clients used only workers {used:?}");
    assert_eq!(herd.client().get("/").expect("GET /").json()["balance"], "ip-hash");
}

#[test]
fn sticky_clients_of_a_dead_worker_move_and_return_while_others_stay() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "4", "--balance", "ip-hash"]);
    let clients: Vec<Client> = (2..22).map(|n| herd.client().from_ip(client_ip(n))).collect();
    let homes: Vec<(u64, u64)> = clients.iter().map(served_by).collect();
    let (victim_slot, victim_pid) = homes[0];

    herd_e2e::signal(victim_pid as u32, Signal::SIGKILL);
    // The victim's client's very next request succeeds, on another worker.
    // (A replacement needs far longer than this to start, so it is another slot.)
    let (slot, _) = served_by(&clients[0]);
    assert_ne!(slot, victim_slot, "served by the killed worker's slot");
    // Wait until the death is known, then check that only the victim's clients moved.
    herd.wait_status("the death", Duration::from_secs(10), |status| {
        workers(status).iter().all(|w| w.pid != Some(victim_pid as u32)).then_some(())
    });
    for (client, &(home, _)) in clients.iter().zip(&homes) {
        let (now, _) = served_by(client);
        if home != victim_slot {
            assert_eq!(now, home, "a client of a live worker moved");
        }
    }
    // When the slot is back, its clients come home.
    herd.wait_replaced(victim_slot, victim_pid as u32, Duration::from_secs(30));
    for (client, &(home, _)) in clients.iter().zip(&homes) {
        assert_eq!(served_by(client).0, home, "client did not return home");
    }
}

#[test]
fn least_conn_avoids_the_worker_holding_idle_connections() {
    let redis = RedisServer::start();
    // Debug lines show the primary's count of open connections per worker.
    let herd = Herd::start_with_env(
        &redis,
        &["--workers", "4", "--balance", "least-conn"],
        &[("RUST_LOG", "info,herd_cluster=debug")],
    );
    // 32 keep-alive connections spread over 4 workers: 8 each.
    let mut held: Vec<(u64, herd_e2e::http::Conn)> = (0..32)
        .map(|_| {
            let mut conn = herd.client().connect().expect("connect");
            let worker = conn.get("/", None).expect("request").json()["worker"].as_u64().expect("worker");
            (worker, conn)
        })
        .collect();
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for (worker, _) in &held {
        *counts.entry(*worker).or_default() += 1;
    }
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![8; 4], "least-conn spreads evenly: {counts:?}");

    // Keep only worker 0's 8 connections open; close the rest, and wait until the primary has
    // heard of every close.
    held.retain(|(worker, _)| *worker == 0);
    assert_eq!(held.len(), 8);
    // The primary's own count of each worker's connections is what least-conn compares.
    herd.wait_status("the closes to be counted", Duration::from_secs(10), |status| {
        let assigned = |slot: u64| {
            status["workers"].as_array()?.iter().find(|w| w["slot"] == slot && w["state"] == "ready")?["assigned"]
                .as_u64()
        };
        (1..4).all(|slot| assigned(slot) == Some(0)).then_some(())
    });
    for _ in 0..20 {
        let (slot, _) = served_by(&herd.client());
        assert_ne!(slot, 0, "a new connection went to the worker holding 8 idle ones");
    }
    // The held connections still work.
    for (_, conn) in &mut held {
        assert_eq!(conn.get("/healthz", None).expect("held connection").status, 200);
    }
}

#[test]
fn killing_a_worker_every_second_refuses_no_connection() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "4"]);
    let last_pid = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let (last_pid, done) = (Arc::clone(&last_pid), Arc::clone(&done));
        thread::spawn(move || {
            let mut kills = 0;
            while !done.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_secs(1));
                let pid = last_pid.load(Ordering::Relaxed);
                if pid != 0 && !done.load(Ordering::Relaxed) {
                    herd_e2e::signal(pid, Signal::SIGKILL);
                    kills += 1;
                }
            }
            kills
        })
    };
    let client = herd.client();
    let (mut ok, mut failed, mut refused) = (0, 0, 0);
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        match client.get("/healthz") {
            Ok(res) if res.status == 200 => {
                ok += 1;
                last_pid.store(res.json()["pid"].as_u64().expect("pid") as u32, Ordering::Relaxed);
            }
            Ok(_) => failed += 1,
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
            Err(_) => failed += 1,
        }
    }
    done.store(true, Ordering::Relaxed);
    let kills = killer.join().expect("killer thread");
    assert!(kills >= 6, "only {kills} kills happened");
    assert_eq!(refused, 0, "connections were refused");
    assert!(failed <= kills, "{failed} failed requests for {kills} kills ({ok} succeeded)");
    assert!(ok > 20, "only {ok} requests succeeded");
    eprintln!("churn: {ok} ok, {failed} failed, {kills} kills");
}

#[test]
fn a_client_arriving_while_every_worker_restarts_is_served_late_not_refused() {
    let redis = RedisServer::start();
    // A queue timeout longer than the wait below: this is about holding, not the 503 after it.
    let herd = Herd::start(&redis, &["--workers", "3", "--queue-timeout", "60s"]);
    let old: Vec<u32> = herd.worker_pids();
    let mark = herd.log_len();
    // A frozen Redis keeps every replacement from becoming ready (each waits for its pool), so
    // the request below arrives while no worker can take it, however fast workers restart.
    herd_e2e::signal(redis.pid(), Signal::SIGSTOP);
    for &pid in &old {
        herd_e2e::signal(pid, Signal::SIGKILL);
    }
    wait_for("every worker to be dead", Duration::from_secs(10), || {
        old.iter().all(|&p| !herd_e2e::process_alive(p)).then_some(())
    });
    let res = std::thread::scope(|scope| {
        let request = scope.spawn(|| herd.client().get("/"));
        herd.wait_status("the primary to hold the connection", Duration::from_secs(10), |status| {
            (status["queued"].as_u64() >= Some(1)).then_some(())
        });
        herd_e2e::signal(redis.pid(), Signal::SIGCONT);
        request.join().expect("client thread")
    });
    let res = res.expect("the connection waits in the primary's queue");
    assert_eq!(res.status, 200);
    let pid = res.json()["pid"].as_u64().expect("pid") as u32;
    assert!(!old.contains(&pid), "served by a dead worker?");
    // The kit reads the primary's log on its own thread: the line may trail the response.
    herd.wait_log_from(mark, "the held connection handed over", Duration::from_secs(5), |l| {
        l.contains("handing 1 queued connection(s)")
    });
}
