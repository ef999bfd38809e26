//! Issue 13, control channel and secrets: oversized messages (item 10), the anonymous admin
//! routes (10), the control socket's place and `herd ctl`'s timeout (11), passwords on command
//! lines and in errors (13), and log lines a client can forge or multiply (14).

use std::{
    os::unix::fs::PermissionsExt,
    process::Stdio,
    time::{Duration, Instant},
};

use herd_e2e::{herd::assert_herd_fails, herd::herd_bin, wait_for, Herd, RedisServer, TempDir};
use serde_json::json;

/// Workers miss heartbeats for this long before the primary kills them: short, so that a link
/// that stopped reading shows within the test.
const WORKER_TIMEOUT: &str = "3s";

/// Serves requests for `how_long` (more than twice the worker timeout), each of which must
/// succeed, then checks that no worker was replaced.
fn assert_cluster_unharmed(herd: &Herd, pids: &[u32], how_long: Duration) {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        let res = herd.client().get("/healthz").expect("GET /healthz");
        assert_eq!(res.status, 200, "{}", res.body);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(herd.worker_pids(), pids, "no worker was killed or replaced: {:#?}", herd.log());
}

fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

#[test]
fn an_oversized_broadcast_is_refused_and_no_worker_is_lost() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2", "--worker-timeout", WORKER_TIMEOUT]);
    let pids = herd.worker_pids();
    // 70,000 bytes; and 65,500, which fits in a control request but not, with its envelope, in
    // one IPC message (before the fix: "sent to 2 worker(s)", then both links stopped reading).
    for size in [70_000, 65_500] {
        let (code, out, err) = herd.ctl(&["broadcast", &json!("x".repeat(size)).to_string()]);
        assert_ne!(code, 0, "a {size}-byte broadcast must be refused: {out}");
        assert!(err.contains("exceeds") || err.contains("longer than"), "a clear reason for {size} bytes: {err}");
    }
    let (code, out, err) = herd.ctl(&["broadcast", r#"{"type":"note","note":"small"}"#]);
    assert_eq!((code, out.trim()), (0, "sent to 2 worker(s)"), "{err}");
    assert_cluster_unharmed(&herd, &pids, Duration::from_secs(7));
}

#[test]
fn stats_with_big_notes_answers_and_no_worker_dies() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2", "--worker-timeout", WORKER_TIMEOUT]);
    let pids = herd.worker_pids();
    // Each note fits in a message; four of them do not fit in one worker's answer, and two
    // workers' answers of two do not fit in one reply set.
    for i in 0..4 {
        let note = json!({ "type": "note", "note": format!("{i}{}", "n".repeat(20_000)) });
        let (code, _, err) = herd.ctl(&["broadcast", &note.to_string()]);
        assert_eq!(code, 0, "{err}");
    }
    let stats = wait_for("every worker to hold its notes", Duration::from_secs(10), || {
        let res = herd.client().get("/stats").expect("GET /stats");
        assert_eq!(res.status, 200, "never a 500: {}", res.body);
        let stats = res.json();
        let workers = stats["workers"].as_array().cloned().unwrap_or_default();
        let dropped = |w: &serde_json::Value| {
            w["notes_dropped"].as_u64().unwrap_or(0) + w["notes"].as_array().map_or(0, |n| n.len() as u64)
        };
        (workers.len() == 2 && workers.iter().all(|w| dropped(w) == 4)).then_some(stats)
    });
    for worker in stats["workers"].as_array().expect("workers") {
        let notes = worker["notes"].as_array().expect("notes");
        assert!(!notes.is_empty() && notes.len() < 4, "a bounded answer, newest notes first: {}", notes.len());
        assert!(notes.last().and_then(|n| n.as_str()).is_some_and(|n| n.starts_with('3')), "the newest note is kept");
    }
    assert_cluster_unharmed(&herd, &pids, Duration::from_secs(7));
}

#[test]
fn anonymous_state_changes_need_the_admin_switch() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1"]);
    let reset = herd.client().request("POST", "/stats/reset", &[], b"").expect("POST /stats/reset");
    assert_eq!(reset.status, 403, "{}", reset.body);
    assert!(reset.json()["error"].as_str().is_some_and(|e| e.contains("--admin-routes")), "{}", reset.body);
    let forget = herd.client().request("DELETE", "/heavy/cached?n=5", &[], b"").expect("DELETE /heavy/cached");
    assert_eq!(forget.status, 403, "{}", forget.body);
    assert_eq!(herd.client().get("/heavy/cached?n=5").expect("GET").status, 200, "reading stays anonymous");
    drop(herd);

    let herd = Herd::start(&redis, &["--workers", "1", "--admin-routes"]);
    assert_eq!(herd.client().request("POST", "/stats/reset", &[], b"").expect("reset").status, 202);
    assert_eq!(herd.client().request("DELETE", "/heavy/cached?n=5", &[], b"").expect("forget").status, 200);
}

#[test]
fn ctl_gives_up_on_a_socket_that_never_answers() {
    let dir = TempDir::new("ctl-silent");
    let path = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind a fake control socket");
    // Accepts, reads nothing, answers nothing, keeps every connection open.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().map_while(Result::ok) {
            held.push(conn);
        }
    });
    let started = Instant::now();
    let mut ctl = std::process::Command::new(herd_bin())
        .args(["ctl", "--socket"])
        .arg(&path)
        .args(["--timeout", "2s", "status"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run herd ctl");
    let status = wait_for("herd ctl to give up", Duration::from_secs(20), || ctl.try_wait().ok().flatten());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut ctl.stderr.take().expect("stderr"), &mut err).expect("read stderr");
    assert!(!status.success(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert!(err.contains("within 2s"), "says it timed out: {err}");
}

#[test]
fn control_socket_places_others_could_control_are_refused() {
    let redis = RedisServer::start();
    let url = redis.url();
    let serve = |socket: &std::path::Path, env: &[(&str, Option<&str>)], needle: &str| {
        let args = ["serve", "--bind", "127.0.0.1:0", "--workers", "1", "--redis-url", &url, "--control-socket"];
        let socket = socket.to_string_lossy().into_owned();
        let args: Vec<&str> = args.iter().copied().chain([socket.as_str()]).collect();
        assert_herd_fails(&args, env, 1, &[needle])
    };
    let open = TempDir::new("ctl-open");
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod 0777");
    serve(&open.path().join("herd.sock"), &[], "others may write to");

    let dir = TempDir::new("ctl-planted");
    std::fs::write(dir.path().join("file.sock"), b"").expect("a regular file");
    serve(&dir.path().join("file.sock"), &[], "is not a socket");
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("link.sock")).expect("symlink");
    serve(&dir.path().join("link.sock"), &[], "symbolic link");
    let (code, _, err) = {
        let out = std::process::Command::new(herd_bin())
            .args(["ctl", "--socket"])
            .arg(dir.path().join("link.sock"))
            .arg("stop")
            .output()
            .expect("ctl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(code != Some(0) && err.contains("symbolic link"), "ctl refuses a planted link: {err}");

    // The default place: a private directory herd creates, and refuses once it is opened up.
    let runtime = TempDir::new("ctl-runtime");
    let xdg = runtime.path().to_string_lossy().into_owned();
    let herd = Herd::start_with_env(&redis, &["--workers", "1"], &[("XDG_RUNTIME_DIR", &xdg)]);
    let socket = herd.control_socket();
    assert_eq!(socket.parent(), Some(runtime.path().join("herd").as_path()), "{}", socket.display());
    let mode = std::fs::metadata(runtime.path().join("herd")).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert_eq!(herd.ctl(&["status", "--json"]).0, 0);
    drop(herd);
    std::fs::set_permissions(runtime.path().join("herd"), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let args = ["serve", "--bind", "127.0.0.1:0", "--workers", "1", "--redis-url", &url];
    assert_herd_fails(&args, &[("XDG_RUNTIME_DIR", Some(&xdg))], 1, &["must be private"]);
}

#[test]
fn workers_command_lines_hold_no_password() {
    let redis = RedisServer::start_with(None, Some("s3cretpw"));
    let url = redis.url();
    let check = |herd: &Herd, primary_may_show: bool| {
        let workers = herd.worker_pids();
        assert!(!workers.is_empty());
        for pid in workers {
            let line = cmdline(pid);
            assert!(line.contains("[worker"), "{line}");
            assert!(!line.contains("s3cretpw") && !line.contains("wonderland"), "worker {pid}: {line}");
        }
        if !primary_may_show {
            let line = cmdline(herd.pid());
            assert!(!line.contains("s3cretpw") && !line.contains("wonderland"), "primary: {line}");
        }
        // The workers did get the secrets: they reach Redis, and alice can log in.
        assert_eq!(herd.client().get("/readyz").expect("readyz").status, 200);
        herd.client().login();
    };
    let base = ["serve", "--bind", "127.0.0.1:0", "--workers", "2", "--secure-cookies", "false"];

    // On the primary's command line (public, and herd says so): never on the workers'.
    let herd = Herd::start(&redis, &["--workers", "2"]);
    check(&herd, true);
    // The line is the contract: herd warns that the secret is visible.
    assert!(herd.log().iter().any(|l| l.contains("WARN") && l.contains("command line")), "a warning");
    drop(herd);

    // Through the environment.
    let herd = Herd::spawn(&base, &[("REDIS_URL", &url), ("HERD_DEMO_USER", "alice:wonderland")]);
    herd.wait_ready(Duration::from_secs(30));
    check(&herd, false);
    drop(herd);

    // Through files.
    let dir = TempDir::new("secrets");
    std::fs::write(dir.path().join("url"), format!("{url}\n")).expect("url file");
    std::fs::write(dir.path().join("users"), "# demo\nalice:wonderland\n").expect("users file");
    let (url_file, users_file) = (dir.path().join("url"), dir.path().join("users"));
    let files = [
        "--redis-url-file",
        url_file.to_str().expect("utf-8"),
        "--demo-user-file",
        users_file.to_str().expect("utf-8"),
    ];
    let args: Vec<&str> = base.iter().chain(files.iter()).copied().collect();
    let herd = Herd::spawn(&args, &[]);
    herd.wait_ready(Duration::from_secs(30));
    check(&herd, false);
    drop(herd);
}

#[test]
fn an_invalid_redis_url_is_reported_without_its_password() {
    for url in ["redis://default:s3cretpw@127.0.0.1:notaport", "redis//default:s3cretpw@127.0.0.1:6379"] {
        let args = ["serve", "--bind", "127.0.0.1:0", "--workers", "1", "--redis-url", url];
        let err = assert_herd_fails(&args, &[("REDIS_URL", None)], 1, &["Redis"]);
        assert!(!err.contains("s3cretpw"), "{err}");
        let err = assert_herd_fails(&args[..5], &[("REDIS_URL", Some(url))], 1, &["Redis"]);
        assert!(!err.contains("s3cretpw"), "{err}");
    }
}

#[test]
fn a_user_name_cannot_forge_log_lines() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1"]);
    let skip = herd.log_len();
    // Refused as a malformed name before anything logs it; should a line ever carry it, the
    // log writer escapes it in place (`logging::one_line`, unit-tested there).
    let forged = "x\nERROR worker 0 pid 1 killed by SIGKILL\x1b[31m";
    let res = herd
        .client()
        .post_json("/login", &json!({ "username": forged, "password": "nope" }).to_string())
        .expect("login");
    assert_eq!(res.status, 401, "{}", res.body);
    // A later line of the same worker: everything the forged attempt logged has arrived by then.
    let res = herd.client().post_json("/login", r#"{"username":"marker","password":"nope"}"#).expect("login");
    assert_eq!(res.status, 401, "{}", res.body);
    // The log is the subject here: what a client can write into it.
    herd.wait_log_from(skip, "the marker's failed login", Duration::from_secs(10), |l| l.contains("user=marker"));
    for line in &herd.log()[skip..] {
        assert!(!line.contains('\x1b') && !line.contains("killed by SIGKILL"), "forged: {line:?}");
    }
}

#[test]
fn forged_cookies_and_heavy_requests_do_not_multiply_log_lines() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let skip = herd.log_len();
    let cookie = [("Cookie", "herd_session=forged!!not-an-id")];
    for i in 0..200 {
        let res = herd.client().request("GET", "/", &cookie, b"").expect("GET / with a forged cookie");
        assert_eq!(res.status, 200, "{}", res.body);
        if i % 2 == 0 {
            assert_eq!(herd.client().get(&format!("/heavy?n={}", 1000 + i)).expect("GET /heavy").status, 200);
        }
    }
    // A marker each worker logs after the requests: their earlier lines have arrived by then.
    let (code, _, err) = herd.ctl(&["broadcast", r#"{"type":"reset-stats"}"#]);
    assert_eq!(code, 0, "{err}");
    // The log is the subject here: how many lines anonymous clients can make it write.
    wait_for("both workers' marker", Duration::from_secs(10), || {
        (herd.log()[skip..].iter().filter(|l| l.contains("stats reset")).count() >= 2).then_some(())
    });
    let lines: Vec<String> = herd.log()[skip..].iter().filter(|l| !l.contains("stats reset")).cloned().collect();
    assert!(lines.len() <= 5, "300 anonymous requests wrote {} lines: {lines:#?}", lines.len());
}

#[test]
fn a_login_flood_writes_a_bounded_number_of_lines() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1"]);
    let ip: std::net::IpAddr = "127.0.0.78".parse().expect("ip");
    for i in 0..25 {
        let res = herd
            .client()
            .from_ip(ip)
            .post_json("/login", &json!({ "username": format!("u{i}"), "password": "nope" }).to_string());
        assert!(matches!(res.expect("login").status, 401 | 429));
    }
    // Refused attempts are cheap (no hash): 200 of them as fast as 8 clients can send them.
    let skip = herd.log_len();
    let started = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let client = herd.client().from_ip(ip);
            std::thread::spawn(move || {
                for _ in 0..25 {
                    let res = client.post_json("/login", r#"{"username":"alice","password":"nope"}"#).expect("login");
                    assert_eq!(res.status, 429, "{}", res.body);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("client thread");
    }
    let seconds = started.elapsed().as_secs() + 2;
    // One more attempt after the flood's second says how many lines were left out.
    // The log is the subject here: its rate limit and the count of lines it left out.
    wait_for("the left-out count", Duration::from_secs(10), || {
        let _ = herd.client().from_ip(ip).post_json("/login", r#"{"username":"alice","password":"nope"}"#);
        herd.log()[skip..].iter().any(|l| l.contains("left out")).then_some(())
    });
    let refused = herd.log()[skip..].iter().filter(|l| l.contains("login refused")).count();
    assert!(
        refused as u64 <= 20 * seconds + 10 && refused < 150,
        "{refused} lines for 200 refused logins in {seconds} s"
    );
}
