//! The real `herd` binary, started as a user would, with its log captured line by line.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex, OnceLock},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;

use crate::{http::Client, RedisServer};

/// How long a cluster may take to come up in a debug build on a busy 2-core machine.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Herd {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Log>,
    exited: Option<ExitStatus>,
}

/// The environment that turns on `/heavy`'s per-computation INFO line ("heavy computation
/// started"), off by default because any client can trigger it; tests that wait for a
/// computation to start need it.
pub const HEAVY_LOGS: [(&str, &str); 1] = [("RUST_LOG", "info,herd::routes::heavy=info")];

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
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
        let mut args = vec!["serve", "--bind", "127.0.0.1:0", "--redis-url", url, "--secure-cookies", "false"];
        args.extend(["--demo-user", "alice:wonderland"]);
        args.extend(extra);
        let herd = Herd::spawn(&args, env);
        herd.wait_log("all workers ready", START_TIMEOUT, |l| l.contains("workers ready"));
        herd
    }

    /// Runs the binary with exactly these arguments and environment additions; waits only
    /// for the listening address.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Herd {
        Herd::spawn_in(&std::env::temp_dir(), args, env)
    }

    /// Like [`Herd::spawn`], in working directory `cwd` and without `REDIS_URL` inherited.
    pub fn spawn_in(cwd: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Herd {
        Herd::spawn_program(&herd_bin(), cwd, args, env)
    }

    /// Runs any program built on herd-cluster (an example, say) the same way.
    pub fn spawn_program(
        program: &std::path::Path,
        cwd: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Herd {
        let mut child = Command::new(program)
            .current_dir(cwd)
            .env_remove("REDIS_URL")
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start herd");
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("HERD_TEST_ECHO").is_some() {
                    eprintln!("{line}");
                }
                let mut lines = sink.lines.lock().expect("log lock");
                lines.push(line);
                sink.grew.notify_all();
            }
        });
        let mut herd = Herd { child, addr: "0.0.0.0:0".parse().expect("literal"), log, exited: None };
        let line = herd.wait_log("the listening address", START_TIMEOUT, |l| l.contains("listening on "));
        // Text or JSON logs: the address is what follows, up to the first character that
        // cannot be part of one.
        let addr: Option<String> = line.split("listening on ").nth(1).map(|rest| {
            rest.chars().take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']')).collect()
        });
        herd.addr = addr.and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no address in {line:?}"));
        herd
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

    /// The control socket path the primary logged at start.
    pub fn control_socket(&self) -> PathBuf {
        let line = self.wait_log("the listening line", START_TIMEOUT, |l| l.contains("listening on "));
        let path = line
            .split("control=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .or_else(|| line.split(r#""control":""#).nth(1).and_then(|rest| rest.split('"').next()));
        PathBuf::from(path.unwrap_or_else(|| panic!("no control socket in {line:?}")))
    }

    /// `herd ctl status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let (code, out, err) = self.ctl(&["status", "--json"]);
        assert_eq!(code, 0, "status failed: {err}");
        serde_json::from_str::<serde_json::Value>(&out).expect("status JSON")["status"].clone()
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lines.lock().expect("log lock").clone()
    }

    /// Waits for a log line matching `pred` (searching the whole log, old lines included).
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
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().expect("log lock");
        loop {
            if let Some(line) = lines.iter().skip(skip).find(|l| pred(l)) {
                return Some(line.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                // Released before the caller may panic: a poisoned lock would make `Drop`
                // (which reads the log for the worker pids) panic again and abort the run.
                return None;
            }
            lines = self.log.grew.wait_timeout(lines, deadline - now).expect("log lock").0;
        }
    }

    pub fn log_len(&self) -> usize {
        self.log.lines.lock().expect("log lock").len()
    }

    /// Pids of every worker the primary reported starting.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.log()
            .iter()
            .filter_map(|l| {
                let rest = l.split("worker ").nth(1)?;
                let mut words = rest.split_whitespace();
                let (_slot, pid_word, pid, started) = (words.next()?, words.next()?, words.next()?, words.next()?);
                (pid_word == "pid" && started == "started").then(|| pid.parse().ok()).flatten()
            })
            .collect()
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
}

impl Drop for Herd {
    fn drop(&mut self) {
        let workers = self.worker_pids();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in workers {
            crate::signal(pid, Signal::SIGKILL);
        }
    }
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
