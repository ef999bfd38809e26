//! Issue 13 item 2: running out of file descriptors must cost connections, never workers, the
//! control socket or the cluster's ability to recover. Every herd here runs under
//! `prlimit --nofile=256:256` (soft and hard: herd raises its soft limit to the hard one), and
//! the test holds more idle connections than that.

use std::{
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use herd_e2e::{herd::herd_bin, wait_for, Herd, RedisServer};

/// The open-files limit (soft and hard) of the herd processes under test.
const NOFILE: u32 = 256;
/// Idle connections held during the attack: well above [`NOFILE`].
const HELD: usize = 600;
/// How long the cluster may take to serve again after the clients left.
const RECOVERY: Duration = Duration::from_secs(20);

/// `prlimit --nofile=256:256 herd serve ...`: prlimit sets the limit and execs herd, so the
/// child's pid is herd's.
fn start_low_fd(redis: &RedisServer, extra: &[&str], wait_ready: bool) -> Herd {
    let nofile = format!("--nofile={NOFILE}:{NOFILE}");
    let bin = herd_bin();
    let url = redis.url();
    let mut args = vec![nofile.as_str(), bin.to_str().expect("utf-8 path"), "serve", "--bind", "127.0.0.1:0"];
    args.extend(["--redis-url", &url, "--secure-cookies", "false", "--demo-user", "alice:wonderland"]);
    args.extend(extra);
    let prlimit = std::path::Path::new("/usr/bin/prlimit");
    let herd = Herd::spawn_program(prlimit, &std::env::temp_dir(), &args, &[]);
    if wait_ready {
        herd.wait_log("all workers ready", herd_e2e::herd::START_TIMEOUT, |l| l.contains("workers ready"));
    }
    herd
}

/// Opens up to `n` connections and keeps them idle (the kernel completes the handshake whether
/// or not herd accepts, as long as its backlog has room).
fn hold(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()).collect()
}

/// How many of `conns` herd has closed (shed): a read returns end-of-file or a reset at once
/// instead of "nothing yet".
fn closed_by_herd(conns: &[TcpStream]) -> usize {
    conns
        .iter()
        .filter(|c| {
            let _ = c.set_nonblocking(true);
            let mut byte = [0u8; 1];
            match std::io::Read::read(&mut &**c, &mut byte) {
                Ok(n) => n == 0,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .count()
}

/// `herd ctl status --json` must answer within `timeout` (the attack must not wedge it).
fn status_within(herd: &Herd, timeout: Duration) -> serde_json::Value {
    let mut child =
        herd.ctl_command(&["status", "--json"]).stdout(std::process::Stdio::piped()).spawn().expect("run ctl");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("ctl wait") {
            let mut out = String::new();
            std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out).expect("read ctl");
            assert!(status.success(), "herd ctl status failed under attack: {out}");
            return serde_json::from_str::<serde_json::Value>(&out).expect("status JSON")["status"].clone();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("herd ctl status did not answer within {timeout:?} under attack");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn states(status: &serde_json::Value) -> Vec<String> {
    status["workers"]
        .as_array()
        .map_or_else(Vec::new, |w| w.iter().map(|w| w["state"].as_str().unwrap_or("").to_owned()).collect())
}

/// After the clients left: within [`RECOVERY`] every slot is ready and requests are served.
/// Returns how many of 20 fresh requests were answered 200.
fn recovers(herd: &Herd, workers: usize) -> usize {
    wait_for("every slot ready again", RECOVERY, || {
        let states = states(&herd.status());
        (states.len() == workers && states.iter().all(|s| s == "ready")).then_some(())
    });
    wait_for("a request served", RECOVERY, || herd.client().get("/healthz").ok().filter(|r| r.status == 200));
    (0..20).filter(|_| herd.client().get("/").is_ok_and(|r| r.status == 200)).count()
}

fn no_fatal_ipc_errors(herd: &Herd) {
    let fatal: Vec<String> =
        herd.log().into_iter().filter(|l| l.contains("IPC with the primary failed") || l.contains("errored")).collect();
    assert!(fatal.is_empty(), "fd exhaustion killed workers or errored slots:\n{}", fatal.join("\n"));
}

fn attack(mode: &str) {
    let redis = RedisServer::start();
    let herd = start_low_fd(&redis, &["--workers", "2", "--balance", mode], true);
    let pids = herd.worker_pids();
    let conns = hold(herd.addr, HELD);
    // Herd sheds what it cannot hold, and says so.
    herd.wait_log("a shedding line", Duration::from_secs(30), |l| l.contains("shed"));
    let status = status_within(&herd, Duration::from_secs(10));
    assert!(!states(&status).iter().any(|s| s == "errored"), "a slot errored under attack: {status}");
    let shed = closed_by_herd(&conns);
    let held = conns.len() - shed;
    drop(conns);
    let answered = recovers(&herd, 2);
    let after = herd.worker_pids();
    eprintln!(
        "{mode}: {} connections opened, {held} held, {shed} shed; after: {answered}/20 requests answered, \
         workers {pids:?} -> {after:?}",
        held + shed
    );
    no_fatal_ipc_errors(&herd);
    assert_eq!(pids, after, "no worker may die of fd exhaustion");
    assert_eq!(answered, 20);
}

#[test]
fn holding_more_connections_than_the_fd_limit_sheds_them_and_the_cluster_recovers_round_robin() {
    attack("round-robin");
}

#[test]
fn holding_more_connections_than_the_fd_limit_sheds_them_and_the_cluster_recovers_shared() {
    attack("shared");
}

/// No worker is ready (Redis is down and the workers were replaced), so the primary holds every
/// connection itself: it must stop at its reserve, keep its control socket and its ability to
/// start workers, and drop the queued connections whose clients left.
#[test]
fn the_primary_keeps_a_reserve_of_fds_while_no_worker_can_take_connections() {
    let mut redis = RedisServer::start();
    let herd = start_low_fd(&redis, &["--workers", "2"], true);
    redis.kill();
    for pid in herd.worker_pids() {
        herd_e2e::signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
    // The replacements wait for Redis and never report ready: connections queue in the primary.
    wait_for("replacements started", Duration::from_secs(30), || (herd.worker_pids().len() >= 4).then_some(()));
    let conns = hold(herd.addr, HELD);
    herd.wait_log("the primary shedding", Duration::from_secs(30), |l| l.contains("shed"));
    status_within(&herd, Duration::from_secs(10));
    let shed = closed_by_herd(&conns);
    let held = conns.len() - shed;
    let mark = herd.log_len();
    drop(conns);
    // The primary notices that the queued clients left, while still no worker is ready.
    let dropped = herd.wait_log_from(mark, "queued connections dropped", Duration::from_secs(15), |l| {
        l.contains("queued connection(s) whose client had gone")
    });
    redis.restart();
    let answered = recovers(&herd, 2);
    eprintln!(
        "queueing: {} connections opened, {held} held, {shed} shed; {dropped:?}; after: {answered}/20 answered",
        held + shed
    );
    no_fatal_ipc_errors(&herd);
    assert_eq!(answered, 20);
}

/// The generated unit raises the limit: under systemd the default soft limit is 1024.
#[test]
fn the_systemd_unit_sets_limit_nofile() {
    let unit =
        Command::new(herd_bin()).args(["systemd-unit", "--bind", "127.0.0.1:3000"]).output().expect("systemd-unit");
    let text = String::from_utf8_lossy(&unit.stdout);
    assert!(text.lines().any(|l| l.starts_with("LimitNOFILE=")), "the unit sets LimitNOFILE:\n{text}");
}
