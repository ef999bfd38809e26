//! Hostile use of the anonymous CPU and cache routes (issue 13, items 7-9): CPU that outlives
//! its client, a cache flood that evicts user accounts, and a full Redis.

use std::{
    io::Write,
    net::TcpStream,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use herd_e2e::{
    herd::{herd_bin, HEAVY_LOGS},
    wait_for, Herd, RedisServer,
};

/// CPU seconds (user + system) a process has used so far, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // In USER_HZ, which Linux fixes at 100 for everything it reports in /proc.
    (ticks(14) + ticks(15)) as f64 / 100.0
}

fn workers_cpu(herd: &Herd) -> f64 {
    herd.worker_pids().into_iter().map(cpu_seconds).sum()
}

/// Sends `GET path` on a new connection and returns the connection without reading.
fn send(herd: &Herd, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(herd.addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: herd.test\r\n\r\n").expect("send request");
    stream
}

/// Computations begun so far. No status counts them: [`herd_e2e::herd::HEAVY_LOGS`] turns on
/// this line for tests.
fn started(herd: &Herd) -> usize {
    herd.log().iter().filter(|l| l.contains("heavy computation started")).count()
}

#[test]
fn heavy_work_stops_when_its_clients_leave() {
    let redis = RedisServer::start();
    // Room for all six at once, so what is measured is cancellation, not the cap.
    let herd = Herd::start_with_env(&redis, &["--workers", "2", "--heavy-concurrency", "3"], &HEAVY_LOGS);

    // Six of the largest computations an anonymous client may ask for; the clients give up
    // (0.3 s) once all six run.
    let clients: Vec<TcpStream> = (0..6).map(|_| send(&herd, "/heavy?n=1e9")).collect();
    wait_for("all six computations to start", Duration::from_secs(20), || (started(&herd) >= 6).then_some(()));
    thread::sleep(Duration::from_millis(300));
    let before = workers_cpu(&herd);
    drop(clients);
    let left = Instant::now();

    // A cancelled loop stops within a chunk, once hyper notices the closed connection: the
    // workers must be idle (under 0.05 CPU s per 0.5 s) soon after, and stay so.
    let idle = wait_for("the workers to stop computing", Duration::from_secs(5), || {
        let at = workers_cpu(&herd);
        thread::sleep(Duration::from_millis(500));
        (workers_cpu(&herd) - at < 0.05).then(|| left.elapsed())
    });
    let settled = workers_cpu(&herd);
    thread::sleep(Duration::from_secs(2));
    let after = workers_cpu(&herd);
    eprintln!(
        "workers' CPU after the clients left: {:.2} s until idle ({:.1} s), {:.2} s in the next 2 s",
        settled - before,
        idle.as_secs_f64(),
        after - settled
    );
    assert!(
        after - settled < 0.3,
        "the workers kept computing for clients that left: {:.2} CPU s in 2 s",
        after - settled
    );
    // The cluster still answers, and its slots are free again.
    let res = herd.client().get("/heavy?n=1000").expect("GET /heavy");
    assert_eq!((res.status, res.json()["result"].clone()), (200, 499_500.into()), "{}", res.body);
}

#[test]
fn heavy_requests_beyond_the_cap_get_503_quickly() {
    let redis = RedisServer::start();
    let herd = Herd::start_with_env(
        &redis,
        &["--workers", "1", "--heavy-concurrency", "1", "--heavy-queue-wait", "200ms"],
        &HEAVY_LOGS,
    );
    let holder = send(&herd, "/heavy?n=1e9");
    wait_for("the first computation to start", Duration::from_secs(20), || (started(&herd) >= 1).then_some(()));

    let asked = Instant::now();
    let refused = herd.client().get("/heavy?n=1e9").expect("an answer, not a hang");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(asked.elapsed() < Duration::from_secs(5), "answered after {:?}", asked.elapsed());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.json()["error"].as_str().unwrap_or_default().contains("busy"), "{}", refused.body);
    // The cache's computations share the cap.
    assert_eq!(herd.client().get("/heavy/cached?n=1e9").expect("GET /heavy/cached").status, 503);

    // The holder leaves: its computation stops and gives its slot back.
    drop(holder);
    wait_for("the slot to be free again", Duration::from_secs(10), || {
        let res = herd.client().get("/heavy?n=1000").ok()?;
        (res.status == 200).then_some(())
    });
    // Beyond --heavy-max-n is a 400 that says the limit.
    let res = herd.client().get("/heavy?n=2e9").expect("GET /heavy");
    assert_eq!(res.status, 400);
    assert!(res.body.contains("1000000000"), "{}", res.body);
}

/// A value of `INFO` (e.g. `used_memory`, `evicted_keys`).
fn info(redis: &RedisServer, field: &str) -> u64 {
    let text = redis.cli(&["INFO"]).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO"))
}

fn add_user(redis: &RedisServer, name: &str) {
    let mut child = Command::new(herd_bin())
        .args(["users", "add", name, "--redis-url", &redis.url()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run herd users add");
    child.stdin.take().expect("stdin").write_all(b"through-the-looking-glass\n").expect("password");
    let out = child.wait_with_output().expect("herd users add");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `count` distinct `/heavy/cached?n=` from 8 threads; the statuses seen, with their counts.
fn flood(herd: &Herd, count: usize) -> Vec<(u16, usize)> {
    let next = Arc::new(AtomicUsize::new(0));
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, usize>::new()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (client, next, statuses) = (herd.client(), next.clone(), statuses.clone());
            thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || Instant::now() > deadline {
                    break;
                }
                let status = client.get(&format!("/heavy/cached?n={}", 1_000 + i)).map_or(0, |r| r.status);
                *statuses.lock().expect("lock").entry(status).or_default() += 1;
            })
        })
        .collect();
    for t in threads {
        t.join().expect("flood thread");
    }
    let statuses = statuses.lock().expect("lock");
    statuses.iter().map(|(s, n)| (*s, *n)).collect()
}

/// 2 MiB of Redis, evicting any key: the flood must not evict a user, because the cache stays
/// within its budget, and herd warned at start that this policy is dangerous.
#[test]
fn a_cache_flood_cannot_evict_users_even_under_allkeys_lru() {
    let redis = RedisServer::start_with_args(&[
        "--maxmemory",
        "2mb",
        "--maxmemory-policy",
        "allkeys-lru",
        "--appendonly",
        "no",
    ]);
    add_user(&redis, "bob");
    let herd = Herd::start(&redis, &["--workers", "2", "--cache-max-entries", "1500"]);
    // The line is the contract: the operator is warned about the policy.
    herd.wait_log("the allkeys warning", Duration::from_secs(5), |l| {
        l.contains("allkeys-lru") && l.contains("EVICT USER ACCOUNTS")
    });

    let statuses = flood(&herd, 8_000);
    eprintln!("flood answers: {statuses:?}; evicted keys: {}", info(&redis, "evicted_keys"));
    assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
    for user in ["herd:user:alice", "herd:user:bob"] {
        assert_eq!(redis.cli(&["EXISTS", user]).as_deref(), Some("1"), "{user} was evicted");
    }
    assert_eq!(info(&redis, "evicted_keys"), 0, "the bounded cache left Redis room");
    let entries = redis.keys("herd:cache:heavy:*").len();
    assert!(entries <= 1500, "{entries} cache entries");
    // Users have no TTL (so volatile-* never evicts them); cache entries and the budget do.
    assert_eq!(redis.cli(&["TTL", "herd:user:alice"]).as_deref(), Some("-1"));
    assert!(redis.cli(&["PTTL", "herd:cache-budget"]).and_then(|t| t.parse::<i64>().ok()).unwrap_or(-1) > 0);
}

/// With `noeviction` and a Redis close to full, the flood gets 507s once it is full, never a
/// 500, and nothing is lost.
#[test]
fn a_cache_flood_into_a_full_noeviction_redis_gets_clean_errors() {
    let redis =
        RedisServer::start_with_args(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction", "--appendonly", "no"]);
    let herd = Herd::start(&redis, &["--workers", "2"]);
    // The line is the contract: herd reports the policy it found.
    herd.wait_log("the policy line", Duration::from_secs(5), |l| l.contains("maxmemory-policy noeviction"));
    // Leave about 100 KiB, less than the default cache budget would take.
    let room = info(&redis, "maxmemory").saturating_sub(info(&redis, "used_memory")).saturating_sub(100 << 10);
    redis.cli(&["SETRANGE", "filler", &room.to_string(), "x"]).expect("fill Redis");

    let statuses = flood(&herd, 3_000);
    eprintln!("flood answers: {statuses:?}");
    assert!(statuses.iter().all(|(s, _)| *s == 200 || *s == 507), "only answers or 507s: {statuses:?}");
    assert!(statuses.iter().any(|(s, _)| *s == 507), "Redis filled up: {statuses:?}");
    assert_eq!(redis.cli(&["EXISTS", "herd:user:alice"]).as_deref(), Some("1"));
    assert_eq!(info(&redis, "evicted_keys"), 0);
}

/// A full Redis is answered 507 with its own error (not "retry shortly"), for a login (the
/// session store's save) and a cache write alike, and logged once per interval.
#[test]
fn a_full_redis_is_507_and_one_operator_log_line_per_interval() {
    let redis =
        RedisServer::start_with_args(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction", "--appendonly", "no"]);
    let herd = Herd::start(&redis, &["--workers", "1"]);
    // One value past maxmemory: every write from now on is refused with OOM.
    redis.cli(&["SETRANGE", "filler", "3000000", "x"]).expect("fill Redis");
    assert!(redis.cli(&["SET", "probe", "1"]).unwrap_or_default().contains("OOM"), "Redis is full");

    let login = herd.client().post_json("/login", r#"{"username":"alice","password":"wonderland"}"#).expect("login");
    assert_eq!(login.status, 507, "{}", login.body);
    let error = login.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("full") && !error.contains("retry"), "{error}");
    assert_eq!(login.header("retry-after"), None, "retrying does not help");
    // A browser's form login fails the same way (the session layer answers for the failed save).
    let form = herd
        .client()
        .request(
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "text/html")],
            b"username=alice&password=wonderland",
        )
        .expect("form login");
    // Counting the attempt is already a write: the browser is sent back to the page with the
    // "full" notice, as for any failed form login.
    assert_eq!((form.status, form.header("location")), (303, Some("/?error=store-full")), "{}", form.body);

    for i in 0..20 {
        let res = herd.client().get(&format!("/heavy/cached?n={}", 500 + i)).expect("GET /heavy/cached");
        assert_eq!(
            (res.status, res.json()["error"].as_str().unwrap_or_default()),
            (507, error.as_str()),
            "{}",
            res.body
        );
    }
    // The lines are the contract: one report per interval, with a count of what it held back.
    let reports = || {
        herd.log()
            .iter()
            .filter(|l| l.contains("Redis is out of memory and refuses writes"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let first = reports();
    assert_eq!(first.len(), 1, "one ERROR line for 21 refused requests: {first:?}");
    assert!(first[0].contains("ERROR"), "{}", first[0]);

    // The next interval reports again, with what it held back.
    let second = wait_for("the next interval's report", Duration::from_secs(20), || {
        let _ = herd.client().get("/heavy/cached?n=42");
        thread::sleep(Duration::from_millis(500));
        reports().get(1).cloned()
    });
    let suppressed: u64 = second
        .split("suppressed=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {second:?}"));
    eprintln!("the second interval's report: {second}");
    assert!(suppressed >= 20, "the lines held back are counted: {second}");
    assert!(!herd.log().iter().any(|l| l.contains("answering 503")), "no 'Redis unavailable' for a full Redis");
}

/// Where `CONFIG` is disabled (renamed away, as managed Redis services do), herd still starts
/// and says it could not check the policy.
#[test]
fn a_redis_without_config_is_reported_as_unchecked() {
    let redis = RedisServer::start_with_args(&["--rename-command", "CONFIG", ""]);
    let herd = Herd::start(&redis, &["--workers", "1"]);
    // The line is the contract: herd says it could not check.
    herd.wait_log("the unchecked policy", Duration::from_secs(5), |l| {
        l.contains("could not check Redis's maxmemory-policy")
    });
    assert_eq!(herd.client().get("/heavy/cached?n=10").expect("GET").status, 200);
}

/// On a Redis Cluster the policy of every primary node is checked.
#[test]
fn every_node_of_a_redis_cluster_has_its_policy_checked() {
    let cluster = herd_e2e::RedisCluster::start();
    let herd = Herd::start_at(&cluster.url(), &["--workers", "1"], &[]);
    // The lines are the contract: one report per node.
    wait_for("a policy line per node", Duration::from_secs(10), || {
        let checked: std::collections::HashSet<String> = herd
            .log()
            .iter()
            .filter(|l| l.contains("maxmemory-policy noeviction"))
            .filter_map(|l| l.split("Redis node ").nth(1)?.split(':').nth(1).map(str::to_owned))
            .collect();
        (checked.len() == 3).then_some(())
    });
}
