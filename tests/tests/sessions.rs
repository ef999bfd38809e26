//! Login sessions shared by all workers through Redis, as a client sees them.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use herd_e2e::{wait_for, Herd, RedisServer};

#[test]
fn login_then_fresh_connections_reach_several_workers_with_one_session() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3"]);
    let mut client = herd.client();
    client.login();

    let mut pids = HashSet::new();
    for expected in 1..=30u64 {
        let body = client.get("/").expect("GET /").json();
        assert_eq!(body["user"], "alice");
        assert_eq!(body["visits"], expected, "visits go up by exactly one");
        assert_eq!(body["balance"], "round-robin", "the default mode");
        pids.insert(body["pid"].as_u64().expect("pid"));
    }
    assert!(pids.len() >= 2, "30 fresh connections all reached one worker: {pids:?}");
}

#[test]
fn anonymous_requests_have_no_session_and_create_no_key() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1"]);
    for _ in 0..5 {
        let body = herd.client().get("/").expect("GET /").json();
        assert_eq!(body["user"], serde_json::Value::Null);
        assert_eq!(body["visits"], serde_json::Value::Null);
        assert!(body["pid"].as_u64().is_some() && body["uptime_s"].as_u64().is_some());
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(redis.keys("herd:sess:*"), Vec::<String>::new());
}

#[test]
fn session_keys_are_prefixed_hashes_not_the_cookie() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1"]);
    let mut client = herd.client();
    let login = client.login();
    let set_cookie = login.header("set-cookie").expect("cookie").to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "--secure-cookies false: {set_cookie}");
    let id = client.cookie.as_deref().and_then(|c| c.split_once('=')).map(|(_, v)| v.to_owned()).expect("id");
    let keys = redis.keys("herd:sess:*");
    assert_eq!(keys.len(), 1, "the record alone (the visit count is in the login index): {keys:?}");
    assert!(keys.iter().all(|k| !k.contains(&id)), "the raw session id must not be a key");
    assert_eq!(keys[0].len(), "herd:sess:".len() + 22, "128 bits of SHA-256 in base64: {keys:?}");
    // The user's login index: the session key, with its visit count.
    let index = "herd:user:alice:logins";
    assert_eq!(redis.cli(&["TYPE", index]).as_deref().map(str::trim), Some("hash"));
    assert_eq!(redis.cli(&["HGET", index, &keys[0]]).as_deref().map(str::trim), Some("0"), "no visit yet");
    assert_eq!(client.get("/").expect("GET /").json()["visits"], 1);
    assert_eq!(redis.cli(&["HGET", index, &keys[0]]).as_deref().map(str::trim), Some("1"));
    assert_eq!(redis.keys("herd:sess:*"), keys, "still one key per session");
}

#[test]
fn cookies_are_secure_by_default() {
    let redis = RedisServer::start();
    let url = redis.url();
    let herd = Herd::spawn(
        &["serve", "--bind", "127.0.0.1:0", "--workers", "1", "--redis-url", &url, "--demo-user", "alice:wonderland"],
        &[],
    );
    herd.wait_ready(herd_e2e::herd::START_TIMEOUT);
    let login = herd.client().post_json("/login", r#"{"username":"alice","password":"wonderland"}"#).expect("login");
    assert!(login.header("set-cookie").is_some_and(|c| c.contains("Secure")));
    let mut client = herd.client();
    client.cookie = login.cookie();
    let logout = client.request("POST", "/logout", &[], b"").expect("logout");
    let removal = logout.header("set-cookie").expect("a removal cookie");
    assert!(removal.contains("Max-Age=0") && removal.contains("Secure") && removal.contains("HttpOnly"), "{removal}");
}

#[test]
fn logout_ends_the_session_server_side() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let mut client = herd.client();
    client.login();
    assert_eq!(client.get("/").expect("GET /").json()["user"], "alice");

    let logout = client.request("POST", "/logout", &[], b"").expect("logout");
    assert_eq!(logout.status, 200);
    let removal = logout.header("set-cookie").expect("a removal cookie").to_owned();
    assert!(removal.contains("Max-Age=0"), "{removal}");
    assert!(
        removal.contains("HttpOnly") && removal.contains("SameSite=Lax"),
        "the removal cookie keeps the flags: {removal}"
    );
    assert_eq!(redis.keys("herd:sess:*"), Vec::<String>::new(), "session deleted from Redis");
    let listed = redis.cli(&["HLEN", "herd:user:alice:logins"]).unwrap_or_default();
    assert_eq!(listed.trim(), "0", "and from the login index, with its visit count");

    // Replaying the old cookie (as a thief would) gets nothing, on every worker.
    for _ in 0..6 {
        let body = client.get("/").expect("GET /").json();
        assert_eq!(body["user"], serde_json::Value::Null);
    }
}

#[test]
fn login_gives_a_new_session_id_and_the_old_one_lives_out_a_short_grace() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2", "--session-grace", "1s"]);
    let mut client = herd.client();
    client.login();
    let first = client.cookie.clone();
    client.login();
    assert_ne!(client.cookie, first, "a second login must not keep the old id (fixation)");
    assert_eq!(records(&redis).len(), 2, "the new record exists before the old one goes");

    // A request already in flight with the old cookie still works...
    let mut old = herd.client();
    old.cookie = first;
    assert_eq!(me(&old), "alice", "the old id works during the grace period");
    // ...for the grace period only, however often it is used.
    let retired = Instant::now();
    wait_for("the old id to die", Duration::from_secs(5), || me(&old).is_null().then_some(()));
    assert!(retired.elapsed() < Duration::from_secs(3), "the grace is not extended by use");
    assert_eq!(me(&client), "alice", "the new id lives on");
    assert_eq!(records(&redis).len(), 1);
}

/// The session records in Redis (not the visit counters and predecessor links beside them).
fn records(redis: &RedisServer) -> Vec<String> {
    redis.keys("herd:sess:*").into_iter().filter(|k| !k.ends_with(":visits") && !k.ends_with(":replaced")).collect()
}

/// The session's user as `GET /me` reports it.
fn me(client: &herd_e2e::Client) -> serde_json::Value {
    let res = client.get("/me").expect("GET /me");
    assert_eq!(res.status, 200, "{}", res.body);
    res.json()["user"].clone()
}

#[test]
fn reads_extend_the_idle_timeout_with_a_touch_not_a_rewrite() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2", "--session-idle", "2s"]);
    let mut client = herd.client();
    client.login();
    let key = records(&redis).pop().expect("one session");
    // The record's header holds `seen` at bytes 20..36; the values follow the 39-byte header.
    let seen_at = || redis.cli(&["GETRANGE", &key, "20", "35"]).unwrap_or_default();
    let values = || redis.cli(&["GETRANGE", &key, "39", "-1"]).unwrap_or_default();
    let stored = values();
    assert!(stored.contains("5:since"), "{stored}");

    // Only reads, for twice the idle timeout: the session stays.
    let started = Instant::now();
    let mut seen = HashSet::new();
    while started.elapsed() < Duration::from_secs(4) {
        assert_eq!(me(&client), "alice", "after {:?} of reads", started.elapsed());
        seen.insert(seen_at());
        std::thread::sleep(Duration::from_millis(100));
    }
    // About one touch per quarter of the idle timeout (0.5 s), not one per request (~40).
    assert!((4..=12).contains(&seen.len()), "{} distinct touch times", seen.len());
    assert_eq!(values(), stored, "the data itself was never rewritten");
    let ttl: i64 = redis.cli(&["PTTL", &key]).and_then(|t| t.parse().ok()).unwrap_or(-1);
    assert!((1..=2000).contains(&ttl), "the key's TTL mirrors the idle timeout: {ttl}");

    // Then silence longer than the idle timeout: the session is over, server-side.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(me(&client), serde_json::Value::Null);
    assert!(records(&redis).is_empty());
}

#[test]
fn the_absolute_lifetime_ends_even_an_active_session() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1", "--session-idle", "1h", "--session-max-age", "2s"]);
    let mut client = herd.client();
    client.login();
    let started = Instant::now();
    wait_for("the session to reach its maximum age", Duration::from_secs(6), || {
        std::thread::sleep(Duration::from_millis(100));
        client.get("/").expect("GET /").json()["user"].is_null().then_some(())
    });
    let lived = started.elapsed();
    assert!(lived >= Duration::from_millis(1800), "ended after {lived:?}, before its maximum age");
    // Logging in again starts a new lifetime.
    client.login();
    assert_eq!(me(&client), "alice");
}

#[test]
fn a_session_over_its_size_cap_is_refused_with_413() {
    let redis = RedisServer::start();
    let long = "a-user-with-a-rather-long-name-indeed";
    let demo = format!("{long}:secret-pw");
    let herd = Herd::start(&redis, &["--workers", "1", "--session-max-bytes", "48", "--demo-user", &demo]);
    let body = format!(r#"{{"username":"{long}","password":"secret-pw"}}"#);
    let res = herd.client().post_json("/login", &body).expect("login");
    assert_eq!(res.status, 413, "{}", res.body);
    assert!(res.json()["error"].as_str().is_some_and(|e| e.contains("48 bytes")), "{}", res.body);
    assert!(res.cookie().is_none(), "no session was created");
    assert!(redis.keys("herd:sess:*").is_empty(), "and nothing is left in Redis");
    // A small session fits.
    herd.client().login();
}

#[test]
fn form_login_works_like_json() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1"]);
    let res = herd
        .client()
        .request(
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            b"username=alice&password=wonderland",
        )
        .expect("form login");
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(res.json()["user"], "alice");
}

#[test]
fn redis_outage_is_a_fast_503_and_the_session_survives_a_restart() {
    let mut redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let mut client = herd.client();
    client.login();
    assert_eq!(client.get("/").expect("GET /").json()["visits"], 1);

    redis.kill();
    for _ in 0..4 {
        let started = Instant::now();
        let res = client.get("/").expect("a response, not a hang or a reset");
        let took = started.elapsed();
        assert_eq!(res.status, 503, "{}", res.body);
        assert!(took < Duration::from_secs(2), "503 took {took:?}");
        assert!(res.header("retry-after").is_some());
        assert!(res.json()["error"].as_str().is_some());
        assert!(res.header("set-cookie").is_none(), "an outage must not log the user out");
    }
    // Anonymous pages and liveness do not need Redis; readiness says it is missing.
    assert_eq!(herd.client().get("/healthz").expect("healthz").status, 200);
    assert_eq!(herd.client().get("/readyz").expect("readyz").status, 503);

    redis.restart();
    // The pool reconnects by itself; the session comes back from the append-only file.
    let body = wait_for("the session to work again", Duration::from_secs(15), || {
        let res = client.get("/").ok()?;
        (res.status == 200).then(|| res.json())
    });
    assert_eq!(body["user"], "alice");
    assert_eq!(body["visits"], 2, "no visit lost or double-counted across the outage");
    assert_eq!(herd.client().get("/readyz").expect("readyz").status, 200);
}

#[test]
fn logout_everywhere_and_a_password_change_end_every_session_of_the_user() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3"]);
    let me = |c: &herd_e2e::Client| c.get("/me").expect("GET /me").json()["user"].clone();
    assert_eq!(me(&herd.client()), serde_json::Value::Null, "anonymous");

    let mut devices: Vec<herd_e2e::Client> =
        (2..5).map(|n| herd.client().from_ip(std::net::IpAddr::from([127, 0, 0, n]))).collect();
    for device in &mut devices {
        device.login();
        assert_eq!(me(device), "alice");
    }
    // A login an older herd listed in its set of session keys (before the login index) ends too.
    redis.cli(&["SET", "herd:sess:an-older-herds-key", "h4:..."]).expect("SET");
    redis.cli(&["SADD", "herd:user:alice:sessions", "herd:sess:an-older-herds-key"]).expect("SADD");
    let out = devices[0].request("POST", "/logout?all=true", &[], b"").expect("logout everywhere");
    assert_eq!(out.status, 200, "{}", out.body);
    assert_eq!(out.json()["ended_elsewhere"], 3, "the two other devices and the older herd's login");
    for device in &devices {
        assert_eq!(me(device), serde_json::Value::Null, "every device is logged out");
    }
    assert_eq!(redis.keys("herd:sess:*"), Vec::<String>::new(), "every record is gone");
    assert_eq!(redis.keys("herd:user:alice:*"), Vec::<String>::new(), "and both indexes");

    // A password change does the same.
    devices[1].login();
    let mut passwd = std::process::Command::new(herd_e2e::herd::herd_bin())
        .args(["users", "passwd", "alice", "--redis-url", &redis.url()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("herd users passwd");
    std::io::Write::write_all(&mut passwd.stdin.take().expect("stdin"), b"looking-glass\n").expect("password");
    let out = passwd.wait_with_output().expect("passwd");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 session(s) ended"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(me(&devices[1]), serde_json::Value::Null);
    let old =
        herd.client().post_json("/login", r#"{"username":"alice","password":"wonderland"}"#).expect("old password");
    assert_eq!(old.status, 401);
    let new =
        herd.client().post_json("/login", r#"{"username":"alice","password":"looking-glass"}"#).expect("new password");
    assert_eq!(new.status, 200);
}

#[test]
fn concurrent_visits_of_one_session_are_all_counted() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "4"]);
    let mut client = herd.client();
    client.login();
    // 200 requests of one session, 20 at a time, each on a fresh connection (so on all workers).
    let pids: Vec<std::collections::HashSet<u64>> = (0..20)
        .map(|_| {
            let client = client.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| {
                        let body = client.get("/").expect("GET /").json();
                        assert_eq!(body["user"], "alice");
                        body["pid"].as_u64().expect("pid")
                    })
                    .collect()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let workers: std::collections::HashSet<u64> = pids.into_iter().flatten().collect();
    assert_eq!(workers.len(), 4, "spread over every worker");
    assert_eq!(client.get("/").expect("GET /").json()["visits"], 201, "200 concurrent visits, then this one");
}

/// One client's sessions during the outage test: cookie, visits the server acknowledged, and
/// requests that failed (their visit may or may not have been counted).
struct Tracked {
    cookie: String,
    acked: u64,
    failed: u64,
}

#[test]
fn killing_redis_mid_load_loses_no_session_and_no_acknowledged_visit() {
    let mut redis = RedisServer::start(); // append-only, fsync on every write
    let herd = Herd::start(&redis, &["--workers", "3"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients: Vec<_> = (0..12u8)
        .map(|n| {
            let client = herd.client().from_ip(std::net::IpAddr::from([127, 0, 1, n + 1]));
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                let mut sessions: Vec<Tracked> = Vec::new();
                let mut client = client;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // A new login now and then: sessions created right before the crash count too.
                    let due = match sessions.last() {
                        None => true,
                        Some(s) => s.acked >= 15,
                    };
                    if due {
                        client.cookie = None;
                        match client.post_json("/login", r#"{"username":"alice","password":"wonderland"}"#) {
                            Ok(res) if res.status == 200 => {
                                let cookie = res.cookie().expect("login cookie");
                                client.cookie = Some(cookie.clone());
                                sessions.push(Tracked { cookie, acked: 0, failed: 0 });
                            }
                            _ => std::thread::sleep(Duration::from_millis(20)),
                        }
                        continue;
                    }
                    let tracked = sessions.last_mut().expect("a session");
                    match client.get("/") {
                        Ok(res) if res.status == 200 => {
                            assert_eq!(res.json()["user"], "alice", "a live session was never anonymous");
                            tracked.acked += 1;
                            served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Ok(res) => {
                            assert_eq!(res.status, 503, "only 503 while Redis is away: {}", res.body);
                            tracked.failed += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(err) => panic!("no response: {err}"),
                    }
                }
                sessions
            })
        })
        .collect();

    let served_so_far = || served.load(std::sync::atomic::Ordering::Relaxed);
    wait_for("the load to flow", Duration::from_secs(30), || (served_so_far() >= 300).then_some(()));
    redis.kill();
    std::thread::sleep(Duration::from_millis(1000));
    redis.restart();
    let probe = herd.client();
    wait_for("Redis to be back for herd", Duration::from_secs(15), || {
        (probe.get("/readyz").ok()?.status == 200).then_some(())
    });
    // Keep the load on until plenty of sessions worked again after the restart.
    let before = served_so_far();
    wait_for("the load to flow again", Duration::from_secs(30), || (served_so_far() >= before + 300).then_some(()));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sessions: Vec<Tracked> = clients.into_iter().flat_map(|t| t.join().expect("client thread")).collect();

    assert!(sessions.len() >= 24, "logins kept happening: {}", sessions.len());
    assert!(sessions.iter().any(|s| s.failed > 0), "the outage was felt");
    for (i, tracked) in sessions.iter().enumerate() {
        let mut client = herd.client();
        client.cookie = Some(tracked.cookie.clone());
        let body = client.get("/").expect("GET /").json();
        assert_eq!(body["user"], "alice", "session {i} survived the crash");
        let visits = body["visits"].as_u64().expect("visits") - 1;
        assert!(
            (tracked.acked..=tracked.acked + tracked.failed).contains(&visits),
            "session {i}: {visits} visits counted, {} acknowledged, {} failed",
            tracked.acked,
            tracked.failed
        );
    }
}
