//! The command line as a user meets it: flags, environment variables, `herd users`, and the
//! no-Docker quick start that runs a private redis-server.

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use herd_e2e::{
    herd::{assert_herd_fails, herd_bin},
    process_alive, Herd, RedisServer, TempDir,
};
use nix::sys::signal::Signal;

#[test]
fn bad_flags_are_clear_errors() {
    for (args, needle) in [
        (&["serve", "--balance", "fastest"][..], "invalid value 'fastest'"),
        (&["serve", "--workers", "0"][..], "--workers"),
        (&["serve", "--shutdown-timeout", "soon"][..], "--shutdown-timeout"),
        (&["serve", "--demo-user", "alice"][..], "NAME:PASSWORD"),
        (&["serve", "--bind", "nowhere"][..], "--bind"),
    ] {
        assert_herd_fails(args, &[], 2, &[needle]);
    }
}

#[test]
fn every_serve_flag_reads_an_environment_variable() {
    let redis = RedisServer::start();
    let url = redis.url();
    let herd = Herd::spawn(
        &["serve"],
        &[
            ("HERD_BIND", "127.0.0.1:0"),
            ("HERD_WORKERS", "2"),
            ("REDIS_URL", &url),
            ("HERD_DEMO_USER", "alice:wonderland,bob:builder"),
            ("HERD_SECURE_COOKIES", "false"),
            ("HERD_COOKIE_NAME", "sid"),
            ("HERD_BALANCE", "shared"),
            ("HERD_SHUTDOWN_TIMEOUT", "5s"),
        ],
    );
    herd.wait_workers_ready(2, herd_e2e::herd::START_TIMEOUT);
    let res = herd.client().post_json("/login", r#"{"username":"bob","password":"builder"}"#).expect("login");
    assert_eq!(res.status, 200, "{}", res.body);
    let cookie = res.header("set-cookie").expect("cookie");
    assert!(cookie.starts_with("sid=") && !cookie.contains("Secure"), "{cookie}");
    herd.signal(Signal::SIGTERM);
    // The line is the contract: the shutdown timeout in force shows nowhere else.
    herd.wait_log("the shutdown timeout from HERD_SHUTDOWN_TIMEOUT", Duration::from_secs(10), |l| {
        l.contains("(timeout 5s)")
    });
}

/// The README's flag table is where users look: a flag or environment variable that `herd serve
/// --help` offers but the table lacks is a doc that fell behind the code.
#[test]
fn the_readme_lists_every_serve_flag_and_its_environment_variable() {
    let help = Command::new(herd_bin()).args(["serve", "--help"]).output().expect("herd serve --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let flags: Vec<&str> = help
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| line.split([' ', ',']).find(|word| word.starts_with("--")))
        .filter(|flag| *flag != "--help")
        .collect();
    let envs: Vec<&str> = help.split("[env: ").skip(1).filter_map(|rest| rest.split('=').next()).collect();
    assert!(flags.contains(&"--threads") && envs.contains(&"HERD_THREADS"), "parsed the help: {flags:?} {envs:?}");
    let missing: Vec<&&str> = flags.iter().chain(&envs).filter(|name| !readme.contains(&format!("`{name}"))).collect();
    assert!(missing.is_empty(), "README.md's flag table lacks {missing:?}");
}

#[test]
fn users_add_reads_the_password_from_stdin() {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut child = Command::new(herd_bin())
        .args(["users", "add", "carol", "--redis-url", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run herd users add");
    child.stdin.take().expect("stdin").write_all(b"s3cret pass\n").expect("write password");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hash = redis.cli(&["HGET", "herd:user:carol", "password"]).expect("user stored");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("s3cret"));

    let herd = Herd::start(&redis, &["--workers", "1"]);
    let login = herd.client().post_json("/login", r#"{"username":"carol","password":"s3cret pass"}"#).expect("login");
    assert_eq!(login.status, 200, "{}", login.body);

    let empty = Command::new(herd_bin())
        .args(["users", "add", "dave", "--redis-url", &url])
        .stdin(Stdio::null())
        .output()
        .expect("run herd users add");
    assert_eq!(empty.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no password"));
}

#[test]
fn debug_routes_are_refused_off_loopback() {
    let redis = RedisServer::start();
    let url = redis.url();
    assert_herd_fails(
        &["serve", "--bind", "0.0.0.0:0", "--redis-url", &url, "--debug-routes"],
        &[],
        1,
        &["--debug-routes", "loopback"],
    );
}

#[test]
fn unreachable_redis_is_a_clear_startup_error_after_the_start_timeout() {
    let port = herd_e2e::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let args = ["serve", "--bind", "127.0.0.1:0", "--redis-url", &url, "--workers", "1", "--redis-start-timeout", "2s"];
    let stderr =
        assert_herd_fails(&args, &[], 1, &["waiting for Redis", "cannot reach Redis", "--redis-url", "waited"]);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(15), "gave up after {took:?}: {stderr}");

    // 0: one attempt, no wait.
    let args = ["serve", "--bind", "127.0.0.1:0", "--redis-url", &url, "--workers", "1", "--redis-start-timeout", "0"];
    let stderr = assert_herd_fails(&args, &[("HERD_REDIS_START_TIMEOUT", None)], 1, &["cannot reach Redis"]);
    assert!(!stderr.contains("waiting for Redis"), "{stderr}");
}

/// Containers and systemd start Redis and herd side by side: a Redis that answers a few
/// seconds after herd started is waited for, and said so.
#[test]
fn herd_waits_at_start_for_a_redis_that_comes_up_late() {
    let port = herd_e2e::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let dir = TempDir::new("late-redis");
    let mut herd = Command::new(herd_bin())
        .args(["serve", "--bind", "127.0.0.1:0", "--redis-url", &url, "--workers", "1"])
        .args(["--demo-user", "alice:wonderland", "--redis-start-timeout", "60s"])
        .env("HERD_CONTROL_SOCKET", dir.path().join("ctl.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start herd");
    let (sender, lines) = std::sync::mpsc::channel();
    let stderr = herd.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_line = |what: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(what) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("herd never logged {what:?}; it logged:\n{}", seen.join("\n")),
            }
        }
    };
    wait_line("waiting for Redis");
    let redis = RedisServer::start_on(port);
    wait_line("answers after");
    wait_line("demo user alice is ready");
    assert_eq!(redis.keys("herd:user:*"), ["herd:user:alice"], "herd went on with its start");
    herd_e2e::signal(herd.id(), nix::sys::signal::Signal::SIGTERM);
    let status = herd_e2e::wait_for("herd to exit", Duration::from_secs(20), || herd.try_wait().ok().flatten());
    assert_eq!(status.code(), Some(0));
}

/// The quick start without Redis depends on nothing answering at the default address; a
/// machine that runs its own Redis there cannot show it.
fn default_redis_is_free() -> bool {
    let taken =
        std::net::TcpStream::connect_timeout(&"127.0.0.1:6379".parse().expect("literal"), Duration::from_millis(300))
            .is_ok();
    if taken {
        eprintln!(
            "SKIPPED: something listens on 127.0.0.1:6379, so herd would use it instead of a private redis-server"
        );
    }
    !taken
}

#[test]
fn without_redis_herd_starts_a_private_one_and_stops_it_on_exit() {
    if !default_redis_is_free() {
        return;
    }
    let cwd = TempDir::new("private-redis");
    let mut herd = Herd::spawn_in(
        cwd.path(),
        &[
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--demo-user",
            "alice:wonderland",
            "--secure-cookies",
            "false",
        ],
        &[],
    );
    herd.wait_ready(herd_e2e::herd::START_TIMEOUT);
    let redis_pid = herd_e2e::herd::children(herd.pid())
        .into_iter()
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "redis-server"))
        .expect("a redis-server child of herd");
    let mut client = herd.client();
    client.login();
    assert_eq!(client.get("/").expect("GET /").json()["visits"], 1);
    assert!(cwd.path().join(".herd/redis").is_dir());

    herd.signal(Signal::SIGTERM);
    assert_eq!(herd.wait_exit(Duration::from_secs(30)).code(), Some(0));
    assert!(!process_alive(redis_pid), "the private redis-server outlived herd");
    // The line is the contract: herd tells the operator it stopped what it started.
    assert!(herd.log().iter().any(|l| l.contains("private redis-server stopped")));
}

#[test]
fn without_redis_or_redis_server_herd_says_how_to_get_one() {
    if !default_redis_is_free() {
        return;
    }
    let env = [("REDIS_URL", None), ("PATH", Some("/nonexistent"))];
    assert_herd_fails(
        &["serve", "--bind", "127.0.0.1:0", "--workers", "1"],
        &env,
        1,
        &["redis-server is not on PATH", "--redis-url"],
    );
}

/// A configuration the cluster refuses (`ClusterConfig::validate`) starts nothing: herd exits
/// with the reason before it looks for Redis, so no private redis-server (whose data directory
/// would appear in the working directory) and no demo user in a configured Redis.
#[test]
fn a_refused_configuration_starts_no_redis_and_seeds_no_users() {
    let cwd = TempDir::new("refused-config");
    let out = Command::new(herd_bin())
        .args(["serve", "--bind", "127.0.0.1:0", "--shutdown-timeout", "0s", "--demo-user", "erin:pw"])
        .env_remove("REDIS_URL")
        .current_dir(cwd.path())
        .output()
        .expect("run herd serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("shutdown_timeout must be longer than zero"), "{stderr}");
    assert!(!cwd.path().join(".herd").exists(), "a refused config started a private redis-server: {stderr}");
    assert!(!stderr.contains("redis-server"), "{stderr}");

    let redis = RedisServer::start();
    let url = redis.url();
    let args =
        ["serve", "--bind", "127.0.0.1:0", "--redis-url", &url, "--ready-timeout", "0s", "--demo-user", "erin:pw"];
    assert_herd_fails(&args, &[], 1, &["ready_timeout must be longer than zero"]);
    assert_eq!(
        redis.cli(&["EXISTS", "herd:user:erin"]).as_deref().map(str::trim),
        Some("0"),
        "a refused config seeded a user"
    );
}

#[test]
fn sticky_from_the_environment_takes_the_usual_boolean_spellings() {
    // docker-compose.yml passes STICKY=${STICKY:-0}; `STICKY=1 docker compose up` turns it on.
    let redis = RedisServer::start();
    let url = redis.url();
    for (value, balance) in [("1", "ip-hash"), ("0", "round-robin"), ("yes", "ip-hash"), ("false", "round-robin")] {
        let herd = Herd::spawn(
            &["serve", "--bind", "127.0.0.1:0", "--workers", "1", "--redis-url", &url],
            &[("STICKY", value)],
        );
        herd.wait_ready(herd_e2e::herd::START_TIMEOUT);
        assert_eq!(herd.client().get("/").expect("GET /").json()["balance"], balance, "STICKY={value}");
    }
    // An unclear value is an error, not a guess.
    assert_herd_fails(&["serve"], &[("STICKY", Some("maybe"))], 2, &["--sticky"]);
}

/// `--threads` sets each worker's async runtime: one thread by default, N if asked (the worker
/// logs what its runtime reports).
#[test]
fn threads_sets_the_runtime_threads_of_each_worker() {
    let redis = RedisServer::start();
    for (args, expected) in
        [(&["--workers", "1"][..], "threads=1"), (&["--workers", "1", "--threads", "3"][..], "threads=3")]
    {
        let herd = Herd::start(&redis, args);
        // The line is the contract: the worker reports the threads its runtime has.
        let ready = herd.wait_log("the worker's ready line", Duration::from_secs(5), |l| l.contains("worker ready"));
        assert!(ready.contains(expected), "a worker started with {args:?} logged {ready}");
    }
}

/// `herd --version` and the status say which code runs: the version and the build (the git
/// commit herd was built from, `HERD_BUILD_ID` where there is no checkout), and when the
/// primary started.
#[test]
fn the_version_names_the_build_and_the_status_repeats_it() {
    let out = Command::new(herd_bin()).arg("--version").output().expect("herd --version");
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let build = printed
        .strip_prefix(&format!("herd {} (build ", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("herd VERSION (build ID): {printed:?}"));
    assert!(
        build == "unknown" || (build.len() == 12 && build.bytes().all(|b| b.is_ascii_hexdigit())),
        "a commit or unknown: {build:?}"
    );

    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1"]);
    let status = herd.status();
    assert_eq!(status["version"], printed.as_str(), "{status}");
    let started = status["started_unix_s"].as_u64().expect("a start time");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs();
    assert!(started <= now && now - started < 120, "started {started}, now {now}");
    let (code, table, _) = herd.ctl(&["status"]);
    assert_eq!(code, 0);
    assert!(table.starts_with(&printed), "the table names it too: {table}");
}
