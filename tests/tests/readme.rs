//! The README's terminal session, run for real: the commands after `$ ` in its `console` block,
//! against a test cluster instead of port 3000, must print what the README shows (same shape,
//! same user, visits counting up, more than one PID across fresh connections).

use herd_e2e::{Herd, RedisServer, TempDir};

#[test]
fn the_readme_curl_session_does_what_it_says() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let block = readme.split("```console\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a console block");
    // Commands start with `$ `; a trailing backslash continues them on the next line.
    let mut commands = Vec::new();
    let mut current: Option<String> = None;
    for line in block.lines() {
        match (&mut current, line.strip_prefix("$ ")) {
            (_, Some(start)) => current = Some(start.to_owned()),
            (Some(cmd), None) if cmd.ends_with('\\') => {
                cmd.pop();
                cmd.push_str(line.trim_start());
            }
            _ => {}
        }
        if let Some(cmd) = current.take_if(|c| !c.ends_with('\\')) {
            commands.push(cmd);
        }
    }
    assert_eq!(commands.len(), 2, "{commands:?}");

    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3"]);
    let dir = TempDir::new("readme");
    let mut output = String::new();
    for cmd in &commands {
        let cmd = cmd.replace("127.0.0.1:3000", &herd.addr.to_string());
        let out =
            std::process::Command::new("bash").arg("-c").arg(&cmd).current_dir(dir.path()).output().expect("bash");
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        output.push('\n');
    }
    let lines: Vec<serde_json::Value> = output
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("JSON output"))
        .collect();
    assert_eq!(lines[0], serde_json::json!({ "user": "alice" }));
    let pages = &lines[1..];
    assert_eq!(pages.len(), 3);
    for (i, page) in pages.iter().enumerate() {
        assert_eq!(page["user"], "alice");
        assert_eq!(page["visits"], i as u64 + 1);
        for key in ["message", "pid", "worker", "balance", "uptime_s"] {
            assert!(!page[key].is_null(), "{key} missing: {page}");
        }
    }
    // The kernel picks a worker at random for each new connection (the README says so): three
    // in a row meet one worker 1 time in 9, so more requests show the change it promises.
    let mut pids: std::collections::HashSet<_> = pages.iter().map(|p| p["pid"].clone()).collect();
    let client = herd.client();
    for _ in 0..50 {
        if pids.len() >= 2 {
            break;
        }
        pids.insert(client.get("/").expect("GET /").json()["pid"].clone());
    }
    assert!(pids.len() >= 2, "the README promises changing PIDs: {pids:?}");
}
