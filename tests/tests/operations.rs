//! Operating a running cluster: rolling reloads and scaling under load lose no request, a
//! reload whose new workers cannot start changes nothing, and the control socket survives bad
//! input.

use std::{collections::HashSet, time::Duration};

use herd_e2e::{herd::workers, Herd, Load, LoadReport, RedisServer};
use nix::sys::signal::Signal;

const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

fn assert_no_loss(report: &LoadReport) {
    assert!(report.ok > 100, "the load barely ran: {report:?}");
    assert_eq!(report.failed, 0, "requests failed: {:?}", &report.errors[..report.errors.len().min(5)]);
    assert_eq!(report.non_2xx, 0, "non-2xx answers: {:?}", &report.errors[..report.errors.len().min(5)]);
}

fn wait_until_flowing(load: &Load) {
    herd_e2e::wait_for("the load to flow", Duration::from_secs(10), || (load.ok_so_far() > 50).then_some(()));
}

/// Keeps the load running on the current workers for a while: pacing, not synchronisation.
fn carry_load(period: Duration) {
    std::thread::sleep(period);
}

fn reloads_under_load_lose_nothing(mode: &str) {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2", "--balance", mode]);
    let before: HashSet<u32> = herd.worker_pids().into_iter().collect();
    let load = Load::start(herd.addr, 16, "/healthz");
    wait_until_flowing(&load);

    for round in 0..3 {
        if round == 1 {
            let (code, out, err) = herd.ctl(&["reload"]);
            assert_eq!(code, 0, "herd ctl reload failed: {out}{err}");
        } else {
            let old = herd.worker_pids();
            herd.signal(Signal::SIGHUP);
            // Complete: both slots serve from new workers (the old may still be retiring).
            herd.wait_status("the reload to complete", RELOAD_TIMEOUT, |status| {
                let ready: Vec<u32> =
                    workers(status).iter().filter(|w| w.state == "ready").filter_map(|w| w.pid).collect();
                let done = status["last_reload"] == "reload succeeded";
                (done && ready.len() == 2 && ready.iter().all(|pid| !old.contains(pid))).then_some(())
            });
        }
        // Three rounds of load on the new workers: about 12 s of load in all, as in the issue.
        carry_load(Duration::from_secs(4));
    }
    let report = load.stop();
    assert_no_loss(&report);

    ready_workers(&herd, 2); // the last retired workers finish draining
    let status = herd.status();
    let now: HashSet<u64> =
        status["workers"].as_array().expect("workers").iter().map(|w| w["pid"].as_u64().expect("pid")).collect();
    assert_eq!(now.len(), 2);
    assert!(
        now.iter().all(|pid| !before.contains(&(*pid as u32))),
        "a worker survived three reloads: {before:?} → {now:?}"
    );
    assert_eq!(status["last_reload"], "reload succeeded");
    eprintln!("{mode}: {} requests, 0 failed, across 3 reloads", report.ok);
}

#[test]
fn reloads_under_load_lose_no_request_round_robin() {
    reloads_under_load_lose_nothing("round-robin");
}

#[test]
fn reloads_under_load_lose_no_request_shared() {
    reloads_under_load_lose_nothing("shared");
}

#[test]
fn a_reload_whose_workers_cannot_start_changes_nothing() {
    let mut redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2", "--ready-timeout", "2s"]);
    let before: HashSet<u64> = worker_pids(&herd.status());

    // New workers wait for Redis before they report ready; without Redis they never do.
    redis.kill();
    let (code, _, err) = herd.ctl(&["reload"]);
    assert_eq!(code, 1, "the reload must fail");
    assert!(err.contains("not ready within 2s"), "the reason is given: {err}");

    let status = herd.status();
    assert_eq!(worker_pids(&status), before, "the old workers keep serving");
    assert!(status["last_reload"].as_str().is_some_and(|r| r.starts_with("reload failed")), "{status}");
    for _ in 0..4 {
        let res = herd.client().get("/healthz").expect("the old workers answer");
        assert_eq!(res.status, 200);
        assert!(before.contains(&res.json()["pid"].as_u64().expect("pid")));
    }
}

fn worker_pids(status: &serde_json::Value) -> HashSet<u64> {
    status["workers"].as_array().expect("workers").iter().map(|w| w["pid"].as_u64().expect("pid")).collect()
}

fn ready_workers(herd: &Herd, expected: usize) {
    herd.wait_workers_ready(expected, Duration::from_secs(30));
}

#[test]
fn scaling_under_load_loses_no_request() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let load = Load::start(herd.addr, 16, "/healthz");
    wait_until_flowing(&load);

    let (code, out, _) = herd.ctl(&["scale", "4"]);
    assert_eq!((code, out.trim()), (0, "scaled to 4 workers"));
    ready_workers(&herd, 4);
    // Kept-alive connections stay where they are; new connections reach the new workers (the
    // kernel picks one at random: all four within 200, but for a chance below 10^-24).
    let mut fresh = HashSet::new();
    for _ in 0..200 {
        fresh.insert(herd.client().get("/healthz").expect("GET").json()["pid"].as_u64().expect("pid"));
        if fresh.len() == 4 {
            break;
        }
    }
    assert_eq!(fresh.len(), 4, "new connections reach all four workers: {fresh:?}");
    carry_load(Duration::from_secs(2));

    let (code, out, _) = herd.ctl(&["scale", "-3"]);
    assert_eq!((code, out.trim()), (0, "scaled to 1 workers"));
    ready_workers(&herd, 1);
    carry_load(Duration::from_secs(2));

    let report = load.stop();
    assert_no_loss(&report);

    let (code, _, err) = herd.ctl(&["scale", "0"]);
    assert_eq!(code, 1);
    assert!(err.contains("between 1 and"), "{err}");
}

#[test]
fn ttin_and_ttou_add_and_remove_a_worker() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    herd.signal(Signal::SIGTTIN);
    ready_workers(&herd, 3);
    // Signals of one kind do not queue: send the second only after the first was handled.
    herd.signal(Signal::SIGTTOU);
    herd.wait_status("the first TTOU", Duration::from_secs(10), |status| {
        (workers(status).iter().filter(|w| w.state != "retiring").count() == 2).then_some(())
    });
    herd.signal(Signal::SIGTTOU);
    ready_workers(&herd, 1);
}

#[test]
fn restart_replaces_one_slot_and_status_is_a_table() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let before = herd.status();
    let (code, out, _) = herd.ctl(&["restart", "1"]);
    assert_eq!((code, out.trim()), (0, "slot 1 restarted"));
    let after = herd.status();
    let pid = |s: &serde_json::Value, slot: u64| {
        s["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .find(|w| w["slot"] == slot && w["state"] == "ready")
            .map(|w| w["pid"].clone())
    };
    assert_eq!(pid(&before, 0), pid(&after, 0), "slot 0 untouched");
    assert_ne!(pid(&before, 1), pid(&after, 1), "slot 1 replaced");

    let (code, out, _) = herd.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|h| h.split_whitespace().eq(["slot", "pid", "state", "uptime", "restarts", "rss", "conns"])),
        "{out}"
    );
    assert_eq!(out.lines().filter(|l| l.contains(" ready ")).count(), 2, "{out}");

    let (code, _, err) = herd.ctl(&["restart", "7"]);
    assert_eq!(code, 1);
    assert!(err.contains("no slot 7"), "{err}");
}

#[test]
fn malformed_control_requests_get_errors_and_the_primary_keeps_running() {
    use std::io::{BufRead, BufReader, Write};
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1"]);
    let socket = herd.control_socket();
    let mode = std::fs::metadata(&socket).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "the control socket is private to its owner");

    let huge = vec![b'x'; 200 * 1024];
    for input in [&b"garbage\n"[..], br#"{"cmd":"explode"}"#, b"\n", &huge] {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
        let _ = stream.write_all(input);
        let _ = stream.write_all(b"\n");
        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply).expect("a reply");
        let reply: serde_json::Value = serde_json::from_str(&reply).expect("a JSON reply");
        assert_eq!(reply["ok"], false);
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    assert_eq!(herd.status()["workers"].as_array().map(Vec::len), Some(1), "still running");

    let (code, _, _) = herd.ctl(&["stop"]);
    assert_eq!(code, 0);
}

#[test]
fn systemd_hears_ready_once_every_worker_is_and_stopping_on_sigterm() {
    let dir = herd_e2e::TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&path).expect("bind a notify socket");
    systemd.set_read_timeout(Some(herd_e2e::herd::START_TIMEOUT)).expect("timeout");
    let redis = RedisServer::start();
    let notify = path.to_string_lossy().into_owned();
    // Started, not waited for: the READY=1 this test hears is the wait.
    let url = redis.url();
    let mut herd = Herd::spawn(&Herd::serve_args(&url, &["--workers", "2"]), &[("NOTIFY_SOCKET", &notify)]);
    let mut buf = [0u8; 256];
    let n = systemd.recv(&mut buf).expect("READY notification");
    assert_eq!(std::str::from_utf8(&buf[..n]), Ok("READY=1\nSTATUS=2 workers ready"));
    herd.signal(Signal::SIGTERM);
    let n = systemd.recv(&mut buf).expect("STOPPING notification");
    assert_eq!(std::str::from_utf8(&buf[..n]), Ok("STOPPING=1"));
    assert_eq!(herd.wait_exit(Duration::from_secs(30)).code(), Some(0));
}

#[test]
fn systemd_unit_runs_serve_with_the_given_flags() {
    let out = std::process::Command::new(herd_e2e::herd::herd_bin())
        .args(["systemd-unit", "--workers", "4", "--bind", "127.0.0.1:8080", "--shutdown-timeout", "20s"])
        .env("REDIS_URL", "redis://10.0.0.5:6379")
        .output()
        .expect("herd systemd-unit");
    assert!(out.status.success());
    let unit = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = unit.lines().collect();
    let exec = lines.iter().find(|l| l.starts_with("ExecStart=")).expect("ExecStart");
    assert!(exec.ends_with(" serve --workers 4 --bind 127.0.0.1:8080 --shutdown-timeout 20s"), "{exec}");
    let program = exec.trim_start_matches("ExecStart=").split(' ').next().expect("program");
    assert!(std::path::Path::new(program).is_absolute(), "{program}");
    for expected in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillMode=mixed",
        "TimeoutStopSec=25",
        "Environment=REDIS_URL=redis://10.0.0.5:6379",
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{unit}");
    }
    // Flags are validated like serve's.
    herd_e2e::herd::assert_herd_fails(&["systemd-unit", "--workers", "zero"], &[], 2, &["--workers"]);
}

/// A unit file, `systemctl show` and the command line it starts are world-readable: secrets
/// given to `systemd-unit` go to an EnvironmentFile the operator keeps private.
#[test]
fn systemd_unit_keeps_secrets_out_of_the_unit() {
    let out = std::process::Command::new(herd_e2e::herd::herd_bin())
        .args(["systemd-unit", "--redis-url", "redis://default:s3cretpw@10.0.0.5:6379", "--workers", "2"])
        .args(["--demo-user", "alice:wonderland"])
        .env_remove("REDIS_URL")
        .env_remove("HERD_DEMO_USER")
        .output()
        .expect("herd systemd-unit");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit = String::from_utf8_lossy(&out.stdout);
    assert!(!unit.contains("s3cretpw") && !unit.contains("wonderland"), "a secret in the unit:\n{unit}");
    let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).expect("ExecStart");
    assert!(exec.ends_with(" serve --workers 2"), "{exec}");
    assert!(unit.lines().any(|l| l == "EnvironmentFile=/etc/herd/secrets.env"), "{unit}");
    let told = String::from_utf8_lossy(&out.stderr);
    assert!(told.contains("REDIS_URL") && told.contains("HERD_DEMO_USER") && !told.contains("s3cretpw"), "{told}");

    // A URL without a password is no secret: it stays in the unit.
    let out = std::process::Command::new(herd_e2e::herd::herd_bin())
        .args(["systemd-unit", "--redis-url", "redis://10.0.0.5:6379"])
        .env_remove("REDIS_URL")
        .env_remove("HERD_DEMO_USER")
        .output()
        .expect("herd systemd-unit");
    let unit = String::from_utf8_lossy(&out.stdout);
    assert!(unit.lines().any(|l| l == "Environment=REDIS_URL=redis://10.0.0.5:6379"), "{unit}");
    assert!(!unit.contains("EnvironmentFile"), "{unit}");
}

#[test]
fn a_reload_reads_the_changed_config_file_and_a_bad_one_changes_nothing() {
    let redis = RedisServer::start();
    let dir = herd_e2e::TempDir::new("config");
    let config = dir.path().join("herd.toml");
    let write = |url: &str| {
        std::fs::write(&config, format!("workers = 2\nredis_url = \"{url}\"\nready_timeout = \"2s\"\n"))
            .expect("write config")
    };
    write(&redis.url());
    let path = config.to_string_lossy().into_owned();
    let herd = Herd::spawn(&["serve", "--bind", "127.0.0.1:0", "--config", &path], &[]);
    herd.wait_workers_ready(2, herd_e2e::herd::START_TIMEOUT);
    let before = worker_pids(&herd.status());

    // Point the file at a Redis that does not exist: new workers can never be ready.
    write(&format!("redis://127.0.0.1:{}", herd_e2e::free_port()));
    let (code, _, err) = herd.ctl(&["reload"]);
    assert_eq!(code, 1, "the reload must fail");
    assert!(err.contains("reload failed") && err.contains("not ready within 2s"), "a clear reason: {err}");
    let status = herd.status();
    assert_eq!(worker_pids(&status), before, "the old workers keep serving");
    assert!(status["last_reload"].as_str().is_some_and(|r| r.contains("not ready within 2s")), "{status}");
    assert_eq!(herd.client().get("/healthz").expect("served").status, 200);

    // Fixed again, the next reload goes through.
    write(&redis.url());
    let (code, out, err) = herd.ctl(&["reload"]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn config_example_is_a_valid_config_file() {
    let out = std::process::Command::new(herd_e2e::herd::herd_bin()).args(["config", "example"]).output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("# workers = 4") && text.contains("# balance = \"round-robin\""), "{text}");
    let dir = herd_e2e::TempDir::new("example");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "wrokers = 3\n").expect("write");
    herd_e2e::herd::assert_herd_fails(
        &["serve", "--config", &path.to_string_lossy()],
        &[],
        2,
        &["unknown key `wrokers`"],
    );
}

#[test]
fn ctl_top_redraws_the_status_table() {
    use std::io::Read;
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let mut top = herd.ctl_command(&["top"]).stdout(std::process::Stdio::piped()).spawn().expect("herd ctl top");
    let mut stdout = top.stdout.take().expect("stdout");
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    // Two screens: the view refreshes.
    while seen.matches("\x1b[2J").count() < 2 {
        let n = stdout.read(&mut buf).expect("read top's output");
        assert!(n > 0, "top exited: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = top.kill();
    let _ = top.wait();
    assert!(seen.contains("slot") && seen.matches(" ready ").count() >= 4, "{seen}");
}
