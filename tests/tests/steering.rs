//! Kernel steering (the default for round-robin and ip-hash): one listener per slot, a BPF
//! program choosing among them, the primary accepting nothing while every slot is ready.
//! Distinct clients come from distinct source addresses in 127.0.0.0/8.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use herd_e2e::{herd::workers, wait_for, Client, Herd, Load, RedisServer};
use nix::sys::signal::Signal;

fn client_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// The slot that served one fresh-connection request.
fn served_by(client: &Client) -> u64 {
    client.get("/whoami").expect("request").json()["worker"].as_u64().expect("worker")
}

/// Connections the primary accepted itself so far.
fn accepted_by_primary(herd: &Herd) -> u64 {
    herd.status()["accepted"].as_u64().expect("accepted")
}

#[test]
fn the_kernel_spreads_new_connections_and_the_primary_accepts_none() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3"]);
    assert_eq!(herd.status()["steering"], "kernel");
    let before = accepted_by_primary(&herd);
    let mut per_slot: HashMap<u64, usize> = HashMap::new();
    for _ in 0..150 {
        *per_slot.entry(served_by(&herd.client())).or_default() += 1;
    }
    assert_eq!(accepted_by_primary(&herd), before, "the primary accepted connections: {per_slot:?}");
    assert_eq!(per_slot.len(), 3, "{per_slot:?}");
    // Random, so not exactly 50 each: 25 is more than eight standard deviations below.
    assert!(per_slot.values().all(|&n| n >= 25), "{per_slot:?}");
}

#[test]
fn the_primary_steers_when_asked_and_when_the_kernel_cannot_see_the_client() {
    let redis = RedisServer::start();
    let asked = Herd::start(&redis, &["--workers", "2", "--steering", "primary"]);
    let before = accepted_by_primary(&asked);
    for _ in 0..10 {
        served_by(&asked.client());
    }
    assert_eq!(asked.status()["steering"], "primary");
    assert_eq!(accepted_by_primary(&asked), before + 10);
    // ip-hash behind a PROXY-protocol balancer: the client is in the header, after the
    // handshake, where no kernel program looks.
    let proxied =
        Herd::start(&redis, &["--workers", "2", "--sticky", "--proxy-protocol", "--trusted-proxies", "127.0.0.1"]);
    assert_eq!(proxied.status()["steering"], "primary");
    // round-robin under the PROXY protocol: the kernel steers, the workers read the headers.
    let spread = Herd::start(&redis, &["--workers", "2", "--proxy-protocol", "--trusted-proxies", "127.0.0.1"]);
    assert_eq!(spread.status()["steering"], "kernel");
    let client = spread.client().with_preamble(b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n".to_vec());
    assert_eq!(client.get("/whoami").expect("GET /whoami").json()["client"], "198.51.100.7");
}

/// Sticky by the kernel: each address keeps its worker; one slot more moves only the
/// addresses that slot wins (about 1/N), one slot fewer sends them back.
#[test]
fn sticky_addresses_keep_their_worker_and_a_new_slot_takes_only_its_share() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "3", "--sticky"]);
    assert_eq!(herd.status()["steering"], "kernel");
    let clients: Vec<Client> = (2..62).map(|n| herd.client().from_ip(client_ip(n))).collect();
    let before = accepted_by_primary(&herd);
    let homes: Vec<u64> = clients
        .iter()
        .map(|client| {
            let seen: HashSet<u64> = (0..3).map(|_| served_by(client)).collect();
            assert_eq!(seen.len(), 1, "one address reached workers {seen:?}");
            seen.into_iter().next().expect("one")
        })
        .collect();
    assert_eq!(accepted_by_primary(&herd), before, "the primary accepted connections");
    assert_eq!(homes.iter().collect::<HashSet<_>>().len(), 3, "60 addresses used only {homes:?}");

    let (code, _, err) = herd.ctl(&["scale", "4"]);
    assert_eq!(code, 0, "{err}");
    herd.wait_workers_ready(4, Duration::from_secs(30));
    let grown: Vec<u64> = clients.iter().map(served_by).collect();
    let moved: Vec<(u64, u64)> = homes.iter().zip(&grown).filter(|(h, g)| h != g).map(|(h, g)| (*h, *g)).collect();
    assert!(moved.iter().all(|&(_, to)| to == 3), "an address moved between old slots: {moved:?}");
    assert!((1..=27).contains(&moved.len()), "{} of 60 moved to the new slot (15 expected)", moved.len());

    let (code, _, err) = herd.ctl(&["scale", "3"]);
    assert_eq!(code, 0, "{err}");
    wait_for("slot 3 to be gone", Duration::from_secs(30), || {
        workers(&herd.status()).iter().all(|w| w.slot != 3).then_some(())
    });
    let back: Vec<u64> = clients.iter().map(served_by).collect();
    assert_eq!(back, homes, "after scaling back every address is home");
}

/// Everything that replaces or removes a worker, under new-connection and keep-alive load:
/// nothing fails, because every slot's listener outlives its workers and the primary takes
/// what is queued on a slot that is not ready.
#[test]
fn reloads_scaling_restarts_and_an_upgrade_under_load_fail_nothing() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let churn = Load::churn(herd.addr, 6, "/healthz");
    let steady = Load::start(herd.addr, 4, "/healthz");
    wait_for("load to flow", Duration::from_secs(10), || (churn.ok_so_far() > 200).then_some(()));
    for step in [&["reload"][..], &["scale", "4"], &["scale", "1"], &["scale", "2"], &["restart", "0"]] {
        let (code, out, err) = herd.ctl(step);
        assert_eq!(code, 0, "{step:?}: {out}{err}");
        if step[0] == "scale" {
            let n: usize = step[1].parse().expect("a count");
            wait_for("the new count", Duration::from_secs(30), || {
                let status = herd.status();
                let all = workers(&status);
                (all.len() == n && all.iter().all(|w| w.state == "ready")).then_some(())
            });
        }
    }
    let (code, out, err) = herd.upgrade();
    assert_eq!(code, 0, "upgrade: {out}{err}");
    let ok_then = churn.ok_so_far();
    wait_for("load after the upgrade", Duration::from_secs(10), || (churn.ok_so_far() > ok_then + 200).then_some(()));
    let (churned, kept) = (churn.stop(), steady.stop());
    eprintln!("steering under load: churn {churned:?}, keep-alive {} ok {} failed", kept.ok, kept.failed);
    for (what, report) in [("new connections", &churned), ("keep-alive", &kept)] {
        assert_eq!((report.failed, report.non_2xx), (0, 0), "{what}: {:?}", report.errors);
    }
    assert!(churned.pids.len() >= 4, "served by only {:?}", churned.pids);
}

/// A killed worker loses only what it had accepted: what waits in its slot's queue is served
/// by the others (the primary takes it) or by its replacement, and nothing is refused.
#[test]
fn a_killed_workers_queue_is_served_not_refused() {
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "2"]);
    let clients = 6;
    let churn = Load::churn(herd.addr, clients, "/healthz");
    wait_for("load to flow", Duration::from_secs(10), || (churn.ok_so_far() > 200).then_some(()));
    let kills = 3;
    for _ in 0..kills {
        let victim = herd.worker_pids()[0];
        herd_e2e::signal(victim, Signal::SIGKILL);
        herd.wait_replaced(0, victim, Duration::from_secs(30));
        let ok_then = churn.ok_so_far();
        wait_for("load after the restart", Duration::from_secs(10), || {
            (churn.ok_so_far() > ok_then + 100).then_some(())
        });
    }
    let report = churn.stop();
    eprintln!("kernel steering, {kills} kills under {clients} churning clients: {report:?}");
    assert!(report.errors.iter().all(|e| !e.contains("refused")), "{:?}", report.errors);
    // At most what each killed worker was serving: one request per client.
    assert!(report.failed <= kills * clients as u64, "{} failed", report.failed);
    assert_eq!(report.non_2xx, 0);
}
