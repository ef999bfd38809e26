//! Login sessions for a cluster of processes, stored in Redis through [fred].
//!
//! [`RedisSessionStore`] is a drop-in [`tower_sessions::SessionStore`] that fixes what bites the
//! stock `tower-sessions-redis-store` in a multi-process server:
//!
//! - **Bounded I/O.** [`connect`] builds a pool with a reconnect policy *and* a command timeout.
//!   The stock example has neither, so a Redis restart hangs every request forever. Here a
//!   command fails with a timeout after [`RedisConfig::command_timeout`] while Redis is away,
//!   and the pool reconnects by itself when it is back.
//! - **Namespaced, hashed keys.** Sessions live under `{prefix}sess:{sha256(id)}`, so a leaked
//!   `KEYS *` or `MONITOR` output is not a list of live cookies, and a cache flush by prefix
//!   never logs anyone out (see [`Keys`]).
//! - **A vanished key is not an error.** Saving a session whose key expired or was deleted by
//!   a logout in another worker does nothing (it must not resurrect the session); the stock
//!   store answers 500.
//! - **Versioned values.** A stored value starts with a format tag; a value in another format
//!   is a clean miss, never a decode error.
//!
//! # Concurrency
//!
//! tower-sessions saves a session by rewriting its whole record, so when two requests of one
//! session run at the same time (two tabs, a page and its XHRs, any number of workers), the
//! record of the one that finishes last wins and the other's changes to it are lost. A vanished
//! record (logout elsewhere) is never brought back by a late save. Values that must not lose
//! updates under concurrency belong beside the record as atomic Redis values under the
//! session's key (herd's `/` visit count is an `INCR` on `{session key}:visits`), not in it.
//!
//! # Layout
//!
//! - [`pool`]: building the fred pool with the timeouts that make failure fast.
//! - [`keys`]: the Redis key layout shared by sessions, users and the cache.
//! - [`store`]: the `SessionStore` implementation and its value format.
//! - [`cache`]: a cache shared by all workers, computing each missing value once cluster-wide.

pub mod cache;
pub mod keys;
pub mod pool;
pub mod store;

pub use cache::{Cache, Cached};
pub use keys::Keys;
pub use pool::{connect, RedisConfig};
pub use store::RedisSessionStore;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The Redis URL could not be parsed.
    #[error("invalid Redis URL {url:?}: {source}")]
    Url {
        /// The URL as given (credentials included: callers should not log it as is).
        url: String,
        /// fred's complaint.
        source: fred::error::Error,
    },
    /// Redis failed, timed out or is unreachable.
    #[error("Redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// A session record could not be encoded.
    #[error("cannot encode session: {0}")]
    Encode(#[from] serde_json::Error),
}

impl StoreError {
    /// True when the error means "Redis is unavailable right now" rather than a bug: the caller
    /// should answer 503 and let the client retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Redis(_))
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
