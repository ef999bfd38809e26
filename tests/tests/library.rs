//! herd-cluster as a library: the `hello` example serves any axum Router from several worker
//! processes, with the real client address, and drains on Ctrl-C.

use std::{collections::HashSet, time::Duration};

use herd_e2e::{herd::hello_example, http::Client, Herd};
use nix::sys::signal::Signal;

#[test]
fn the_hello_example_runs_a_router_in_several_workers() {
    let mut hello = Herd::spawn_program(&hello_example(), &std::env::temp_dir(), &[], &[("HELLO_BIND", "127.0.0.1:0")]);
    hello.wait_workers_ready(4, herd_e2e::herd::START_TIMEOUT);
    let client = Client::new(hello.addr).from_ip("127.0.0.3".parse().expect("literal"));
    let mut workers = HashSet::new();
    // The kernel picks a ready worker at random for each new connection: all four serve well
    // within 200 (the chance that one does not is below 10^-24).
    for _ in 0..200 {
        let res = client.get("/").expect("GET /");
        assert!(res.body.starts_with("hello 127.0.0.3:"), "ConnectInfo shows the real client: {}", res.body);
        workers.insert(res.body.split("worker ").nth(1).and_then(|r| r.split(' ').next()).map(str::to_owned));
        if workers.len() == 4 {
            break;
        }
    }
    assert_eq!(workers.len(), 4, "every one of 4 workers serves: {workers:?}");
    hello.signal(Signal::SIGINT);
    assert!(hello.wait_exit(Duration::from_secs(30)).success());
}
