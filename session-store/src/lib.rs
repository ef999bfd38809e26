//! Login sessions for a cluster of processes, stored in Redis through [fred].
//!
//! [`RedisSessionStore`] is a drop-in [`tower_sessions::SessionStore`] that fixes what bites the
//! stock `tower-sessions-redis-store` in a multi-process server:
//!
//! - **Bounded I/O.** [`connect`] builds a pool with a reconnect policy *and* a command timeout.
//!   The stock example has neither, so a Redis restart hangs every request forever. Here a
//!   command fails with a timeout after [`RedisConfig::command_timeout`] while Redis is away,
//!   and the pool reconnects by itself when it is back.
//! - **Namespaced, hashed keys.** Sessions live under `{prefix}sess:{digest}` (128 bits of the id's
//!   SHA-256), so a leaked
//!   `KEYS *` or `MONITOR` output is not a list of live cookies, and a cache flush by prefix
//!   never logs anyone out (see [`Keys`]).
//! - **A vanished key is not an error.** Saving a session whose key expired or was deleted by
//!   a logout in another worker does nothing (it must not resurrect the session); the stock
//!   store answers 500.
//! - **Versioned values.** A stored value starts with a format tag; a value in another format
//!   is a clean miss, never a decode error.
//!
//! - **The app's expiry, kept exactly.** `Record::expiry_date` (from `with_expiry`,
//!   `set_expiry`, `with_always_save`) is stored with the record, ends it and is what a load
//!   returns, as with the stock store. On top, optional herd limits: an idle timeout that reads
//!   extend with a cheap touch (the record's `seen` stamp rewritten in place, and the TTL, at
//!   most once per quarter of the timeout; [`SessionLimits::idle`]) and an absolute lifetime
//!   ([`SessionLimits::max_age`]); the earliest of the three ends a session, enforced from the
//!   record's header, not by trusting the cookie (see [`store`]).
//! - **A size cap** ([`SessionLimits::max_bytes`]).
//! - **TLS that is TLS.** `rediss://` always uses rustls (with a private CA if given); without a
//!   TLS feature fred would silently connect in plaintext.
//!
//! # Concurrency
//!
//! Under [`SessionScopeLayer`] (wrap it around `SessionManagerLayer`), a save writes only the
//! values its request changed, in one script that merges them into the record:
//!
//! - two concurrent requests of one session that change *different* values both keep their
//!   change, in any worker;
//! - two that change the *same* value: the one saved last wins for that value. Counters and
//!   anything else that must not lose updates belong beside the record as atomic Redis values
//!   (herd's `/` visit count is a `HINCRBY` in the user's login index, in a script that
//!   makes it idempotent for [`retry`]);
//! - a session deleted elsewhere (a logout, "log out everywhere") is never brought back by a
//!   late save of a request that loaded it before;
//! - a login (`Session::cycle_id`) writes the new record before retiring the old one, which
//!   stays readable for [`SessionLimits::grace`] so requests in flight with the old cookie do
//!   not fail; a login request that fails (5xx) leaves the old session as it was.
//!
//! Without the layer, saves replace the whole record (last write wins, as in the stock store)
//! and deletes are immediate.
//!
//! # Layout
//!
//! - [`pool`]: building the fred pool with the timeouts that make failure fast.
//! - [`replication`]: revocations confirmed only once a replica has them (`WAIT`).
//! - [`retry`]: asking Redis again within one command timeout, when that cannot count twice.
//! - [`keys`]: the Redis key layout shared by sessions, users and the cache.
//! - [`store`]: the `SessionStore` implementation and expiry.
//! - `record`: how a session is stored (one string: a fixed header, then the values).
//! - [`scope`]: the per-request layer behind merged saves, gap-free logins and typed failures.
//! - [`scripts`]: the Lua scripts, one round trip and one key each (so Redis Cluster works),
//!   and [`scripts::evalsha`] for the app's own.
//! - [`stock`]: reading sessions the stock `tower-sessions-redis-store` wrote.
//! - `tls`: the rustls connector for `rediss://`.
//! - [`cache`]: a cache shared by all workers, computing each missing value once cluster-wide.
//! - [`operator`]: problems only an operator can fix (a full Redis), logged once per interval.
//! - [`observe`]: what the store does inside a load or a login, for an app's metrics.

pub mod cache;
pub mod keys;
pub mod observe;
pub mod operator;
pub mod pool;
mod record;
pub mod replication;
pub mod retry;
pub mod scope;
pub mod scripts;
pub mod stock;
pub mod store;
mod tls;

pub use cache::{Cache, Cached};
pub use keys::Keys;
pub use observe::{StoreEvent, StoreObserver};
pub use pool::{connect, redact_url, RedisConfig};
pub use replication::ReplicaWait;
pub use scope::SessionScopeLayer;
pub use store::{RedisSessionStore, SessionLimits};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The Redis URL could not be parsed.
    #[error("invalid Redis URL {url:?}: {source}")]
    Url {
        /// The URL, its credentials hidden ([`redact_url`]).
        url: String,
        /// fred's complaint.
        source: fred::error::Error,
    },
    /// Redis failed or is unreachable.
    #[error("Redis: {0}")]
    Redis(fred::error::Error),
    /// Redis did not answer within the command timeout (an outage, a failover, a hung server).
    #[error("{TIMED_OUT}{0}")]
    Timeout(fred::error::Error),
    /// Redis refused a write because it reached `maxmemory` and may evict nothing (policy
    /// `noeviction`, or no key with a TTL left under `volatile-*`). Not transient: it lasts
    /// until an operator frees memory or raises the limit (see [`operator`]).
    #[error("Redis is out of memory: {0}")]
    OutOfMemory(fred::error::Error),
    /// A revocation reached fewer replicas than [`ReplicaWait`] asks within its timeout: a
    /// failover now could bring the session back, so it is not confirmed.
    #[error("only {acked} of {wanted} Redis replicas confirmed the write in time")]
    NotReplicated {
        /// Replicas that have it.
        acked: i64,
        /// Replicas asked for.
        wanted: i64,
    },
    /// The session would exceed [`SessionLimits::max_bytes`].
    #[error("session of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its size (names and JSON values).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// TLS could not be set up (an unreadable CA file, a URL that cannot be secured).
    #[error("TLS: {0}")]
    Tls(String),
    /// A session record could not be encoded.
    #[error("cannot encode session: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Where fred's errors are classified: a full Redis (`OOM command not allowed …`, also inside
/// a script) is told apart from one that is unreachable or slow, because retrying does not
/// help it.
impl From<fred::error::Error> for StoreError {
    fn from(err: fred::error::Error) -> Self {
        if is_out_of_memory(&err) {
            StoreError::OutOfMemory(err)
        } else if *err.kind() == fred::error::ErrorKind::Timeout {
            StoreError::Timeout(err)
        } else {
            StoreError::Redis(err)
        }
    }
}

/// Redis answers `-OOM command not allowed when used memory > 'maxmemory'.`; fred keeps the
/// text as the details of an `Unknown` error. Redis 6 wraps a script's error as
/// `ERR Error running script … -OOM command not allowed …`, hence the search.
fn is_out_of_memory(err: &fred::error::Error) -> bool {
    let details = err.details();
    details.starts_with("OOM ") || details.contains("OOM command not allowed")
}

impl StoreError {
    /// True when the error means "Redis is unavailable right now" rather than a bug: the caller
    /// should answer 503 and let the client retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Redis(_) | StoreError::Timeout(_) | StoreError::NotReplicated { .. })
    }

    /// True when Redis did not answer at all (no connection: refused, a name that does not
    /// resolve yet, a timeout) or is still loading its data set: waiting may help, which it
    /// does not when Redis answers with a refusal (a wrong password, an untrusted certificate).
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Timeout(_) => true,
            StoreError::Redis(err) => {
                let details = err.details();
                // A certificate rustls rejects arrives as an I/O error (`InvalidData`).
                let tls_refusal = details.contains("InvalidData") || details.contains("Certificate");
                (matches!(err.kind(), fred::error::ErrorKind::IO | fred::error::ErrorKind::Timeout) && !tls_refusal)
                    || details.starts_with("LOADING")
            }
            _ => false,
        }
    }

    /// True when Redis is full and refuses writes: the caller should answer 507 (see
    /// [`operator::redis_full`]), not "retry shortly".
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, StoreError::OutOfMemory(_))
    }
}

impl From<StoreError> for tower_sessions::session_store::Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Encode(e) => Self::Encode(e.to_string()),
            other => Self::Backend(other.to_string()),
        }
    }
}

/// How [`StoreError::Timeout`]'s text begins.
const TIMED_OUT: &str = "Redis timed out: ";

/// True when a `tower_sessions` store error (which keeps only the text) came from Redis not
/// answering in time ([`StoreError::Timeout`]), for an app's metrics.
pub fn is_store_timeout(err: &tower_sessions::session_store::Error) -> bool {
    matches!(err, tower_sessions::session_store::Error::Backend(text) if text.starts_with(TIMED_OUT))
}

/// True when a `tower_sessions` store error (which keeps only the text) came from a full
/// Redis ([`StoreError::OutOfMemory`]), so a handler can answer 507 rather than 503.
pub fn is_store_full(err: &tower_sessions::session_store::Error) -> bool {
    matches!(err, tower_sessions::session_store::Error::Backend(text) if text.starts_with("Redis is out of memory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_redis_is_told_apart_from_an_unreachable_one() {
        let oom = fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            "OOM command not allowed when used memory > 'maxmemory'. script: 1f2e, on @user_script:3.",
        );
        let full = StoreError::from(oom);
        assert!(full.is_out_of_memory() && !full.is_unavailable());
        assert!(is_store_full(&full.into()));
        let slow = StoreError::from(fred::error::Error::new(fred::error::ErrorKind::Timeout, "Request timed out."));
        assert!(slow.is_unavailable() && !slow.is_out_of_memory());
        let slow = slow.into();
        assert!(!is_store_full(&slow) && is_store_timeout(&slow));
        let down = StoreError::from(fred::error::Error::new(fred::error::ErrorKind::IO, "Connection refused"));
        assert!(down.is_unavailable());
        assert!(down.is_unreachable(), "waiting may help");
        let refused = StoreError::from(fred::error::Error::new(fred::error::ErrorKind::Auth, "WRONGPASS"));
        assert!(!refused.is_unreachable(), "waiting does not help a wrong password");
        assert!(!is_store_timeout(&down.into()));
    }
}
