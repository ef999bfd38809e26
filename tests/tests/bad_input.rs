//! Bad input gets a clear JSON error with the right 4xx status, never a 500 or a panic.

use herd_e2e::{Herd, RedisServer, Response};

fn assert_json_error(res: &Response, status: u16) {
    assert_eq!(res.status, status, "body: {}", res.body);
    assert!(res.header("content-type").is_some_and(|ct| ct.starts_with("application/json")), "{:?}", res.headers);
    assert!(res.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", res.body);
}

#[test]
fn bad_logins_and_bodies_are_4xx_json() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let client = herd.client();

    let wrong = client.post_json("/login", r#"{"username":"alice","password":"nope"}"#).expect("wrong password");
    assert_json_error(&wrong, 401);
    assert!(wrong.header("set-cookie").is_none());
    let unknown = client.post_json("/login", r#"{"username":"mallory","password":"x"}"#).expect("unknown user");
    assert_json_error(&unknown, 401);
    assert_eq!(unknown.body, wrong.body, "unknown user and wrong password look the same");

    assert_json_error(&client.post_json("/login", r#"{"username":"alice","#).expect("bad json"), 400);
    assert_json_error(&client.post_json("/login", r#"{"username":"alice"}"#).expect("missing field"), 422);
    assert_json_error(&client.post_json("/login", r#"{"username":"al ice","password":"x"}"#).expect("bad name"), 401);
    assert_json_error(&client.request("POST", "/login", &[("Content-Type", "text/plain")], b"hi").expect("type"), 415);

    let huge = format!(r#"{{"username":"alice","password":"{}"}}"#, "x".repeat(1024 * 1024));
    assert_json_error(&client.post_json("/login", &huge).expect("1 MiB body"), 413);

    assert_json_error(&client.get("/heavy?n=10000000001").expect("n too big"), 400);
    assert_json_error(&client.get("/heavy?n=lots").expect("n not a number"), 400);
    assert_json_error(&client.get("/no/such/route").expect("404"), 404);

    // Still healthy after all of that.
    assert_eq!(client.get("/healthz").expect("healthz").status, 200);
    // The log is where a panic would show: no status counts them.
    assert!(!herd.log().iter().any(|l| l.contains("panicked")), "a worker panicked");
}

#[test]
fn malformed_or_unknown_cookies_are_anonymous() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1"]);
    let client = herd.client();
    let long = format!("herd_session={}", "A".repeat(4000));
    let cookies = [
        "herd_session=",
        "herd_session=not-a-session-id",
        "herd_session=AAAAAAAAAAAAAAAAAAAAAA",
        "herd_session=%%%%%%%%; other=1",
        "herd_session=ünïcödé",
        "=====",
        long.as_str(),
    ];
    for cookie in cookies {
        let res = client.request("GET", "/", &[("Cookie", cookie)], b"").expect("GET / with a bad cookie");
        assert_eq!(res.status, 200, "cookie {cookie:?}: {}", res.body);
        assert_eq!(res.json()["user"], serde_json::Value::Null, "cookie {cookie:?}");
    }
}

#[test]
fn heavy_really_computes_and_reports_its_worker() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1"]);
    let body = herd.client().get("/heavy").expect("heavy").json();
    assert_eq!(body["result"], 49_999_995_000_000u64);
    assert!(body["pid"].as_u64().is_some());
    let body = herd.client().get("/heavy?n=1e3").expect("heavy").json();
    assert_eq!(body["result"], 499_500);
}

#[test]
fn repeated_failed_logins_are_rate_limited_across_workers() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3"]);
    let from = |n: u8| herd.client().from_ip(std::net::IpAddr::from([127, 0, 0, n]));
    let login = |n: u8, user: &str, password: &str| {
        from(n)
            .post_json("/login", &format!(r#"{{"username":"{user}","password":"{password}"}}"#))
            .expect("login request")
    };
    // Five wrong passwords for alice, on fresh connections (so on several workers).
    for _ in 0..5 {
        assert_json_error(&login(21, "alice", "guess"), 401);
    }
    // Now even the right password is refused from that address (5 per user name and client)...
    let refused = login(21, "alice", "wonderland");
    assert_json_error(&refused, 429);
    let retry: u64 = refused.header("retry-after").and_then(|v| v.parse().ok()).expect("Retry-After seconds");
    assert!((1..=300).contains(&retry), "{retry}");
    // ...but not from another: one address cannot lock the user out (tests/tests/hostile_login.rs).
    assert_eq!(login(22, "alice", "wonderland").status, 200);
    // Other names from the same address are not locked out by alice's failures...
    assert_json_error(&login(21, "bob", "guess"), 401);
    // ...until the address itself has failed too often (20 per window).
    for i in 0..14 {
        assert_json_error(&login(21, &format!("user{i}"), "guess"), 401);
    }
    assert_json_error(&login(21, "carol", "guess"), 429);
    assert_json_error(&login(23, "carol", "guess"), 401);
}

#[test]
fn concurrent_misses_across_workers_compute_once() {
    let redis = RedisServer::start();
    // `/heavy`'s per-computation line is off by default (a client could multiply it).
    let herd = Herd::start_with_env(&redis, &["--workers", "4"], &herd_e2e::herd::HEAVY_LOGS);
    // 50 clients at once, each on its own connection, so round-robin spreads them over all
    // four workers; a fresh n, so every one of them starts with a miss.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(50));
    let answers: Vec<serde_json::Value> = (0..50)
        .map(|_| {
            let (client, barrier) = (herd.client(), std::sync::Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                client.get("/heavy/cached?n=20000000").expect("GET /heavy/cached").json()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let computed = answers.iter().filter(|a| a["cached"] == false).count();
    assert_eq!(computed, 1, "exactly one request computes: {answers:?}");
    assert!(answers.iter().all(|a| a["result"] == 199_999_990_000_000u64));
    let pids: std::collections::HashSet<_> = answers.iter().map(|a| a["pid"].clone()).collect();
    assert!(pids.len() >= 3, "the requests were spread over the workers: {pids:?}");
    // No status counts computations: the worker's "cache miss" line is the only record.
    let computations = herd.log().iter().filter(|l| l.contains("cache miss")).count();
    assert_eq!(computations, 1, "one computation in the whole cluster");
}
