//! `herd serve`: the primary prepares Redis (finding one or starting a private one) and the
//! demo users, then the cluster runs; in workers the same function builds the app.

use std::time::Duration;

use anyhow::{bail, Context};
use fred::{clients::Pool, interfaces::ClientLike};
use herd_cluster::{ClusterConfig, Outcome, Role, WorkerContext};
use herd_session_store::{Keys, RedisConfig, StoreError};

use crate::{
    cli::{default_redis_url, ServeArgs, DEFAULT_REDIS_ADDR},
    private_redis::{self, PrivateRedis},
    routes::{self, AppSettings, AppState, SessionSettings},
    users::{limit::LoginLimits, HashLimit, Users},
};

/// Runs `herd serve` in either role; returns the process exit code.
pub(crate) async fn run(args: ServeArgs, role: Role, logs: Option<herd_cluster::logs::LogSink>) -> anyhow::Result<i32> {
    let mut config = ClusterConfig::new(args.bind);
    config.logs = logs;
    if let Some(workers) = args.workers {
        config.workers = usize::from(workers);
    }
    config.shutdown_timeout = args.shutdown_timeout;
    config.ready_timeout = args.ready_timeout;
    config.restart = herd_cluster::RestartPolicy {
        backoff_base: args.restart_backoff.0,
        backoff_cap: args.restart_backoff.1,
        max_restarts: args.max_restarts,
        window: args.restart_window,
    };
    config.recycling = herd_cluster::Recycling {
        worker_timeout: args.worker_timeout,
        max_memory: args.max_memory,
        max_requests: args.max_requests,
        max_requests_jitter: args.max_requests_jitter,
    };
    if args.debug_routes && !args.bind.ip().is_loopback() {
        bail!(
            "--debug-routes can crash and stall workers on request: it is refused unless --bind is a loopback address"
        );
    }
    config.connections = args.connection_limits();
    config.version = format!("herd {}", crate::cli::version());
    config.control_socket = args.control_socket.clone();
    config.fd_reserve = args.fd_reserve;
    config.trusted_proxies = args.trusted_proxies.clone();
    config.proxy_protocol = args.proxy_protocol.then_some(herd_cluster::proxy_protocol::ProxyProtocol {
        header_timeout: args.proxy_header_timeout,
        max_pending: usize::try_from(args.proxy_headers_pending).unwrap_or(usize::MAX),
    });
    config.balance = args.balance();
    config.steering = args.steering;
    config.queue_timeout = args.queue_timeout;
    // Before Redis is found or started and users are seeded: a refused config starts nothing.
    config.validate().context("refusing to start")?;
    let configured_url = crate::secrets::configured_url(&args.redis)?;
    let demo_users = crate::secrets::demo_users(&args)?;
    let settings = app_settings(&args, demo_users.iter().map(|u| u.name.clone()).collect())?;
    if role == Role::Primary {
        // Only the primary serves it; workers never see the token (it is off their command line).
        if let Some(bind) = args.metrics_bind {
            let token = crate::secrets::metrics_token(&args)?;
            config.admin = Some(herd_cluster::AdminConfig { bind, token });
            config.validate().context("refusing to start")?;
        }
        keep_secrets_off_workers_command_lines(&mut config, &args);
    }
    let mut private = None;
    let redis_url = match role {
        Role::Primary => {
            let url = match &configured_url {
                // Configured (flag, environment or file): workers read it the same way, so a
                // reload picks up a changed config file.
                Some(url) => url.clone(),
                None => {
                    let redis = find_or_start_redis().await?;
                    let url = redis.as_ref().map_or_else(default_redis_url, |r| r.url.clone());
                    private = redis;
                    // Workers must use the Redis the primary settled on, not probe again.
                    config.worker_env.push(("REDIS_URL".into(), url.clone().into()));
                    url
                }
            };
            if let Err(err) = seed_demo_users(&args.redis.config(url.clone()), &args, &demo_users).await {
                if let Some(redis) = private {
                    redis.stop().await;
                }
                return Err(err);
            }
            url
        }
        Role::Worker(_) => configured_url.unwrap_or_else(default_redis_url),
    };

    let redis_config = args.redis.config(redis_url);
    let outcome = herd_cluster::run(config, move |ctx| build_app(ctx, redis_config, settings)).await;
    if let Some(redis) = private {
        redis.stop().await;
    }
    Ok(match outcome? {
        Outcome::Primary(report) if report.is_clean() => 0,
        Outcome::Primary(report) => {
            tracing::warn!("{} worker(s) had to be killed during shutdown", report.killed);
            1
        }
        Outcome::Worker => 0,
    })
}

/// What the routes are configured with, from the flags.
pub(crate) fn app_settings(args: &ServeArgs, demo_users: std::sync::Arc<[String]>) -> anyhow::Result<AppSettings> {
    if args.session_idle.is_zero() || args.session_max_age.is_zero() {
        bail!("--session-idle and --session-max-age must be longer than zero");
    }
    let session = SessionSettings {
        cookie_name: args.cookie_name.clone(),
        secure: args.secure_cookies,
        debug_routes: args.debug_routes,
        admin_routes: args.admin_routes,
        stock_store: args.session_store == crate::cli::SessionStoreKind::Stock,
        origins: routes::origin::OriginPolicy::new(args.allowed_origins.clone()),
        idle: args.session_idle,
        max_age: args.session_max_age,
        max_bytes: usize::try_from(args.session_max_bytes).unwrap_or(usize::MAX),
        grace: args.session_grace,
        replica_wait: args.redis.replica_wait(),
    };
    let (login, hashing) = login_settings(args)?;
    Ok(AppSettings {
        keys: Keys::new(args.redis.key_prefix.clone()),
        session,
        login,
        hashing,
        heavy: args.heavy_limits(),
        cache: args.cache_limits(),
        demo_users,
    })
}

/// What bounds logins: the rate limits (shared through Redis) and the hashing cap (per worker).
fn login_settings(args: &ServeArgs) -> anyhow::Result<(LoginLimits, HashLimit)> {
    if args.login_limit_window.is_zero() {
        bail!("--login-limit-window must be longer than zero");
    }
    let mut hashing = HashLimit::default();
    if let Some(concurrency) = args.login_concurrency {
        hashing.concurrency = usize::from(concurrency);
    }
    hashing.queue_timeout = args.login_queue_timeout;
    let limits = LoginLimits {
        per_user_address: args.login_limit_per_user_address,
        per_user: args.login_limit_per_user,
        per_address: args.login_limit_per_address,
        window: args.login_limit_window,
    };
    Ok((limits, hashing))
}

/// Uses a Redis at the default address if one answers; otherwise starts a private one.
async fn find_or_start_redis() -> anyhow::Result<Option<PrivateRedis>> {
    if private_redis::answers(DEFAULT_REDIS_ADDR).await {
        return Ok(None);
    }
    if !private_redis::available() {
        bail!(
            "no Redis configured and none answers at {}, and redis-server is not on PATH.\n\
             Start one (apt-get install redis-server, brew install redis, or `docker compose up redis`),\n\
             or point herd at one with --redis-url / REDIS_URL.",
            default_redis_url()
        );
    }
    let redis = PrivateRedis::start()
        .await
        .with_context(|| format!("cannot start a private redis-server in {}", private_redis::data_dir().display()))?;
    Ok(Some(redis))
}

/// Workers get the primary's arguments without `--redis-url` and `--demo-user` (every local
/// user can read a command line), and those values through their environment instead.
fn keep_secrets_off_workers_command_lines(config: &mut ClusterConfig, args: &ServeArgs) {
    let (public, removed) = crate::secrets::worker_args(std::env::args_os().skip(1));
    if !removed {
        return;
    }
    let argv: Vec<String> = std::env::args().collect();
    let in_argv = |flag: &str| argv.iter().any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if in_argv("--redis-url") {
        if let Some(url) = &args.redis.redis_url {
            if crate::secrets::has_password(url) {
                tracing::warn!(
                    "the Redis password is on herd's command line, which every local user can read: \
                     use REDIS_URL or --redis-url-file (workers get it through their environment)"
                );
            }
            config.worker_env.push(("REDIS_URL".into(), url.into()));
        }
    }
    if in_argv("--metrics-token") {
        tracing::warn!("--metrics-token is on herd's command line, which every local user can read: use HERD_METRICS_TOKEN or --metrics-token-file");
    }
    if in_argv("--demo-user") {
        tracing::warn!("--demo-user passwords are on herd's command line, which every local user can read: use HERD_DEMO_USER or --demo-user-file");
        // The environment variable is comma-separated: a password with a comma cannot travel
        // in it, and workers only need the names (for the login form's hint) anyway.
        let listed: Vec<String> = args
            .demo_users
            .iter()
            .map(|u| format!("{}:{}", u.name, u.password))
            .filter(|entry| !entry.contains(','))
            .collect();
        config.worker_env.push(("HERD_DEMO_USER".into(), listed.join(",").into()));
    }
    config.worker_args = Some(public);
}

/// Checks Redis's eviction policy and creates the demo users.
async fn seed_demo_users(
    redis: &RedisConfig,
    args: &ServeArgs,
    demo_users: &[crate::cli::DemoUser],
) -> anyhow::Result<()> {
    let pool = connect_redis_at_start(redis, args.redis_start_timeout).await?;
    crate::eviction::check(&pool).await;
    let users = Users::new(pool.clone(), Keys::new(args.redis.key_prefix.clone()));
    for demo in demo_users {
        users
            .set_password_in_child(&demo.name, &demo.password)
            .await
            .with_context(|| format!("cannot create demo user {}", demo.name))?;
        tracing::info!("demo user {} is ready (log in with its password)", demo.name);
    }
    let _ = pool.quit().await;
    Ok(())
}

/// Connects to Redis or explains how to get one.
pub(crate) async fn connect_redis(config: &RedisConfig) -> anyhow::Result<Pool> {
    herd_session_store::connect(config).await.with_context(|| cannot_reach(config))
}

fn cannot_reach(config: &RedisConfig) -> String {
    format!(
        "cannot reach Redis at {}. Start one (e.g. `redis-server`) or point herd at one with --redis-url / REDIS_URL",
        redact(&config.url)
    )
}

/// How long `herd serve` waits at start for a Redis that does not answer yet.
pub(crate) const DEFAULT_REDIS_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Between two attempts to reach Redis at start, and how often the wait is logged.
const START_RETRY_INTERVAL: Duration = Duration::from_secs(1);
const START_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Connects to Redis at start. One that does not answer yet is waited for up to `patience`,
/// logged every few seconds: in a container or under systemd, Redis and herd start side by
/// side, and the first connection may come before Redis accepts. A refusal (a wrong password,
/// an untrusted certificate, a bad URL) does not heal by waiting and fails at once.
async fn connect_redis_at_start(config: &RedisConfig, patience: Duration) -> anyhow::Result<Pool> {
    let started = tokio::time::Instant::now();
    let mut last_logged: Option<tokio::time::Instant> = None;
    loop {
        let err = match herd_session_store::connect(config).await {
            Ok(pool) => {
                if last_logged.is_some() {
                    tracing::info!("Redis at {} answers after {:.1?}", redact(&config.url), started.elapsed());
                }
                return Ok(pool);
            }
            Err(err) => err,
        };
        let waited = started.elapsed();
        if !err.is_unreachable() || waited + START_RETRY_INTERVAL > patience {
            let context = if waited >= START_RETRY_INTERVAL {
                format!("{} (waited {:.0?}, --redis-start-timeout)", cannot_reach(config), waited)
            } else {
                cannot_reach(config)
            };
            return Err(anyhow::Error::new(err).context(context));
        }
        if last_logged.is_none_or(|at| at.elapsed() >= START_LOG_INTERVAL) {
            tracing::warn!(
                "waiting for Redis at {} ({:.0?} of --redis-start-timeout {:.0?} so far): {err}",
                redact(&config.url),
                waited,
                patience
            );
            last_logged = Some(tokio::time::Instant::now());
        }
        tokio::time::sleep(START_RETRY_INTERVAL).await;
    }
}

/// Builds a worker's app once Redis answers; the worker reports ready only after this.
async fn build_app(ctx: WorkerContext, config: RedisConfig, settings: AppSettings) -> Result<axum::Router, StoreError> {
    let pool = loop {
        match herd_session_store::connect(&config).await {
            Ok(pool) => break pool,
            // Configuration mistakes do not heal by waiting.
            Err(err @ (StoreError::Url { .. } | StoreError::Tls(_))) => return Err(err),
            Err(err) => {
                tracing::warn!("waiting for Redis at {}: {err}", redact(&config.url));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    Ok(routes::router(AppState::build(ctx, pool, settings).await?))
}

pub(crate) use crate::secrets::redact;
