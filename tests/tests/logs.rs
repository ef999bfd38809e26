//! The merged log: primary and worker lines in one stream, in files (everything / warnings and
//! errors), as JSON on request, reopened on SIGUSR1, and followed by `herd ctl logs`.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use herd_e2e::{herd::about_worker, Herd, RedisServer, TempDir};
use nix::sys::signal::Signal;

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[test]
fn log_files_in_json_with_who_wrote_each_line_reopened_on_usr1() {
    let dir = TempDir::new("logs");
    let (out, err) = (dir.path().join("out.log"), dir.path().join("err.log"));
    let redis = RedisServer::start();
    let (out_arg, err_arg) = (out.to_string_lossy().into_owned(), err.to_string_lossy().into_owned());
    let herd = Herd::start(
        &redis,
        &["--workers", "2", "--log-format", "json", "--log-file", &out_arg, "--error-log-file", &err_arg],
    );

    // A worker's death is a warning: it lands in both files.
    let pid = herd.client().get("/").expect("GET /").json()["pid"].as_u64().expect("pid") as u32;
    let mark = herd.log_len();
    herd_e2e::signal(pid, Signal::SIGKILL);
    // Wait for the death itself: lines of the workers' start-up may still be arriving. The line
    // is the contract: it is what must land in both files.
    herd.wait_log_from(mark, "the death", Duration::from_secs(30), |l| {
        l.contains("killed by SIGKILL") && about_worker(l, None, Some(pid))
    });

    let all = lines(&out);
    assert!(all.len() > 5, "{all:?}");
    let parsed: Vec<serde_json::Value> =
        all.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    assert!(
        parsed.iter().all(|v| v["pid"].as_u64().is_some() && v["process"].as_str().is_some()),
        "every line says who wrote it"
    );
    assert!(
        parsed.iter().any(|v| v["process"] == "worker" && v["worker"].as_u64().is_some()),
        "worker lines are merged in"
    );
    let warnings = lines(&err);
    assert!(
        warnings.iter().any(|l| l.contains("killed by SIGKILL") && about_worker(l, None, Some(pid))),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().all(|l| l.contains(r#""level":"WARN""#) || l.contains(r#""level":"ERROR""#)),
        "{warnings:?}"
    );

    // logrotate: move the file away, SIGUSR1, and new lines go to a fresh file.
    std::fs::rename(&out, dir.path().join("out.log.1")).expect("rotate");
    let mark = herd.log_len();
    herd.signal(Signal::SIGUSR1);
    // The line is the contract: herd says when the files were reopened.
    herd.wait_log_from(mark, "the reopen", Duration::from_secs(10), |l| l.contains("log files reopened"));
    herd.client().login();
    herd_e2e::wait_for("the login line in the new file", Duration::from_secs(10), || {
        lines(&out).iter().any(|l| l.contains("login")).then_some(())
    });
}

#[test]
fn ctl_logs_follows_the_merged_log() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let mut follower = herd.ctl_command(&["logs"]).stdout(Stdio::piped()).spawn().expect("herd ctl logs");
    let (tx, rx) = mpsc::channel();
    let stdout = follower.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Log in until the follower shows a worker's login line (it may connect after the first).
    let seen = herd_e2e::wait_for("a login line in herd ctl logs", Duration::from_secs(20), || {
        herd.client().from_ip("127.0.0.5".parse().expect("literal")).login();
        std::iter::from_fn(|| rx.recv_timeout(Duration::from_millis(200)).ok())
            .find(|l| l.contains("login") && l.contains("client=127.0.0.5"))
    });
    assert!(seen.starts_with("worker="), "a worker's line, tagged: {seen}");
    let _ = follower.kill();
    let _ = follower.wait();
}
