//! A fred pool that fails fast while Redis is away and heals when it returns.

use std::{path::PathBuf, time::Duration};

use fred::{
    clients::Pool,
    interfaces::ClientLike,
    types::{
        config::{Config, ReconnectPolicy, UnresponsiveConfig},
        Builder,
    },
};

use crate::StoreError;

/// How long one Redis command may take before the request using it gets a timeout error.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Connections per process. One: Redis executes commands one at a time anyway, and a single
/// connection lets fred pipeline every concurrent request's command into one write and read
/// all their replies at once. Against four connections per worker that cut Redis's CPU per
/// `GET /me` by about a third and raised requests/s by 7 % (single-threaded workers) to 24 %
/// (multi-threaded) (`bench/flag.sh --redis-pool-size 1 4`).
pub const DEFAULT_POOL_SIZE: u16 = 1;

/// How to reach Redis. Its `Debug` output hides the URL's credentials ([`redact_url`]).
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port[/db]` and the other forms fred understands.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Upper bound for one command, including waiting for a reconnection.
    pub command_timeout: Duration,
    /// PEM file of the CA that signed the server's certificate (`rediss://` only); without it
    /// the system's roots are trusted.
    pub ca_cert: Option<PathBuf>,
}

impl RedisConfig {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: usize::from(DEFAULT_POOL_SIZE),
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            ca_cert: None,
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("command_timeout", &self.command_timeout)
            .field("ca_cert", &self.ca_cert)
            .finish()
    }
}

/// `url` fit for a log line or an error: the user and password before `@` become `***`, and so
/// does the value of any query parameter whose name mentions a password
/// (`sentinelPassword=`). Works on malformed URLs too (no scheme, several `@`): everything up
/// to the last `@` is hidden, which may hide more than the credentials, never less.
pub fn redact_url(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let (head, rest) = url.split_at(start);
    let rest = match rest.rfind('@') {
        Some(at) => format!("***{}", &rest[at..]),
        None => rest.to_owned(),
    };
    let (base, query) = match rest.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (rest.as_str(), None),
    };
    let mut out = format!("{head}{base}");
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((name, _)) if name.to_ascii_lowercase().contains("pass") => format!("{name}=***"),
                _ => param.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Builds the pool and waits until every connection is up (at most about one command timeout).
///
/// Without fred's defaults changed, a pool has no reconnect policy (a Redis restart breaks it
/// for good) and no command timeout (a Redis outage hangs requests forever). Here:
/// reconnect forever with exponential backoff capped at 1 s, fail every command that has not
/// completed within `command_timeout`, treat a connection that has not answered for twice
/// that as dead, and never resend a command (herd resends only what cannot count twice:
/// [`crate::retry`]).
pub async fn connect(config: &RedisConfig) -> Result<Pool, StoreError> {
    let mut parsed =
        Config::from_url(&config.url).map_err(|source| StoreError::Url { url: redact_url(&config.url), source })?;
    if uses_tls(&config.url) {
        parsed.tls = Some(crate::tls::connector(config.ca_cert.as_deref())?.into());
    } else if config.ca_cert.is_some() {
        return Err(StoreError::Tls("a CA certificate was given for a URL without TLS: use rediss://".into()));
    }
    let timeout = config.command_timeout;
    let pool = Builder::from_config(parsed)
        .with_performance_config(|perf| perf.default_command_timeout = timeout)
        .with_connection_config(|conn| {
            conn.connection_timeout = timeout;
            conn.internal_command_timeout = timeout;
            conn.unresponsive = UnresponsiveConfig { max_timeout: Some(timeout * 2), interval: timeout / 4 };
            // fred resends a command whose connection died in flight (3 attempts by default).
            // Redis may already have applied it, so an `INCR` would count twice while the
            // client was told 503: send every command once. fred 10 counts a resend after
            // `-MOVED` with the same counter, so this fails those too, though Redis refused
            // them.
            conn.max_command_attempts = 1;
            // ... and with no redirection to follow, a `-MOVED` (or `-ASK`) fails its command
            // with `ErrorKind::Routing` ("Too many redirections.") once fred has re-read the
            // topology, rather than with the "Too many failed write attempts." a dropped
            // command gets: proof that it was not applied, so the caller may send it again
            // (`crate::retry`), to the new primary.
            conn.max_redirections = 0;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 50, reconnect_cap_ms(), 2))
        .build_pool(config.pool_size.max(1))?;
    match tokio::time::timeout(timeout * 3, pool.init()).await {
        Ok(Ok(_connection_task)) => Ok(pool),
        // fred has already stopped the pool's tasks after a failed init.
        Ok(Err(err)) => Err(err.into()),
        Err(_elapsed) => {
            let _ = pool.quit().await;
            Err(fred::error::Error::new(fred::error::ErrorKind::Timeout, "connecting to Redis timed out").into())
        }
    }
}

/// The longest wait between two reconnection attempts, drawn for each pool from 750–1250 ms.
///
/// fred caps each delay at its maximum *after* adding its jitter, so once the backoff reaches
/// a fixed cap every process of every host would retry exactly once per cap, all in the phase
/// the outage gave them at once, and hit the Redis that comes back together
/// (`bench/reconnect_storm.py`: 16 of 24 connections within one 100 ms). A cap of its own per
/// process makes their periods differ, so the longer Redis is away, the more evenly they
/// spread.
fn reconnect_cap_ms() -> u32 {
    use rand::Rng;
    rand::thread_rng().gen_range(750..=1250)
}

/// `rediss://`, `rediss-cluster://`, `rediss-sentinel://` (and fred's `valkeys` spellings).
fn uses_tls(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or_default().to_ascii_lowercase();
    scheme.starts_with("rediss") || scheme.starts_with("valkeys")
}

#[cfg(test)]
mod tests {
    use super::{redact_url, uses_tls, RedisConfig};

    #[test]
    fn credentials_never_survive_redaction() {
        assert_eq!(redact_url("redis://user:secret@host:7000/0"), "redis://***@host:7000/0");
        assert_eq!(redact_url("redis://10.0.0.5:7000"), "redis://10.0.0.5:7000");
        assert_eq!(redact_url("redis//default:secret@host"), "***@host", "no scheme: hide up to the @");
        assert_eq!(redact_url("redis://a:b@c:secret@host"), "redis://***@host");
        assert_eq!(
            redact_url("redis-sentinel://h:26379/mymaster?sentinelPassword=secret&x=1"),
            "redis-sentinel://h:26379/mymaster?sentinelPassword=***&x=1"
        );
        assert!(!format!("{:?}", RedisConfig::new("redis://default:secret@h:1")).contains("secret"));
    }

    #[test]
    fn tls_schemes_are_recognised() {
        assert!(uses_tls("rediss://h:1"));
        assert!(uses_tls("REDISS-cluster://h:1?node=h:2"));
        assert!(!uses_tls("redis://h:1"));
        assert!(!uses_tls("redis-cluster://rediss:1"));
    }
}
