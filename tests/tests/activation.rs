//! Socket activation, with the test playing systemd: it binds the listening socket, keeps it,
//! and starts herd with it as fd 3 (`LISTEN_FDS=1`, `LISTEN_PID`). herd serves that socket in
//! every balance mode, and because the socket outlives herd, a full stop and start under load
//! refuses nothing.

use std::{net::TcpListener, time::Duration};

use herd_e2e::{
    herd::{assert_herd_fails, Activation, START_TIMEOUT},
    Herd, Load, RedisServer,
};
use nix::sys::signal::Signal;

/// The socket systemd would hold, on a free loopback port.
fn held_socket() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind a loopback socket")
}

/// herd on `socket`, every worker ready. `--bind 127.0.0.1:0` stays in the arguments: an
/// activated herd does not use it.
fn activated(socket: &TcpListener, activation: Activation, redis: &RedisServer, extra: &[&str]) -> Herd {
    let url = redis.url();
    let herd = Herd::spawn_activated(socket, activation, &Herd::serve_args(&url, extra));
    herd.wait_ready(START_TIMEOUT);
    herd
}

fn stop(mut herd: Herd) {
    herd.signal(Signal::SIGTERM);
    assert!(herd.wait_exit(Duration::from_secs(30)).success(), "a clean stop");
}

#[test]
fn an_activated_herd_serves_the_inherited_socket_in_every_balance_mode() {
    let redis = RedisServer::start();
    for (balance, activation) in [
        ("round-robin", Activation::WithPid),
        ("ip-hash", Activation::WithPid),
        ("shared", Activation::WithPid),
        // `systemfd --no-pid`, the development loop.
        ("round-robin", Activation::WithoutPid),
    ] {
        let socket = held_socket();
        let addr = socket.local_addr().expect("its address");
        let herd = activated(&socket, activation, &redis, &["--workers", "2", "--balance", balance]);
        assert_eq!(herd.addr, addr, "{balance}: the status shows the inherited socket");
        herd.wait_log("the startup line", Duration::from_secs(5), |line| {
            line.contains(&format!("listening on {addr}, a socket inherited by socket activation"))
        });
        // Fresh connections until both workers served (the kernel's choice is random: 8 in a
        // row meet one worker 1 time in 128), at most 100.
        let mut pids = std::collections::BTreeSet::new();
        for _ in 0..100 {
            let res = herd.client().get("/healthz").expect("GET /healthz");
            assert_eq!(res.status, 200, "{balance}: {}", res.body);
            pids.insert(res.json()["pid"].as_u64().expect("a pid"));
            if pids.len() == 2 {
                break;
            }
        }
        assert!(pids.len() == 2 || balance != "round-robin", "{balance}: both workers serve: {pids:?}");
        stop(herd);
    }
}

/// A stopping herd leaves every connection it has not accepted in the socket's queue, for the
/// next one: in `shared` mode its workers stop accepting, in the primary-accept modes the
/// primary does, and its workers serve every connection it handed them before the stop.
#[test]
fn a_full_stop_and_start_under_new_connection_load_refuses_nothing() {
    let redis = RedisServer::start();
    for balance in ["shared", "round-robin"] {
        let socket = held_socket();
        let args = ["--workers", "2", "--balance", balance];
        let first = activated(&socket, Activation::WithPid, &redis, &args);
        let first_pids = first.worker_pids();
        let load = Load::churn(first.addr, 4, "/healthz");
        herd_e2e::wait_for("the load to flow", Duration::from_secs(10), || (load.ok_so_far() > 100).then_some(()));

        // Stopped for good: until the next herd is up, connections wait in the socket's queue.
        stop(first);
        let served_by_first = load.ok_so_far();
        let second = activated(&socket, Activation::WithPid, &redis, &args);
        herd_e2e::wait_for("the new herd to serve", Duration::from_secs(30), || {
            (load.ok_so_far() > served_by_first + 100).then_some(())
        });
        let report = load.stop();
        assert_eq!(
            (report.failed, report.non_2xx),
            (0, 0),
            "{balance}: nothing refused or failed: {:?}",
            report.errors
        );
        // Each herd served. Not necessarily each worker: in `shared` mode the kernel picks which
        // waiting worker an accept wakes, and one can take every connection of a short window.
        for (herd, pids) in [("the first", first_pids), ("the second", second.worker_pids())] {
            assert!(
                pids.iter().any(|pid| report.pids.contains(&u64::from(*pid))),
                "{balance}: {herd} herd's workers {pids:?} served none of {:?}",
                report.pids
            );
        }
        stop(second);
    }
}

#[test]
fn a_socket_passed_to_another_process_is_left_alone() {
    let redis = RedisServer::start();
    let socket = held_socket();
    let herd = activated(&socket, Activation::ForAnotherProcess, &redis, &["--workers", "1"]);
    assert_ne!(herd.addr, socket.local_addr().expect("its address"), "herd bound --bind instead");
    herd.wait_log("the warning", Duration::from_secs(5), |line| line.contains("LISTEN_FDS is set for another process"));
    assert_eq!(herd.client().get("/healthz").expect("GET /healthz").status, 200);
    stop(herd);
}

#[test]
fn what_herd_cannot_take_is_a_clear_error() {
    // A Redis of its own: without one, herd would start a private redis-server here.
    let redis = RedisServer::start();
    let url = redis.url();
    let serve = ["serve", "--bind", "127.0.0.1:0", "--workers", "1", "--redis-url", &url];
    assert_herd_fails(&serve, &[("LISTEN_FDS", Some("2"))], 1, &["LISTEN_FDS=2", "one listening socket"]);
    assert_herd_fails(&serve, &[("LISTEN_FDS", Some("many"))], 1, &["is not a number"]);
    // Nothing at fd 3 (Rust's std opens every file close-on-exec, so the test passes none).
    assert_herd_fails(&serve, &[("LISTEN_FDS", Some("1"))], 1, &["cannot adopt inherited fd 3"]);
}

#[test]
fn systemd_unit_socket_prints_the_socket_and_service_pair() {
    let out = std::process::Command::new(herd_e2e::herd::herd_bin())
        .args(["systemd-unit", "--socket", "--workers", "2", "--bind", "127.0.0.1:8080"])
        .output()
        .expect("herd systemd-unit --socket");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let (socket, service) = text
        .strip_prefix("# file: herd.socket\n")
        .and_then(|rest| rest.split_once("# file: herd.service\n"))
        .unwrap_or_else(|| panic!("two units, each after its `# file:` line:\n{text}"));
    for expected in ["[Socket]", "ListenStream=127.0.0.1:8080", "Backlog=1024", "WantedBy=sockets.target"] {
        assert!(socket.lines().any(|l| l == expected), "missing {expected:?} in\n{socket}");
    }
    for expected in ["Requires=herd.socket", "Type=notify"] {
        assert!(service.lines().any(|l| l == expected), "missing {expected:?} in\n{service}");
    }
    let exec = service.lines().find(|l| l.starts_with("ExecStart=")).expect("ExecStart");
    assert!(exec.ends_with(" serve --workers 2 --bind 127.0.0.1:8080"), "--socket is not a serve flag: {exec}");
}
