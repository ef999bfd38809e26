//! herd hosts behind real balancers, on loopback, as docs/deploy.md deploys them.
//!
//! - Three hosts (127.0.0.2, .3 and .4; separate primaries, two workers each) behind Debian's
//!   HAProxy on 127.0.0.1 in TCP mode with `send-proxy-v2`, all on one Redis Cluster: herd reads
//!   the client from the PROXY header (`--proxy-protocol --trusted-proxies 127.0.0.1`). One host
//!   is killed whole (primary and workers) under load and brought back; then every host is
//!   reloaded, one after another, under load.
//! - Two hosts behind HAProxy in HTTP mode, on one plain Redis: herd takes the client from
//!   HAProxy's `X-Forwarded-For`.
//! - Two hosts behind nginx's `stream` module with `proxy_protocol on` (a v1 header).
//!
//! Figures (requests lost per host kill) are printed; run with `--nocapture` to see them.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use herd_e2e::{
    balancer::{haproxy_config, nginx_stream_config},
    free_port, Balancer, Client, HaproxyMode, Herd, Load, RedisCluster, RedisServer,
};
use nix::sys::signal::Signal;

/// Where the test's client connects from: the address herd must report, not the balancer's.
const CLIENT: [u8; 4] = [127, 0, 0, 9];

/// One herd host: its own primary and workers on its own loopback address.
struct Host {
    bind: SocketAddr,
    redis_url: String,
    args: Vec<&'static str>,
    herd: Option<Herd>,
}

impl Host {
    /// herd on 127.0.0.`n`, two workers, trusting the balancer on 127.0.0.1.
    fn start(redis_url: &str, n: u8, args: &[&'static str]) -> Host {
        let bind = SocketAddr::from(([127, 0, 0, n], free_port()));
        let mut host = Host { bind, redis_url: redis_url.to_owned(), args: args.to_vec(), herd: None };
        host.restart();
        host
    }

    fn restart(&mut self) {
        assert!(self.herd.is_none(), "the host runs");
        let bind = self.bind.to_string();
        let mut args = vec!["--bind", &bind, "--trusted-proxies", "127.0.0.1"];
        args.extend(&self.args);
        self.herd = Some(Herd::start_at(&self.redis_url, &args, &[]));
    }

    fn herd(&self) -> &Herd {
        self.herd.as_ref().expect("the host runs")
    }

    fn pids(&self) -> BTreeSet<u64> {
        self.herd().worker_pids().into_iter().map(u64::from).collect()
    }

    /// `SIGKILL` to the primary and every worker, as when the machine dies; returns once none
    /// of them runs (their sockets are closed by then: the kernel does that before a process
    /// becomes a zombie). Returns the workers' pids.
    fn kill(&mut self) -> BTreeSet<u64> {
        let pids = self.pids();
        let primary = self.herd().pid();
        self.herd().signal(Signal::SIGKILL);
        let all: Vec<u32> =
            pids.iter().map(|pid| u32::try_from(*pid).expect("a pid")).chain(std::iter::once(primary)).collect();
        for &pid in &all {
            herd_e2e::signal(pid, Signal::SIGKILL);
        }
        herd_e2e::wait_for("the host's processes to be gone", Duration::from_secs(10), || {
            all.iter().all(|&pid| !herd_e2e::process_alive(pid)).then_some(())
        });
        self.herd = None;
        pids
    }
}

fn all_pids(hosts: &[Host]) -> BTreeSet<u64> {
    hosts.iter().flat_map(Host::pids).collect()
}

/// `GET /` through the balancer: the visit count and the pid that served it.
fn visit(client: &Client) -> Option<(u64, u64)> {
    let res = client.get("/").ok()?;
    let body = (res.status == 200).then(|| res.json())?;
    Some((body["visits"].as_u64()?, body["pid"].as_u64()?))
}

/// Waits until requests through the balancer reach every host.
fn wait_every_host_serves(client: &Client, hosts: &[Host]) {
    let per_host: Vec<BTreeSet<u64>> = hosts.iter().map(Host::pids).collect();
    let mut served = BTreeSet::new();
    herd_e2e::wait_for("the balancer to find every host healthy", Duration::from_secs(30), || {
        served.extend((0..hosts.len()).filter_map(|_| client.get("/healthz").ok()?.json()["pid"].as_u64()));
        per_host.iter().all(|pids| !served.is_disjoint(pids)).then_some(())
    });
}

/// Logs in through the balancer and makes `n` visits: every count exact, every host and
/// several workers serving the one session. Returns the pids that served.
fn one_session_everywhere(client: &mut Client, hosts: &[Host], n: u64) -> BTreeSet<u64> {
    client.login();
    let mut served = BTreeSet::new();
    for expected in 1..=n {
        let (visits, pid) = visit(client).expect("GET / through the balancer");
        assert_eq!(visits, expected, "visit count lost or skipped");
        served.insert(pid);
    }
    for host in hosts {
        assert!(!served.is_disjoint(&host.pids()), "every host served: {served:?}");
    }
    assert!(served.len() > hosts.len(), "several workers: {served:?}");
    served
}

/// herd sees the client the balancer names: a failed login is logged with it.
fn the_real_client_is_logged(client: &Client, hosts: &[Host]) {
    let bad = client.post_json("/login", r#"{"username":"alice","password":"guess"}"#).expect("a failed login");
    assert_eq!(bad.status, 401);
    let wanted = format!("client={}", IpAddr::from(CLIENT));
    let logged = |herd: &Herd| herd.log().iter().any(|l| l.contains("failed login") && l.contains(&wanted));
    herd_e2e::wait_for("the real client in a host's log", Duration::from_secs(5), || {
        hosts.iter().any(|h| logged(h.herd())).then_some(())
    });
}

/// With a PROXY header, the connection itself is the client's: `/whoami` shows it.
fn the_real_client_is_the_peer(client: &Client) {
    let me = client.get("/whoami").expect("GET /whoami").json();
    assert_eq!(me["client"], IpAddr::from(CLIENT).to_string(), "{me}");
}

#[test]
fn three_hosts_behind_haproxy_in_tcp_mode_with_proxy_protocol_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let proxied = ["--workers", "2", "--proxy-protocol"];
    let mut hosts: Vec<Host> = (2..=4).map(|n| Host::start(&cluster.url(), n, &proxied)).collect();
    let haproxy = Balancer::haproxy(HaproxyMode::TcpProxyV2, &hosts.iter().map(|h| h.bind).collect::<Vec<_>>());
    let mut client = Client::new(haproxy.addr).from_ip(IpAddr::from(CLIENT));
    wait_every_host_serves(&client, &hosts);

    one_session_everywhere(&mut client, &hosts, 50);
    the_real_client_is_the_peer(&client);
    the_real_client_is_logged(&client, &hosts);

    // The middle host dies whole under a load of 6 clients, each with one request in flight at
    // most (a new connection each); HAProxy routes around it and the session goes on.
    const CLIENTS: usize = 6;
    let load = Load::churn(haproxy.addr, CLIENTS, "/healthz");
    herd_e2e::wait_for("the load to flow", Duration::from_secs(10), || (load.ok_so_far() > 50).then_some(()));
    let killed_at = Instant::now();
    let dead = hosts[1].kill();
    let mut visits = 50;
    for _ in 0..20 {
        let (count, pid) = visit(&client).expect("the session is served by the hosts left");
        visits += 1;
        assert_eq!(count, visits, "the count goes on, exactly");
        assert!(!dead.contains(&pid), "a dead worker answered");
    }
    let served = load.ok_so_far();
    herd_e2e::wait_for("the load to go on", Duration::from_secs(10), || (load.ok_so_far() > served + 50).then_some(()));
    let report = load.stop();
    eprintln!(
        "host kill (3 hosts, HAProxy tcp + send-proxy-v2, {CLIENTS} clients, new connection per request): \
         {} failed, {} non-2xx, {} served; the session's next 20 requests after the kill all served ({:?})",
        report.failed,
        report.non_2xx,
        report.ok,
        killed_at.elapsed()
    );
    assert_eq!(report.non_2xx, 0, "{:?}", report.errors);
    // What was in flight on the host: each client's request, and, for a client whose request
    // failed first, its retry if that reached the host before the last of its processes died.
    // The kill is one signal per process, and a listener closes only when the last process
    // holding it is gone: the primary alone with `--steering primary`, the primary and the
    // slot's workers under kernel steering (docs/deploy.md, "Several hosts").
    assert!(
        report.failed <= 2 * CLIENTS as u64,
        "at most the requests in flight on the dead host fail: {:?}",
        report.errors
    );

    // It comes back on the same address and takes traffic again.
    hosts[1].restart();
    let back = hosts[1].pids();
    herd_e2e::wait_for("HAProxy to send traffic to the host again", Duration::from_secs(20), || {
        visit(&client).filter(|(_, pid)| back.contains(pid)).map(drop)
    });

    // A rolling reload of every host, one after another, under keep-alive load.
    let before = all_pids(&hosts);
    let load = Load::start(haproxy.addr, 8, "/healthz");
    herd_e2e::wait_for("the load to flow", Duration::from_secs(10), || (load.ok_so_far() > 100).then_some(()));
    for host in &hosts {
        let (code, out, err) = host.herd().ctl(&["reload"]);
        assert_eq!(code, 0, "reload: {out}{err}");
    }
    let served = load.ok_so_far();
    herd_e2e::wait_for("the load to go on", Duration::from_secs(10), || {
        (load.ok_so_far() > served + 100).then_some(())
    });
    let report = load.stop();
    eprintln!(
        "rolling reload of 3 hosts (8 keep-alive clients through HAProxy tcp): {} served, {} failed",
        report.ok, report.failed
    );
    assert_eq!((report.failed, report.non_2xx), (0, 0), "rolling reloads lose nothing: {:?}", report.errors);
    // `reload` answers once the new workers are ready; the old ones may still be draining.
    let after = herd_e2e::wait_for("every old worker to be gone", Duration::from_secs(30), || {
        let after = all_pids(&hosts);
        before.is_disjoint(&after).then_some(after)
    });
    assert!(after.iter().any(|pid| report.pids.contains(pid)), "the new workers served");
}

/// HTTP mode: HAProxy ends the client's connection and names the client in `X-Forwarded-For`,
/// which herd believes from `--trusted-proxies` only.
#[test]
fn two_hosts_behind_haproxy_in_http_mode_see_the_client_in_x_forwarded_for() {
    let redis = RedisServer::start();
    let hosts: Vec<Host> = (2..=3).map(|n| Host::start(&redis.url(), n, &["--workers", "2"])).collect();
    let haproxy = Balancer::haproxy(HaproxyMode::Http, &hosts.iter().map(|h| h.bind).collect::<Vec<_>>());
    let mut client = Client::new(haproxy.addr).from_ip(IpAddr::from(CLIENT));
    wait_every_host_serves(&client, &hosts);
    one_session_everywhere(&mut client, &hosts, 20);
    the_real_client_is_logged(&client, &hosts);
}

/// nginx `stream` with `proxy_protocol on` (a v1 header) in front of herd `--proxy-protocol`.
#[test]
fn two_hosts_behind_nginx_stream_with_proxy_protocol_see_the_real_client() {
    let redis = RedisServer::start();
    let proxied = ["--workers", "2", "--proxy-protocol"];
    let hosts: Vec<Host> = (2..=3).map(|n| Host::start(&redis.url(), n, &proxied)).collect();
    let nginx = Balancer::nginx_stream(&hosts.iter().map(|h| h.bind).collect::<Vec<_>>());
    let mut client = Client::new(nginx.addr).from_ip(IpAddr::from(CLIENT));
    wait_every_host_serves(&client, &hosts);
    // 30 visits, 15 per host: each host's kernel picks a worker at random, and with 10 both
    // hosts put all of theirs on one worker 1 time in 256 (then "several workers" fails).
    one_session_everywhere(&mut client, &hosts, 30);
    the_real_client_is_the_peer(&client);
    the_real_client_is_logged(&client, &hosts);
    assert!(!nginx.error_log().contains("[emerg]"), "{}", nginx.error_log());
}

/// docs/deploy.md shows the balancer configurations these tests run, for three production
/// hosts.
#[test]
fn deploy_md_shows_the_configurations_the_tests_run() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/deploy.md")).expect("deploy.md");
    let hosts: Vec<String> = (2..=4).map(|n| format!("10.0.0.{n}:3000")).collect();
    for (what, config) in [
        ("HAProxy, TCP mode", haproxy_config(HaproxyMode::TcpProxyV2, "*:80", &hosts)),
        ("HAProxy, HTTP mode", haproxy_config(HaproxyMode::Http, "*:80", &hosts)),
        ("nginx stream", nginx_stream_config("80", &hosts)),
    ] {
        assert!(doc.contains(&config), "docs/deploy.md should show the {what} configuration:\n{config}");
    }
}
