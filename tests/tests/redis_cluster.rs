//! Redis Cluster is how one Redis grows: sessions, users, rate limits and the cache work
//! unchanged against three primaries the test starts (`redis-cluster://…?node=…`). Every
//! command and script herd sends touches one key, so nothing needs a shared slot.

use std::collections::HashSet;

use herd_e2e::{Herd, RedisCluster};

#[test]
fn sessions_users_rate_limits_and_the_cache_work_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let herd = Herd::start_at(&cluster.url(), &["--workers", "2"], &[]);

    // Sessions shared by the workers, visits exact.
    let mut devices: Vec<herd_e2e::Client> =
        (2..6).map(|n| herd.client().from_ip(std::net::IpAddr::from([127, 0, 0, n]))).collect();
    for device in &mut devices {
        device.login();
        for visit in 1..=3 {
            let body = device.get("/").expect("GET /").json();
            assert_eq!((body["user"].clone(), body["visits"].clone()), ("alice".into(), visit.into()));
        }
    }
    // The keys really are spread over the nodes.
    let holding = cluster.nodes.iter().filter(|n| !n.keys("herd:*").is_empty()).count();
    assert!(holding >= 2, "herd's keys sit on {holding} node(s) only");

    // Log out everywhere: the index and the sessions live in different slots.
    let out = devices[0].request("POST", "/logout?all=true", &[], b"").expect("logout everywhere");
    assert_eq!(out.json()["ended_elsewhere"], 3, "{}", out.body);
    for device in &devices {
        assert!(device.get("/me").expect("GET /me").json()["user"].is_null());
    }

    // Rate limits.
    let guess = herd.client().from_ip(std::net::IpAddr::from([127, 0, 0, 9]));
    let statuses: Vec<u16> = (0..6)
        .map(|_| guess.post_json("/login", r#"{"username":"alice","password":"guess"}"#).expect("login").status)
        .collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429]);

    // The cache, with single flight across workers.
    let answers: Vec<serde_json::Value> = (0..20)
        .map(|_| {
            let client = herd.client();
            std::thread::spawn(move || client.get("/heavy/cached?n=3000000").expect("GET /heavy/cached").json())
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    assert_eq!(answers.iter().filter(|a| a["cached"] == false).count(), 1, "{answers:?}");
    assert!(answers.iter().any(|a| a["source"] == "waited"), "some waited for that computation: {answers:?}");
    let pids: HashSet<_> = answers.iter().map(|a| a["pid"].clone()).collect();
    assert_eq!(pids.len(), 2, "both workers answered");
    assert_eq!(herd.client().get("/readyz").expect("readyz").status, 200);
}

/// Waits until `node`'s replica has all it wrote (`INFO replication`: the replica is online,
/// past its first sync, and its offset is the primary's).
fn wait_replicated(node: &herd_e2e::RedisServer) {
    herd_e2e::wait_for("the replica to catch up", std::time::Duration::from_secs(10), || {
        let info = node.cli(&["INFO", "replication"])?;
        let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).map(str::to_owned);
        let own = field("master_repl_offset:")?;
        let replica = field("slave0:")?;
        let online = replica.split(',').any(|kv| kv == "state=online");
        (online && replica.split(',').any(|kv| kv == format!("offset={own}"))).then_some(())
    });
}

/// Waits until `node`'s replica is past its first sync and streaming (`state=online`): under
/// a stream of writes its offset is rarely the primary's at the moment it is asked.
fn wait_online(node: &herd_e2e::RedisServer) {
    herd_e2e::wait_for("the replica to be online", std::time::Duration::from_secs(10), || {
        let info = node.cli(&["INFO", "replication"])?;
        info.lines().any(|l| l.starts_with("slave0:") && l.split(',').any(|kv| kv == "state=online")).then_some(())
    });
}

/// The replica of `cluster.nodes[primary]`.
fn replica_of(cluster: &RedisCluster, primary: usize) -> &herd_e2e::RedisServer {
    let primary_id = cluster.nodes[primary].cli(&["CLUSTER", "MYID"]).expect("CLUSTER MYID");
    let follows = format!("slave {}", primary_id.trim());
    cluster
        .nodes
        .iter()
        .find(|n| {
            n.cli(&["CLUSTER", "NODES"])
                .is_some_and(|nodes| nodes.lines().any(|l| l.contains("myself") && l.contains(&follows)))
        })
        .expect("the primary's replica")
}

/// Waits until `replica` reports itself a primary; how long that took since `started`.
fn wait_promoted(replica: &herd_e2e::RedisServer, started: std::time::Instant) -> std::time::Duration {
    herd_e2e::wait_for("the replica to take over", std::time::Duration::from_secs(20), || {
        replica.cli(&["ROLE"]).is_some_and(|role| role.starts_with("master")).then(|| started.elapsed())
    })
}

/// The record key of the only session (not its `:visits` or `:replaced` side keys).
fn session_key(cluster: &RedisCluster) -> String {
    // A replica lists its primary's keys too.
    let keys: std::collections::BTreeSet<String> =
        cluster.keys("herd:sess:*").into_iter().filter(|k| k.matches(':').count() == 2).collect();
    assert_eq!(keys.len(), 1, "one session: {keys:?}");
    keys.into_iter().next().expect("one")
}

/// 3 primaries + 3 replicas: the primary holding the session is killed; its replica takes
/// over; herd follows the new topology without a restart, with fast 503s meanwhile and the
/// session intact after.
/// A Redis Cluster with replicas, herd on it with alice logged in, and the primaries that hold
/// her session and her login index (one node or two): those a planned failover must move.
fn logged_in_on_replicated_cluster() -> (RedisCluster, Herd, herd_e2e::Client, Vec<usize>) {
    let cluster = RedisCluster::start_with_replicas();
    let herd = Herd::start_at(&cluster.url(), &["--workers", "2"], &[]);
    let mut alice = herd.client();
    alice.login();
    let mut primaries = vec![cluster.primary_of(&session_key(&cluster)), cluster.primary_of("herd:user:alice:logins")];
    primaries.dedup();
    (cluster, herd, alice, primaries)
}

#[test]
fn a_killed_primary_is_replaced_by_its_replica_and_sessions_survive() {
    use std::time::Instant;
    let mut cluster = RedisCluster::start_with_replicas();
    let herd = Herd::start_at(&cluster.url(), &["--workers", "2"], &[]);
    let mut alice = herd.client();
    alice.login();
    for visit in 1..=3 {
        assert_eq!(alice.get("/").expect("GET /").json()["visits"], visit);
    }
    let victim = cluster.primary_of(&session_key(&cluster));
    wait_replicated(&cluster.nodes[victim]);

    let killed = Instant::now();
    cluster.nodes[victim].kill();
    let (back, unavailable) = herd_e2e::redis::ride_out_failover(&alice, killed);
    eprintln!("Redis Cluster failover (SIGKILL): served again {back:?} after the kill; {unavailable} requests answered 503 meanwhile");
    cluster.wait_healthy();
    assert_eq!(alice.get("/").expect("GET /").json()["visits"], 4, "the count came through");
}

/// Planned failovers (`CLUSTER FAILOVER` on an in-sync replica) under a steady stream of
/// logged-in requests, of the primary holding the session (each `/` reads it) and of the one
/// holding the user's login index (each `/` counts a visit there): every request is served,
/// none is answered 503, none hangs, and no visit is lost or counted twice.
///
/// The old primary holds writes until its replica has caught up and taken over, then answers
/// each held command `-MOVED`; fred re-reads the topology and fails the command, and herd
/// sends it again to the new primary (`herd_session_store::retry`), the visit count under a
/// nonce so that a count fred lost the answer to is not counted twice (docs/deploy.md, "Redis
/// Cluster").
#[test]
fn a_planned_failover_answers_every_request_and_counts_exactly() {
    use std::time::{Duration, Instant};
    // `_herd` lives to the end: dropping it stops herd.
    let (cluster, _herd, alice, primaries) = logged_in_on_replicated_cluster();

    let (mut served, mut unavailable) = (0u64, Vec::new());
    // Asks once; how long that took.
    let mut request = |alice: &herd_e2e::Client, failover: Instant| {
        let asked = Instant::now();
        let res = alice.get("/").expect("an answer, not a hang or a reset");
        let took = asked.elapsed();
        assert!(took < Duration::from_secs(3), "a request took {took:?}");
        match res.status {
            200 => served += 1,
            503 => unavailable.push(format!("{:?} after the failover, in {took:?}", asked - failover)),
            other => panic!("only 200 or a fast 503: {other} {}", res.body),
        }
        took
    };
    for _ in 0..20 {
        request(&alice, Instant::now());
    }
    for primary in primaries {
        let replica = replica_of(&cluster, primary);
        // As an operator would: onto a replica that has the data (one still in its first sync
        // makes the primary hold writes for seconds, until the sync is done).
        wait_replicated(&cluster.nodes[primary]);
        assert_eq!(replica.cli(&["CLUSTER", "FAILOVER"]).as_deref(), Some("OK"));
        let started = Instant::now();
        // What the failover cost a client: the slowest request from then on.
        let mut slowest = Duration::ZERO;
        while replica.cli(&["ROLE"]).is_none_or(|role| !role.starts_with("master")) {
            assert!(started.elapsed() < Duration::from_secs(20), "the replica never took over");
            slowest = slowest.max(request(&alice, started));
        }
        let took_over = started.elapsed();
        for _ in 0..50 {
            slowest = slowest.max(request(&alice, started));
        }
        eprintln!(
            "Redis Cluster planned failover of node {primary}: the replica was primary {took_over:?} after CLUSTER \
             FAILOVER; the slowest request took {slowest:?}"
        );
    }
    let visits = alice.get("/").expect("GET /").json()["visits"].as_u64().expect("a count");
    eprintln!(
        "Redis Cluster planned failovers: {served} requests served, {} answered 503 {unavailable:?}; {visits} visits",
        unavailable.len()
    );
    assert!(unavailable.is_empty(), "a planned failover is no outage: {unavailable:?}");
    assert_eq!(visits, served + 1, "every visit counted once");
}

/// The same planned failovers under eight clients sending `/` requests of one session at once:
/// on the connection fred drops when it re-reads the topology, some commands are still in
/// flight ("Too many failed write attempts."); herd sends them again too, as the visit count
/// is idempotent, so still no request is answered 503 and every visit counts exactly once.
#[test]
fn concurrent_requests_ride_out_planned_failovers_and_count_exactly() {
    use std::{
        sync::{
            atomic::{AtomicBool, AtomicU64, Ordering},
            Arc,
        },
        time::{Duration, Instant},
    };
    // `_herd` lives to the end: dropping it stops herd.
    let (cluster, _herd, alice, primaries) = logged_in_on_replicated_cluster();

    let stop = Arc::new(AtomicBool::new(false));
    let (served, unavailable, slowest_ms) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (alice, stop, served, unavailable, slowest_ms) = (
                alice.clone(),
                Arc::clone(&stop),
                Arc::clone(&served),
                Arc::clone(&unavailable),
                Arc::clone(&slowest_ms),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    let res = alice.get("/").expect("an answer, not a hang or a reset");
                    let took = asked.elapsed();
                    assert!(took < Duration::from_secs(3), "a request took {took:?}");
                    slowest_ms.fetch_max(u64::try_from(took.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
                    match res.status {
                        200 => served.fetch_add(1, Ordering::Relaxed),
                        503 => unavailable.fetch_add(1, Ordering::Relaxed),
                        other => panic!("only 200 or a fast 503: {other} {}", res.body),
                    };
                }
            })
        })
        .collect();
    // Some hundreds of requests before, between and after the failovers.
    let served_at_least = |n: u64| {
        let from = served.load(Ordering::Relaxed);
        herd_e2e::wait_for("requests to be served", Duration::from_secs(30), || {
            (served.load(Ordering::Relaxed) >= from + n).then_some(())
        })
    };
    served_at_least(200);
    for primary in primaries {
        let replica = replica_of(&cluster, primary);
        wait_online(&cluster.nodes[primary]);
        assert_eq!(replica.cli(&["CLUSTER", "FAILOVER"]).as_deref(), Some("OK"));
        let took_over = wait_promoted(replica, Instant::now());
        served_at_least(500);
        eprintln!("Redis Cluster planned failover of node {primary} under load: the replica was primary {took_over:?} after CLUSTER FAILOVER");
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client thread");
    }
    let visits = alice.get("/").expect("GET /").json()["visits"].as_u64().expect("a count");
    let (served, unavailable) = (served.load(Ordering::Relaxed), unavailable.load(Ordering::Relaxed));
    eprintln!(
        "Redis Cluster planned failovers under load: {served} requests served, {unavailable} answered 503, the slowest \
         in {} ms; {visits} visits",
        slowest_ms.load(Ordering::Relaxed)
    );
    assert_eq!(unavailable, 0, "a planned failover is no outage");
    assert_eq!(visits, served + 1, "every visit counted once");
}
