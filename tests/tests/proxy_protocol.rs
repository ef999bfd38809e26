//! `--proxy-protocol`: every connection starts with a PROXY header (v1 text or v2 binary,
//! written here by hand as a balancer sends it) from the one trusted proxy, 127.0.0.1. herd
//! must see the client the header names in every balance mode (the primary reads it before
//! it picks a worker; in shared mode the worker does), hash that client in ip-hash mode, and
//! close, one by one, the connections whose header is garbage, cut short, too slow or sent
//! from an untrusted address, while serving everyone else.

use std::{
    collections::{BTreeSet, HashMap},
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use herd_e2e::{herd::assert_herd_fails, proxy, Client, Herd, RedisServer};

const TRUSTED: &str = "127.0.0.1";

fn proxied_herd(redis: &RedisServer, balance: &str, workers: &str, extra: &[&str]) -> Herd {
    let mut args = vec!["--workers", workers, "--balance", balance, "--proxy-protocol", "--trusted-proxies", TRUSTED];
    args.extend(extra);
    Herd::start(redis, &args)
}

/// A client whose every connection comes from the trusted proxy with a v1 or v2 header naming
/// `client`.
fn through_proxy(herd: &Herd, client: SocketAddr, v2: bool) -> Client {
    let header = if v2 { proxy::v2(client, herd.addr) } else { proxy::v1(client, herd.addr) };
    herd.client().from_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)).with_preamble(header)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a literal address")
}

/// What the worker saw as the client of one request.
fn seen_client(client: &Client) -> String {
    let body = client.get("/whoami").expect("GET /whoami").json();
    body["client"].as_str().expect("a client address").to_owned()
}

/// Whether the server closed `stream` without answering (end of file or reset) within
/// `within`; false if it answered anything or still holds it open.
fn closed_unanswered(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(err) => !matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

fn connect_from(herd: &Herd, ip: Ipv4Addr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::new(IpAddr::V4(ip), 0).into()).expect("bind a loopback source");
    socket.connect(&herd.addr.into()).expect("connect");
    socket.into()
}

#[test]
fn every_balance_mode_sees_the_client_the_header_names() {
    let redis = RedisServer::start();
    for balance in ["shared", "round-robin", "least-conn", "ip-hash"] {
        let herd = proxied_herd(&redis, balance, "2", &[]);
        let v1 = through_proxy(&herd, addr("203.0.113.7:41000"), false);
        let v2 = through_proxy(&herd, addr("[2001:db8::9]:41001"), true);
        for _ in 0..3 {
            assert_eq!(seen_client(&v1), "203.0.113.7", "{balance}: v1");
            assert_eq!(seen_client(&v2), "2001:db8::9", "{balance}: v2");
        }
        // A health check (v2 LOCAL) names nobody: the connection's own address stands.
        let check = herd.client().with_preamble(proxy::v2_local());
        assert_eq!(check.get("/healthz").expect("GET /healthz").status, 200, "{balance}");
        assert_eq!(seen_client(&check), "127.0.0.1", "{balance}: LOCAL");
        // Keep-alive: the header comes once, then several requests follow on the connection.
        // (`/whoami` itself closes the connection outside sticky mode, for the demo page: it
        // comes last.)
        let mut conn = v1.connect().expect("connect");
        for _ in 0..3 {
            let res = conn.get("/healthz", None).unwrap_or_else(|e| panic!("{balance}: keep-alive request: {e}"));
            assert_eq!(res.status, 200, "{balance}: keep-alive");
        }
        let body = conn.get("/whoami", None).unwrap_or_else(|e| panic!("{balance}: keep-alive request: {e}")).json();
        assert_eq!(body["client"], "203.0.113.7", "{balance}: keep-alive");
        // Logs and login limits use the client too.
        let bad = v1.post_json("/login", r#"{"username":"alice","password":"guess"}"#).expect("a failed login");
        assert_eq!(bad.status, 401, "{balance}");
        herd.wait_log("the failed login naming the client", Duration::from_secs(5), |l| {
            l.contains("failed login") && l.contains("client=203.0.113.7")
        });
        // Without a header, HTTP is not mistaken for one.
        let plain = herd.client().with_timeout(Duration::from_secs(5)).get("/healthz");
        assert!(plain.is_err(), "{balance}: a connection without a PROXY header was served: {plain:?}");
    }
}

#[test]
fn sticky_spreads_fifty_clients_behind_one_proxy_and_keeps_each_on_its_worker() {
    let redis = RedisServer::start();
    let herd = proxied_herd(&redis, "ip-hash", "4", &[]);
    let workers: BTreeSet<u64> = herd.worker_pids().into_iter().map(u64::from).collect();
    let mut homes: HashMap<u8, u64> = HashMap::new();
    for round in 0..3u16 {
        for n in 1..=50u8 {
            let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, n)), 40000 + round);
            // v1 and v2 alike, each request on a new connection from 127.0.0.1.
            let body = through_proxy(&herd, client, n % 2 == 0).get("/whoami").expect("GET /whoami").json();
            assert_eq!(body["client"], client.ip().to_string());
            let pid = body["pid"].as_u64().expect("pid");
            let home = *homes.entry(n).or_insert(pid);
            assert_eq!(pid, home, "198.51.100.{n} moved from {home} to {pid} on reconnecting (round {round})");
        }
    }
    let used: BTreeSet<u64> = homes.values().copied().collect();
    assert_eq!(used, workers, "50 clients behind one proxy use every worker");
    let per_worker = |pid: u64| homes.values().filter(|&&p| p == pid).count();
    for pid in &used {
        assert!(per_worker(*pid) >= 4, "worker {pid} got {} of 50 clients: {homes:?}", per_worker(*pid));
    }
}

/// `herd_proxy_headers_rejected_total` from `herd ctl metrics`, summed by `reason` (over the
/// workers' slots in shared mode).
fn rejected_headers(herd: &Herd) -> HashMap<String, f64> {
    let (code, text, err) = herd.ctl(&["metrics"]);
    assert_eq!(code, 0, "herd ctl metrics: {err}");
    let mut by_reason = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("herd_proxy_headers_rejected_total{")) {
        let (labels, value) = line.rsplit_once(' ').expect("a sample line");
        let reason = labels.split("reason=\"").nth(1).and_then(|r| r.split('"').next()).expect("a reason label");
        *by_reason.entry(reason.to_owned()).or_default() += value.parse::<f64>().expect("a number");
    }
    by_reason
}

#[test]
fn bad_headers_close_only_their_connection() {
    let redis = RedisServer::start();
    for balance in ["round-robin", "shared"] {
        let herd = proxied_herd(&redis, balance, "2", &["--proxy-header-timeout", "1s"]);
        let good = through_proxy(&herd, addr("203.0.113.8:41000"), true);
        assert_eq!(seen_client(&good), "203.0.113.8");

        // Silent and slow proxies hold a header read each, and nothing else.
        let mut silent: Vec<TcpStream> = (0..20).map(|_| connect_from(&herd, Ipv4Addr::LOCALHOST)).collect();
        let mut slow = connect_from(&herd, Ipv4Addr::LOCALHOST);
        slow.write_all(b"PROXY TCP4 203.0.").expect("write");
        let started = Instant::now();
        for _ in 0..5 {
            assert_eq!(seen_client(&good), "203.0.113.8", "{balance}: served while headers are pending");
        }
        assert!(started.elapsed() < Duration::from_secs(1), "{balance}: waited behind pending headers");

        // Garbage, a header cut short, a v2 header too long, and a good header from an
        // untrusted source: each closed unanswered.
        let mut garbage = connect_from(&herd, Ipv4Addr::LOCALHOST);
        garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        assert!(closed_unanswered(&mut garbage, Duration::from_secs(5)), "{balance}: garbage was answered");
        let mut cut = connect_from(&herd, Ipv4Addr::LOCALHOST);
        cut.write_all(&proxy::v2(addr("203.0.113.9:1"), herd.addr)[..20]).expect("write");
        cut.shutdown(std::net::Shutdown::Write).expect("shutdown");
        assert!(closed_unanswered(&mut cut, Duration::from_secs(5)), "{balance}: a truncated header was answered");
        let mut huge = connect_from(&herd, Ipv4Addr::LOCALHOST);
        huge.write_all(&proxy::v2_raw(0x21, 0x11, &[0; 8192])).expect("write");
        assert!(closed_unanswered(&mut huge, Duration::from_secs(5)), "{balance}: an 8 KiB header was answered");
        let mut untrusted = connect_from(&herd, Ipv4Addr::new(127, 0, 0, 5));
        let header = proxy::v1(addr("203.0.113.10:1"), herd.addr);
        let _ = untrusted.write_all(&[header, b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()].concat());
        assert!(closed_unanswered(&mut untrusted, Duration::from_secs(5)), "{balance}: an untrusted source was served");

        // The slow and silent ones are closed once the header timeout passes.
        assert!(closed_unanswered(&mut slow, Duration::from_secs(5)), "{balance}: the slow header was kept");
        assert!(started.elapsed() >= Duration::from_millis(900), "{balance}: closed before the header timeout");
        for conn in &mut silent {
            assert!(closed_unanswered(conn, Duration::from_secs(5)), "{balance}: a silent connection was kept");
        }
        herd.wait_log("the rejection line", Duration::from_secs(5), |l| l.contains("without serving them"));
        assert_eq!(seen_client(&good), "203.0.113.8", "{balance}: still accepting");
        assert_eq!(herd.status()["workers"].as_array().map(Vec::len), Some(2), "{balance}");

        // Each closed connection is counted once, by reason: by the primary in round-robin
        // mode, by the workers (summed over slots) in shared mode.
        let rejected = rejected_headers(&herd);
        let expected = [("malformed", 2.0), ("timeout", 21.0), ("truncated", 1.0), ("untrusted", 1.0), ("io", 0.0)];
        for (reason, n) in expected {
            assert_eq!(rejected.get(reason).copied(), Some(n), "{balance}: {reason} in {rejected:?}");
        }
    }
}

#[test]
fn the_proxy_protocol_without_trusted_proxies_refuses_to_start() {
    assert_herd_fails(
        &["serve", "--bind", "127.0.0.1:0", "--redis-url", "redis://127.0.0.1:1", "--proxy-protocol"],
        &[("HERD_TRUSTED_PROXIES", None)],
        1,
        &["PROXY protocol", "--trusted-proxies"],
    );
}
