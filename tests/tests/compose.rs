//! The README's first command, run for real: the repository's own `docker-compose.yml` and
//! `Dockerfile`, unchanged, on a real Docker engine (the kit's `dockerd`, see
//! `herd_e2e::docker`), driven as a user would, through the port the compose file publishes on
//! 127.0.0.1. Each step says its number and name first, and every failure names its step.
//!
//! Skipped with a loud message when Docker cannot run here (not root, `docker.io`,
//! `docker-compose` or `debootstrap` missing), unless `HERD_REQUIRE_DOCKER` is set (CI sets it).
//! The base images come from the kit's offline stand-ins when the engine has none of that name.

use std::{
    collections::{BTreeSet, HashSet},
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use herd_e2e::{
    browser::{assert_reloads_cross_workers, log_in, reloads, Browser},
    docker::{self, Compose, ComposeTool, DockerEngine, DockerError},
    Client, Response,
};
use serde_json::Value;

/// The compose project: its own name, so that it never touches a user's `herd` project.
const PROJECT: &str = "herd-e2e";
/// What the compose file publishes.
const PUBLISHED: &str = "127.0.0.1:3000";
/// How long herd may take to answer after `up` (it waits for Redis itself, up to 30 s).
const UP_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a worker or Redis may take to come back.
const BACK_TIMEOUT: Duration = Duration::from_secs(60);
/// The compose file's `stop_grace_period`: Docker kills herd after that.
const GRACE: Duration = Duration::from_secs(40);
/// The compose file's default worker count.
const DEFAULT_WORKERS: usize = 4;

/// Prints the step's name (the last one printed is where a failure happened) and times it.
struct Steps {
    started: Instant,
    current: Option<(String, Instant)>,
    done: Vec<(String, Duration)>,
}

impl Steps {
    fn new() -> Self {
        Self { started: Instant::now(), current: None, done: Vec::new() }
    }

    fn begin(&mut self, name: &str) -> String {
        self.end();
        eprintln!("=== compose test, step {name} (at {:?})", self.started.elapsed());
        self.current = Some((name.to_owned(), Instant::now()));
        name.to_owned()
    }

    fn end(&mut self) {
        if let Some((name, at)) = self.current.take() {
            self.done.push((name, at.elapsed()));
        }
    }

    fn report(&mut self) {
        self.end();
        eprintln!("compose test: {:?} in all", self.started.elapsed());
        for (name, took) in &self.done {
            eprintln!("  {took:>10.1?}  {name}");
        }
    }
}

/// The value, or a panic naming the step and showing the error (command, output tail).
fn must<T>(step: &str, result: Result<T, DockerError>) -> T {
    result.unwrap_or_else(|err| panic!("step {step} failed: {err}"))
}

fn repo_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn client() -> Client {
    Client::new(PUBLISHED.parse::<SocketAddr>().expect("the published address")).with_timeout(Duration::from_secs(10))
}

/// Polls `f` every 200 ms until it returns `Some`; on timeout panics naming the step, with
/// herd's log tail.
fn poll<T>(compose: &Compose, step: &str, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    herd_e2e::poll_every(Duration::from_millis(200), timeout, f).unwrap_or_else(|| {
        let logs = compose.logs("herd").unwrap_or_else(|e| e.to_string());
        let tail: Vec<&str> = logs.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        panic!("step {step}: timed out after {timeout:?} waiting for {what}; herd's log tail:\n{}", tail.join("\n"))
    })
}

/// Waits until `/healthz` answers and then until `workers` workers are ready: `/healthz`
/// answers as soon as one is, and the ready ones serve everything until the others are.
fn healthy(compose: &Compose, step: &str, workers: usize) {
    poll(compose, step, &format!("http://{PUBLISHED}/healthz to answer 200"), UP_TIMEOUT, || {
        client().get("/healthz").ok().filter(|r| r.status == 200)
    });
    poll(compose, step, &format!("{workers} ready workers in `herd ctl status`"), UP_TIMEOUT, || {
        (ready_workers(compose) == Some(workers)).then_some(())
    });
}

/// How many workers `herd ctl status --json`, run in the herd container, shows ready.
fn ready_workers(compose: &Compose) -> Option<usize> {
    let args = ["exec", "-T", "herd", "herd", "ctl", "status", "--json"];
    let out = compose.run("herd ctl status", &args, &[], docker::command_timeout()).ok()?;
    let reply: Value = serde_json::from_str(&out).ok()?;
    Some(herd_e2e::herd::workers(&reply["status"]).iter().filter(|w| w.state == "ready").count())
}

/// One GET / on a fresh connection: (pid, user, visits), or `None` when it failed.
fn visit(c: &Client) -> Option<(u64, Value, Value)> {
    let res: Response = c.get("/").ok().filter(|r| r.status == 200)?;
    let body = res.json();
    Some((body["pid"].as_u64()?, body["user"].clone(), body["visits"].clone()))
}

/// `n` GETs of `path` on fresh connections, each required to answer 200; their JSON.
fn requests(c: &Client, step: &str, path: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let res = c.get(path).unwrap_or_else(|e| panic!("step {step}: request {i} to {path}: {e}"));
            assert_eq!(res.status, 200, "step {step}: request {i} to {path}: {}", res.body);
            res.json()
        })
        .collect()
}

#[test]
fn docker_compose_up_serves_the_demo_end_to_end() {
    if !docker::available("the compose test") {
        return;
    }
    let mut steps = Steps::new();

    let step = steps.begin("0 (engine and base images)");
    let engine = must(&step, DockerEngine::start());
    let versions = engine.versions();
    let built = must(&step, docker::ensure_base_images(&engine));
    let tool = ComposeTool::detect(&engine)
        .unwrap_or_else(|| panic!("step {step}: neither `docker compose` nor `docker-compose` works"));
    eprintln!("engine: {versions}; compose tool: {}; stand-ins built now: {built:?}", tool.name());
    let compose = Compose::new(&engine, tool, PROJECT, &repo_dir());
    // What an interrupted earlier run may have left.
    must(&step, compose.down());
    assert!(
        std::net::TcpStream::connect(PUBLISHED).is_err(),
        "step {step}: something already listens on {PUBLISHED}; the compose file publishes herd there"
    );

    let step = steps.begin("1 (docker compose up -d --build, wait for /healthz)");
    must(&step, compose.run(&step, &["up", "-d", "--build"], &[], docker::build_timeout()));
    healthy(&compose, &step, DEFAULT_WORKERS);
    let image = must(&step, compose.inspect("herd", "{{.Image}}"));
    let size: u64 = must(&step, engine.run(&step, &["image", "inspect", "--format", "{{.Size}}", &image]))
        .trim()
        .parse()
        .expect("image size is a number");
    eprintln!("herd image: {:.1} MB", size as f64 / 1e6);
    let layers = ["history", "--format", "{{.Size}}\t{{.CreatedBy}}", &image];
    eprintln!("its layers:\n{}", must(&step, engine.run(&step, &layers)));
    let version = must(&step, engine.run(&step, &["run", "--rm", &image, "--version"]));
    assert!(version.starts_with("herd "), "step {step}: `herd --version` in the image printed {version:?}");
    let uid = must(&step, compose.run(&step, &["exec", "-T", "herd", "id", "-u"], &[], docker::command_timeout()));
    assert_ne!(uid.trim(), "0", "step {step}: herd runs as root in its container");

    let step = steps.begin("2 (log in, 20 requests on fresh connections)");
    let mut user = client();
    user.login();
    let mut last = 0;
    let mut pids = BTreeSet::new();
    for body in requests(&user, &step, "/", 20) {
        assert_eq!(body["user"], "alice", "step {step}: {body}");
        assert_eq!(body["visits"], last + 1, "step {step}: visits go up by exactly one: {body}");
        last += 1;
        pids.insert(body["pid"].as_u64().expect("pid"));
    }
    assert!(pids.len() >= 2, "step {step}: 20 fresh connections all reached one worker: {pids:?}");
    let seen_as = requests(&client(), &step, "/whoami", 1)[0]["client"].clone();
    eprintln!("through Docker's port forwarding herd sees the test's client as {seen_as}");

    let step = steps.begin("3 (kill a worker with SIGKILL inside the container)");
    let victim = *pids.first().expect("a pid");
    let kill = format!("kill -KILL {victim}");
    must(&step, compose.run(&step, &["exec", "-T", "herd", "sh", "-c", &kill], &[], docker::command_timeout()));
    // Replaced: the last round of successful requests reaches all the workers, none the victim.
    let mut recent: Vec<u64> = Vec::new();
    poll(&compose, &step, &format!("{DEFAULT_WORKERS} workers without pid {victim}"), BACK_TIMEOUT, || {
        let (pid, who, visits) = visit(&user)?;
        assert_eq!(who, "alice", "step {step}: the session was lost after the kill");
        assert_eq!(visits, last + 1, "step {step}: visits go up by exactly one");
        last += 1;
        recent.push(pid);
        let window: HashSet<u64> = recent.iter().rev().take(3 * DEFAULT_WORKERS).copied().collect();
        (recent.len() >= 3 * DEFAULT_WORKERS && window.len() == DEFAULT_WORKERS && !window.contains(&victim))
            .then_some(())
    });

    let step = steps.begin("4 (docker compose restart redis: the session and its count survive)");
    must(&step, compose.run(&step, &["restart", "redis"], &[], docker::command_timeout()));
    poll(&compose, &step, "redis to be healthy again", BACK_TIMEOUT, || {
        compose.inspect("redis", "{{.State.Health.Status}}").ok().filter(|s| s == "healthy")
    });
    let (_, who, visits) = poll(&compose, &step, "a logged-in answer after the restart", BACK_TIMEOUT, || visit(&user));
    assert_eq!(who, "alice", "step {step}: the session did not survive a Redis restart");
    assert_eq!(visits, last + 1, "step {step}: the visit count did not continue (AOF on the volume)");

    let step = steps.begin("5 (docker compose down: herd drains and exits 0)");
    let herd_id = must(&step, compose.container("herd"));
    // Started before `down` removes the container: its exit code and its whole log.
    let wait_out = engine.scratch().join("herd.exit");
    let logs_out = engine.scratch().join("herd.log");
    let spawn_to = |args: &[&str], out: &PathBuf| {
        let file = std::fs::File::create(out).expect("a file in the engine's scratch dir");
        let err = file.try_clone().expect("dup the file");
        engine
            .docker_cmd(args)
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("step {step}: {args:?}: {e}"))
    };
    let mut waiter = spawn_to(&["wait", &herd_id], &wait_out);
    let mut follower = spawn_to(&["logs", "--follow", &herd_id], &logs_out);
    let stopping = Instant::now();
    must(&step, compose.run(&step, &["down"], &[], GRACE + docker::command_timeout()));
    let took = stopping.elapsed();
    let _ = waiter.wait();
    let _ = follower.wait();
    let exit = std::fs::read_to_string(&wait_out).unwrap_or_default();
    let log = std::fs::read_to_string(&logs_out).unwrap_or_default();
    assert_eq!(exit.trim(), "0", "step {step}: herd exited {exit:?} (137: killed by Docker); log:\n{log}");
    assert!(took < GRACE, "step {step}: down took {took:?}, the grace period is {GRACE:?}");
    assert!(log.contains("SIGTERM received: shutting down gracefully"), "step {step}: no drain in the log:\n{log}");
    assert!(log.contains("worker drained"), "step {step}: no worker drained:\n{log}");

    let step = steps.begin("6a (STICKY=1 docker compose up -d: one client, one worker)");
    must(&step, compose.run(&step, &["up", "-d"], &[("STICKY", "1")], docker::build_timeout()));
    healthy(&compose, &step, DEFAULT_WORKERS);
    let bodies = requests(&client(), &step, "/whoami", 10);
    let sticky: HashSet<u64> = bodies.iter().filter_map(|b| b["pid"].as_u64()).collect();
    assert_eq!(sticky.len(), 1, "step {step}: one client reached several workers: {bodies:?}");
    assert_eq!(bodies[0]["balance"], "ip-hash", "step {step}: {}", bodies[0]);
    eprintln!("in sticky mode herd sees the client as {}", bodies[0]["client"]);

    let step = steps.begin("6b (WORKERS=3 docker compose up -d: three workers)");
    must(&step, compose.run(&step, &["up", "-d"], &[("WORKERS", "3")], docker::build_timeout()));
    healthy(&compose, &step, 3);
    let bodies = requests(&client(), &step, "/whoami", 30);
    let workers: HashSet<u64> = bodies.iter().filter_map(|b| b["pid"].as_u64()).collect();
    assert_eq!(workers.len(), 3, "step {step}: 30 round-robin requests: {workers:?}");
    assert_eq!(bodies[0]["balance"], "round-robin", "step {step}: STICKY is off again: {}", bodies[0]);

    let _ = steps.begin("7 (the browser test's moves against the compose deployment)");
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime");
    runtime.block_on(async {
        let Some(browser) = Browser::start().await else { return };
        log_in(&browser.client, &format!("http://{PUBLISHED}/"), "wonderland", "#user").await;
        assert_reloads_cross_workers(&reloads(&browser.client, 10).await);
        browser.close().await;
    });

    let step = steps.begin("8 (docker compose down -v)");
    must(&step, compose.down());
    assert!(std::net::TcpStream::connect(PUBLISHED).is_err(), "step {step}: {PUBLISHED} still answers");
    steps.report();
}
