//! Two herd hosts behind Debian's HAProxy, on loopback: herd A on 127.0.0.2, herd B on
//! 127.0.0.3 (separate primaries, two workers each), one Redis, HAProxy on 127.0.0.1 in HTTP
//! mode (round-robin, `option forwardfor`, health checks on `/readyz`). herd trusts HAProxy's
//! `X-Forwarded-For` (`--trusted-proxies 127.0.0.1`), so it sees the real client. One host is
//! killed whole (primary and workers) and brought back; then every host is reloaded, one after
//! another, under load. The configuration is the one docs/deploy.md shows.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    time::Duration,
};

use herd_e2e::{free_port, Client, Herd, Load, RedisServer, TempDir};
use nix::sys::signal::Signal;

/// HAProxy, killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Haproxy {
    fn start(backends: &[SocketAddr]) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("an address");
        let servers: String =
            backends.iter().enumerate().map(|(i, backend)| format!("  server herd{i} {backend} check\n")).collect();
        let config = format!(
            "global\n  maxconn 2000\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  \
             retries 3\n  option redispatch\n\
             frontend web\n  bind {addr}\n  option forwardfor\n  default_backend herds\n\
             backend herds\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n  \
             default-server inter 300ms fall 2 rise 2\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy must be installed (apt-get install haproxy)");
        Haproxy { child, addr, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// herd on `host:port`, trusting HAProxy's forwarding headers.
fn host(redis: &RedisServer, bind: SocketAddr) -> Herd {
    let bind = bind.to_string();
    Herd::start(redis, &["--workers", "2", "--bind", &bind, "--trusted-proxies", "127.0.0.1"])
}

/// `GET /` through the balancer: the visit count and the pid that served it.
fn visit(client: &Client) -> Option<(u64, u64)> {
    let res = client.get("/").ok()?;
    let body = (res.status == 200).then(|| res.json())?;
    Some((body["visits"].as_u64()?, body["pid"].as_u64()?))
}

fn pids(herd: &Herd) -> BTreeSet<u64> {
    herd.worker_pids().into_iter().map(u64::from).collect()
}

#[test]
fn two_hosts_behind_haproxy_share_sessions_and_survive_a_host_kill() {
    let redis = RedisServer::start();
    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
        format!("127.0.0.2:{}", free_port()).parse().expect("an address"),
        format!("127.0.0.3:{}", free_port()).parse().expect("an address"),
    );
    let a = host(&redis, a_addr);
    let b = host(&redis, b_addr);
    let haproxy = Haproxy::start(&[a_addr, b_addr]);
    let mut client = Client::new(haproxy.addr).from_ip(IpAddr::from([127, 0, 0, 9]));
    herd_e2e::wait_for("HAProxy to find both hosts healthy", Duration::from_secs(20), || {
        let served: BTreeSet<u64> =
            (0..6).filter_map(|_| client.get("/healthz").ok()?.json()["pid"].as_u64()).collect();
        (!served.is_disjoint(&pids(&a)) && !served.is_disjoint(&pids(&b))).then_some(())
    });

    // One session across both hosts and all their workers, with an exact count.
    client.login();
    let mut served = BTreeSet::new();
    for expected in 1..=20 {
        let (visits, pid) = visit(&client).expect("GET / through HAProxy");
        assert_eq!(visits, expected, "visit count lost or skipped");
        served.insert(pid);
    }
    assert!(!served.is_disjoint(&pids(&a)) && !served.is_disjoint(&pids(&b)), "both hosts served: {served:?}");
    assert!(served.len() >= 3, "several workers: {served:?}");

    // herd sees the client HAProxy names, not HAProxy.
    let bad = client.post_json("/login", r#"{"username":"alice","password":"guess"}"#).expect("a failed login");
    assert_eq!(bad.status, 401);
    let logged = |herd: &Herd| herd.log().iter().any(|l| l.contains("failed login") && l.contains("client=127.0.0.9"));
    herd_e2e::wait_for("the real client in a host's log", Duration::from_secs(5), || {
        (logged(&a) || logged(&b)).then_some(())
    });

    // Host B dies whole; HAProxy retries on A what B refuses, and the session goes on.
    let b_pids = pids(&b);
    b.signal(Signal::SIGKILL);
    for pid in &b_pids {
        herd_e2e::signal(u32::try_from(*pid).expect("a pid"), Signal::SIGKILL);
    }
    let mut failed = 0;
    for expected in 21..=40 {
        match visit(&client) {
            Some((visits, pid)) => {
                assert_eq!(visits, expected - failed, "the count goes on");
                assert!(!b_pids.contains(&pid), "a dead worker answered");
            }
            None => failed += 1,
        }
    }
    assert!(failed <= 1, "at most the request in flight on the dead host fails: {failed}");

    // B comes back on the same address and takes traffic again.
    drop(b);
    let b = host(&redis, b_addr);
    let new_b = pids(&b);
    herd_e2e::wait_for("HAProxy to send traffic to B again", Duration::from_secs(20), || {
        visit(&client).filter(|(_, pid)| new_b.contains(pid)).map(drop)
    });

    // A rolling reload of every host, one after another, under load through HAProxy.
    let before: BTreeSet<u64> = pids(&a).union(&pids(&b)).copied().collect();
    let load = Load::start(haproxy.addr, 8, "/healthz");
    herd_e2e::wait_for("the load to flow", Duration::from_secs(10), || (load.ok_so_far() > 100).then_some(()));
    for herd in [&a, &b] {
        let (code, out, err) = herd.ctl(&["reload"]);
        assert_eq!(code, 0, "reload: {out}{err}");
    }
    let served = load.ok_so_far();
    herd_e2e::wait_for("the load to go on", Duration::from_secs(10), || {
        (load.ok_so_far() > served + 100).then_some(())
    });
    let report = load.stop();
    assert_eq!((report.failed, report.non_2xx), (0, 0), "rolling reloads lose nothing: {:?}", report.errors);
    // `reload` answers once the new workers are ready; the old ones may still be draining.
    let after = herd_e2e::wait_for("every old worker to be gone", Duration::from_secs(30), || {
        let after: BTreeSet<u64> = pids(&a).union(&pids(&b)).copied().collect();
        before.is_disjoint(&after).then_some(after)
    });
    assert!(after.iter().any(|pid| report.pids.contains(pid)), "the new workers served");
}
