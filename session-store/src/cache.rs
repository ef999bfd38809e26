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
//! - **Bounded** ([`CacheLimits`]). The cache shares Redis with users and sessions, and its
//!   keys often come from anonymous requests, so what it may store is capped: a value larger
//!   than [`CacheLimits::max_value_bytes`] is never stored, and every write is counted in a
//!   budget of [`CacheLimits::max_entries`] entries and [`CacheLimits::max_bytes`] bytes per
//!   window (one key, `{prefix}cache-budget`, updated by one script). The window lasts at
//!   least as long as every entry admitted in it, so the entries alive at once never exceed
//!   the budget. Once it is spent, values are computed and answered but not stored until the
//!   window ends. Every entry, lock and the budget carry a TTL, so under `volatile-*` eviction
//!   only they (and sessions) are candidates, never the users, which have none.
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
    types::{scripts::Script, Expiration, SetOptions},
};
use rand::Rng;

use crate::{operator::Throttle, Keys, StoreError};

/// Default of [`CacheLimits::max_entries`].
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000;
/// Default of [`CacheLimits::max_bytes`]: 16 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;
/// Default of [`CacheLimits::max_value_bytes`]: 64 KiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 64 << 10;
/// What Redis spends on a key beyond its name and value (its dictionary entry, object header
/// and expiry), counted with each entry so the byte budget tracks memory, not just payload.
const ENTRY_OVERHEAD: usize = 64;

/// How much of Redis (and of each process's memory, for local copies) the cache may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Entries written per window; also the most local copies a process keeps.
    pub max_entries: u64,
    /// Bytes (keys, values and [`ENTRY_OVERHEAD`] each) written per window.
    pub max_bytes: u64,
    /// A larger value is answered but never stored.
    pub max_value_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: DEFAULT_MAX_BYTES,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

/// Counts one entry in the cache's budget, if it fits.
///
/// KEYS[1]: the budget (hash `entries`, `bytes`). ARGV: the entry's bytes, its lifetime (ms),
/// max entries, max bytes. Reply: 1 admitted (counted, and the window now lasts at least as long
/// as the entry), 0 over budget.
static ADMIT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    Script::from_lua(
        r#"
local entries = tonumber(redis.call('HGET', KEYS[1], 'entries') or '0')
local bytes = tonumber(redis.call('HGET', KEYS[1], 'bytes') or '0')
local size, lifetime = tonumber(ARGV[1]), tonumber(ARGV[2])
if entries + 1 > tonumber(ARGV[3]) or bytes + size > tonumber(ARGV[4]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'entries', 1)
redis.call('HINCRBY', KEYS[1], 'bytes', size)
if redis.call('PTTL', KEYS[1]) < lifetime then redis.call('PEXPIRE', KEYS[1], lifetime) end
return 1
"#,
    )
});

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
    /// The shared entry in Redis, after waiting for another request's computation of it (the
    /// single flight).
    Waited,
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
    limits: CacheLimits,
}

impl Cache {
    /// A cache on `pool` with keys under `keys`' prefix: no jitter, no local copies, the
    /// default [`CacheLimits`].
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys, jitter: 0.0, local: None, limits: CacheLimits::default() }
    }

    /// Bounds what the cache stores (see [`CacheLimits`]).
    pub fn with_limits(mut self, limits: CacheLimits) -> Self {
        self.limits = limits;
        self
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
                // Released when this request ends, even if it is dropped mid-computation (its
                // client left): waiters then take over at once, not after `LOCK_LIFETIME`.
                let lock = LockGuard { pool: self.pool.clone(), key: lock_key.clone(), token: token.clone() };
                let result = match compute().await {
                    Ok(value) => {
                        let (stored, lifetime) = match &value {
                            Some(v) => (format!("v{v}"), ttl),
                            None => ("n".to_owned(), negative_ttl),
                        };
                        let lifetime = self.jittered(lifetime);
                        if self.admit(&value_key, &stored, lifetime).await? {
                            let expiry = Expiration::PX(millis(lifetime));
                            let _: Option<String> = self
                                .pool
                                .set(&value_key, stored, Some(expiry), None, false)
                                .await
                                .map_err(StoreError::from)?;
                            self.keep_local(key, value.clone(), generation);
                        }
                        Ok(Cached { value, from_cache: false, source: Source::Computed })
                    }
                    Err(err) => Err(CacheError::Compute(err)),
                };
                lock.release().await;
                return result;
            }
            // Someone else computes: wait for the value, or for their lock to go away.
            loop {
                tokio::time::sleep(POLL).await;
                if let Some(value) = self.shared(key, &value_key, generation).await? {
                    return Ok(Cached { value, from_cache: true, source: Source::Waited });
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

    /// True when `stored` may be written under `value_key` for `lifetime`: small enough, and
    /// counted in the budget of the current window.
    async fn admit(&self, value_key: &str, stored: &str, lifetime: Duration) -> Result<bool, StoreError> {
        if stored.len() > self.limits.max_value_bytes {
            tracing::debug!(key = value_key, bytes = stored.len(), "cache value too large to store");
            return Ok(false);
        }
        let size = value_key.len() + stored.len() + ENTRY_OVERHEAD;
        let args = vec![
            size.to_string(),
            millis(lifetime).to_string(),
            self.limits.max_entries.to_string(),
            self.limits.max_bytes.to_string(),
        ];
        let admitted: i64 = ADMIT.evalsha_with_reload(self.pool.next(), self.keys.cache_budget(), args).await?;
        if admitted == 0 {
            static SPENT: Throttle = Throttle::new();
            if let Some(suppressed) = SPENT.admit(Instant::now()) {
                tracing::warn!(
                    max_entries = self.limits.max_entries,
                    max_bytes = self.limits.max_bytes,
                    suppressed,
                    "the shared cache's budget is spent: new values are answered but not stored \
                     until its window ends (a flood of distinct keys, or limits set too low)"
                );
            }
        }
        Ok(admitted == 1)
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
            // Bounded like the shared entries: a flood of distinct keys cannot grow a process.
            let full = u64::try_from(entries.len()).unwrap_or(u64::MAX) >= self.limits.max_entries;
            if full && !entries.contains_key(key) {
                return;
            }
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
}

/// A single-flight lock this process holds: [`LockGuard::release`]d when the computation ends,
/// or released in the background if the request is dropped before.
struct LockGuard {
    pool: Pool,
    key: String,
    token: String,
}

impl LockGuard {
    /// Releases the lock now.
    async fn release(mut self) {
        release(&self.pool, &std::mem::take(&mut self.key), &self.token).await;
    }
}

impl Drop for LockGuard {
    /// A drop cannot wait: the release runs in a task of its own (outside a runtime, the lock
    /// is left to expire).
    fn drop(&mut self) {
        if self.key.is_empty() {
            return; // released already
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (pool, key, token) = (self.pool.clone(), std::mem::take(&mut self.key), std::mem::take(&mut self.token));
        runtime.spawn(async move { release(&pool, &key, &token).await });
    }
}

/// Deletes the lock, unless it expired and someone else holds it now.
async fn release(pool: &Pool, lock_key: &str, token: &str) {
    let holder: Result<Option<String>, _> = pool.get(lock_key).await;
    if matches!(holder, Ok(Some(ref t)) if t == token) {
        let _: Result<i64, _> = pool.del(lock_key).await;
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
