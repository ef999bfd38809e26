//! The real `herd` binary, started as a user would, with its log captured line by line.
//!
//! What the kit needs to *find* (the control socket, the listening address, readiness, worker
//! pids) comes from machine-readable sources, never from log text, so rewording a log line
//! cannot break a test's setup or cleanup:
//! - each herd gets a private `XDG_RUNTIME_DIR`, so its control socket is the one socket in
//!   `$XDG_RUNTIME_DIR/herd/` (unless the test names one with `--control-socket`);
//! - the address, worker pids and states come from the status the control socket answers;
//! - readiness is the systemd notify protocol: the kit listens on its own `NOTIFY_SOCKET` and
//!   hears `READY=1` once every worker is ready.
//!
//! The log stays available for tests whose subject *is* a log line.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener},
    os::unix::net::{UnixDatagram, UnixStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, OnceLock},
    time::{Duration, Instant},
};

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::Signal;

use crate::{http::Client, RedisServer, TempDir};

/// How long a cluster may take to come up in a debug build on a busy 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often [`Herd::wait_status`] asks again.
const STATUS_POLL: Duration = Duration::from_millis(20);

/// How [`Herd::spawn_activated`] sets `LISTEN_PID`.
#[derive(Debug, Clone, Copy)]
pub enum Activation {
    /// To herd's pid, as systemd does.
    WithPid,
    /// Not at all, as `systemfd --no-pid` does.
    WithoutPid,
    /// To another process's (a variable leaked by a parent): herd must ignore the socket.
    ForAnotherProcess,
}

pub struct Herd {
    child: Child,
    pub addr: SocketAddr,
    /// The primary's stderr, line by line.
    log: Arc<Lines>,
    /// What the primary sent to the kit's `NOTIFY_SOCKET`; `None` when the test gave its own.
    notifications: Option<Arc<Lines>>,
    /// That socket, shut down on drop to end the thread that reads it.
    notify_socket: Option<UnixDatagram>,
    /// The control socket.
    control: PathBuf,
    /// Every worker pid any status showed, to kill on drop even if the primary is gone.
    seen_workers: Mutex<BTreeSet<u32>>,
    exited: Option<ExitStatus>,
    /// The primaries `herd ctl upgrade` handed over to, oldest first: the last one serves.
    successors: Mutex<Vec<u32>>,
    /// The private runtime directory (control socket, notify socket); removed last.
    _dir: TempDir,
}

/// The environment that turns on `/heavy`'s per-computation INFO line ("heavy computation
/// started"), off by default because any client can trigger it; tests that wait for a
/// computation to start need it.
pub const HEAVY_LOGS: [(&str, &str); 1] = [("RUST_LOG", "info,herd::routes::heavy=info")];

/// Lines that arrive from another thread, with a way to wait for one.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Lines {
    fn push(&self, line: String) {
        self.lines.lock().expect("lines lock").push(line);
        self.grew.notify_all();
    }

    fn snapshot(&self) -> Vec<String> {
        self.lines.lock().expect("lines lock").clone()
    }

    /// The first line after the first `skip` that matches `pred`, waiting for it up to
    /// `timeout` (woken as lines arrive).
    fn find_from(&self, skip: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.lines.lock().expect("lines lock");
        loop {
            if let Some(line) = lines.iter().skip(skip).find(|l| pred(l)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                // Released before the caller may panic: a poisoned lock would make `Drop`
                // panic again and abort the run.
                return None;
            }
            lines = self.grew.wait_timeout(lines, deadline - now).expect("lines lock").0;
        }
    }
}

impl Herd {
    /// `herd serve --bind 127.0.0.1:0 --redis-url <redis> --secure-cookies false --demo-user
    /// alice:wonderland <extra>`, waiting until every worker is ready.
    pub fn start(redis: &RedisServer, extra: &[&str]) -> Herd {
        Herd::start_with_env(redis, extra, &[])
    }

    /// Like [`Herd::start`], with extra environment (e.g. a `RUST_LOG` that shows debug lines).
    pub fn start_with_env(redis: &RedisServer, extra: &[&str], env: &[(&str, &str)]) -> Herd {
        Herd::start_at(&redis.url(), extra, env)
    }

    /// Like [`Herd::start`], with Redis at any URL (a Redis Cluster, say).
    pub fn start_at(url: &str, extra: &[&str], env: &[(&str, &str)]) -> Herd {
        let herd = Herd::spawn(&Herd::serve_args(url, extra), env);
        herd.wait_ready(START_TIMEOUT);
        herd
    }

    /// The arguments [`Herd::start_at`] runs, for a test that spawns them its own way.
    pub fn serve_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["serve", "--bind", "127.0.0.1:0", "--redis-url", url, "--secure-cookies", "false"];
        args.extend(["--demo-user", "alice:wonderland"]);
        args.extend(extra);
        args
    }

    /// Runs the binary with exactly these arguments and environment additions; waits only
    /// until the control socket answers (which gives the listening address).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Herd {
        Herd::spawn_in(&std::env::temp_dir(), args, env)
    }

    /// Like [`Herd::spawn`], in working directory `cwd` and without `REDIS_URL` inherited.
    pub fn spawn_in(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Herd {
        Herd::spawn_program(&herd_bin(), cwd, args, env)
    }

    /// Runs any program built on herd-cluster (an example, or herd under `prlimit`) the same
    /// way.
    pub fn spawn_program(program: &Path, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Herd {
        Herd::spawn_command(Command::new(program), cwd, args, env)
    }

    /// `herd <args>` started the way systemd starts a socket-activated service: `listener` (which
    /// the test keeps, as systemd keeps its socket) as fd 3, `LISTEN_FDS=1` and `LISTEN_PID` as
    /// `activation` says.
    pub fn spawn_activated(listener: &TcpListener, activation: Activation, args: &[&str]) -> Herd {
        let mut cmd = match activation {
            // A process learns its pid only once it exists: the shell sets it, then becomes herd.
            Activation::WithPid => {
                let mut sh = Command::new("sh");
                sh.args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""]).arg(herd_bin());
                sh
            }
            Activation::WithoutPid => Command::new(herd_bin()),
            Activation::ForAnotherProcess => {
                let mut cmd = Command::new(herd_bin());
                cmd.env("LISTEN_PID", "1");
                cmd
            }
        };
        let socket = listener.try_clone().expect("duplicate the listening socket");
        cmd.env("LISTEN_FDS", "1")
            .fd_mappings(vec![FdMapping { parent_fd: socket.into(), child_fd: 3 }])
            .expect("map the socket to fd 3");
        Herd::spawn_command(cmd, &std::env::temp_dir(), args, &[])
    }

    fn spawn_command(mut cmd: Command, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Herd {
        let dir = TempDir::new("herd-run");
        let given = |key: &str| env.iter().find(|(k, _)| *k == key).map(|(_, v)| PathBuf::from(v));
        let runtime_dir = given("XDG_RUNTIME_DIR").unwrap_or_else(|| dir.path().to_owned());
        let control = ControlSocket::named_in(args)
            .or_else(|| given("HERD_CONTROL_SOCKET").map(ControlSocket::Named))
            .unwrap_or(ControlSocket::OnlyOneIn(runtime_dir.join("herd")));
        let notify_path = dir.path().join("notify.sock");
        let notify = match given("NOTIFY_SOCKET") {
            Some(_) => None,
            None => Some(UnixDatagram::bind(&notify_path).expect("bind the kit's notify socket")),
        };

        cmd.current_dir(cwd).env_remove("REDIS_URL").args(args).env("RUST_LOG", "info");
        cmd.env("XDG_RUNTIME_DIR", dir.path());
        if notify.is_some() {
            cmd.env("NOTIFY_SOCKET", &notify_path);
        }
        let mut child = cmd
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start herd");
        let log = Arc::new(Lines::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("HERD_TEST_ECHO").is_some() {
                    eprintln!("{line}");
                }
                sink.push(line);
            }
        });
        let notify_socket = notify.as_ref().map(|socket| socket.try_clone().expect("clone the notify socket"));
        let notifications = notify.map(|socket| {
            let sink = Arc::new(Lines::default());
            let lines = Arc::clone(&sink);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                // Herd never sends an empty notification: 0 is the shutdown on drop.
                while let Ok(n @ 1..) = socket.recv(&mut buf) {
                    lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            });
            sink
        });
        let mut herd = Herd {
            child,
            addr: "0.0.0.0:0".parse().expect("literal"),
            log,
            notifications,
            notify_socket,
            control: PathBuf::new(),
            seen_workers: Mutex::new(BTreeSet::new()),
            exited: None,
            successors: Mutex::new(Vec::new()),
            _dir: dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let (control, status) = loop {
            if let Some(answered) = control.find().and_then(|path| query_status(&path).map(|status| (path, status))) {
                break answered;
            }
            if let Ok(Some(exit)) = herd.child.try_wait() {
                herd.exited = Some(exit);
                panic!("herd exited ({exit}) before its control socket answered; log:\n{}", herd.log().join("\n"));
            }
            assert!(
                Instant::now() < deadline,
                "no control socket answered within {START_TIMEOUT:?}; log:\n{}",
                herd.log().join("\n")
            );
            std::thread::sleep(STATUS_POLL);
        };
        herd.control = control;
        herd.addr = status["listen"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no listen address in {status}"));
        herd.remember(&status);
        herd
    }

    /// Waits for the primary's `READY=1` (sent once, when every worker first is ready).
    pub fn wait_ready(&self, timeout: Duration) {
        let Some(notifications) = &self.notifications else {
            panic!("this test gave herd its own NOTIFY_SOCKET: it hears READY=1, the kit does not");
        };
        let ready = notifications.find_from(0, timeout, |m| m.lines().any(|l| l == "READY=1"));
        assert!(ready.is_some(), "no READY=1 within {timeout:?}; log:\n{}", self.log().join("\n"));
    }

    /// `herd ctl --socket <this primary's socket> <args>`: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.ctl_command(args).output().expect("run herd ctl");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
    }

    /// `herd ctl --socket <this primary's socket> <args>`, to spawn (for `logs`, `top`).
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(herd_bin());
        cmd.arg("ctl").arg("--socket").arg(self.control_socket()).args(args);
        cmd
    }

    /// The primary's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.control.clone()
    }

    /// `herd ctl status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let (code, out, err) = self.ctl(&["status", "--json"]);
        assert_eq!(code, 0, "status failed: {err}");
        let status = serde_json::from_str::<serde_json::Value>(&out).expect("status JSON")["status"].clone();
        self.remember(&status);
        status
    }

    /// Polls the status (straight from the control socket: no `herd ctl` process every 20 ms)
    /// until `pred` returns `Some`, or panics with `what` and the log after `timeout`.
    pub fn wait_status<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut last = serde_json::Value::Null;
        loop {
            if let Some(status) = query_status(&self.control) {
                self.remember(&status);
                if let Some(found) = pred(&status) {
                    return found;
                }
                last = status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last status {last}; log:\n{}",
                    self.log().join("\n")
                );
            }
            std::thread::sleep(STATUS_POLL);
        }
    }

    /// Waits until the status lists exactly `n` workers, each `ready`; returns their pids.
    pub fn wait_workers_ready(&self, n: usize, timeout: Duration) -> Vec<u32> {
        self.wait_status(&format!("{n} ready workers"), timeout, |status| {
            let workers = workers(status);
            (workers.len() == n && workers.iter().all(|w| w.state == "ready"))
                .then(|| workers.iter().filter_map(|w| w.pid).collect())
        })
    }

    /// Waits until `slot` runs a ready worker other than `old`; returns its pid.
    pub fn wait_replaced(&self, slot: u64, old: u32, timeout: Duration) -> u32 {
        self.wait_status(&format!("a ready replacement for pid {old} in slot {slot}"), timeout, |status| {
            workers(status).iter().find(|w| w.slot == slot && w.state == "ready" && w.pid != Some(old))?.pid
        })
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// The primary serving now: the started one, or the last it handed over to.
    pub fn pid(&self) -> u32 {
        self.successors.lock().expect("successors lock").last().copied().unwrap_or_else(|| self.child.id())
    }

    /// `herd ctl upgrade`: its exit code, stdout and stderr. On success the new primary is the
    /// one [`Herd::pid`] names (and is killed on drop).
    pub fn upgrade(&self) -> (i32, String, String) {
        let (code, out, err) = self.ctl(&["upgrade"]);
        if code == 0 {
            let pid = out
                .split("pid ")
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .and_then(|pid| pid.parse().ok())
                .unwrap_or_else(|| panic!("no new primary's pid in {out:?}"));
            self.successors.lock().expect("successors lock").push(pid);
        }
        (code, out, err)
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.snapshot()
    }

    /// Waits for a log line matching `pred` (searching the whole log, old lines included).
    /// Only for tests whose subject is the log line itself: to find a thing, ask the status.
    pub fn wait_log(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        self.wait_log_from(0, what, timeout, pred)
    }

    /// Like [`Herd::wait_log`], but only lines after the first `skip` count.
    pub fn wait_log_from(&self, skip: usize, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        match self.find_log_from(skip, timeout, pred) {
            Some(line) => line,
            None => panic!("timed out after {timeout:?} waiting for {what}; log:\n{}", self.log().join("\n")),
        }
    }

    /// The first line after the first `skip` that matches `pred`, waiting for it up to
    /// `timeout` (woken as lines arrive); `None` if none came. For figures that are measured
    /// rather than asserted.
    pub fn find_log_from(&self, skip: usize, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.log.find_from(skip, timeout, pred)
    }

    pub fn log_len(&self) -> usize {
        self.log.lines.lock().expect("log lock").len()
    }

    /// Pids of the worker processes the status lists now (slot order; a slot being replaced
    /// has two).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.wait_status("a status", START_TIMEOUT, |status| {
            Some(workers(status).iter().filter_map(|w| w.pid).collect())
        })
    }

    pub fn signal(&self, signal: Signal) {
        crate::signal(self.pid(), signal);
    }

    /// Waits for the primary to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        let status = crate::wait_for("herd to exit", timeout, || self.child.try_wait().ok().flatten());
        self.exited = Some(status);
        status
    }

    fn remember(&self, status: &serde_json::Value) {
        let mut seen = self.seen_workers.lock().expect("seen lock");
        seen.extend(workers(status).iter().filter_map(|w| w.pid));
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        // Everything the primary started (workers, a private redis-server), found before it
        // dies, plus every worker a status ever showed (one whose primary is already gone).
        let mut doomed = children(self.child.id());
        doomed.extend(self.seen_workers.lock().map(|seen| seen.clone()).unwrap_or_default());
        for successor in self.successors.lock().map(|s| s.clone()).unwrap_or_default() {
            doomed.extend(children(successor));
            doomed.insert(successor);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in doomed {
            crate::signal(pid, Signal::SIGKILL);
        }
        if let Some(socket) = &self.notify_socket {
            let _ = socket.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// One entry of the status's `workers`.
pub struct Worker {
    pub slot: u64,
    pub pid: Option<u32>,
    pub state: String,
    pub restarts: u64,
}

/// The workers a status lists.
pub fn workers(status: &serde_json::Value) -> Vec<Worker> {
    let Some(list) = status["workers"].as_array() else { return Vec::new() };
    list.iter()
        .map(|w| Worker {
            slot: w["slot"].as_u64().unwrap_or(u64::MAX),
            pid: w["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
            state: w["state"].as_str().unwrap_or_default().to_owned(),
            restarts: w["restarts"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// Where a herd's control socket is.
enum ControlSocket {
    /// Given by the test (`--control-socket`, `HERD_CONTROL_SOCKET`).
    Named(PathBuf),
    /// The default place: `herd-<port>.sock` in this private directory, the only socket there.
    OnlyOneIn(PathBuf),
}

impl ControlSocket {
    fn named_in(args: &[&str]) -> Option<ControlSocket> {
        let flag = "--control-socket";
        let at = args.iter().position(|a| *a == flag).and_then(|i| args.get(i + 1)).copied();
        let joined = args.iter().find_map(|a| a.strip_prefix(flag).and_then(|rest| rest.strip_prefix('=')));
        at.or(joined).map(|path| ControlSocket::Named(PathBuf::from(path)))
    }

    fn find(&self) -> Option<PathBuf> {
        match self {
            ControlSocket::Named(path) => Some(path.clone()),
            ControlSocket::OnlyOneIn(dir) => std::fs::read_dir(dir)
                .ok()?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .find(|path| path.extension().is_some_and(|ext| ext == "sock")),
        }
    }
}

/// `{"cmd":"status"}` on the control socket (its documented protocol: one JSON line each
/// way); `None` while nothing answers.
fn query_status(socket: &Path) -> Option<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"{\"cmd\":\"status\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let reply: serde_json::Value = serde_json::from_str(&line).ok()?;
    (reply["ok"] == true).then(|| reply["status"].clone())
}

/// The pids of a process's children (`/proc/<pid>/task/<tid>/children`, one file per thread).
/// The value of field `name` in a log line, in the text form (`name=value`) or JSON
/// (`"name":value`): the primary names the worker a line is about by its `slot` and
/// `worker_pid` fields.
pub fn log_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let text = format!(" {name}=");
    let json = format!("\"{name}\":");
    let (at, len) =
        line.find(&text).map(|at| (at, text.len())).or_else(|| line.find(&json).map(|at| (at, json.len())))?;
    let rest = &line[at + len..];
    let end = rest.find(|c: char| c.is_whitespace() || c == ',' || c == '}').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

/// Whether a primary's log line is about the worker `pid` (and, if given, in `slot`).
pub fn about_worker(line: &str, slot: Option<u64>, pid: Option<u32>) -> bool {
    let slot_ok = slot.is_none_or(|slot| log_field(line, "slot") == Some(slot.to_string().as_str()));
    let pid_ok = pid.is_none_or(|pid| log_field(line, "worker_pid") == Some(pid.to_string().as_str()));
    slot_ok && pid_ok && log_field(line, "slot").is_some()
}

/// The delay in a "restarting in 100ms" line, in milliseconds.
pub fn restart_delay_ms(line: &str) -> Option<u64> {
    line.split("restarting in ").nth(1)?.split("ms").next()?.parse().ok()
}

pub fn children(pid: u32) -> BTreeSet<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return BTreeSet::new() };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| list.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// The `herd` binary, built once per test process with the same cargo that runs the tests, so
/// it is never stale. `HERD_BIN` overrides it.
pub fn herd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("HERD_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => cargo_build("herd", "bin"),
    })
    .clone()
}

/// Runs `herd <args>` (with `env`; `None` removes a variable) to completion and asserts it
/// exits with `code` and says each of `needles` on stderr. Returns stderr.
pub fn assert_herd_fails(args: &[&str], env: &[(&str, Option<&str>)], code: i32, needles: &[&str]) -> String {
    let mut cmd = Command::new(herd_bin());
    cmd.args(args);
    for (key, value) in env {
        match value {
            Some(value) => cmd.env(key, value),
            None => cmd.env_remove(key),
        };
    }
    let out = cmd.output().expect("run herd");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "herd {args:?}: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "herd {args:?} should say {needle:?}: {stderr}");
    }
    stderr
}

/// The `hello` example of herd-cluster, built like [`herd_bin`].
pub fn hello_example() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| cargo_build("hello", "example")).clone()
}

/// Builds one target with the cargo running the tests and returns its executable.
///
/// `--workspace --all-targets` makes cargo resolve features exactly as `cargo test
/// --workspace` does, so after a test build this finds everything up to date instead of
/// compiling a second copy of the dependency tree with other features.
fn cargo_build(name: &str, kind: &str) -> PathBuf {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let mut cargo = Command::new(env!("CARGO"));
    // `cargo test` gives this process the test crate's package variables; build scripts that
    // watch one (ring watches CARGO_MANIFEST_DIR) would then see it change between this build
    // and the next `cargo test`, and every crate above them would be rebuilt twice per run.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_package = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
        ];
        if per_package.iter().any(|prefix| key.starts_with(prefix)) {
            cargo.env_remove(key.as_ref());
        }
    }
    let out = cargo
        .args([
            "build",
            "--quiet",
            "--workspace",
            "--all-targets",
            "--message-format=json",
            "--manifest-path",
            manifest,
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "cargo build failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| {
            msg["target"]["name"] == name && msg["target"]["kind"][0] == kind && msg["profile"]["test"] == false
        })
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no executable for {kind} {name}"))
}
