//! A cache shared by every worker, on the same Redis pool as the sessions.
//!
//! - **Single flight, cluster-wide.** When many requests in many processes miss the same key at
//!   once, exactly one computes the value while the others wait for it. The one that computes
//!   holds a lock key (`SET … NX PX`) that expires by itself if its holder dies, so a crashed
//!   worker never blocks the key for longer than the lock's lifetime.
//! - **TTL jitter.** Each entry lives its TTL ± a random fraction ([`Cache::with_jitter`]), so
//!   entries written together do not all expire (and get recomputed) together.
//! - **Negative caching.** A computation may answer "nothing" (`Ok(None)`); that answer is
//!   cached too, for its own (usually shorter) TTL, so a missing row is not looked up again on
//!   every request ([`Cache::get_or_compute_optional`]).
//! - **Local copies.** With [`Cache::with_local_copies`], each process keeps what it read for a
//!   short time and answers from memory. [`Cache::invalidate`] deletes the entry and publishes
//!   the key on `{prefix}cache:invalidate`; every process listening drops its copy. A process
//!   whose subscription drops clears all its copies when it reconnects, since it may have
//!   missed invalidations meanwhile; a copy is never older than the local TTL either way.
//!   Invalidation is asynchronous: `invalidate` returns once Redis deleted the entry and the
//!   message is published, and other processes drop their copies as it arrives (normally
//!   within a millisecond). A read that overlaps an invalidation keeps no copy, so a value
//!   fetched just before the delete cannot outlive it in memory.
//!
//! Values live under `{prefix}cache:{key}`, apart from sessions, so flushing the cache by
//! prefix never logs anyone out. A stored value is `v` + the value, or `n` for "nothing".

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use fred::{
    clients::{Client, Pool},
    interfaces::{ClientLike, EventInterface, KeysInterface, PubsubInterface},
    types::{Expiration, SetOptions},
};
use rand::Rng;

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

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// This process's local copy.
    Local,
    /// The shared entry in Redis.
    Redis,
    /// This request computed it.
    Computed,
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached<T = String> {
    /// The value.
    pub value: T,
    /// False for the one request that computed it.
    pub from_cache: bool,
    /// Where it came from.
    pub source: Source,
}

/// One process's local copies.
#[derive(Debug)]
struct LocalCopies {
    ttl: Duration,
    /// Value (None: "nothing") and when each stops being trusted.
    entries: Mutex<HashMap<String, (Option<String>, Instant)>>,
    /// Bumped by every invalidation this process hears of. A read remembers it before asking
    /// Redis and keeps its answer only if it is unchanged, so a value read just before an
    /// invalidation is not kept after it.
    generation: AtomicU64,
}

impl LocalCopies {
    fn forget(&self, key: Option<&str>) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut entries) = self.entries.lock() {
            match key {
                Some(key) => drop(entries.remove(key)),
                None => entries.clear(),
            }
        }
    }
}

/// The shared cache.
#[derive(Debug, Clone)]
pub struct Cache {
    pool: Pool,
    keys: Keys,
    jitter: f64,
    local: Option<Arc<LocalCopies>>,
}

impl Cache {
    /// A cache on `pool` with keys under `keys`' prefix: no jitter, no local copies.
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys, jitter: 0.0, local: None }
    }

    /// Each entry lives its TTL scaled by a random factor in `1 ± fraction` (at most 0.5).
    pub fn with_jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction.clamp(0.0, 0.5);
        self
    }

    /// Keeps local copies for `ttl` and listens for invalidations on a connection of its own.
    /// Fails if that connection cannot be set up.
    pub async fn with_local_copies(mut self, ttl: Duration) -> Result<Self, StoreError> {
        let copies = Arc::new(LocalCopies { ttl, entries: Mutex::default(), generation: AtomicU64::new(0) });
        listen_for_invalidations(self.pool.next(), self.invalidation_channel(), copies.clone()).await?;
        self.local = Some(copies);
        Ok(self)
    }

    fn invalidation_channel(&self) -> String {
        self.keys.cache("invalidate")
    }

    /// The value under `key`, or computes it once for the whole cluster and keeps it for `ttl`.
    pub async fn get_or_compute<F, Fut, E>(&self, key: &str, ttl: Duration, compute: F) -> Result<Cached, CacheError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, E>>,
    {
        let cached = self.lookup(key, ttl, ttl, || async move { compute().await.map(Some) }).await?;
        match cached.value {
            Some(value) => Ok(Cached { value, from_cache: cached.from_cache, source: cached.source }),
            // Only this cache writes under its prefix, and `compute` never answers "nothing".
            None => Err(CacheError::Store(StoreError::Redis(fred::error::Error::new(
                fred::error::ErrorKind::Parse,
                format!("cache entry {key} holds \"nothing\" but was never computed as optional"),
            )))),
        }
    }

    /// Like [`Cache::get_or_compute`] for computations that may find nothing: `Ok(None)` is
    /// cached for `negative_ttl`.
    pub async fn get_or_compute_optional<F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        negative_ttl: Duration,
        compute: F,
    ) -> Result<Cached<Option<String>>, CacheError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<String>, E>>,
    {
        self.lookup(key, ttl, negative_ttl, compute).await
    }

    async fn lookup<F, Fut, E>(
        &self,
        key: &str,
        ttl: Duration,
        negative_ttl: Duration,
        compute: F,
    ) -> Result<Cached<Option<String>>, CacheError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<String>, E>>,
    {
        if let Some(value) = self.local_copy(key) {
            return Ok(Cached { value, from_cache: true, source: Source::Local });
        }
        let generation = self.generation();
        let value_key = self.keys.cache(key);
        let lock_key = self.keys.cache(&format!("{key}:lock"));
        let token = format!("{}:{:x}", std::process::id(), rand::thread_rng().gen::<u64>());
        let mut compute = Some(compute);
        loop {
            if let Some(value) = self.shared(key, &value_key, generation).await? {
                return Ok(Cached { value, from_cache: true, source: Source::Redis });
            }
            let lock = Expiration::PX(millis(LOCK_LIFETIME));
            let acquired: Option<String> = self
                .pool
                .set(&lock_key, token.as_str(), Some(lock), Some(SetOptions::NX), false)
                .await
                .map_err(StoreError::from)?;
            if acquired.is_some() {
                let Some(compute) = compute.take() else { break };
                let result = match compute().await {
                    Ok(value) => {
                        let (stored, lifetime) = match &value {
                            Some(v) => (format!("v{v}"), ttl),
                            None => ("n".to_owned(), negative_ttl),
                        };
                        let expiry = Expiration::PX(millis(self.jittered(lifetime)));
                        let _: Option<String> = self
                            .pool
                            .set(&value_key, stored, Some(expiry), None, false)
                            .await
                            .map_err(StoreError::from)?;
                        self.keep_local(key, value.clone(), generation);
                        Ok(Cached { value, from_cache: false, source: Source::Computed })
                    }
                    Err(err) => Err(CacheError::Compute(err)),
                };
                self.release(&lock_key, &token).await;
                return result;
            }
            // Someone else computes: wait for the value, or for their lock to go away.
            loop {
                tokio::time::sleep(POLL).await;
                if let Some(value) = self.shared(key, &value_key, generation).await? {
                    return Ok(Cached { value, from_cache: true, source: Source::Redis });
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

    /// The shared entry: `Some(Some(v))` a value, `Some(None)` a cached "nothing", `None` a miss.
    async fn shared(&self, key: &str, value_key: &str, generation: u64) -> Result<Option<Option<String>>, StoreError> {
        let stored: Option<String> = self.pool.get(value_key).await?;
        let value = match stored.as_deref() {
            Some("n") => Some(None),
            Some(v) if v.starts_with('v') => Some(Some(v[1..].to_owned())),
            _ => None, // missing, or not written by this cache: recompute
        };
        if let Some(value) = &value {
            self.keep_local(key, value.clone(), generation);
        }
        Ok(value)
    }

    fn local_copy(&self, key: &str) -> Option<Option<String>> {
        let entries = self.local.as_ref()?.entries.lock().ok()?;
        entries.get(key).filter(|(_, until)| *until > Instant::now()).map(|(value, _)| value.clone())
    }

    fn generation(&self) -> u64 {
        self.local.as_ref().map_or(0, |local| local.generation.load(Ordering::SeqCst))
    }

    /// Keeps a copy of what was read since `generation`, unless an invalidation came meanwhile.
    fn keep_local(&self, key: &str, value: Option<String>, generation: u64) {
        let Some(local) = &self.local else { return };
        if let Ok(mut entries) = local.entries.lock() {
            // Checked under the lock `forget` bumps before taking, so no invalidation slips
            // between the check and the insert.
            if local.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            entries.insert(key.to_owned(), (value, now + local.ttl));
        }
    }

    fn jittered(&self, ttl: Duration) -> Duration {
        if self.jitter == 0.0 {
            return ttl;
        }
        ttl.mul_f64(rand::thread_rng().gen_range(1.0 - self.jitter..=1.0 + self.jitter))
    }

    /// Deletes `key` everywhere: in Redis, and in every process's local copies.
    pub async fn invalidate(&self, key: &str) -> Result<(), StoreError> {
        let _: i64 = self.pool.del(self.keys.cache(key)).await?;
        if let Some(local) = &self.local {
            local.forget(Some(key));
        }
        let _: i64 = self.pool.next().publish(self.invalidation_channel(), key).await?;
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

/// Subscribes a new connection to `channel` and drops local copies as invalidations arrive;
/// all of them after a reconnection, which may have missed some.
async fn listen_for_invalidations(
    template: &Client,
    channel: String,
    copies: Arc<LocalCopies>,
) -> Result<(), StoreError> {
    let subscriber = template.clone_new();
    let mut messages = subscriber.message_rx();
    let mut reconnections = subscriber.reconnect_rx();
    subscriber.init().await?;
    subscriber.subscribe(channel.as_str()).await?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                message = messages.recv() => {
                    let Ok(message) = message else { break };
                    if let Some(key) = message.value.as_string() {
                        copies.forget(Some(&key));
                        // Tests wait for this line to know every worker has heard.
                        tracing::debug!(%key, "dropped the local cache copy");
                    }
                }
                reconnected = reconnections.recv() => {
                    if reconnected.is_err() {
                        break;
                    }
                    copies.forget(None);
                    if let Err(err) = subscriber.subscribe(channel.as_str()).await {
                        tracing::warn!(error = %err, "could not resubscribe to cache invalidations");
                    }
                }
            }
        }
    });
    Ok(())
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX).max(1)
}
