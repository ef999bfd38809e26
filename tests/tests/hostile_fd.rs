//! Issue 13 item 2: running out of file descriptors must cost connections, never workers, the
//! control socket or the cluster's ability to recover. Every herd here runs under
//! `prlimit --nofile=256:256` (soft and hard: herd raises its soft limit to the hard one), and
//! the test holds more idle connections than that.

use std::{
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use herd_e2e::{
    herd::{herd_bin, workers},
    Herd, RedisServer,
};

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
        herd.wait_ready(herd_e2e::herd::START_TIMEOUT);
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

/// `herd ctl status --json`, if it answers within `timeout` (the attack must not wedge it).
fn status_within(herd: &Herd, timeout: Duration) -> Option<serde_json::Value> {
    let mut child = herd.ctl_command(&["status", "--json"]).stdout(std::process::Stdio::piped()).spawn().ok()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().ok()? {
            let mut out = String::new();
            std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
            return status.success().then(|| serde_json::from_str::<serde_json::Value>(&out).ok()).flatten();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn states(status: &serde_json::Value) -> Vec<String> {
    status["status"]["workers"]
        .as_array()
        .map_or_else(Vec::new, |w| w.iter().map(|w| w["state"].as_str().unwrap_or("").to_owned()).collect())
}

/// What an attack did, measured without failing so the figures print before and after a fix.
#[derive(Debug)]
struct Figures {
    opened: usize,
    /// Still open (herd kept them) when the attack settled.
    held: usize,
    /// Closed by herd at once.
    shed: usize,
    /// A shedding line in the log.
    shed_logged: bool,
    /// `herd ctl status` answered under attack.
    ctl_answered: bool,
    /// Slots errored under attack or after.
    errored: usize,
    /// Lines saying a worker's IPC failed (each one a worker that exited).
    fatal_ipc: usize,
    /// Lines saying an accept failed (out of descriptors): what the log paid.
    accept_errors: usize,
    /// Workers of before the attack still alive after it.
    workers_alive: usize,
    /// How long after the clients left every slot was ready and a request served.
    recovered_in: Option<Duration>,
    /// Of 20 fresh requests after recovery, how many were answered 200.
    answered: usize,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let recovered = self.recovered_in.map_or_else(|| "never".to_owned(), |d| format!("{d:.1?}"));
        write!(
            f,
            "{} opened, {} held, {} shed (logged: {}); ctl status answered: {}; errored slots: {}; fatal IPC \
             errors: {}; accept errors logged: {}; workers alive: {}; recovered in {recovered}; {}/20 answered",
            self.opened,
            self.held,
            self.shed,
            self.shed_logged,
            self.ctl_answered,
            self.errored,
            self.fatal_ipc,
            self.accept_errors,
            self.workers_alive,
            self.answered
        )
    }
}

/// Holds [`HELD`] connections against `herd`, closes them after `after_hold` ran, and measures.
fn measure(herd: &Herd, workers: usize, after_hold: impl FnOnce(&Herd)) -> Figures {
    let pids = herd.worker_pids();
    let mark = herd.log_len();
    let conns = hold(herd.addr, HELD);
    // Herd sheds what it cannot hold, and says so (the line is the contract); without the fix,
    // workers die instead.
    let shed_logged = herd.find_log_from(mark, Duration::from_secs(30), |l| l.contains("shed ")).is_some();
    let status = status_within(herd, Duration::from_secs(10));
    let ctl_answered = status.is_some();
    let mut errored = status.map_or(0, |s| states(&s).iter().filter(|s| *s == "errored").count());
    let shed = closed_by_herd(&conns);
    let (opened, held) = (conns.len(), conns.len() - shed);
    drop(conns);
    after_hold(herd);
    let left = Instant::now();
    let mut recovered_in = None;
    while left.elapsed() < RECOVERY {
        let states = status_within(herd, Duration::from_secs(5)).map(|s| states(&s)).unwrap_or_default();
        errored = errored.max(states.iter().filter(|s| *s == "errored").count());
        let ready = states.len() == workers && states.iter().all(|s| s == "ready");
        if ready && herd.client().get("/healthz").is_ok_and(|r| r.status == 200) {
            recovered_in = Some(left.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let answered = (0..20).filter(|_| herd.client().get("/").is_ok_and(|r| r.status == 200)).count();
    let log = herd.log();
    Figures {
        opened,
        held,
        shed,
        shed_logged,
        ctl_answered,
        errored,
        fatal_ipc: log.iter().filter(|l| l.contains("IPC with the primary failed")).count(),
        accept_errors: log.iter().filter(|l| l.contains("accept failed")).count(),
        workers_alive: pids.iter().filter(|pid| herd_e2e::process_alive(**pid)).count(),
        recovered_in,
        answered,
    }
}

fn attack(mode: &str) {
    let redis = RedisServer::start();
    let herd = start_low_fd(&redis, &["--workers", "2", "--balance", mode], true);
    // Soft and hard are both 256 here: herd reports the figure it runs with (the line is the
    // contract: it shows nowhere else).
    herd.wait_log("the open files limit", Duration::from_secs(5), |l| l.contains("open files limit is 256"));
    let figures = measure(&herd, 2, |_| {});
    eprintln!("{mode}: {figures}");
    assert_eq!(figures.fatal_ipc, 0, "fd exhaustion must not kill workers: {figures:?}");
    assert_eq!(figures.workers_alive, 2, "no worker may die of fd exhaustion: {figures:?}");
    assert_eq!(figures.errored, 0, "{figures:?}");
    assert!(figures.shed_logged && figures.ctl_answered, "{figures:?}");
    // Shedding keeps every process out of EMFILE, and the log says so once per interval.
    assert!(figures.accept_errors < 10, "{figures:?}");
    assert!(figures.recovered_in.is_some() && figures.answered == 20, "{figures:?}");
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
    kill_and_wait_for_replacements(&herd);
    // The replacements wait for Redis and never report ready: connections queue in the primary.
    let mut dropped = None;
    let figures = measure(&herd, 2, |herd| {
        // The primary notices that the queued clients left, while still no worker is ready (the
        // queue is in no status: the line is the only sign).
        dropped = herd.find_log_from(0, Duration::from_secs(15), |l| l.contains("whose client had gone"));
        redis.restart();
    });
    eprintln!("no worker ready: {figures}; {dropped:?}");
    assert!(figures.shed_logged && figures.ctl_answered, "{figures:?}");
    assert!(dropped.is_some(), "queued connections whose client left are dropped");
    assert_eq!(figures.errored, 0, "{figures:?}");
    assert!(figures.recovered_in.is_some() && figures.answered == 20, "{figures:?}");
}

/// With no reserve at all (`--fd-reserve 0`) the primary does run out of descriptors: a worker
/// that must be started then cannot be (`socketpair` fails with EMFILE). That must be retried
/// until descriptors are free again, never count as a crash, never mark the slot `errored`.
#[test]
fn a_primary_out_of_fds_retries_starting_workers_and_never_marks_a_slot_errored() {
    let mut redis = RedisServer::start();
    let herd = start_low_fd(&redis, &["--workers", "2", "--fd-reserve", "0", "--max-restarts", "2"], true);
    redis.kill();
    // The replacements wait for Redis, so connections queue in the primary until it is full.
    let replacements = kill_and_wait_for_replacements(&herd);
    let mark = herd.log_len();
    let conns = hold(herd.addr, HELD);
    // The lines are the contract: the primary says it ran out, that a start failed, and must
    // never say a slot is errored (its control socket may not answer now).
    herd.find_log_from(mark, Duration::from_secs(30), |l| l.contains("Too many open files"));
    // Each slot has had one death; this is its second (of the two allowed). Its restart finds
    // the primary out of descriptors.
    for pid in &replacements {
        herd_e2e::signal(*pid, nix::sys::signal::Signal::SIGKILL);
    }
    let failed_start = herd.find_log_from(mark, Duration::from_secs(30), |l| l.contains("cannot start worker"));
    let errored_early = herd.find_log_from(mark, Duration::from_secs(3), |l| l.contains("errored"));
    drop(conns);
    redis.restart();
    let deadline = Instant::now() + RECOVERY;
    let mut after = Vec::new();
    while Instant::now() < deadline {
        after = status_within(&herd, Duration::from_secs(5)).map(|s| states(&s)).unwrap_or_default();
        if after.len() == 2 && after.iter().all(|s| s == "ready") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let answered = (0..20).filter(|_| herd.client().get("/").is_ok_and(|r| r.status == 200)).count();
    eprintln!(
        "primary out of fds: {failed_start:?}; errored: {errored_early:?}; after: {after:?}, {answered}/20 answered"
    );
    assert!(failed_start.is_some(), "the test must make a start fail for want of descriptors");
    assert!(errored_early.is_none(), "a shortage of descriptors marked a slot errored: {errored_early:?}");
    assert_eq!(after, ["ready", "ready"], "every slot is back once descriptors are free");
    assert_eq!(answered, 20);
}

/// Kills every worker and waits until the status shows a replacement (not yet ready: Redis is
/// down) in each slot; returns the replacements' pids.
fn kill_and_wait_for_replacements(herd: &Herd) -> Vec<u32> {
    let killed = herd.worker_pids();
    for pid in &killed {
        herd_e2e::signal(*pid, nix::sys::signal::Signal::SIGKILL);
    }
    herd.wait_status("replacements started", Duration::from_secs(30), |status| {
        let pids: Vec<u32> = workers(status).iter().filter_map(|w| w.pid).filter(|p| !killed.contains(p)).collect();
        (pids.len() == killed.len()).then_some(pids)
    })
}

/// The generated unit raises the limit: under systemd the default soft limit is 1024.
#[test]
fn the_systemd_unit_sets_limit_nofile() {
    let unit =
        Command::new(herd_bin()).args(["systemd-unit", "--bind", "127.0.0.1:3000"]).output().expect("systemd-unit");
    let text = String::from_utf8_lossy(&unit.stdout);
    assert!(text.lines().any(|l| l.starts_with("LimitNOFILE=")), "the unit sets LimitNOFILE:\n{text}");
}
