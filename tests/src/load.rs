//! A bounded load generator for reload and scaling tests: N client threads, each with one
//! keep-alive connection to a loopback address, sending requests back to back. A response with
//! `Connection: close` makes the client open a new connection for the next request, as real
//! HTTP clients do; anything else that breaks a connection counts as a failure.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use crate::http::{Client, Conn};

/// What the clients saw.
#[derive(Debug, Default, Clone)]
pub struct LoadReport {
    pub ok: u64,
    /// Responses other than 2xx.
    pub non_2xx: u64,
    /// Requests that got no response (reset, closed under the client, refused).
    pub failed: u64,
    pub errors: Vec<String>,
    /// Pids that served requests (from the JSON body's `pid`).
    pub pids: HashSet<u64>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoadReport>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` threads requesting `path` (which must answer JSON with a `pid`), each on
    /// one keep-alive connection at a time.
    pub fn start(addr: SocketAddr, clients: usize, path: &'static str) -> Load {
        Load::start_with(addr, clients, path, Connections::KeepAlive)
    }

    /// Like [`Load::start`], with a new connection for every request.
    pub fn churn(addr: SocketAddr, clients: usize, path: &'static str) -> Load {
        Load::start_with(addr, clients, path, Connections::NewEach)
    }

    fn start_with(addr: SocketAddr, clients: usize, path: &'static str, connections: Connections) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, report) = (Arc::clone(&stop), Arc::clone(&report));
                std::thread::spawn(move || client_loop(addr, path, connections, &stop, &report))
            })
            .collect();
        Load { stop, report, threads }
    }

    /// Requests served so far (to wait until the load is really flowing).
    pub fn ok_so_far(&self) -> u64 {
        self.report.lock().map(|r| r.ok).unwrap_or(0)
    }

    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        let report = self.report.lock().expect("report lock").clone();
        report
    }
}

/// How a load client uses connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connections {
    KeepAlive,
    NewEach,
}

fn client_loop(addr: SocketAddr, path: &str, connections: Connections, stop: &AtomicBool, report: &Mutex<LoadReport>) {
    let client = Client::new(addr);
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let current = match conn.take() {
            Some(c) => Ok(c),
            None => client.connect(),
        };
        let result = current.and_then(|mut c| c.get(path, None).map(|res| (c, res)));
        let mut r = report.lock().expect("report lock");
        match result {
            Ok((c, res)) => {
                if (200..300).contains(&res.status) {
                    r.ok += 1;
                    if let Some(pid) =
                        serde_json::from_str::<serde_json::Value>(&res.body).ok().and_then(|b| b["pid"].as_u64())
                    {
                        r.pids.insert(pid);
                    }
                } else {
                    r.non_2xx += 1;
                    r.errors.push(format!("{} {}", res.status, res.body));
                }
                if connections == Connections::KeepAlive
                    && !res.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
                {
                    conn = Some(c);
                }
            }
            Err(err) => {
                r.failed += 1;
                r.errors.push(err.to_string());
            }
        }
    }
}
