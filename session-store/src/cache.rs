//! A cache shared by every worker, on the same Redis pool as the sessions, with cluster-wide
//! single flight: when many requests in many processes miss the same key at once, exactly one
//! computes the value while the others wait for it.
//!
//! The one that computes holds a lock key (`SET … NX PX`) that expires by itself if its holder
//! dies, so a crashed worker never blocks the key for longer than the lock's lifetime. Values
//! live under `{prefix}cache:{key}`, apart from sessions, so flushing the cache by prefix never
//! logs anyone out.

use std::{future::Future, time::Duration};

use fred::{
    clients::Pool,
    interfaces::KeysInterface,
    types::{Expiration, SetOptions},
};

use crate::{Keys, StoreError};

/// How long a computation may hold its key before others give up waiting and try themselves.
const LOCK_LIFETIME: Duration = Duration::from_secs(30);
/// How often a waiting request looks for the value.
const POLL: Duration = Duration::from_millis(20);

/// Errors of a cached computation.
#[derive(Debug, thiserror::Error)]
pub enum CacheError<E> {
    /// Redis failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The computation itself failed (nothing is cached).
    #[error("computation failed: {0}")]
    Compute(E),
}

/// The shared cache.
#[derive(Debug, Clone)]
pub struct Cache {
    pool: Pool,
    keys: Keys,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// The value.
    pub value: String,
    /// False for the one request that computed it.
    pub from_cache: bool,
}

impl Cache {
    /// A cache on `pool` with keys under `keys`' prefix.
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys }
    }

    /// The value under `key`, or computes it once for the whole cluster and keeps it for `ttl`.
    pub async fn get_or_compute<F, Fut, E>(&self, key: &str, ttl: Duration, compute: F) -> Result<Cached, CacheError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
    {
        let value_key = self.keys.cache(key);
        let lock_key = self.keys.cache(&format!("{key}:lock"));
        let token = format!("{}:{}", std::process::id(), uuid_like());
        let mut compute = Some(compute);
        loop {
            let hit: Option<String> = self.pool.get(&value_key).await.map_err(StoreError::from)?;
            if let Some(value) = hit {
                return Ok(Cached { value, from_cache: true });
            }
            let lock = Expiration::PX(i64::try_from(LOCK_LIFETIME.as_millis()).unwrap_or(i64::MAX));
            let acquired: Option<String> =
                self.pool.set(&lock_key, token.as_str(), Some(lock), Some(SetOptions::NX), false).await.map_err(StoreError::from)?;
            if acquired.is_some() {
                let Some(compute) = compute.take() else { break };
                let computed = compute().await;
                let result = match computed {
                    Ok(value) => {
                        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
                        let _: Option<String> =
                            self.pool.set(&value_key, value.as_str(), Some(Expiration::EX(seconds)), None, false).await.map_err(StoreError::from)?;
                        Ok(Cached { value, from_cache: false })
                    }
                    Err(err) => Err(CacheError::Compute(err)),
                };
                self.release(&lock_key, &token).await;
                return result;
            }
            // Someone else computes: wait for the value, or for their lock to go away.
            loop {
                tokio::time::sleep(POLL).await;
                let hit: Option<String> = self.pool.get(&value_key).await.map_err(StoreError::from)?;
                if let Some(value) = hit {
                    return Ok(Cached { value, from_cache: true });
                }
                let held: i64 = self.pool.exists(&lock_key).await.map_err(StoreError::from)?;
                if held == 0 {
                    break; // the holder failed or died: try again, maybe computing ourselves
                }
            }
        }
        Err(CacheError::Store(StoreError::Redis(fred::error::Error::new(
            fred::error::ErrorKind::Unknown,
            "cache computation could not run",
        ))))
    }

    /// Deletes `key` everywhere (the next request recomputes it).
    pub async fn invalidate(&self, key: &str) -> Result<(), StoreError> {
        let _: i64 = self.pool.del(self.keys.cache(key)).await?;
        Ok(())
    }

    /// Releases our lock, unless it expired and someone else holds it now.
    async fn release(&self, lock_key: &str, token: &str) {
        let holder: Result<Option<String>, _> = self.pool.get(lock_key).await;
        if matches!(holder, Ok(Some(ref t)) if t == token) {
            let _: Result<i64, _> = self.pool.del(lock_key).await;
        }
    }
}

/// A token unique enough to tell lock holders apart (time and a process-local counter).
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}
