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

/// When to restart workers that die, and when to stop trying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First delay after a worker died soon after starting; doubles with each further one.
    pub backoff_base: Duration,
    /// Longest delay between restarts.
    pub backoff_cap: Duration,
    /// A slot whose workers die more than this many times within `window` is marked
    /// `errored` and left down (0: never give up).
    pub max_restarts: u32,
    /// See `max_restarts`.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(15),
            max_restarts: 10,
            window: Duration::from_secs(60),
        }
    }
}

/// Reasons to replace a healthy-looking worker before it dies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recycling {
    /// A worker that sent no heartbeat for this long is killed and replaced.
    pub worker_timeout: Duration,
    /// A worker whose resident memory exceeds this many bytes is replaced gracefully.
    pub max_memory: Option<u64>,
    /// A worker that served this many requests (plus a random 0..=`max_requests_jitter`) is
    /// replaced gracefully, one slot at a time.
    pub max_requests: Option<u64>,
    /// See `max_requests`.
    pub max_requests_jitter: u64,
}

impl Default for Recycling {
    fn default() -> Self {
        Self { worker_timeout: Duration::from_secs(30), max_memory: None, max_requests: None, max_requests_jitter: 0 }
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
    /// Restarting workers that die.
    pub restart: RestartPolicy,
    /// Replacing workers that hang, grow or age.
    pub recycling: Recycling,
    /// Where the control socket goes; `None` derives it from the port (see
    /// [`crate::control::default_path`]).
    pub control_socket: Option<PathBuf>,
    /// Extra environment for workers, on top of the primary's own (e.g. the address of a
    /// service the primary started).
    pub worker_env: Vec<(OsString, OsString)>,
    /// Where the merged log goes. With a sink, workers' output is captured and merged into it
    /// (and `herd ctl logs` can follow it); without one, workers write to the inherited stderr.
    pub logs: Option<crate::logs::LogSink>,
    /// The arguments workers are started with (after argv[0]); `None` gives them the
    /// primary's own. Every local user can read a process's arguments (`/proc/PID/cmdline`):
    /// an app whose command line may hold secrets passes the public part here and the
    /// secrets through `worker_env`.
    pub worker_args: Option<Vec<OsString>>,
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
            restart: RestartPolicy::default(),
            recycling: Recycling::default(),
            control_socket: None,
            worker_env: Vec::new(),
            logs: None,
            worker_args: None,
        }
    }
}

/// One worker per CPU the process may use; 1 if that cannot be determined.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
