//! Command-line interface. `herd serve --help` is the reference for every flag.

use std::{net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{builder::BoolishValueParser, ArgAction, Args, Parser, Subcommand, ValueEnum};
use herd_cluster::{Balance, Steering};

fn parse_trusted_proxies(list: &str) -> Result<herd_cluster::forwarded::TrustedProxies, String> {
    list.parse().map_err(|err: herd_cluster::forwarded::BadProxy| err.to_string())
}

/// What `herd --version` prints after the name: the version and the build (see `build.rs`;
/// `option_env!` because rustdoc compiles without the build script's variables).
pub(crate) fn version() -> String {
    format!("{} (build {})", env!("CARGO_PKG_VERSION"), option_env!("HERD_BUILD_ID").unwrap_or("unknown"))
}

/// Where Redis is looked for when none is configured (and where the no-Docker quick start
/// probes before starting a private one).
pub(crate) const DEFAULT_REDIS_ADDR: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 6379);
/// [`DEFAULT_REDIS_ADDR`] as a URL.
pub(crate) fn default_redis_url() -> String {
    format!("redis://{DEFAULT_REDIS_ADDR}")
}

/// Where `serve` listens when not told (and whose port `ctl` derives the control socket from).
pub(crate) const DEFAULT_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 3000);

/// A multi-process HTTP server: N axum workers on one port, sessions shared through Redis.
#[derive(Debug, Parser)]
#[command(name = "herd", version = version(), about, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the primary and its workers.
    Serve(Box<ServeArgs>),
    /// Manage users stored in Redis.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Control a running primary through its control socket.
    Ctl(CtlArgs),
    /// Print a systemd unit that runs `herd serve` with the given flags (`Type=notify`: the
    /// primary reports ready once every worker is).
    SystemdUnit(Box<SystemdUnitArgs>),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Reads a password on standard input and prints its argon2id PHC string. `herd serve`'s
    /// primary runs itself with this to hash the demo users' passwords in a short-lived child,
    /// so the hash's 19 MiB never stay in the long-lived primary ([`crate::users::hasher`]).
    #[command(hide = true)]
    HashPassword,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a commented herd.toml with every key and its default.
    Example,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The primary's control socket [default: derived from the port of HERD_BIND, as `serve`
    /// does]
    #[arg(long, env = "HERD_CONTROL_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Give up when the primary does not accept or answer within this long [default: 10s;
    /// 10m for reload, restart and upgrade, which wait for every new worker to be ready]
    #[arg(long, env = "HERD_CTL_TIMEOUT", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every worker: slot, pid, state, uptime, restarts, memory, open connections.
    Status {
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Replace every worker, one at a time, each after its successor is ready; exits non-zero
    /// with the reason if a new worker fails.
    Reload,
    /// Hand over to a new primary running the binary on disk (like SIGUSR2), without refusing
    /// a connection: it starts its own workers, and once all are ready this primary stops
    /// accepting, drains its workers and exits. Exits non-zero with the reason if the new one
    /// fails or is not ready within --ready-timeout (this primary then keeps serving).
    Upgrade,
    /// Set the number of workers: N, +K or -K.
    Scale {
        #[arg(allow_hyphen_values = true)]
        count: ScaleArg,
    },
    /// Gracefully replace the worker of one slot.
    Restart { slot: usize },
    /// Send a JSON message to every worker (the app resets its stats on
    /// '{"type":"reset-stats"}').
    Broadcast { json: String },
    /// Send a JSON message to the worker of one slot.
    Send { slot: usize, json: String },
    /// Every series of the cluster and its workers, in the Prometheus text format (what
    /// GET /metrics on --metrics-bind serves).
    Metrics,
    /// Follow the merged log of the primary and its workers (Ctrl-C to stop).
    Logs,
    /// A live `status` view, refreshed every second (Ctrl-C to stop).
    Top,
    /// Shut the cluster down gracefully (like SIGTERM).
    Stop,
}

/// `N`, `+K` or `-K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleArg {
    To(usize),
    By(i64),
}

impl FromStr for ScaleArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |_| format!("expected N, +K or -K, not {s:?}");
        if s.starts_with(['+', '-']) {
            s.parse().map(ScaleArg::By).map_err(bad)
        } else {
            s.parse().map(ScaleArg::To).map_err(bad)
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user or change its password; the password is read from standard input.
    Add {
        /// The user name (letters, digits, `_ . @ -`; at most 64).
        name: String,
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Change a user's password (read from standard input) and end all of its sessions.
    Passwd {
        /// The user name.
        name: String,
        #[command(flatten)]
        redis: RedisArgs,
    },
}

/// Where Redis is.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL [default: redis://127.0.0.1:6379; with `serve`, a private redis-server is
    /// started when nothing answers there]. The command line is visible to every local user
    /// (`ps`, /proc/PID/cmdline): put a password in REDIS_URL or --redis-url-file instead.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Read the Redis URL from this file (its first line; wins over --redis-url), so that its
    /// password is in neither the command line nor the environment.
    #[arg(long, env = "HERD_REDIS_URL_FILE")]
    pub redis_url_file: Option<PathBuf>,
    /// Prefix of every Redis key herd writes.
    #[arg(long, env = "HERD_KEY_PREFIX", default_value = herd_session_store::keys::DEFAULT_PREFIX)]
    pub key_prefix: String,
    /// PEM file of the CA that signed Redis's certificate, for a `rediss://` URL (default: the
    /// system's roots). A `rediss://` URL is always TLS, never a plaintext fallback.
    #[arg(long, env = "REDIS_CA_CERT")]
    pub redis_ca_cert: Option<PathBuf>,
    /// Redis connections per process. Redis runs one command at a time, so one connection
    /// carrying all of a worker's concurrent commands (pipelined: one write and one read for
    /// many) costs both sides less than several; more only help when a slow command must not
    /// hold up the others.
    #[arg(long, env = "HERD_REDIS_POOL_SIZE", default_value_t = herd_session_store::pool::DEFAULT_POOL_SIZE,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub redis_pool_size: u16,
    /// Longest a Redis command may take (waiting for a reconnection included) before the
    /// request using it gets 503: the bound on how long an outage or a failover can hold a
    /// request.
    #[arg(long, env = "HERD_REDIS_COMMAND_TIMEOUT", default_value = duration_text(herd_session_store::pool::DEFAULT_COMMAND_TIMEOUT), value_parser = parse_timeout)]
    pub redis_command_timeout: Duration,
    /// A revocation (logout, "log out everywhere", a password change, the old session of a
    /// login) is confirmed only once this many replicas have it (`WAIT`; at most those
    /// connected, so none without replicas), so a failover cannot bring a session back. 0:
    /// never wait. Skipped on a Redis Cluster.
    #[arg(long, env = "HERD_REDIS_WAIT_REPLICAS", default_value_t = herd_session_store::replication::DEFAULT_WAIT_REPLICAS)]
    pub redis_wait_replicas: u32,
    /// How long a revocation waits for those replicas; fewer in time answers 503.
    #[arg(long, env = "HERD_REDIS_WAIT_TIMEOUT", default_value = duration_text(herd_session_store::replication::DEFAULT_WAIT_TIMEOUT), value_parser = parse_timeout)]
    pub redis_wait_timeout: Duration,
}

impl RedisArgs {
    /// How to connect to Redis at `url` with these arguments.
    pub(crate) fn config(&self, url: String) -> herd_session_store::RedisConfig {
        let mut config = herd_session_store::RedisConfig::new(url);
        config.ca_cert = self.redis_ca_cert.clone();
        config.pool_size = usize::from(self.redis_pool_size);
        config.command_timeout = self.redis_command_timeout;
        config
    }

    /// How revocations wait for replicas.
    pub(crate) fn replica_wait(&self) -> herd_session_store::ReplicaWait {
        herd_session_store::ReplicaWait { replicas: self.redis_wait_replicas, timeout: self.redis_wait_timeout }
    }
}

#[derive(Debug, Clone, Args)]
pub struct SystemdUnitArgs {
    /// Also print a `herd.socket` unit that holds the listening socket (socket activation):
    /// connections then wait in the kernel's queue while herd restarts, never refused.
    #[arg(long = "socket")]
    pub socket_unit: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Read flags from this TOML file (keys are the long flags with _ for -; flags and
    /// environment variables win). `herd config example` prints one.
    #[arg(long, env = "HERD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Number of worker processes [default: number of CPUs]
    #[arg(long, env = "HERD_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Async runtime threads per worker. 1 is a process per core, as in Node's cluster and
    /// gunicorn: a request and its Redis reply never wake another thread, which measured
    /// 10-20 % less worker CPU per Redis-backed request (docs/benchmarks.md). More threads let
    /// one worker use several cores (`--workers 1 --threads 4`).
    #[arg(long, env = "HERD_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
    /// Address to listen on (port 0 picks a free port, logged at start).
    #[arg(long, env = "HERD_BIND", default_value_t = DEFAULT_BIND)]
    pub bind: SocketAddr,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// At start, how long to wait for a configured Redis that does not answer yet (containers
    /// and systemd start services side by side), saying so in the log; then herd exits 1. A
    /// Redis that refuses herd (a wrong password, an untrusted certificate) stops it at once.
    /// 0: try once.
    #[arg(long, env = "HERD_REDIS_START_TIMEOUT", default_value = duration_text(crate::serve::DEFAULT_REDIS_START_TIMEOUT), value_parser = parse_duration)]
    pub redis_start_timeout: Duration,
    /// How connections reach workers.
    #[arg(long, env = "HERD_BALANCE", value_enum, default_value_t = Balance::default())]
    pub balance: Balance,
    /// Who puts each connection on a worker in round-robin and ip-hash: the kernel (one
    /// listener per slot, chosen by a BPF program: the primary does no work per connection) or
    /// the primary (it accepts and passes each one over a Unix socket). ip-hash under
    /// --proxy-protocol, least-conn, and a kernel that refuses the listeners use the primary.
    #[arg(long, env = "HERD_STEERING", value_enum, default_value_t = Steering::default())]
    pub steering: Steering,
    /// Sticky sessions: the same client IP always reaches the same worker (same as
    /// `--balance ip-hash`; `STICKY=1` in the environment).
    #[arg(long, env = "STICKY", value_parser = BoolishValueParser::new())]
    pub sticky: bool,
    /// Longest graceful shutdown; workers still running after it are killed (e.g. 30s, 500ms).
    #[arg(long, env = "HERD_SHUTDOWN_TIMEOUT", default_value = duration_text(herd_cluster::config::DEFAULT_SHUTDOWN_TIMEOUT), value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// During a reload, how long each new worker may take to report ready before the reload
    /// is aborted (the old workers keep serving).
    #[arg(long, env = "HERD_READY_TIMEOUT", default_value = duration_text(herd_cluster::config::DEFAULT_READY_TIMEOUT), value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// Unix socket for `herd ctl` (mode 0600) [default: herd-PORT.sock in $XDG_RUNTIME_DIR/herd,
    /// else /tmp/herd-UID; herd creates that directory 0700 and refuses one that another user
    /// owns or others may write]
    #[arg(long, env = "HERD_CONTROL_SOCKET")]
    pub control_socket: Option<PathBuf>,
    /// Delay before restarting a worker that died soon after starting, as MIN..MAX: MIN first,
    /// doubling with each further quick death, up to MAX.
    #[arg(long, env = "HERD_RESTART_BACKOFF", default_value = backoff_text(herd_cluster::config::DEFAULT_BACKOFF_BASE, herd_cluster::config::DEFAULT_BACKOFF_CAP), value_parser = parse_backoff)]
    pub restart_backoff: (Duration, Duration),
    /// A slot whose workers die more than this many times within --restart-window is marked
    /// errored and left down (0: never give up).
    #[arg(long, env = "HERD_MAX_RESTARTS", default_value_t = herd_cluster::config::DEFAULT_MAX_RESTARTS)]
    pub max_restarts: u32,
    /// See --max-restarts.
    #[arg(long, env = "HERD_RESTART_WINDOW", default_value = duration_text(herd_cluster::config::DEFAULT_RESTART_WINDOW), value_parser = parse_duration)]
    pub restart_window: Duration,
    /// A worker that sends no heartbeat (its runtime is stuck) for this long is killed and
    /// replaced, whether it serves or still starts (workers beat while they wait for Redis).
    #[arg(long, env = "HERD_WORKER_TIMEOUT", default_value = duration_text(herd_cluster::config::DEFAULT_WORKER_TIMEOUT), value_parser = parse_duration)]
    pub worker_timeout: Duration,
    /// Replace a worker gracefully when its resident memory exceeds this (e.g. 512MiB, 2GiB);
    /// checked every second.
    #[arg(long, env = "HERD_MAX_MEMORY", value_parser = parse_size)]
    pub max_memory: Option<u64>,
    /// Replace a worker gracefully after it served this many requests (plus a random
    /// 0..=--max-requests-jitter), one slot at a time.
    #[arg(long, env = "HERD_MAX_REQUESTS")]
    pub max_requests: Option<u64>,
    /// See --max-requests.
    #[arg(long, env = "HERD_MAX_REQUESTS_JITTER", default_value_t = 0)]
    pub max_requests_jitter: u64,
    /// Also write every log line (primary and workers) to this file; reopened on SIGUSR1.
    #[arg(long, env = "HERD_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Also write warnings and errors to this file; reopened on SIGUSR1.
    #[arg(long, env = "HERD_ERROR_LOG_FILE")]
    pub error_log_file: Option<PathBuf>,
    /// Log line format.
    #[arg(long, env = "HERD_LOG_FORMAT", value_enum, default_value_t = crate::logging::LogFormat::Pretty)]
    pub log_format: crate::logging::LogFormat,
    /// Serve /debug/block, /debug/alloc and /debug/crash (for tests and demos; refused unless
    /// --bind is a loopback address).
    #[arg(long, env = "HERD_DEBUG_ROUTES", value_parser = BoolishValueParser::new())]
    pub debug_routes: bool,
    /// Create or update this user at start, as NAME:PASSWORD (repeatable; comma-separated in
    /// the environment variable). The command line is visible to every local user: prefer
    /// HERD_DEMO_USER or --demo-user-file for real passwords.
    #[arg(long = "demo-user", env = "HERD_DEMO_USER", value_delimiter = ',')]
    pub demo_users: Vec<DemoUser>,
    /// Mark the session cookie `Secure` (browsers then send it over HTTPS only). Turn off for
    /// plain-HTTP demos.
    #[arg(long, env = "HERD_SECURE_COOKIES", default_value_t = true, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub secure_cookies: bool,
    /// Name of the session cookie.
    #[arg(long, env = "HERD_COOKIE_NAME", default_value = "herd_session")]
    pub cookie_name: String,
    /// A session ends after this long without requests (reads count too).
    #[arg(long, env = "HERD_SESSION_IDLE", default_value = duration_text(herd_session_store::store::DEFAULT_SESSION_IDLE), value_parser = parse_duration)]
    pub session_idle: Duration,
    /// A session ends this long after login, however active.
    #[arg(long, env = "HERD_SESSION_MAX_AGE", default_value = duration_text(herd_session_store::store::DEFAULT_SESSION_MAX_AGE), value_parser = parse_duration)]
    pub session_max_age: Duration,
    /// After a login replaces a session, the old id keeps working this long for requests
    /// already in flight (read-only in effect: it is never extended).
    #[arg(long, env = "HERD_SESSION_GRACE", default_value = duration_text(herd_session_store::store::DEFAULT_SESSION_GRACE), value_parser = parse_duration)]
    pub session_grace: Duration,
    /// Which session store: herd's, or the stock tower-sessions-redis-store 0.16 (the
    /// benchmark's baseline: no merged saves, no touch, no typed failures).
    #[arg(long, env = "HERD_SESSION_STORE", value_enum, default_value_t = SessionStoreKind::Herd, hide = true)]
    pub session_store: SessionStoreKind,
    /// Largest session (names and JSON values); a request that would grow it beyond gets 413.
    #[arg(long, env = "HERD_SESSION_MAX_BYTES", default_value = size_text(herd_session_store::store::DEFAULT_SESSION_MAX_BYTES as u64), value_parser = parse_size)]
    pub session_max_bytes: u64,
    /// File descriptors each herd process keeps free for its own work (starting workers, the
    /// control socket, logs, Redis): a connection that would use one is closed at once, with a
    /// rate-limited warning. At most half the open files limit, which herd raises to the hard
    /// limit at start.
    #[arg(long, env = "HERD_FD_RESERVE", default_value_t = herd_cluster::config::DEFAULT_FD_RESERVE)]
    pub fd_reserve: usize,
    /// Largest `n` of `/heavy?n=` and `/heavy/cached?n=` (1e9 is about 0.3 s of one core in a
    /// release build); more is a 400.
    #[arg(long, env = "HERD_HEAVY_MAX_N", default_value_t = crate::routes::heavy::DEFAULT_MAX_N, value_parser = parse_heavy_n)]
    pub heavy_max_n: u64,
    /// `/heavy` computations running at once per worker (each stops when its client goes);
    /// a request beyond waits --heavy-queue-wait for a slot, then gets 503 + Retry-After.
    #[arg(long, env = "HERD_HEAVY_CONCURRENCY", default_value_t = crate::routes::heavy::DEFAULT_CONCURRENCY as u16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub heavy_concurrency: u16,
    /// See --heavy-concurrency.
    #[arg(long, env = "HERD_HEAVY_QUEUE_WAIT", default_value = duration_text(crate::routes::heavy::DEFAULT_QUEUE_WAIT), value_parser = parse_duration)]
    pub heavy_queue_wait: Duration,
    /// Entries the shared cache may write per window (the longest TTL of what it wrote), so
    /// never more alive at once; past it values are answered but not stored.
    #[arg(long, env = "HERD_CACHE_MAX_ENTRIES", default_value_t = herd_session_store::cache::DEFAULT_MAX_ENTRIES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_max_entries: u64,
    /// Bytes (keys, values, overhead) the shared cache may write per window; see
    /// --cache-max-entries.
    #[arg(long, env = "HERD_CACHE_MAX_BYTES", default_value = size_text(herd_session_store::cache::DEFAULT_MAX_BYTES), value_parser = parse_size)]
    pub cache_max_bytes: u64,
    /// A cache value larger than this is answered but never stored.
    #[arg(long, env = "HERD_CACHE_MAX_VALUE_BYTES", default_value = size_text(herd_session_store::cache::DEFAULT_MAX_VALUE_BYTES as u64), value_parser = parse_size)]
    pub cache_max_value_bytes: u64,
    /// How long a connection waits for a worker that can serve it (none ready, or the ready
    /// ones stopped answering heartbeats) before the primary answers it 503 + Retry-After
    /// itself (at once when every slot is errored; /healthz too, so a balancer takes the host
    /// out). In shared mode: how long no worker may serve before the primary answers so.
    #[arg(long, env = "HERD_QUEUE_TIMEOUT", default_value = duration_text(herd_cluster::config::DEFAULT_QUEUE_TIMEOUT), value_parser = parse_duration)]
    pub queue_timeout: Duration,
    /// A client must send a request's line and headers within this long (from connecting, or
    /// from its first byte after a keep-alive pause), or the connection is closed.
    #[arg(long, env = "HERD_HEADER_TIMEOUT", default_value = duration_text(herd_cluster::config::DEFAULT_HEADER_TIMEOUT), value_parser = parse_timeout)]
    pub header_timeout: Duration,
    /// A request body that pauses this long between two reads is abandoned with 408.
    #[arg(long, env = "HERD_BODY_TIMEOUT", default_value = duration_text(herd_cluster::config::DEFAULT_BODY_TIMEOUT), value_parser = parse_timeout)]
    pub body_timeout: Duration,
    /// A whole request body must arrive within this long after its headers, or 408.
    #[arg(long, env = "HERD_BODY_DEADLINE", default_value = duration_text(herd_cluster::config::DEFAULT_BODY_DEADLINE), value_parser = parse_timeout)]
    pub body_deadline: Duration,
    /// An idle keep-alive connection is closed after this long.
    #[arg(long, env = "HERD_KEEPALIVE_TIMEOUT", default_value = duration_text(herd_cluster::config::DEFAULT_KEEPALIVE_TIMEOUT), value_parser = parse_timeout)]
    pub keepalive_timeout: Duration,
    /// A response the client reads none of for this long is abandoned and the connection
    /// closed.
    #[arg(long, env = "HERD_SEND_TIMEOUT", default_value = duration_text(herd_cluster::config::DEFAULT_SEND_TIMEOUT), value_parser = parse_timeout)]
    pub send_timeout: Duration,
    /// Requests served on one connection; the last response says `Connection: close`.
    #[arg(long, env = "HERD_KEEPALIVE_REQUESTS", default_value_t = herd_cluster::config::DEFAULT_KEEPALIVE_REQUESTS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_requests: u64,
    /// Open client connections per worker; one more gets a 503 with Retry-After (or is closed)
    /// [default: the worker's open-file limit (ulimit -n) minus an eighth, at least 64, kept
    /// for Redis, IPC and logs: 896 of 1024]
    #[arg(long, env = "HERD_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub max_connections: Option<u64>,
    /// Login attempts allowed for one user name from one client (IPv4 address or IPv6 /64)
    /// per --login-limit-window; then 429.
    #[arg(long, env = "HERD_LOGIN_LIMIT_PER_USER_ADDRESS", default_value_t = crate::users::limit::DEFAULT_PER_USER_ADDRESS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_limit_per_user_address: u32,
    /// Login attempts allowed for one user name from all clients together per window (stops
    /// distributed guessing; keep it well above the per-user-address limit, so that one
    /// client cannot lock the user out).
    #[arg(long, env = "HERD_LOGIN_LIMIT_PER_USER", default_value_t = crate::users::limit::DEFAULT_PER_USER,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_limit_per_user: u32,
    /// Login attempts allowed from one client (IPv4 address or IPv6 /64), any user names, per
    /// window.
    #[arg(long, env = "HERD_LOGIN_LIMIT_PER_ADDRESS", default_value_t = crate::users::limit::DEFAULT_PER_ADDRESS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_limit_per_address: u32,
    /// The login limits' window, from a counter's first attempt.
    #[arg(long, env = "HERD_LOGIN_LIMIT_WINDOW", default_value = duration_text(crate::users::limit::DEFAULT_WINDOW), value_parser = parse_duration)]
    pub login_limit_window: Duration,
    /// Password hashes (argon2, 19 MiB each) running at once per worker; more logins wait
    /// for --login-queue-timeout, then get 503 [default: number of CPUs]
    #[arg(long, env = "HERD_LOGIN_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub login_concurrency: Option<u16>,
    /// How long a login waits for a free hashing slot before it gets 503 + Retry-After.
    #[arg(long, env = "HERD_LOGIN_QUEUE_TIMEOUT", default_value = duration_text(crate::users::DEFAULT_HASH_QUEUE_TIMEOUT), value_parser = parse_duration)]
    pub login_queue_timeout: Duration,
    /// Proxies (addresses or CIDR blocks, comma-separated) whose `X-Forwarded-For` /
    /// `Forwarded` headers name the client, for rate limits, logs and pages: the rightmost hop
    /// that is not one of them. Empty: such headers are ignored, so no client can pick its
    /// address.
    #[arg(long, env = "HERD_TRUSTED_PROXIES", default_value = "", value_parser = parse_trusted_proxies)]
    pub trusted_proxies: herd_cluster::forwarded::TrustedProxies,
    /// Every connection starts with a PROXY protocol header (v1 or v2; HAProxy `send-proxy-v2`,
    /// nginx `proxy_protocol on`) naming the client, for rate limits, logs, pages and ip-hash.
    /// Requires --trusted-proxies: a connection from anywhere else is closed, as is one whose
    /// header is malformed, truncated or late.
    #[arg(long, env = "HERD_PROXY_PROTOCOL", value_parser = BoolishValueParser::new())]
    pub proxy_protocol: bool,
    /// With --proxy-protocol: a connection's whole PROXY header must arrive within this long,
    /// or the connection is closed.
    #[arg(long, env = "HERD_PROXY_HEADER_TIMEOUT", default_value = duration_text(herd_cluster::proxy_protocol::DEFAULT_HEADER_TIMEOUT), value_parser = parse_timeout)]
    pub proxy_header_timeout: Duration,
    /// With --proxy-protocol: PROXY headers read at once per accepting process (the primary,
    /// or each worker in shared mode); beyond it new connections wait in the kernel's queue.
    #[arg(long, env = "HERD_PROXY_HEADERS_PENDING", default_value_t = herd_cluster::proxy_protocol::DEFAULT_MAX_PENDING as u32,
          value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    pub proxy_headers_pending: u32,
    /// Origins (scheme://host[:port]) besides herd's own whose pages may send POST/DELETE
    /// requests (comma-separated in the environment variable). Others get 403.
    #[arg(long = "allowed-origins", env = "HERD_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = crate::routes::origin::parse_origin)]
    pub allowed_origins: Vec<String>,
    // Control channel and secrets (issue 13).
    /// Serve `POST /stats/reset` and `DELETE /heavy/cached`, which change state for every
    /// client, to anyone who reaches the port; off, they answer 403 (`herd ctl broadcast
    /// '{"type":"reset-stats"}'` still resets the stats).
    #[arg(long, env = "HERD_ADMIN_ROUTES", value_parser = BoolishValueParser::new())]
    pub admin_routes: bool,
    /// Read the demo users from this file, one NAME:PASSWORD per line (blank lines and `#`
    /// comments skipped), instead of the command line, which every local user can read.
    #[arg(long, env = "HERD_DEMO_USER_FILE")]
    pub demo_user_file: Option<PathBuf>,
    // Metrics (issue 16).
    /// Serve the primary's admin listener here: GET /metrics in the Prometheus text format
    /// (off when not set). An address other than loopback requires --metrics-token.
    #[arg(long, env = "HERD_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// Require `Authorization: Bearer TOKEN` on the admin listener. The command line is visible
    /// to every local user: prefer HERD_METRICS_TOKEN or --metrics-token-file.
    #[arg(long, env = "HERD_METRICS_TOKEN")]
    pub metrics_token: Option<String>,
    /// Read the admin listener's token from this file (its first line; wins over
    /// --metrics-token).
    #[arg(long, env = "HERD_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
}

impl ServeArgs {
    /// What `/heavy` may cost one worker.
    pub(crate) fn heavy_limits(&self) -> crate::routes::heavy::HeavyLimits {
        crate::routes::heavy::HeavyLimits {
            max_n: self.heavy_max_n,
            concurrency: usize::from(self.heavy_concurrency),
            queue_wait: self.heavy_queue_wait,
        }
    }

    /// How much of Redis the shared cache may use.
    pub(crate) fn cache_limits(&self) -> herd_session_store::cache::CacheLimits {
        herd_session_store::cache::CacheLimits {
            max_entries: self.cache_max_entries,
            max_bytes: self.cache_max_bytes,
            max_value_bytes: usize::try_from(self.cache_max_value_bytes).unwrap_or(usize::MAX),
        }
    }
}

/// `1e9`-style or plain integers.
fn parse_heavy_n(s: &str) -> Result<u64, String> {
    crate::routes::heavy::parse_n(s, u64::MAX).ok_or_else(|| format!("{s:?} is not a whole number like 1e9"))
}

/// `--session-store` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SessionStoreKind {
    Herd,
    Stock,
}

impl ServeArgs {
    /// The dispatch mode, with `--sticky` taking precedence.
    pub(crate) fn balance(&self) -> Balance {
        if self.sticky {
            Balance::IpHash
        } else {
            self.balance
        }
    }
}

impl ServeArgs {
    /// The timeouts and caps of workers' client connections.
    pub(crate) fn connection_limits(&self) -> herd_cluster::ConnectionLimits {
        herd_cluster::ConnectionLimits {
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            body_deadline: self.body_deadline,
            keepalive_timeout: self.keepalive_timeout,
            send_timeout: self.send_timeout,
            keepalive_requests: self.keepalive_requests,
            max_connections: self.max_connections.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        }
    }
}

/// `NAME:PASSWORD` from `--demo-user`.
#[derive(Debug, Clone)]
pub struct DemoUser {
    pub name: String,
    pub password: String,
}

impl FromStr for DemoUser {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((name, password)) if !name.is_empty() && !password.is_empty() => {
                Ok(DemoUser { name: name.to_owned(), password: password.to_owned() })
            }
            _ => Err("expected NAME:PASSWORD, both non-empty".to_owned()),
        }
    }
}

/// A default duration as `--help` shows it and [`parse_duration`] reads it back: in the largest
/// unit that keeps it a whole number worth reading (`100ms`, `75s`, `60s`, `5m`, `12h`).
fn duration_text(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    match secs {
        s if s.is_multiple_of(3600) && s >= 2 * 3600 => format!("{}h", s / 3600),
        s if s.is_multiple_of(60) && s >= 5 * 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A default `MIN..MAX` backoff as `--help` shows it.
fn backoff_text(min: Duration, max: Duration) -> String {
    format!("{}..{}", duration_text(min), duration_text(max))
}

/// A default size as `--help` shows it and [`parse_size`] reads it back: in the largest binary
/// unit that keeps it whole.
fn size_text(bytes: u64) -> String {
    [(30, "GiB"), (20, "MiB"), (10, "KiB")]
        .into_iter()
        .find(|(shift, _)| bytes >= 1 << shift && bytes.is_multiple_of(1 << shift))
        .map_or_else(|| bytes.to_string(), |(shift, unit)| format!("{}{unit}", bytes >> shift))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use a form like 30s, 500ms, 2m)"))
}

/// A duration above zero (a zero timeout would close every connection at once).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    Some(parse_duration(s)?).filter(|d| !d.is_zero()).ok_or_else(|| "must be longer than zero".to_owned())
}

fn parse_backoff(s: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = s.split_once("..").ok_or("expected MIN..MAX, e.g. 100ms..15s")?;
    let (min, max) = (parse_duration(min)?, parse_duration(max)?);
    if min.is_zero() || min > max {
        return Err(format!("MIN must be above zero and at most MAX ({min:?}..{max:?})"));
    }
    Ok((min, max))
}

/// `512MiB`, `2GiB`, `100MB`, `4096` (bytes).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size like 512MiB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    n.checked_mul(factor).filter(|b| *b > 0).ok_or_else(|| format!("{s:?} is not a usable size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from(["herd", "serve"].iter().chain(args))?;
        match cli.command {
            Command::Serve(args) => Ok(*args),
            _ => unreachable!("parsed serve"),
        }
    }

    #[test]
    fn flags_parse() {
        let args = serve(&[
            "--workers",
            "3",
            "--bind",
            "127.0.0.1:3000",
            "--demo-user",
            "alice:wonder:land",
            "--secure-cookies",
            "false",
            "--shutdown-timeout",
            "1500ms",
        ])
        .expect("valid flags");
        assert_eq!(args.workers, Some(3));
        assert_eq!(args.threads, 1, "a single-threaded runtime per worker unless asked");
        assert_eq!(serve(&["--threads", "4"]).expect("threads").threads, 4);
        assert_eq!(args.demo_users[0].password, "wonder:land");
        assert!(!args.secure_cookies);
        assert_eq!(args.shutdown_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn sizes_and_backoffs() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err() && parse_size("5 parsecs").is_err() && parse_size("0").is_err());
        assert_eq!(parse_backoff("100ms..15s"), Ok((Duration::from_millis(100), Duration::from_secs(15))));
        assert!(parse_backoff("15s..100ms").is_err() && parse_backoff("1s").is_err());
    }

    #[test]
    fn scale_arguments() {
        assert_eq!("4".parse(), Ok(ScaleArg::To(4)));
        assert_eq!("+2".parse(), Ok(ScaleArg::By(2)));
        assert_eq!("-1".parse(), Ok(ScaleArg::By(-1)));
        assert!("many".parse::<ScaleArg>().is_err());
        let cli = Cli::try_parse_from(["herd", "ctl", "scale", "-1"]).expect("negative scale parses");
        assert!(matches!(
            cli.command,
            Command::Ctl(CtlArgs { command: CtlCommand::Scale { count: ScaleArg::By(-1) }, .. })
        ));
    }

    #[test]
    fn sticky_means_ip_hash() {
        assert_eq!(serve(&[]).expect("defaults").balance(), herd_cluster::Balance::RoundRobin);
        assert_eq!(serve(&["--sticky"]).expect("sticky").balance(), herd_cluster::Balance::IpHash);
        assert_eq!(serve(&["--balance", "least-conn"]).expect("lc").balance(), herd_cluster::Balance::LeastConn);
    }

    #[test]
    fn session_limits() {
        let args =
            serve(&["--session-idle", "2s", "--session-max-age", "1h", "--session-max-bytes", "1KiB"]).expect("valid");
        assert_eq!(
            (args.session_idle, args.session_max_age, args.session_max_bytes),
            (Duration::from_secs(2), Duration::from_secs(3600), 1024)
        );
        let defaults = serve(&[]).expect("defaults");
        assert_eq!(
            (defaults.session_idle, defaults.session_max_age),
            (Duration::from_secs(1800), Duration::from_secs(12 * 3600))
        );
    }

    #[test]
    fn heavy_and_cache_limits_default_to_the_library_constants() {
        let defaults = serve(&[]).expect("defaults");
        assert_eq!(defaults.heavy_limits(), crate::routes::heavy::HeavyLimits::default());
        assert_eq!(defaults.cache_limits(), herd_session_store::cache::CacheLimits::default());
        let set =
            serve(&["--heavy-max-n", "1e6", "--heavy-concurrency", "3", "--heavy-queue-wait", "200ms"]).expect("valid");
        assert_eq!(
            (set.heavy_max_n, set.heavy_concurrency, set.heavy_queue_wait),
            (1_000_000, 3, Duration::from_millis(200))
        );
        assert!(serve(&["--heavy-max-n", "lots"]).is_err());
        assert!(serve(&["--heavy-concurrency", "0"]).is_err());
    }

    #[test]
    fn connection_limits() {
        let defaults = serve(&[]).expect("defaults").connection_limits();
        assert_eq!(defaults, herd_cluster::ConnectionLimits::default(), "flag defaults are the library's");
        let args = serve(&[
            "--header-timeout",
            "2s",
            "--keepalive-timeout",
            "5s",
            "--keepalive-requests",
            "3",
            "--max-connections",
            "10",
        ])
        .expect("valid");
        let limits = args.connection_limits();
        assert_eq!((limits.header_timeout, limits.keepalive_timeout), (Duration::from_secs(2), Duration::from_secs(5)));
        assert_eq!((limits.keepalive_requests, limits.max_connections), (3, Some(10)));
        assert!(serve(&["--header-timeout", "0s"]).is_err() && serve(&["--max-connections", "0"]).is_err());
        assert!(serve(&["--keepalive-requests", "0"]).is_err());
    }

    #[test]
    fn login_limits_default_to_their_constants() {
        use crate::users::{limit::LoginLimits, HashLimit};
        let defaults = serve(&[]).expect("defaults");
        let limits = LoginLimits::default();
        assert_eq!(
            (defaults.login_limit_per_user_address, defaults.login_limit_per_user, defaults.login_limit_per_address),
            (limits.per_user_address, limits.per_user, limits.per_address)
        );
        assert_eq!(defaults.login_limit_window, limits.window);
        assert_eq!(defaults.login_queue_timeout, HashLimit::default().queue_timeout);
        assert_eq!(defaults.login_concurrency, None, "one hash per CPU unless asked");
        let args = serve(&["--allowed-origins", "https://App.example:443,http://localhost:3000"]).expect("origins");
        assert_eq!(args.allowed_origins, ["https://app.example", "http://localhost:3000"]);
        assert!(serve(&["--allowed-origins", "evil.example"]).is_err());
        assert!(serve(&["--login-limit-per-user", "0"]).is_err());
    }

    #[test]
    fn supervision_and_session_defaults_are_the_library_constants() {
        use herd_cluster::config as c;
        let d = serve(&[]).expect("defaults");
        assert_eq!(d.bind, DEFAULT_BIND);
        assert_eq!((d.shutdown_timeout, d.ready_timeout), (c::DEFAULT_SHUTDOWN_TIMEOUT, c::DEFAULT_READY_TIMEOUT));
        let restart = herd_cluster::RestartPolicy::default();
        assert_eq!(d.restart_backoff, (restart.backoff_base, restart.backoff_cap));
        assert_eq!((d.max_restarts, d.restart_window), (restart.max_restarts, restart.window));
        assert_eq!(d.worker_timeout, herd_cluster::Recycling::default().worker_timeout);
        assert_eq!(d.queue_timeout, c::DEFAULT_QUEUE_TIMEOUT);
        use herd_session_store::store as s;
        assert_eq!(
            (d.session_idle, d.session_max_age, d.session_grace),
            (s::DEFAULT_SESSION_IDLE, s::DEFAULT_SESSION_MAX_AGE, s::DEFAULT_SESSION_GRACE)
        );
        assert_eq!(usize::try_from(d.session_max_bytes).ok(), Some(s::DEFAULT_SESSION_MAX_BYTES));
    }

    #[test]
    fn default_texts_read_back_as_their_values() {
        for d in
            [100, 1_000, 15_000, 60_000, 75_000, 300_000, 1_800_000, 43_200_000, 90_061_500].map(Duration::from_millis)
        {
            assert_eq!(parse_duration(&duration_text(d)), Ok(d), "{}", duration_text(d));
        }
        assert_eq!(
            [60, 75, 300, 1800, 43_200].map(|s| duration_text(Duration::from_secs(s))),
            ["60s", "75s", "5m", "30m", "12h"]
        );
        assert_eq!(duration_text(Duration::from_millis(100)), "100ms");
        for bytes in [1, 1000, 64 << 10, 16 << 20, 3 << 30, (1 << 20) + 1] {
            assert_eq!(parse_size(&size_text(bytes)), Ok(bytes), "{}", size_text(bytes));
        }
        assert_eq!([64 << 10, 16 << 20, 1500].map(size_text), ["64KiB", "16MiB", "1500"]);
    }

    #[test]
    fn bad_values_are_clap_errors() {
        assert!(serve(&["--balance", "fastest"]).is_err());
        assert!(serve(&["--workers", "0"]).is_err());
        assert!(serve(&["--threads", "0"]).is_err());
        assert!(serve(&["--demo-user", "nopassword"]).is_err());
        assert!(serve(&["--shutdown-timeout", "soon"]).is_err());
        assert!(serve(&["--secure-cookies", "maybe"]).is_err());
    }
}
