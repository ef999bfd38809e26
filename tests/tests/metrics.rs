//! The primary's metrics (`--metrics-bind`, `herd ctl metrics`): a scrape, known requests, a
//! killed worker and a scrape again must move the numbers exactly as expected, and the text
//! must pass `promtool check metrics`. Without promtool (Debian's `prometheus` package) its
//! check is skipped with a loud message, unless `HERD_REQUIRE_PROMTOOL` is set (CI sets it).

use std::{
    collections::BTreeMap,
    io::Write,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use herd_e2e::{
    free_port,
    herd::{assert_herd_fails, workers, START_TIMEOUT},
    http::Client,
    Herd, RedisServer,
};

/// One sample: its name with labels sorted (`name{a="1",b="2"}`) and its value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number in {line:?}"));
        let key = match series.split_once('{') {
            None => series.to_owned(),
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
        };
        samples.insert(key, value);
    }
    samples
}

/// The sum of every sample of `name` whose labels include each of `with`.
fn sum(samples: &BTreeMap<String, f64>, name: &str, with: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(key, _)| key.split('{').next() == Some(name))
        .filter(|(key, _)| with.iter().all(|label| key.contains(label)))
        .map(|(_, v)| v)
        .sum()
}

fn scrape(admin: SocketAddr, headers: &[(&str, &str)]) -> herd_e2e::http::Response {
    Client::new(admin).request("GET", "/metrics", headers, b"").expect("scrape")
}

/// `promtool check metrics` on `text`; skipped (loudly) without promtool outside CI.
fn promtool_accepts(text: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            assert!(
                std::env::var_os("HERD_REQUIRE_PROMTOOL").is_none(),
                "promtool is required (HERD_REQUIRE_PROMTOOL) but cannot run: {err}"
            );
            eprintln!(
                "!!! promtool not found ({err}): the exposition format is NOT checked (apt-get install prometheus)"
            );
            return;
        }
    };
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{text}");
}

#[test]
fn a_scrape_counts_requests_and_restarts_exactly_and_keeps_a_dead_workers_counts() {
    let redis = RedisServer::start();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
    let admin_arg = admin.to_string();
    // The primary steers: every connection is accepted, handed over and queue-timed by it,
    // which is what the counts below check (under kernel steering it sees none of them).
    let herd = Herd::start(&redis, &["--workers", "2", "--metrics-bind", &admin_arg, "--steering", "primary"]);
    herd.wait_workers_ready(2, START_TIMEOUT);

    let first = scrape(admin, &[]);
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.header("content-type").is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    promtool_accepts(&first.body);
    let before = parse(&first.body);
    assert_eq!(sum(&before, "herd_workers", &[r#"state="ready""#]), 2.0, "{}", first.body);
    assert_eq!(sum(&before, "herd_worker_restarts_total", &[]), 0.0);
    let whoami = [r#"route="/whoami""#, r#"method="GET""#, r#"status="2xx""#];
    let whoami_before = sum(&before, "herd_http_requests_total", &whoami);

    // Ten requests, each on its own connection; and one that matches no route.
    let client = herd.client();
    for _ in 0..10 {
        assert_eq!(client.get("/whoami").expect("request").status, 200);
    }
    assert_eq!(client.get("/no/such/route/42").expect("request").status, 404);

    let second = scrape(admin, &[]);
    promtool_accepts(&second.body);
    let after = parse(&second.body);
    assert_eq!(sum(&after, "herd_http_requests_total", &whoami), whoami_before + 10.0, "{}", second.body);
    assert_eq!(sum(&after, "herd_http_requests_total", &[r#"route="unmatched""#, r#"status="4xx""#]), 1.0);
    assert!(!second.body.contains("/no/such/route/42"), "raw paths never become labels");
    let accepted = sum(&after, "herd_connections_accepted_total", &[r#"balance="round-robin""#]);
    assert_eq!(accepted - sum(&before, "herd_connections_accepted_total", &[]), 11.0);
    // Every connection's first request had its queue time measured, and only those.
    assert_eq!(sum(&after, "herd_queue_time_seconds_count", &[]), accepted);
    assert_eq!(sum(&after, "herd_handoff_latency_seconds_count", &[]), accepted);
    assert_eq!(sum(&after, "herd_http_request_duration_seconds_count", &[r#"route="/whoami""#]), whoami_before + 10.0);
    for slot in ["0", "1"] {
        let slot = format!(r#"slot="{slot}""#);
        assert!(sum(&after, "herd_worker_resident_memory_bytes", &[&slot]) > 1e6, "{}", second.body);
        assert!(after.keys().any(|k| k.starts_with("herd_worker_cpu_seconds_total") && k.contains(&slot)));
    }

    // Kill slot 1's worker: its counts stay in the totals, and its death is counted once.
    let slot1 = [r#"route="/whoami""#, r#"method="GET""#, r#"status="2xx""#, r#"slot="1""#];
    let slot1_before = sum(&after, "herd_http_requests_total", &slot1);
    let victim = workers(&herd.status()).into_iter().find(|w| w.slot == 1).and_then(|w| w.pid).expect("slot 1 pid");
    herd_e2e::signal(victim, nix::sys::signal::Signal::SIGKILL);
    herd.wait_replaced(1, victim, START_TIMEOUT);
    herd.wait_workers_ready(2, START_TIMEOUT);

    let third = scrape(admin, &[]);
    promtool_accepts(&third.body);
    let last = parse(&third.body);
    assert_eq!(last.get(r#"herd_worker_restarts_total{cause="signal",slot="1"}"#), Some(&1.0), "{}", third.body);
    assert_eq!(sum(&last, "herd_worker_restarts_total", &[]), 1.0);
    assert_eq!(sum(&last, "herd_http_requests_total", &slot1), slot1_before, "the dead worker's counts are kept");
    assert_eq!(sum(&last, "herd_http_requests_total", &whoami), whoami_before + 10.0);
    assert_eq!(sum(&last, "herd_workers", &[r#"state="ready""#]), 2.0);

    // The app's series: a login writes a session, a visit loads it; the cache computes once.
    let mut user = herd.client();
    user.login();
    assert_eq!(user.get("/").expect("visit").status, 200);
    for _ in 0..2 {
        assert_eq!(client.get("/heavy/cached?n=1000").expect("cached").status, 200);
    }
    let app_body = scrape(admin, &[]).body;
    promtool_accepts(&app_body);
    let app = parse(&app_body);
    let ok = r#"outcome="ok""#;
    assert!(sum(&app, "herd_session_store_operations_total", &[r#"op="load""#, ok]) >= 1.0, "{app:?}");
    assert!(sum(&app, "herd_session_store_operations_total", &[ok]) >= 2.0);
    assert_eq!(sum(&app, "herd_session_store_operations_total", &[r#"outcome="unavailable""#]), 0.0);
    assert!(sum(&app, "herd_session_store_operation_duration_seconds_count", &[]) >= 2.0);
    assert_eq!(sum(&app, "herd_cache_lookups_total", &[r#"result="computed""#]), 1.0);
    assert_eq!(sum(&app, "herd_cache_lookups_total", &[]), 2.0);
    assert_eq!(sum(&app, "herd_redis_reconnects_total", &[]), 0.0);
    assert!(app.keys().any(|k| k.starts_with("herd_redis_reconnects_total")));
    // A first login replaces no stored session; logging in again over it rotates one.
    assert_eq!(sum(&app, "herd_session_store_operations_total", &[r#"op="rotate""#]), 0.0);
    user.login();
    let rotated = parse(&scrape(admin, &[]).body);
    assert_eq!(sum(&rotated, "herd_session_store_operations_total", &[r#"op="rotate""#, ok]), 1.0);
    assert_eq!(sum(&rotated, "herd_session_store_operations_total", &[r#"op="touch""#]), 0.0, "not idle long enough");

    // A reload retires every worker without a scrape in between: each one's last words (its
    // final snapshot) keep the requests it served since the last scrape in the totals.
    let whoami_now = sum(&app, "herd_http_requests_total", &whoami);
    for _ in 0..5 {
        assert_eq!(client.get("/whoami").expect("request").status, 200);
    }
    let (code, _, stderr) = herd.ctl(&["reload"]);
    assert_eq!(code, 0, "{stderr}");
    let reloaded = parse(&scrape(admin, &[]).body);
    assert_eq!(sum(&reloaded, "herd_http_requests_total", &whoami), whoami_now + 5.0, "{reloaded:?}");
    assert_eq!(reloaded.get(r#"herd_reloads_total{kind="reload",outcome="succeeded"}"#), Some(&1.0));

    // Every series name is documented in the README.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let names: Vec<&str> = app_body.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    assert!(names.len() >= 15, "{names:?}");
    let undocumented: Vec<&&str> = names.iter().filter(|n| !readme.contains(&format!("`{n}`"))).collect();
    assert!(undocumented.is_empty(), "README.md's series table lacks {undocumented:?}");

    // `herd ctl metrics` prints the same series.
    let (code, stdout, stderr) = herd.ctl(&["metrics"]);
    assert_eq!(code, 0, "{stderr}");
    let ctl = parse(&stdout);
    assert_eq!(ctl.get(r#"herd_worker_restarts_total{cause="signal",slot="1"}"#), Some(&1.0), "{stdout}");
    assert_eq!(sum(&ctl, "herd_http_requests_total", &whoami), whoami_now + 5.0);
}

#[test]
fn the_admin_listener_needs_a_token_beyond_loopback_and_checks_it() {
    let port = free_port().to_string();
    let open = format!("0.0.0.0:{port}");
    assert_herd_fails(
        &["serve", "--metrics-bind", &open, "--redis-url", "redis://127.0.0.1:1"],
        &[("HERD_METRICS_TOKEN", None)],
        1,
        &["not a loopback address", "--metrics-token"],
    );

    let redis = RedisServer::start();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
    let admin_arg = admin.to_string();
    // On the command line (herd warns), so that the workers' command lines can be checked.
    let herd = Herd::start(&redis, &["--workers", "1", "--metrics-bind", &admin_arg, "--metrics-token", "s3cret"]);
    herd.wait_workers_ready(1, START_TIMEOUT);

    let anonymous = scrape(admin, &[]);
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    assert!(!anonymous.body.contains("herd_"), "no series without the token");
    assert_eq!(scrape(admin, &[("Authorization", "Bearer s3cre")]).status, 401);
    assert_eq!(scrape(admin, &[("Authorization", "Bearer s3cret!")]).status, 401);
    assert_eq!(scrape(admin, &[("Authorization", "Basic s3cret")]).status, 401);
    let authorized = scrape(admin, &[("Authorization", "Bearer s3cret")]);
    assert_eq!(authorized.status, 200, "{}", authorized.body);
    assert!(authorized.body.contains("# TYPE herd_workers gauge"), "{}", authorized.body);

    // Requests the listener does not serve get a clear status, and the primary carries on.
    let bearer = [("Authorization", "Bearer s3cret")];
    let elsewhere = Client::new(admin).request("GET", "/nope", &bearer, b"").expect("request");
    assert_eq!(elsewhere.status, 404);
    assert!(elsewhere.body.contains("GET /metrics"), "{}", elsewhere.body);
    assert_eq!(Client::new(admin).request("POST", "/metrics", &bearer, b"x").expect("request").status, 405);
    let garbage = {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect(admin).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream.write_all(b"NOT HTTP AT ALL\r\n\r\n").expect("write");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage:?}");
    assert_eq!(scrape(admin, &bearer).status, 200, "still serving");

    // The dashboard page holds no data and needs no token; its actions need the token and the
    // X-Herd-Action header that another site's page cannot send.
    let page = Client::new(admin).get("/").expect("dashboard");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>herd dashboard</title>") && !page.body.contains("herd_workers"));
    assert_eq!(Client::new(admin).request("GET", "/status.json", &[], b"").expect("status").status, 401);
    let forged = Client::new(admin).request("POST", "/actions/scale?by=1", &bearer, b"").expect("action");
    assert_eq!(forged.status, 403, "{}", forged.body);
    let action = [("Authorization", "Bearer s3cret"), ("X-Herd-Action", "1")];
    let scaled = Client::new(admin).request("POST", "/actions/scale?by=1", &action, b"").expect("action");
    assert_eq!((scaled.status, scaled.json()["workers"].clone()), (200, serde_json::json!(2)), "{}", scaled.body);
    herd.wait_workers_ready(2, START_TIMEOUT);
    // A systemd unit never holds the token: it goes to the secrets file.
    let unit = Command::new(herd_e2e::herd::herd_bin())
        .args(["systemd-unit", "--metrics-bind", "0.0.0.0:9100", "--metrics-token", "s3cret"])
        .output()
        .expect("systemd-unit");
    let unit = String::from_utf8_lossy(&unit.stdout);
    assert!(!unit.contains("s3cret") && unit.contains("HERD_METRICS_TOKEN"), "{unit}");
    // The token never reaches a worker's command line (workers do not need it).
    for pid in herd.worker_pids() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("a worker's command line");
        assert!(!String::from_utf8_lossy(&cmdline).contains("s3cret"), "worker {pid}");
    }
}

/// A load that extends the idle timeout counts as a touch: with `--session-idle 2s` a read half
/// a second after the login touches the session once.
#[test]
fn a_touch_inside_a_load_is_counted() {
    let redis = RedisServer::start();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("address");
    let admin_arg = admin.to_string();
    let herd = Herd::start(&redis, &["--workers", "1", "--session-idle", "2s", "--metrics-bind", &admin_arg]);
    let mut user = herd.client();
    user.login();
    let touch = [r#"op="touch""#, r#"outcome="ok""#];
    assert_eq!(sum(&parse(&scrape(admin, &[]).body), "herd_session_store_operations_total", &touch), 0.0);
    // The subject is time passing: a quarter of the idle timeout, and some.
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert_eq!(user.get("/me").expect("GET /me").json()["user"], "alice");
    assert_eq!(sum(&parse(&scrape(admin, &[]).body), "herd_session_store_operations_total", &touch), 1.0);
}
