//! Cluster configuration, validated once when it is built rather than discovered under traffic.

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, time::Duration};

/// How long a worker may take to drain on shutdown before it is killed.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new worker may take to report ready during a reload before the reload aborts.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// First delay before restarting a worker that died soon after starting; doubles with each
/// further quick death.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest delay between two restarts of a slot.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(15);
/// Deaths within [`DEFAULT_RESTART_WINDOW`] beyond which a slot is marked errored.
pub const DEFAULT_MAX_RESTARTS: u32 = 10;
/// See [`DEFAULT_MAX_RESTARTS`].
pub const DEFAULT_RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long a worker may send no heartbeat (its runtime is stuck) before it is killed and
/// replaced.
pub const DEFAULT_WORKER_TIMEOUT: Duration = Duration::from_secs(30);
/// File descriptors each herd process keeps free for its own work (starting workers, the
/// control socket, log files, Redis connections): connections beyond the open-files limit
/// minus this are shed. At most half the limit is kept, so a small limit still serves.
pub const DEFAULT_FD_RESERVE: usize = 64;
/// How long a connection waits for a worker that can serve it before the primary answers it
/// `503` itself (HAProxy's `timeout queue` plays the same part; 5 s is its common setting).
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most worker slots a cluster may have: each is a process, a pipe and a few descriptors in the
/// primary, and status replies list every one.
pub const MAX_WORKERS: usize = 1024;

/// How connections reach workers. With the `clap` feature, also the values of a `--balance`
/// flag (`shared`, `round-robin`, `least-conn`, `ip-hash`; the variant docs are their help).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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
    /// The name used on the command line and in JSON (the same as clap's, which a test checks).
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

/// Who puts each new connection on a worker in the primary-accept modes (`round-robin`,
/// `ip-hash`; `least-conn` is always the primary's). With the `clap` feature, also the values of
/// a `--steering` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Steering {
    /// The primary accepts every connection and hands it over (`SCM_RIGHTS`).
    Primary,
    /// One listener per slot and a kernel program that picks one (see `crate::steering`): the
    /// primary does no work per connection. `ip-hash` under `--proxy-protocol` falls back to
    /// the primary, which alone can read the client from the header.
    #[default]
    Kernel,
}

impl Steering {
    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Steering::Primary => "primary",
            Steering::Kernel => "kernel",
        }
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
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_cap: DEFAULT_BACKOFF_CAP,
            max_restarts: DEFAULT_MAX_RESTARTS,
            window: DEFAULT_RESTART_WINDOW,
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
        Self { worker_timeout: DEFAULT_WORKER_TIMEOUT, max_memory: None, max_requests: None, max_requests_jitter: 0 }
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
    /// Who steers connections in `balance`'s mode: read it through
    /// [`ClusterConfig::kernel_steers`], which says whether the kernel can.
    pub steering: Steering,
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
    /// File descriptors each process keeps free for its own work; connections that would use
    /// them are closed at once (see [`DEFAULT_FD_RESERVE`]).
    pub fd_reserve: usize,
    /// How long a connection waits for a worker that can serve it (none is ready, or every
    /// ready one missed its heartbeats) before the primary answers `503` + `Retry-After`
    /// itself; at once when every slot is errored. In shared mode, how long no worker may
    /// serve before the primary accepts on the listener itself to answer so.
    pub queue_timeout: Duration,
    /// Timeouts and caps of each worker's client connections.
    pub connections: ConnectionLimits,
    /// The arguments workers are started with (after argv[0]); `None` gives them the
    /// primary's own. Every local user can read a process's arguments (`/proc/PID/cmdline`):
    /// an app whose command line may hold secrets passes the public part here and the
    /// secrets through `worker_env`.
    pub worker_args: Option<Vec<OsString>>,
    /// What `herd ctl status` says the program is, so an operator sees which code runs (herd's
    /// binary: its version and build). Defaults to herd-cluster's own version.
    pub version: String,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` headers name the client (see
    /// [`crate::forwarded`]); empty (the default) believes no such header.
    pub trusted_proxies: crate::forwarded::TrustedProxies,
    /// The primary's admin listener (`GET /metrics`); `None`: not served. Only the primary
    /// reads it.
    pub admin: Option<AdminConfig>,
    /// `Some`: every connection starts with a PROXY protocol header naming the client (see
    /// [`crate::proxy_protocol`]); requires `trusted_proxies`, the only sources allowed to send
    /// one. `None` (the default): connections are HTTP from their first byte.
    pub proxy_protocol: Option<crate::proxy_protocol::ProxyProtocol>,
}

/// Where the primary serves its admin listener, and the token it requires.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address to listen on; a non-loopback one requires `token`.
    pub bind: SocketAddr,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never in a log line or an error.
        f.debug_struct("AdminConfig")
            .field("bind", &self.bind)
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl ClusterConfig {
    /// Whether the kernel steers connections ([`Steering::Kernel`] in a mode it can serve: the
    /// primary may still fall back at start, when it cannot make the listeners).
    pub fn kernel_steers(&self) -> bool {
        self.steering == Steering::Kernel
            && match self.balance {
                Balance::RoundRobin => true,
                Balance::IpHash => self.proxy_protocol.is_none(),
                Balance::Shared | Balance::LeastConn => false,
            }
    }

    /// A config with one worker per CPU and the default deadlines.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            workers: default_workers(),
            bind,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            balance: Balance::default(),
            steering: Steering::default(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            restart: RestartPolicy::default(),
            recycling: Recycling::default(),
            control_socket: None,
            worker_env: Vec::new(),
            logs: None,
            fd_reserve: DEFAULT_FD_RESERVE,
            queue_timeout: DEFAULT_QUEUE_TIMEOUT,
            connections: ConnectionLimits::default(),
            worker_args: None,
            version: concat!("herd-cluster ", env!("CARGO_PKG_VERSION")).to_owned(),
            trusted_proxies: crate::forwarded::TrustedProxies::default(),
            admin: None,
            proxy_protocol: None,
        }
    }
}

/// A [`ClusterConfig`] that cannot work, refused by [`ClusterConfig::validate`] before anything
/// starts. Field names are the config's (`restart.backoff_base`), so an app can map them to its
/// own flags.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `workers` is 0 or above [`MAX_WORKERS`].
    #[error("workers must be between 1 and {MAX_WORKERS}, not {0}")]
    Workers(usize),
    /// A duration that must be above zero is zero.
    #[error("{0} must be longer than zero")]
    ZeroDuration(&'static str),
    /// A count or size that must be above zero is zero.
    #[error("{0} must be above zero")]
    Zero(&'static str),
    /// The first restart delay is longer than the longest.
    #[error("restart.backoff_base ({base:?}) must be at most restart.backoff_cap ({cap:?})")]
    BackoffAboveCap {
        /// `restart.backoff_base`.
        base: Duration,
        /// `restart.backoff_cap`.
        cap: Duration,
    },
    /// The admin listener would answer other hosts without a token.
    #[error("the admin listener on {0} is not a loopback address: it needs a token (--metrics-token)")]
    AdminWithoutToken(SocketAddr),
    /// An empty admin token would let anyone in.
    #[error("the admin token is empty")]
    EmptyAdminToken,
    /// PROXY headers without a list of who may send them: every connection would be refused
    /// (and believing anyone would let every client name its own address).
    #[error("the PROXY protocol needs the balancers' addresses in the trusted proxies (--trusted-proxies)")]
    ProxyProtocolUntrusted,
}

impl ClusterConfig {
    /// Checks that this configuration can work; [`crate::run`] calls it before it binds. An app
    /// that prepares anything for the cluster (a database, users) should call it first, so that
    /// a refused configuration starts nothing.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(ConfigError::Workers(self.workers));
        }
        let restart = &self.restart;
        let recycling = &self.recycling;
        let limits = &self.connections;
        // Zero would kill every worker at once (shutdown, heartbeat), abort every reload, refuse
        // every queued connection, restart in a hot loop, or close every client connection.
        let durations = [
            ("shutdown_timeout", self.shutdown_timeout),
            ("ready_timeout", self.ready_timeout),
            ("queue_timeout", self.queue_timeout),
            ("restart.backoff_base", restart.backoff_base),
            ("recycling.worker_timeout", recycling.worker_timeout),
            ("connections.header_timeout", limits.header_timeout),
            ("connections.body_timeout", limits.body_timeout),
            ("connections.body_deadline", limits.body_deadline),
            ("connections.keepalive_timeout", limits.keepalive_timeout),
            ("connections.send_timeout", limits.send_timeout),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return Err(ConfigError::ZeroDuration(name));
        }
        // With no window, no two deaths would ever count together: max_restarts would mean
        // nothing (0 is how to say "never give up").
        if restart.max_restarts > 0 && restart.window.is_zero() {
            return Err(ConfigError::ZeroDuration("restart.window"));
        }
        if restart.backoff_base > restart.backoff_cap {
            return Err(ConfigError::BackoffAboveCap { base: restart.backoff_base, cap: restart.backoff_cap });
        }
        // Zero would recycle every worker as soon as it started, or refuse every connection.
        let counts = [
            ("recycling.max_memory", recycling.max_memory),
            ("recycling.max_requests", recycling.max_requests),
            ("connections.keepalive_requests", Some(limits.keepalive_requests)),
            ("connections.max_connections", limits.max_connections.map(|n| n as u64)),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, n)| *n == Some(0)) {
            return Err(ConfigError::Zero(name));
        }
        if let Some(proxy) = &self.proxy_protocol {
            if self.trusted_proxies.is_empty() {
                return Err(ConfigError::ProxyProtocolUntrusted);
            }
            if proxy.header_timeout.is_zero() {
                return Err(ConfigError::ZeroDuration("proxy_protocol.header_timeout"));
            }
            if proxy.max_pending == 0 {
                return Err(ConfigError::Zero("proxy_protocol.max_pending"));
            }
        }
        if let Some(admin) = &self.admin {
            match &admin.token {
                Some(token) if token.trim().is_empty() => return Err(ConfigError::EmptyAdminToken),
                None if !admin.bind.ip().is_loopback() => return Err(ConfigError::AdminWithoutToken(admin.bind)),
                _ => {}
            }
        }
        Ok(())
    }
}

/// One worker per CPU the process may use; 1 if that cannot be determined.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How long a client may take to send a request's line and headers, counted from the moment
/// the server waits for them (accept, or the first byte after a keep-alive pause), however
/// slowly it trickles them (Puma's `first_data_timeout` is 30 s, hyper's own default 30 s).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest pause between two reads of a request body (nginx's `client_body_timeout` is 60 s).
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time a whole request body may take from the end of its headers, so that a
/// never-quite-idle trickle is bounded too.
pub const DEFAULT_BODY_DEADLINE: Duration = Duration::from_secs(60);
/// How long an idle keep-alive connection stays open. nginx's default (75 s), above the 60 s
/// idle timeout of common balancers, so that the balancer, not herd, closes a pooled
/// connection (a server closing first races with the balancer's next request).
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
/// How long a response write may wait for a client that reads nothing (nginx's
/// `send_timeout` is 60 s) before the connection is closed.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests served on one connection before it is closed (nginx's `keepalive_requests`).
pub const DEFAULT_KEEPALIVE_REQUESTS: u64 = 1000;
/// Descriptors a worker keeps for everything but client connections (Redis, IPC, log files,
/// the runtime, refusals in progress), at the least; see [`max_connections_for_fd_limit`].
pub const MIN_FD_RESERVE: u64 = 64;
/// Largest derived connection cap, whatever the descriptor limit (an unlimited one included).
pub const MAX_DERIVED_CONNECTIONS: u64 = 1 << 20;

/// Timeouts and caps of one worker's client connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// See [`DEFAULT_HEADER_TIMEOUT`]; a connection whose request head is not complete in time
    /// is closed.
    pub header_timeout: Duration,
    /// See [`DEFAULT_BODY_TIMEOUT`]; a handler reading a body that stalls gets an error and
    /// the client a 408.
    pub body_timeout: Duration,
    /// See [`DEFAULT_BODY_DEADLINE`].
    pub body_deadline: Duration,
    /// See [`DEFAULT_KEEPALIVE_TIMEOUT`].
    pub keepalive_timeout: Duration,
    /// See [`DEFAULT_SEND_TIMEOUT`].
    pub send_timeout: Duration,
    /// See [`DEFAULT_KEEPALIVE_REQUESTS`]; the last response carries `Connection: close`.
    pub keepalive_requests: u64,
    /// Open client connections per worker; beyond it a new connection gets a 503 (or is
    /// closed). `None`: derived from the worker's descriptor limit when it starts (see
    /// [`max_connections_for_fd_limit`]).
    pub max_connections: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            body_deadline: DEFAULT_BODY_DEADLINE,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            keepalive_requests: DEFAULT_KEEPALIVE_REQUESTS,
            max_connections: None,
        }
    }
}

impl ConnectionLimits {
    /// The connection cap: the configured one, or the one derived from this process's soft
    /// `RLIMIT_NOFILE` (with [`MIN_FD_RESERVE`] alone if the limit cannot be read).
    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
                .map_or(1024, |(soft, _hard)| soft);
            max_connections_for_fd_limit(soft)
        })
    }
}

/// The default connection cap for a process allowed `soft_limit` open descriptors: the limit
/// minus a reserve of an eighth (at least [`MIN_FD_RESERVE`]) for the worker's own descriptors,
/// so that a flood of connections meets a 503 instead of `EMFILE` in the middle of the
/// worker's own work. 1024 (the usual default) gives 896.
pub fn max_connections_for_fd_limit(soft_limit: u64) -> usize {
    let reserve = (soft_limit / 8).max(MIN_FD_RESERVE);
    let cap = soft_limit.saturating_sub(reserve).clamp(1, MAX_DERIVED_CONNECTIONS);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        ClusterConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(config().validate(), Ok(()));
        let one = ClusterConfig { workers: 1, ..config() };
        assert_eq!(one.validate(), Ok(()));
        let most = ClusterConfig { workers: MAX_WORKERS, ..config() };
        assert_eq!(most.validate(), Ok(()));
        let never_give_up = ClusterConfig {
            restart: RestartPolicy { max_restarts: 0, window: Duration::ZERO, ..RestartPolicy::default() },
            ..config()
        };
        assert_eq!(never_give_up.validate(), Ok(()), "no window is needed when no slot is ever given up");
        let no_reserve = ClusterConfig { fd_reserve: 0, ..config() };
        assert_eq!(no_reserve.validate(), Ok(()));
    }

    #[test]
    fn worker_counts_out_of_range_are_refused() {
        assert_eq!(ClusterConfig { workers: 0, ..config() }.validate(), Err(ConfigError::Workers(0)));
        let too_many = ClusterConfig { workers: MAX_WORKERS + 1, ..config() };
        assert_eq!(too_many.validate(), Err(ConfigError::Workers(MAX_WORKERS + 1)));
        assert!(ConfigError::Workers(0).to_string().contains("between 1 and 1024"));
    }

    #[test]
    fn zero_durations_are_refused() {
        let zero = Duration::ZERO;
        let cases: [(&str, ClusterConfig); 6] = [
            ("shutdown_timeout", ClusterConfig { shutdown_timeout: zero, ..config() }),
            ("ready_timeout", ClusterConfig { ready_timeout: zero, ..config() }),
            ("queue_timeout", ClusterConfig { queue_timeout: zero, ..config() }),
            (
                "recycling.worker_timeout",
                ClusterConfig { recycling: Recycling { worker_timeout: zero, ..Recycling::default() }, ..config() },
            ),
            (
                "restart.window",
                ClusterConfig { restart: RestartPolicy { window: zero, ..RestartPolicy::default() }, ..config() },
            ),
            (
                "connections.keepalive_timeout",
                ClusterConfig {
                    connections: ConnectionLimits { keepalive_timeout: zero, ..ConnectionLimits::default() },
                    ..config()
                },
            ),
        ];
        for (name, config) in cases {
            assert_eq!(config.validate(), Err(ConfigError::ZeroDuration(name)), "{name}");
        }
        let header = ConnectionLimits { header_timeout: zero, ..ConnectionLimits::default() };
        assert!(ClusterConfig { connections: header, ..config() }.validate().is_err());
    }

    #[test]
    fn backoffs_must_start_above_zero_and_below_their_cap() {
        let backoff = |base: u64, cap: u64| ClusterConfig {
            restart: RestartPolicy {
                backoff_base: Duration::from_millis(base),
                backoff_cap: Duration::from_millis(cap),
                ..RestartPolicy::default()
            },
            ..config()
        };
        assert_eq!(backoff(0, 100).validate(), Err(ConfigError::ZeroDuration("restart.backoff_base")));
        assert_eq!(
            backoff(200, 100).validate(),
            Err(ConfigError::BackoffAboveCap { base: Duration::from_millis(200), cap: Duration::from_millis(100) })
        );
        assert_eq!(backoff(100, 100).validate(), Ok(()));
    }

    #[test]
    fn an_admin_listener_beyond_loopback_needs_a_token() {
        let admin = |bind: &str, token: Option<&str>| ClusterConfig {
            admin: Some(AdminConfig { bind: bind.parse().expect("address"), token: token.map(str::to_owned) }),
            ..config()
        };
        assert_eq!(admin("127.0.0.1:9100", None).validate(), Ok(()));
        assert_eq!(admin("[::1]:9100", None).validate(), Ok(()));
        let open = admin("0.0.0.0:9100", None).validate();
        assert_eq!(open, Err(ConfigError::AdminWithoutToken("0.0.0.0:9100".parse().expect("address"))));
        assert_eq!(admin("0.0.0.0:9100", Some("s3cret")).validate(), Ok(()));
        assert_eq!(admin("0.0.0.0:9100", Some(" ")).validate(), Err(ConfigError::EmptyAdminToken));
        assert!(!format!("{:?}", admin("0.0.0.0:1", Some("s3cret")).admin).contains("s3cret"));
    }

    #[test]
    fn zero_counts_are_refused() {
        let recycle = |max_memory, max_requests| ClusterConfig {
            recycling: Recycling { max_memory, max_requests, ..Recycling::default() },
            ..config()
        };
        assert_eq!(recycle(Some(0), None).validate(), Err(ConfigError::Zero("recycling.max_memory")));
        assert_eq!(recycle(None, Some(0)).validate(), Err(ConfigError::Zero("recycling.max_requests")));
        assert_eq!(recycle(Some(1 << 30), Some(1000)).validate(), Ok(()));
        let limits = |keepalive_requests, max_connections| ClusterConfig {
            connections: ConnectionLimits { keepalive_requests, max_connections, ..ConnectionLimits::default() },
            ..config()
        };
        assert_eq!(limits(0, None).validate(), Err(ConfigError::Zero("connections.keepalive_requests")));
        assert_eq!(limits(1, Some(0)).validate(), Err(ConfigError::Zero("connections.max_connections")));
        assert_eq!(limits(1, Some(1)).validate(), Ok(()));
    }

    #[test]
    fn the_proxy_protocol_needs_trusted_proxies_and_limits_above_zero() {
        use crate::proxy_protocol::ProxyProtocol;
        let proxied = |trusted: &str, proxy: ProxyProtocol| ClusterConfig {
            trusted_proxies: trusted.parse().expect("proxies"),
            proxy_protocol: Some(proxy),
            ..config()
        };
        let defaults = ProxyProtocol::default();
        assert_eq!(proxied("", defaults).validate(), Err(ConfigError::ProxyProtocolUntrusted));
        assert!(ConfigError::ProxyProtocolUntrusted.to_string().contains("--trusted-proxies"));
        assert_eq!(proxied("127.0.0.1", defaults).validate(), Ok(()));
        let instant = ProxyProtocol { header_timeout: Duration::ZERO, ..defaults };
        assert_eq!(
            proxied("127.0.0.1", instant).validate(),
            Err(ConfigError::ZeroDuration("proxy_protocol.header_timeout"))
        );
        let none = ProxyProtocol { max_pending: 0, ..defaults };
        assert_eq!(proxied("127.0.0.1", none).validate(), Err(ConfigError::Zero("proxy_protocol.max_pending")));
    }

    #[cfg(feature = "clap")]
    #[test]
    fn balance_names_are_clap_names() {
        use clap::ValueEnum;
        for balance in Balance::value_variants() {
            let value = balance.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(value.as_deref(), Some(balance.as_str()));
        }
    }

    #[test]
    fn connection_cap_leaves_descriptors_for_the_worker() {
        assert_eq!(max_connections_for_fd_limit(1024), 896);
        assert_eq!(max_connections_for_fd_limit(65_536), 57_344);
        assert_eq!(max_connections_for_fd_limit(256), 192, "at least MIN_FD_RESERVE kept back");
        assert_eq!(max_connections_for_fd_limit(100), 36);
        assert_eq!(max_connections_for_fd_limit(10), 1, "never zero");
        assert_eq!(max_connections_for_fd_limit(u64::MAX), 1 << 20, "unlimited is still bounded");
        let configured = ConnectionLimits { max_connections: Some(7), ..ConnectionLimits::default() };
        assert_eq!(configured.max_connections(), 7);
        assert!(ConnectionLimits::default().max_connections() >= 1);
    }
}
