//! Cluster configuration, validated once when it is built rather than discovered under traffic.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

/// How long a worker may take to drain on shutdown before it is killed.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new worker may take to report ready during a reload before the reload aborts.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How connections reach workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Every worker accepts on the inherited listener and the kernel picks (Node's `SCHED_NONE`).
    /// Cheapest; the kernel's choice can be uneven.
    Shared,
    /// The primary accepts and hands each connection to the next ready worker (Node's
    /// `SCHED_RR`).
    #[default]
    RoundRobin,
    /// The primary hands each connection to the ready worker with the fewest open connections.
    LeastConn,
    /// The primary picks the worker from the client's IP address (sticky sessions), by
    /// rendezvous hashing over slots.
    IpHash,
}

impl Balance {
    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Shared => "shared",
            Balance::RoundRobin => "round-robin",
            Balance::LeastConn => "least-conn",
            Balance::IpHash => "ip-hash",
        }
    }

    /// True when the primary accepts connections and hands them to workers.
    pub fn primary_accepts(self) -> bool {
        self != Balance::Shared
    }
}

/// Everything the primary and its workers need to agree on.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Number of worker slots (at least 1).
    pub workers: usize,
    /// Address the primary listens on; port 0 picks a free port (logged at start).
    pub bind: SocketAddr,
    /// Upper bound for a graceful shutdown; workers still alive after it are killed.
    pub shutdown_timeout: Duration,
    /// Dispatch mode.
    pub balance: Balance,
    /// How long a reload waits for each new worker to report ready.
    pub ready_timeout: Duration,
    /// Where the control socket goes; `None` derives it from the port (see
    /// [`crate::control::default_path`]).
    pub control_socket: Option<PathBuf>,
    /// Extra environment for workers, on top of the primary's own (e.g. the address of a
    /// service the primary started).
    pub worker_env: Vec<(OsString, OsString)>,
}

impl ClusterConfig {
    /// A config with one worker per CPU and the default deadlines.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            workers: default_workers(),
            bind,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            balance: Balance::default(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            control_socket: None,
            worker_env: Vec::new(),
        }
    }
}

/// One worker per CPU the process may use; 1 if that cannot be determined.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
