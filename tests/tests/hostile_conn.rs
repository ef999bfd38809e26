//! Hostile connection patterns (issue 13, items 1 and 2): a client that sends nothing, half a
//! request, a body that stalls or trickles, or sits on an idle keep-alive connection is cut
//! off after its timeout; a connection serves a bounded number of requests; and a worker
//! holds at most `--max-connections`, answering the excess with 503.

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use herd_e2e::{wait_for, Herd, RedisServer};

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(4);
const BODY_DEADLINE: Duration = Duration::from_secs(3);
/// How much later than its timeout a busy 2-core machine may close a connection.
const SLACK: Duration = Duration::from_secs(10);

fn start(redis: &RedisServer, balance: &str) -> Herd {
    Herd::start(
        redis,
        &[
            "--workers",
            "1",
            "--balance",
            balance,
            "--header-timeout",
            "1s",
            "--body-timeout",
            "1s",
            "--body-deadline",
            "3s",
            "--keepalive-timeout",
            "4s",
            "--keepalive-requests",
            "3",
        ],
    )
}

fn connect(herd: &Herd) -> TcpStream {
    let stream = TcpStream::connect(herd.addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
}

/// Reads until the server closes the connection (end of file or reset) and returns what it
/// sent; panics if it is still open after `within`.
fn read_until_closed(stream: &mut TcpStream, within: Duration, what: &str) -> String {
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: the connection is still open after {within:?}");
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{what}: {e}"),
        }
    }
    String::from_utf8_lossy(&received).into_owned()
}

/// Asserts the server keeps the connection open, sending nothing, for `quiet`.
fn assert_open_for(stream: &mut TcpStream, quiet: Duration, what: &str) {
    stream.set_read_timeout(Some(quiet)).expect("read timeout");
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("{what}: closed before {quiet:?}"),
        other => panic!("{what}: unexpected {other:?}"),
    }
}

/// Sends one keep-alive `GET path` and reads its response head and body (Content-Length).
fn get(stream: &mut TcpStream, path: &str) -> String {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: herd.test\r\n\r\n").expect("send request");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse::<usize>().ok())
                .expect("content-length");
            if body.len() >= length {
                return text;
            }
        }
        let n = stream.read(&mut buf).expect("read response");
        assert!(n > 0, "closed before a full response to {path}: {text:?}");
        received.extend_from_slice(&buf[..n]);
    }
}

fn status(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn has_header(response: &str, name: &str, value: &str) -> bool {
    let head = response.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| k.eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value))
    })
}

/// Every slow or silent client pattern is cut off, against one cluster in `balance` mode.
fn slow_clients_are_cut_off(balance: &str) {
    let redis = RedisServer::start();
    let herd = start(&redis, balance);
    let header_bound = HEADER_TIMEOUT + SLACK;

    // The patterns run side by side: each gets its own connection.
    let partials: [(&str, &[u8]); 3] = [
        ("a silent connection", b""),
        ("half a request line", b"GET /hea"),
        ("half the headers", b"GET /healthz HTTP/1.1\r\nHost: herd.test\r\nAccept: "),
    ];
    let mut waiting = Vec::new();
    for (what, bytes) in partials {
        let mut stream = connect(&herd);
        stream.write_all(bytes).expect("send");
        waiting.push(thread::spawn(move || {
            let started = Instant::now();
            let said = read_until_closed(&mut stream, header_bound, what);
            assert!(said.is_empty() || said.starts_with("HTTP/1.1 408"), "{what}: answered {said:?}");
            started.elapsed()
        }));
    }

    // Headers trickled a byte at a time, never idle for long: the header timeout counts the
    // whole head, not the pauses.
    let mut trickle = connect(&herd);
    let started = Instant::now();
    let head =
        b"GET /healthz HTTP/1.1\r\nHost: herd.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut cut_off = false;
    for byte in head {
        if trickle.write_all(&[*byte]).is_err() {
            cut_off = true;
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        cut_off || !read_until_closed(&mut trickle, header_bound, "trickled headers").starts_with("HTTP/1.1 200"),
        "trickled headers were served"
    );
    assert!(started.elapsed() < head.len() as u32 * Duration::from_millis(200) + header_bound);

    // Half a body the handler reads (a login): 408, then the connection closes.
    let mut half_body = connect(&herd);
    half_body
        .write_all(b"POST /login HTTP/1.1\r\nHost: herd.test\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user")
        .expect("send half a body");
    let said = read_until_closed(&mut half_body, Duration::from_secs(1) + SLACK, "half a body");
    assert!(said.is_empty() || status(&said) == 408, "half a body: {said:?}");
    assert!(said.is_empty() || has_header(&said, "connection", "close"), "{said:?}");

    // A body trickled a byte every 200 ms (never idle for the 1 s body timeout) is stopped by
    // the 3 s body deadline.
    let mut slow_body = connect(&herd);
    slow_body
        .write_all(b"POST /login HTTP/1.1\r\nHost: herd.test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        .expect("send head");
    let started = Instant::now();
    while started.elapsed() < BODY_DEADLINE + SLACK {
        if slow_body.write_all(b" ").is_err() {
            break;
        }
        slow_body.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
        let mut buf = [0u8; 512];
        match slow_body.read(&mut buf) {
            Ok(n) => {
                let said = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(n == 0 || status(&said) == 408, "trickled body: {said:?}");
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break, // reset: closed
        }
    }
    let took = started.elapsed();
    assert!(took >= BODY_DEADLINE - Duration::from_millis(500), "cut off after {took:?}, before the body deadline");
    assert!(took < BODY_DEADLINE + SLACK, "a trickled body was not stopped");

    for waiter in waiting {
        let took = waiter.join().expect("partial request");
        assert!(
            took >= HEADER_TIMEOUT - Duration::from_millis(200),
            "closed after {took:?}, before the header timeout"
        );
    }

    // An idle keep-alive connection stays open past the header timeout (a second request on it
    // is served) and is closed after the keep-alive timeout.
    let mut idle = connect(&herd);
    assert_eq!(status(&get(&mut idle, "/healthz")), 200);
    assert_open_for(&mut idle, HEADER_TIMEOUT * 2, "idle keep-alive");
    assert_eq!(status(&get(&mut idle, "/healthz")), 200, "a keep-alive pause longer than the header timeout");
    let idle_since = Instant::now();
    assert_open_for(&mut idle, KEEPALIVE_TIMEOUT / 2, "idle keep-alive");
    read_until_closed(&mut idle, KEEPALIVE_TIMEOUT + SLACK, "idle keep-alive");
    assert!(idle_since.elapsed() >= KEEPALIVE_TIMEOUT - Duration::from_millis(200));

    // At most 3 requests per connection; the third response says so and the server closes.
    let mut busy = connect(&herd);
    for n in 1..=3 {
        let response = get(&mut busy, "/healthz");
        assert_eq!(status(&response), 200, "request {n}");
        assert_eq!(has_header(&response, "connection", "close"), n == 3, "request {n}: {response}");
    }
    assert!(read_until_closed(&mut busy, SLACK, "after the last request").is_empty());

    assert_eq!(herd.client().get("/healthz").expect("still serving").status, 200);
    // The log is where a panic would show: no status counts them.
    assert!(!herd.log().iter().any(|l| l.contains("panicked")), "a worker panicked");
}

#[test]
fn slow_clients_are_cut_off_when_the_primary_accepts() {
    slow_clients_are_cut_off("round-robin");
}

#[test]
fn slow_clients_are_cut_off_when_workers_share_the_listener() {
    slow_clients_are_cut_off("shared");
}

/// A worker holds at most `--max-connections`: the excess gets 503 (or is closed), the held
/// connections keep working, and once they close new connections are served again.
fn connections_over_the_cap_are_refused(balance: &str) {
    const CAP: usize = 5;
    let redis = RedisServer::start();
    let herd = Herd::start(&redis, &["--workers", "1", "--balance", balance, "--max-connections", "5"]);
    let mut held: Vec<TcpStream> = (0..CAP).map(|_| connect(&herd)).collect();
    for stream in &mut held {
        assert_eq!(status(&get(stream, "/healthz")), 200, "under the cap");
    }
    for n in 0..3 {
        let mut extra = connect(&herd);
        // The request may be refused before it is even read, so a failed write is fine.
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: herd.test\r\n\r\n");
        let said = read_until_closed(&mut extra, SLACK, "a connection over the cap");
        assert!(said.is_empty() || status(&said) == 503, "extra connection {n}: {said:?}");
        if !said.is_empty() {
            assert!(has_header(&said, "retry-after", "1") && has_header(&said, "connection", "close"), "{said}");
        }
    }
    for stream in &mut held {
        assert_eq!(status(&get(stream, "/healthz")), 200, "held connections still work");
    }
    drop(held);
    wait_for("a new connection to be served after the held ones closed", SLACK, || {
        let mut fresh = connect(&herd);
        let _ = fresh.write_all(b"GET /healthz HTTP/1.1\r\nHost: herd.test\r\nConnection: close\r\n\r\n");
        let said = read_until_closed(&mut fresh, SLACK, "a fresh connection");
        (status(&said) == 200).then_some(())
    });
    // The line is the contract: an operator must learn that the cap refused connections.
    assert!(herd.log().iter().any(|l| l.contains("connection cap reached")), "the refusal is logged");
}

#[test]
fn connections_over_the_cap_are_refused_when_the_primary_accepts() {
    connections_over_the_cap_are_refused("round-robin");
}

#[test]
fn connections_over_the_cap_are_refused_when_workers_share_the_listener() {
    connections_over_the_cap_are_refused("shared");
}

/// Without `--max-connections` the cap follows the worker's descriptor limit, leaving an eighth
/// (at least 64) for its own use: 192 of 256.
#[test]
fn the_default_cap_is_derived_from_the_descriptor_limit() {
    let redis = RedisServer::start();
    let herd_bin = herd_e2e::herd::herd_bin();
    let args = [
        "--nofile=256:256",
        herd_bin.to_str().expect("utf-8 path"),
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--redis-url",
        &redis.url(),
        "--workers",
        "1",
    ];
    let herd = Herd::spawn_program(std::path::Path::new("prlimit"), &std::env::temp_dir(), &args, &[]);
    // The line is the contract: the worker reports the cap it derived.
    let ready = herd.wait_log("the worker to be ready", herd_e2e::herd::START_TIMEOUT, |l| l.contains("worker ready"));
    assert!(ready.contains("max_connections=192"), "{ready}");
}
