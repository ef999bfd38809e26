//! Logins under attack (issue 13, items 5, 6, 15, 16, 17): concurrent guesses, lockouts,
//! bursts that would each cost 19 MiB of argon2, a logout that must end every id of a login,
//! and cross-site form posts.

use std::{
    net::IpAddr,
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use herd_e2e::{Client, Herd, RedisServer, Response};

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn login_json(client: &Client, user: &str, password: &str) -> Response {
    client.post_json("/login", &format!(r#"{{"username":"{user}","password":"{password}"}}"#)).expect("login request")
}

fn from(herd: &Herd, ip: [u8; 4]) -> Client {
    herd.client().from_ip(IpAddr::from(ip))
}

/// Runs `count` requests at once (released together by a barrier); each gets its index and
/// returns what it saw.
fn at_once<T: Send + 'static>(count: usize, request: impl Fn(usize) -> T + Send + Sync + 'static) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(count));
    let request = Arc::new(request);
    let threads: Vec<_> = (0..count)
        .map(|i| {
            let (barrier, request) = (Arc::clone(&barrier), Arc::clone(&request));
            std::thread::spawn(move || {
                barrier.wait();
                request(i)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().expect("client thread")).collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// Item 5: 60 concurrent wrong passwords for one user from one address used to all reach
/// argon2 (all 401, counter at 60): the check and the count were two steps.
#[test]
fn concurrent_guesses_are_counted_before_any_is_checked() {
    let redis = RedisServer::start();
    // A long queue timeout: this test is about the counters, not the hashing cap.
    let herd = Herd::start(&redis, &["--workers", "2", "--login-queue-timeout", "60s"]);
    let guesser = from(&herd, [127, 0, 0, 2]);
    let statuses = at_once(60, move |_| login_json(&guesser, "alice", "guess").status);
    assert_eq!((count(&statuses, 401), count(&statuses, 429)), (5, 55), "{statuses:?}");
    // Refused attempts count nowhere: every budget holds exactly the five that were checked.
    for key in ["user-ip:alice:127.0.0.2", "ip:127.0.0.2", "user:alice"] {
        let key = format!("herd:ratelimit:login:{key}");
        assert_eq!(redis.cli(&["GET", &key]).as_deref(), Some("5"), "{key}");
        let ttl: i64 = redis.cli(&["TTL", &key]).and_then(|t| t.parse().ok()).expect("a TTL");
        assert!((1..=300).contains(&ttl), "{key} must expire: {ttl}");
    }
}

/// Item 16: five wrong passwords from anywhere used to lock the real user out for five
/// minutes, from every address.
#[test]
fn one_address_cannot_lock_the_user_out_but_a_distributed_attack_is_capped() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2", "--login-limit-per-user", "12"]);
    let attacker = from(&herd, [127, 0, 0, 3]);
    for _ in 0..5 {
        assert_eq!(login_json(&attacker, "alice", "guess").status, 401);
    }
    let refused = login_json(&attacker, "alice", "wonderland");
    assert_eq!(refused.status, 429, "the attacker's own budget is spent, even for the right password");
    assert!(refused.header("retry-after").and_then(|v| v.parse::<u64>().ok()).is_some_and(|s| (1..=300).contains(&s)));

    let real = from(&herd, [127, 0, 0, 4]);
    let ok = login_json(&real, "alice", "wonderland");
    assert_eq!(ok.status, 200, "the real user, elsewhere, is not locked out: {}", ok.body);
    assert!(ok.cookie().is_some());

    // Many addresses together run into the per-user cap (12 here): 5 + 5 + 2 guesses.
    for (n, guesses) in [(5, 5), (6, 2)] {
        for _ in 0..guesses {
            assert_eq!(login_json(&from(&herd, [127, 0, 0, n]), "alice", "guess").status, 401);
        }
    }
    assert_eq!(login_json(&from(&herd, [127, 0, 0, 6]), "alice", "guess").status, 429, "the per-user cap");
    assert_eq!(login_json(&from(&herd, [127, 0, 0, 7]), "alice", "guess").status, 429, "from a fresh address too");
    assert_eq!(redis.cli(&["GET", "herd:ratelimit:login:user:alice"]).as_deref(), Some("12"));
    // Other users are untouched by alice's cap.
    assert_eq!(login_json(&from(&herd, [127, 0, 0, 7]), "bob", "guess").status, 401);
}

/// The peak resident memory (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("worker status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Item 6: 400 concurrent logins used to run 400 argon2 hashes at once (19 MiB each: a worker
/// reached 3.5 GiB, median latency 10 s). Now at most --login-concurrency hash at once and the
/// excess gets a quick 503.
#[test]
fn a_burst_of_logins_is_bounded_in_memory_and_the_excess_gets_a_quick_503() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1", "--login-concurrency", "2", "--login-queue-timeout", "500ms"]);
    let worker = *herd.worker_pids().first().expect("a worker pid");
    // One login first, so the baseline includes the allocator's first argon2 arenas.
    assert_eq!(login_json(&herd.client(), "alice", "wonderland").status, 200);
    let before = peak_rss_kib(worker);

    let addr = herd.addr;
    let seen = at_once(400, move |i| {
        // Random-looking distinct sources, distinct unknown users (each its own budgets).
        let ip = IpAddr::from([127, (i / 200 + 1) as u8, (i % 200) as u8, ((i * 7) % 250 + 1) as u8]);
        let client = Client::new(addr).from_ip(ip);
        let started = Instant::now();
        let res = login_json(&client, &format!("guest{i}"), "guess");
        (res.status, res.header("retry-after").map(str::to_owned), started.elapsed())
    });
    let after = peak_rss_kib(worker);
    let statuses: Vec<u16> = seen.iter().map(|s| s.0).collect();
    let mut latencies: Vec<Duration> = seen.iter().map(|s| s.2).collect();
    latencies.sort();
    let slowest_503 = seen.iter().filter(|s| s.0 == 503).map(|s| s.2).max();
    eprintln!(
        "400 logins: {} x 401, {} x 503; median {:?}, max {:?}, slowest 503 {slowest_503:?}; worker VmHWM {} -> {} MiB",
        count(&statuses, 401),
        count(&statuses, 503),
        latencies[200],
        latencies[399],
        before / 1024,
        after / 1024
    );
    assert_eq!(count(&statuses, 401) + count(&statuses, 503), 400, "only 401 or 503: {statuses:?}");
    assert!(count(&statuses, 503) > 0, "the excess must be turned away, not all hashed");
    assert!(count(&statuses, 401) >= 2, "some were checked");
    assert!(seen.iter().filter(|s| s.0 == 503).all(|s| s.1.as_deref() == Some("1")), "503s carry Retry-After: 1");
    // Two hashes at 19 MiB each, plus room for 400 connections and the allocator.
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(grown_mib < 2 * 19 + 64, "the worker's peak RSS grew by {grown_mib} MiB");
    // "Quickly": the queue timeout plus scheduling on a busy machine, not a hash per request.
    assert!(slowest_503.is_some_and(|d| d < Duration::from_secs(15)), "{slowest_503:?}");
    // The turned-away attempts used up no budget (given back: 0, or never counted).
    let counted: usize = (0..400)
        .filter(|i| redis.cli(&["GET", &format!("herd:ratelimit:login:user:guest{i}")]).as_deref() == Some("1"))
        .count();
    assert_eq!(counted, count(&statuses, 401));
}

fn me(client: &Client) -> serde_json::Value {
    let res = client.get("/me").expect("GET /me");
    assert_eq!(res.status, 200, "{}", res.body);
    res.json()["user"].clone()
}

/// Item 15: log in, log in again with the first cookie, log out with the second: the first
/// used to keep working for the whole grace period.
#[test]
fn a_logout_also_ends_the_id_its_login_replaced() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2", "--session-grace", "60s"]);
    let mut client = herd.client();
    client.login();
    let first = client.clone();
    client.login();
    assert_ne!(first.cookie, client.cookie);
    assert_eq!(me(&first), "alice", "the replaced id answers during its grace");

    let out = client.request("POST", "/logout", &[], b"").expect("logout");
    assert_eq!(out.status, 200, "{}", out.body);
    assert!(me(&first).is_null(), "the replaced id must end with the logout, not 60 s later");
    assert!(me(&client).is_null());
    assert_eq!(redis.keys("herd:sess:*").into_iter().filter(|k| !k.ends_with(":visits")).count(), 0);

    // A login that replaced nothing still logs out as before.
    let mut alone = herd.client();
    alone.login();
    assert_eq!(alone.request("POST", "/logout", &[], b"").expect("logout").status, 200);
    assert!(me(&alone).is_null());
}

/// Item 17: a form on another site used to log the browser in (login CSRF).
#[test]
fn cross_site_posts_are_refused_and_same_origin_ones_accepted() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1", "--allowed-origins", "https://app.example"]);
    let form = b"username=alice&password=wonderland";
    let post = |headers: &[(&str, &str)]| herd.client().request("POST", "/login", headers, form).expect("login");

    for foreign in [
        &[FORM, ("Origin", "https://evil.example")][..],
        &[FORM, ("Sec-Fetch-Site", "cross-site")],
        &[FORM, ("Origin", "null")],
    ] {
        let refused = post(foreign);
        assert_eq!(refused.status, 403, "{foreign:?}: {}", refused.body);
        assert!(refused.json()["error"].as_str().is_some_and(|e| e.contains("cross-origin")));
        assert!(refused.header("set-cookie").is_none(), "no session for a cross-site form");
    }
    // The kit sends `Host: herd.test`; herd speaks plain HTTP here.
    for same in [
        &[FORM, ("Origin", "http://herd.test"), ("Sec-Fetch-Site", "same-origin")][..],
        &[FORM, ("Origin", "https://app.example")],
        &[FORM],
    ] {
        let ok = post(same);
        assert_eq!(ok.status, 200, "{same:?}: {}", ok.body);
        assert!(ok.cookie().is_some());
    }

    // Logout and the other state changes are covered by the same layer.
    let mut user = herd.client();
    user.login();
    let evil = ("Origin", "https://evil.example");
    assert_eq!(user.request("POST", "/logout", &[evil], b"").expect("logout").status, 403);
    assert_eq!(me(&user), "alice", "a refused logout changes nothing");
    assert_eq!(herd.client().request("DELETE", "/heavy/cached?n=5", &[evil], b"").expect("delete").status, 403);
    assert_eq!(herd.client().request("POST", "/stats/reset", &[evil], b"").expect("reset").status, 403);
    // Reads are not affected.
    assert_eq!(herd.client().request("GET", "/me", &[evil], b"").expect("GET").status, 200);
}

/// A failed login through `balancer` claiming to be for `claimed` (`X-Forwarded-For`).
fn failed_login_via(balancer: &Client, claimed: &str) -> u16 {
    let body = r#"{"username":"alice","password":"guess"}"#;
    let headers = [("Content-Type", "application/json"), ("X-Forwarded-For", claimed)];
    balancer.request("POST", "/login", &headers, body.as_bytes()).expect("login request").status
}

/// Behind a trusted balancer the login budgets count the client it names; a client that is not
/// a trusted proxy cannot pick an address with the same header (a fresh budget per guess).
#[test]
fn forwarded_clients_are_believed_only_from_trusted_proxies() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1", "--trusted-proxies", "127.0.0.2, 10.0.0.0/8"]);
    let balancer = from(&herd, [127, 0, 0, 2]);
    let statuses: Vec<u16> = (0..6).map(|_| failed_login_via(&balancer, "203.0.113.1, 198.51.100.1")).collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429], "one client's budget of five");
    assert_eq!(failed_login_via(&balancer, "198.51.100.2"), 401, "another client behind the balancer has its own");
    assert_eq!(
        redis.cli(&["GET", "herd:ratelimit:login:user-ip:alice:198.51.100.1"]).as_deref(),
        Some("5"),
        "counted for the rightmost untrusted hop, not the balancer and not the client's own claim"
    );
    herd.wait_log("the client in the log", Duration::from_secs(5), |l| {
        l.contains("failed login") && l.contains("client=198.51.100.2")
    });

    // Not a trusted proxy: its header is ignored, so every guess counts against 127.0.0.3.
    let spoofer = from(&herd, [127, 0, 0, 3]);
    let statuses: Vec<u16> = (0..6).map(|i| failed_login_via(&spoofer, &format!("192.0.2.{i}"))).collect();
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429], "a spoofed header buys no new budget");
    assert_eq!(redis.cli(&["GET", "herd:ratelimit:login:user-ip:alice:127.0.0.3"]).as_deref(), Some("5"));
}
