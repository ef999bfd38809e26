//! The primary hand-over: `herd ctl upgrade` starts the binary on disk as a new primary on the
//! same listening socket; the old one stops only once the new one's workers are all ready.
//! Under new-connection and keep-alive load, back-to-back upgrades refuse nothing and fail
//! nothing; a new binary that exits at start, or never becomes ready, leaves the old primary
//! serving, unchanged.

use std::{path::Path, time::Duration};

use herd_e2e::{herd::herd_bin, process_alive, Herd, Load, RedisServer, TempDir};

/// Waits until the primary `pid` has exited (it drains its workers first).
fn wait_gone(pid: u32) {
    herd_e2e::wait_for("the old primary to exit", Duration::from_secs(30), || (!process_alive(pid)).then_some(()));
}

/// A herd started from a copy of the binary in `dir`, so that the test can replace what is on
/// disk, as a deploy does.
fn from_copy(dir: &TempDir, redis: &RedisServer, extra: &[&str]) -> (Herd, std::path::PathBuf) {
    let exe = dir.path().join("herd");
    std::fs::copy(herd_bin(), &exe).expect("copy the herd binary");
    let url = redis.url();
    let herd = Herd::spawn_program(&exe, &std::env::temp_dir(), &Herd::serve_args(&url, extra), &[]);
    herd.wait_ready(herd_e2e::herd::START_TIMEOUT);
    (herd, exe)
}

/// Replaces the binary at `exe` with a shell script (a broken deploy).
fn deploy_script(exe: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    // A new file renamed over the old one, as package managers do: the running binary keeps
    // its inode.
    let staged = exe.with_extension("new");
    std::fs::write(&staged, format!("#!/bin/sh\n{script}\n")).expect("write the script");
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&staged, exe).expect("deploy");
}

#[test]
fn ten_upgrades_under_churn_and_keep_alive_load_fail_nothing() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let first = herd.status();
    let churn = Load::churn(herd.addr, 3, "/healthz");
    let keep_alive = Load::start(herd.addr, 2, "/healthz");
    herd_e2e::wait_for("the load to flow", Duration::from_secs(10), || {
        (churn.ok_so_far() > 50 && keep_alive.ok_so_far() > 50).then_some(())
    });
    let mut primaries = vec![herd.pid()];
    // Per hand-over: from the request to the old primary's exit, and the requests served then.
    let mut figures = Vec::new();
    for round in 0..10 {
        let old = herd.pid();
        let served_before = churn.ok_so_far();
        let (started, ok_before) = (std::time::Instant::now(), churn.ok_so_far() + keep_alive.ok_so_far());
        let (code, out, err) = herd.upgrade();
        assert_eq!(code, 0, "round {round}: upgrade failed: {out}{err}");
        let new = herd.pid();
        assert_ne!(new, old, "round {round}: a new primary serves");
        wait_gone(old);
        figures.push((started.elapsed(), churn.ok_so_far() + keep_alive.ok_so_far() - ok_before));
        let status = herd.status();
        assert_eq!(
            status["pid"].as_u64(),
            Some(u64::from(new)),
            "round {round}: the control socket is the new primary's"
        );
        assert_eq!(herd_e2e::herd::workers(&status).len(), 2, "round {round}: {status}");
        herd_e2e::wait_for("the new primary to serve", Duration::from_secs(10), || {
            (churn.ok_so_far() > served_before + 20).then_some(())
        });
        primaries.push(new);
    }
    let (churned, kept) = (churn.stop(), keep_alive.stop());
    for (what, report) in [("new connections", &churned), ("keep-alive", &kept)] {
        assert_eq!((report.failed, report.non_2xx), (0, 0), "{what}: nothing refused or failed: {:?}", report.errors);
    }
    let last = herd.status();
    assert_eq!(last["version"], first["version"]);
    assert!(last["started_unix_s"].as_u64() >= first["started_unix_s"].as_u64(), "{last}");
    assert_eq!(primaries.len(), 11);
    figures.sort();
    let (fastest, median, slowest) = (figures[0], figures[figures.len() / 2], figures[figures.len() - 1]);
    // For docs/benchmarks.md (`cargo test -p herd-e2e --test upgrade -- --nocapture ten_upgrades`).
    eprintln!("hand-over (request → old primary exited), requests served meanwhile: fastest {fastest:?}, median {median:?}, slowest {slowest:?}");
}

#[test]
fn shared_mode_and_a_scaled_count_survive_the_hand_over() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2", "--balance", "shared"]);
    let (code, _, err) = herd.ctl(&["scale", "3"]);
    assert_eq!(code, 0, "{err}");
    herd.wait_workers_ready(3, Duration::from_secs(30));
    let churn = Load::churn(herd.addr, 3, "/healthz");
    herd_e2e::wait_for("the load to flow", Duration::from_secs(10), || (churn.ok_so_far() > 50).then_some(()));
    for _ in 0..2 {
        let old = herd.pid();
        let (code, out, err) = herd.upgrade();
        assert_eq!(code, 0, "{out}{err}");
        wait_gone(old);
    }
    let report = churn.stop();
    assert_eq!((report.failed, report.non_2xx), (0, 0), "{:?}", report.errors);
    assert_eq!(herd_e2e::herd::workers(&herd.status()).len(), 3, "the new primary runs the scaled count");
}

#[test]
fn a_broken_new_binary_leaves_the_old_primary_serving() {
    let redis = RedisServer::start();
    let dir = TempDir::new("herd-upgrade");
    let (herd, exe) = from_copy(&dir, &redis, &["--workers", "2", "--ready-timeout", "3s"]);
    let primary = herd.pid();
    let load = Load::churn(herd.addr, 3, "/healthz");
    herd_e2e::wait_for("the load to flow", Duration::from_secs(10), || (load.ok_so_far() > 50).then_some(()));

    // A build that exits at start.
    deploy_script(&exe, "echo 'broken build' >&2; exit 3");
    let (code, _, err) = herd.upgrade();
    assert_ne!(code, 0, "the upgrade must fail");
    assert!(err.contains("exited before it was ready"), "{err}");

    // One that never becomes ready: killed after --ready-timeout. A second upgrade meanwhile
    // is refused.
    let marker = dir.path().join("hung.pid");
    deploy_script(&exe, &format!("echo $$ > {}; exec sleep 600", marker.display()));
    let waiting = {
        let ctl = herd.ctl_command(&["upgrade"]);
        std::thread::spawn(move || {
            let mut ctl = ctl;
            ctl.output().expect("herd ctl upgrade")
        })
    };
    let hung: u32 = herd_e2e::wait_for("the hung binary to start", Duration::from_secs(10), || {
        std::fs::read_to_string(&marker).ok().and_then(|pid| pid.trim().parse().ok())
    });
    let (code, _, err) = herd.ctl(&["upgrade"]);
    assert_ne!(code, 0);
    assert!(err.contains("an upgrade is already in progress"), "{err}");
    let out = waiting.join().expect("the first upgrade's thread");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not ready within --ready-timeout 3s"), "{err}");
    herd_e2e::wait_for("the hung binary to be killed", Duration::from_secs(10), || {
        (!process_alive(hung)).then_some(())
    });

    let report = load.stop();
    assert_eq!((report.failed, report.non_2xx), (0, 0), "the old primary served throughout: {:?}", report.errors);
    assert_eq!(herd.status()["pid"].as_u64(), Some(u64::from(primary)), "still the old primary");
    assert_eq!(herd.client().get("/healthz").expect("GET /healthz").status, 200);
}

/// The sticky key moves to the new primary: every client address is sent to the same slot
/// after a hand-over as before (a new primary with a key of its own would move about 3 in 4
/// of them with 4 slots).
#[test]
fn sticky_clients_keep_their_slot_across_the_hand_over() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "4", "--sticky"]);
    let slot_of = |n: u8| {
        let res = herd.client().from_ip(std::net::IpAddr::from([127, 0, 0, n])).get("/whoami").expect("GET /whoami");
        assert_eq!(res.status, 200, "{}", res.body);
        res.json()["worker"].as_u64().expect("the slot that served")
    };
    let clients: Vec<u8> = (10..40).collect();
    let before: Vec<u64> = clients.iter().map(|&n| slot_of(n)).collect();
    assert!(before.iter().collect::<std::collections::BTreeSet<_>>().len() > 1, "spread over slots: {before:?}");
    for _ in 0..2 {
        let old = herd.pid();
        let (code, out, err) = herd.upgrade();
        assert_eq!(code, 0, "{out}{err}");
        wait_gone(old);
        let after: Vec<u64> = clients.iter().map(|&n| slot_of(n)).collect();
        assert_eq!(after, before, "every client keeps its slot");
    }
}
