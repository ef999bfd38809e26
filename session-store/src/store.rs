//! [`RedisSessionStore`]: a `tower_sessions::SessionStore` on a fred pool.
//!
//! A session is one Redis string under [`Keys::session`], in the format of `record.rs`:
//! a header with when the session began (`created`, the base of the absolute lifetime), when it
//! was last extended (`seen`, the base of the idle timeout), whether a login retired it and the
//! app's expiry date, then one entry per session value, as JSON. The key's TTL mirrors the
//! expiry, so Redis reclaims dead sessions by itself, but the expiry is enforced from the
//! header, not by trusting the TTL or the cookie.
//!
//! # Expiry
//!
//! A session ends at the earliest of:
//!
//! - **the app's expiry**: `Record::expiry_date` as tower-sessions handed it to the last save
//!   (from `SessionManagerLayer::with_expiry` or `Session::set_expiry`), exactly as the stock
//!   store and `MemoryStore` keep it. Only a save moves it: a request that changes the session,
//!   or every request under `with_always_save(true)` (a save that changes nothing else rewrites
//!   only the expiry in the header and the TTL). A load returns the date that was saved.
//! - **herd's idle timeout**, if set ([`SessionLimits::idle`]): this long without *requests*,
//!   reads included. Reads extend it cheaply: loading a session whose `seen` is older than a
//!   quarter of the timeout runs a touch script that rewrites `seen` in place and sets the TTL,
//!   never the data; so a read-only request costs one Redis round trip plus at most one touch
//!   per quarter of the timeout, and a session ends between ¾ of and the whole idle timeout
//!   after its last request.
//! - **herd's absolute lifetime**, if set ([`SessionLimits::max_age`]): this long after the
//!   session began, however active.
//!
//! [`RedisSessionStore::new`] sets neither of herd's limits, so the app's expiry alone applies,
//! as with the stock store; `herd serve` sets both (`--session-idle`, `--session-max-age`).

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use fred::{
    bytes_utils::Str,
    clients::{Client, Pool},
    interfaces::KeysInterface,
    types::{Expiration, Value as FredValue},
};
use serde_json::Value;
use time::OffsetDateTime;
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

use crate::{
    keys::Keys,
    observe::{StoreEvent, StoreObserver},
    record,
    replication::ReplicaWait,
    retry::{self, Replay},
    scope::{self, Failure, SessionScopeLayer},
    scripts::{self, Op},
    StoreError,
};

/// Most predecessors a logout follows (see [`RedisSessionStore::delete_now`]).
const MAX_PREDECESSORS: usize = 16;

/// A session's values by name.
type Data = HashMap<String, Value>;
/// A session's values by name, as the JSON stored in Redis.
pub(crate) type Encoded = HashMap<String, String>;

/// What a save compares against: the session as this request last saw it in Redis.
#[derive(Debug)]
pub(crate) enum Base {
    /// The record as loaded (a shared handle on the reply's bytes), split into values again
    /// only if the request saves: most requests only read.
    Loaded(Str),
    /// What this request wrote.
    Written { values: Encoded, expiry: OffsetDateTime },
}

impl Base {
    /// The values and the app's expiry date (`None` for a format-3 record, which has none).
    fn parts(&self) -> (HashMap<&str, &str>, Option<OffsetDateTime>) {
        match self {
            Base::Loaded(text) => record::parse(text)
                .map(|stored| (stored.values.into_iter().collect(), stored.expiry))
                .unwrap_or_default(),
            Base::Written { values, expiry } => (pairs(values).into_iter().collect(), Some(*expiry)),
        }
    }
}

/// The values as the write script takes them.
pub(crate) fn pairs(encoded: &Encoded) -> Vec<(&str, &str)> {
    encoded.iter().map(|(name, json)| (name.as_str(), json.as_str())).collect()
}

pub(crate) fn encode(data: &Data) -> Result<Encoded, StoreError> {
    data.iter().map(|(name, value)| Ok((name.clone(), serde_json::to_string(value)?))).collect()
}

/// `herd serve`'s idle timeout: a session ends after this long without requests (OWASP's
/// guidance for low-risk apps is 15-30 minutes). Not set by [`SessionLimits::default`].
pub const DEFAULT_SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// `herd serve`'s absolute lifetime: a session ends this long after login, however active: a
/// working day, so a stolen cookie does not live for ever. Not set by
/// [`SessionLimits::default`].
pub const DEFAULT_SESSION_MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Largest session (names and JSON values), so one client cannot fill Redis.
pub const DEFAULT_SESSION_MAX_BYTES: usize = 64 << 10;
/// How long the session a login replaced keeps answering requests already in flight.
pub const DEFAULT_SESSION_GRACE: Duration = Duration::from_secs(5);

/// How long sessions live, beyond the app's own expiry, and how big they may grow.
///
/// The default sets no idle timeout and no absolute lifetime: the app's expiry
/// (`SessionManagerLayer::with_expiry`) alone ends sessions, as with the stock store. Set them
/// to have herd end sessions earlier whatever the app asks (see [the module](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// A session ends this long after its last request (reads count); `None`: only the app's
    /// expiry.
    pub idle: Option<Duration>,
    /// A session ends this long after it began, however active; `None`: no such bound.
    pub max_age: Option<Duration>,
    /// Largest session, counting each value's name and JSON; a save beyond it fails (413 under
    /// [`SessionScopeLayer`]).
    pub max_bytes: usize,
    /// How long the session a login replaced keeps answering, for requests already in flight.
    pub grace: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self { idle: None, max_age: None, max_bytes: DEFAULT_SESSION_MAX_BYTES, grace: DEFAULT_SESSION_GRACE }
    }
}

/// Sessions in Redis under [`Keys::session`], one string per session.
#[derive(Debug, Clone)]
pub struct RedisSessionStore {
    pub(crate) pool: Pool,
    keys: Keys,
    limits: SessionLimits,
    read_stock: bool,
    replica_wait: ReplicaWait,
    observer: Option<StoreObserver>,
}

/// How a write treats the names it is not given.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// A new record; fails if the key exists.
    Create,
    /// Only the given names change.
    Patch,
    /// The given names are the whole data.
    Replace,
    /// Only the app's expiry changes (the header and the TTL).
    Expiry,
}

impl RedisSessionStore {
    /// A store on `pool` (build it with [`crate::connect`] to get bounded I/O), with the
    /// default [`SessionLimits`].
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self {
            pool,
            keys,
            limits: SessionLimits::default(),
            read_stock: false,
            replica_wait: ReplicaWait::default(),
            observer: None,
        }
    }

    /// Tells `observer` of what the store does inside loads and logins ([`crate::observe`]).
    pub fn with_observer(mut self, observer: StoreObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    fn notify(&self, event: StoreEvent) {
        if let Some(observer) = &self.observer {
            observer.notify(event);
        }
    }

    /// Sets how revocations (logouts, a login's old session) wait for replicas; by default
    /// for one, if one is connected ([`ReplicaWait`]).
    pub fn with_replica_wait(mut self, wait: ReplicaWait) -> Self {
        self.replica_wait = wait;
        self
    }

    /// Sets how long sessions live and how big they grow.
    pub fn with_limits(mut self, limits: SessionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// Also finds sessions written by `tower-sessions-redis-store` 0.16; see [`crate::stock`].
    pub fn reading_stock_sessions(mut self) -> Self {
        self.read_stock = true;
        self
    }

    /// The layer that gives this store merged saves, gap-free logins and typed failures (see
    /// [`crate::scope`]). Put it outside `SessionManagerLayer`.
    pub fn scope_layer(&self) -> SessionScopeLayer {
        SessionScopeLayer::new(self.clone())
    }

    /// The Redis key of a session.
    pub fn key(&self, id: &Id) -> String {
        self.keys.session_of(id)
    }

    /// The limits as script arguments: now (a header stamp), idle, max age (ms; 0 when not
    /// set).
    fn clock_args(&self) -> Vec<String> {
        let (idle, max_age) = self.limit_ms();
        vec![record::stamp(now_ms()), idle.unwrap_or(0).to_string(), max_age.unwrap_or(0).to_string()]
    }

    /// herd's limits in ms.
    fn limit_ms(&self) -> (Option<i64>, Option<i64>) {
        (self.limits.idle.map(millis), self.limits.max_age.map(millis))
    }

    /// Writes values of `id` and the app's `expiry`: `set` as given, `removed` deleted; false
    /// if the condition of `mode` failed (key taken for a create, gone otherwise).
    pub(crate) async fn write(
        &self,
        mode: Mode,
        id: &Id,
        expiry: OffsetDateTime,
        set: &[(&str, &str)],
        removed: &[&str],
    ) -> Result<bool, StoreError> {
        let mut args = self.clock_args();
        args.push(record::expiry_field(expiry));
        args.push(
            match mode {
                Mode::Create => "create",
                Mode::Patch => "patch",
                Mode::Replace => "replace",
                Mode::Expiry => "expiry",
            }
            .to_owned(),
        );
        args.push(set.len().to_string());
        for (name, json) in set {
            args.push((*name).to_owned());
            args.push((*json).to_owned());
        }
        args.extend(removed.iter().map(|name| (*name).to_owned()));
        let op = if matches!(mode, Mode::Create) { Op::Create } else { Op::Write };
        let written: i64 = scripts::run(self.pool.next(), op, &self.key(id), args).await?;
        Ok(written == 1)
    }

    /// Writes a new record under a fresh id if `record.id` is taken.
    async fn insert_new(&self, record: &mut Record) -> Result<Encoded, StoreError> {
        let encoded = self.encode_capped(&record.data)?;
        let all = pairs(&encoded);
        // 128 random bits make a collision practically impossible, but it would hand one user
        // another's session, so check anyway.
        while !self.write(Mode::Create, &record.id, record.expiry_date, &all, &[]).await? {
            record.id = Id::default();
        }
        Ok(encoded)
    }

    fn encode_capped(&self, data: &Data) -> Result<Encoded, StoreError> {
        let encoded = encode(data)?;
        let size: usize = encoded.iter().map(|(name, json)| name.len() + json.len()).sum();
        if size > self.limits.max_bytes {
            return Err(StoreError::TooLarge { size, limit: self.limits.max_bytes });
        }
        Ok(encoded)
    }

    /// Ends a session now, whatever the request does next, and with it the sessions its login
    /// replaced that are still in their grace period (a logout must end every id that still
    /// answers for this login, not leave the previous cookie working for the grace).
    ///
    /// Each link is read and each record deleted by its own single-key command (Redis Cluster);
    /// the order makes it safe: a link is read before the record it hangs off is deleted.
    ///
    /// Confirmed once a replica has it, if there are replicas ([`ReplicaWait`]).
    pub(crate) async fn delete_now(&self, id: &Id) -> Result<(), StoreError> {
        // One connection for the deletes and the `WAIT` that asks about them.
        let client = self.pool.next();
        let mut ending = self.key(id);
        // A chain grows by one per login within the grace period of the previous one, and each
        // link expires with its grace; the bound only guards against a cycle.
        for _ in 0..MAX_PREDECESSORS {
            let link = &Keys::replaced(&ending);
            let predecessor: Option<String> =
                retry::retry(client, Replay::Idempotent, |client| async move { client.get(link).await }).await?;
            forget(client, &ending).await?;
            match predecessor {
                Some(key) => ending = key,
                None => break,
            }
        }
        self.replica_wait.confirm(client).await
    }

    /// Notes, beside the new session of a login, which session it replaced, for as long as
    /// that one's grace lasts.
    async fn link_predecessor(&self, client: &Client, new: &Id, old: &Id) -> Result<(), StoreError> {
        let (link, old) = (Keys::replaced(&self.key(new)), self.key(old));
        let grace = millis(self.limits.grace);
        // Setting it twice sets the same value and TTL.
        let _: Option<String> = retry::retry(client, Replay::Idempotent, |client| {
            let (link, old) = (&link, &old);
            async move { client.set(link, old, Some(Expiration::PX(grace)), None, false).await }
        })
        .await?;
        Ok(())
    }

    /// The old session of a login lives on for the grace period only; false if there was
    /// no such session.
    async fn retire(&self, client: &Client, old: &Id) -> Result<bool, StoreError> {
        let args = vec!["retire".to_owned(), millis(self.limits.grace).to_string()];
        let retired: i64 = scripts::run(client, Op::Retire, &self.key(old), args).await?;
        Ok(retired == 1)
    }

    /// A login failed after its new session was written: back to the old one.
    pub(crate) async fn undo_rotation(&self, old: &Id, new: &Id) -> Result<(), StoreError> {
        let client = self.pool.next();
        let mut args = vec!["restore".to_owned()];
        args.extend(self.clock_args());
        let _: i64 = scripts::run(client, Op::Retire, &self.key(old), args).await?;
        // Not `delete_now`: that would follow the link to the old session just restored.
        forget(client, &self.key(new)).await
    }

    /// `GET key`, asked again (within one command timeout) after an error that may heal.
    ///
    /// A read changes nothing, so it may be asked again whatever became of the first attempt
    /// ([`crate::retry`]). That matters in a planned Redis Cluster failover: fred fails a
    /// command the old primary answered `-MOVED`, or that was in flight on a connection fred
    /// dropped on re-reading the topology (docs/deploy.md); a later attempt reaches the new
    /// primary. `WRONGTYPE` is not retried (it would only come again), nor is a timeout (it has
    /// spent the request's budget).
    async fn get_retrying(&self, key: &str) -> Result<FredValue, fred::error::Error> {
        retry::retry(self.pool.next(), Replay::Idempotent, |client| async move { client.get(key).await }).await
    }

    async fn load_record(&self, id: &Id) -> Result<Option<Record>, StoreError> {
        let key = self.key(id);
        let text = match self.get_retrying(&key).await {
            Ok(FredValue::String(text)) => text,
            Ok(FredValue::Null) => return if self.read_stock { self.adopt_stock(id).await } else { Ok(None) },
            Ok(_) => return Ok(unknown_format()),
            Err(err) if err.details().starts_with("WRONGTYPE") => return Ok(unknown_format()),
            Err(err) => return Err(err.into()),
        };
        let Some(record::Stored { created, seen, retired, expiry, values }) = record::parse(&text) else {
            return Ok(unknown_format());
        };
        let now = OffsetDateTime::now_utc();
        let now_ms = unix_ms(now);
        let (idle, max_age) = self.limit_ms();
        // Enforced here, not only by the TTL (which mirrors them, but by Redis' clock).
        let over = expiry.is_some_and(|expiry| expiry <= now)
            || idle.is_some_and(|idle| now_ms - seen >= idle)
            || max_age.is_some_and(|max_age| now_ms - created >= max_age);
        if over {
            // Redis would drop it soon by itself: a failure here changes nothing for the client.
            if let Err(err) = self.pool.del::<i64, _>(&key).await {
                tracing::debug!(error = %err, "could not remove an ended session");
            }
            return Ok(None);
        }
        let mut seen = seen;
        if let Some(idle) = idle.filter(|idle| !retired && now_ms - seen >= idle / 4) {
            let mut args = self.clock_args();
            args.push((idle / 4).to_string());
            // Losing a touch only shortens the session's idle window; the read still stands.
            let touched = scripts::run::<i64>(self.pool.next(), Op::Touch, &key, args).await;
            match touched {
                // 0: another request touched it first.
                Ok(touched) => {
                    seen = now_ms;
                    if touched == 1 {
                        self.notify(StoreEvent::Touch { ok: true });
                    }
                }
                Err(err) => {
                    self.notify(StoreEvent::Touch { ok: false });
                    if err.is_out_of_memory() {
                        // A full Redis refuses every touch: one operator line per interval,
                        // not a WARN per request.
                        crate::operator::redis_full(&err);
                    } else {
                        tracing::warn!(error = %err, "could not extend a session's idle timeout");
                    }
                }
            }
        }
        let mut data = Data::with_capacity(values.len());
        for (name, json) in values {
            match serde_json::from_str(json) {
                Ok(value) => {
                    data.insert(name.to_owned(), value);
                }
                // Dropped here, and from Redis by the next save.
                Err(err) => {
                    tracing::warn!(error = %err, name, "corrupt session value; dropping it")
                }
            }
        }
        let expiry_date = expiry.unwrap_or_else(|| self.format_3_expiry(now, seen, created));
        scope::with(|state| state.remember(*id, Base::Loaded(text)));
        Ok(Some(Record { id: *id, data, expiry_date }))
    }

    /// The expiry date to report for a format-3 record, which kept none: where herd's limits
    /// end it, or (with none set) tower-sessions' default of two weeks from now.
    fn format_3_expiry(&self, now: OffsetDateTime, seen: i64, created: i64) -> OffsetDateTime {
        let (idle, max_age) = self.limit_ms();
        let ends_ms = match (idle.map(|idle| seen.saturating_add(idle)), max_age.map(|age| created.saturating_add(age)))
        {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ends_ms
            .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok())
            .unwrap_or(now + time::Duration::weeks(2))
    }

    /// Writes what this request changed in `record` (everything, outside a scope), and its
    /// expiry date if that changed.
    async fn save_record(&self, record: &Record) -> Result<(), StoreError> {
        let encoded = self.encode_capped(&record.data)?;
        let expiry = record.expiry_date;
        let written = match scope::with(|state| state.take_base(&record.id)).flatten() {
            Some(base) => {
                let (values, stored_expiry) = base.parts();
                let set: Vec<_> =
                    pairs(&encoded).into_iter().filter(|(name, json)| values.get(name) != Some(json)).collect();
                let removed: Vec<&str> = values.keys().copied().filter(|name| !encoded.contains_key(*name)).collect();
                match (set.is_empty() && removed.is_empty(), stored_expiry == Some(expiry)) {
                    (true, true) => {
                        // Nothing changed; the load already extended the idle timeout.
                        drop(values);
                        scope::with(|state| state.remember(record.id, base));
                        return Ok(());
                    }
                    // `set_expiry`, or always-save moving an inactivity expiry.
                    (true, false) => self.write(Mode::Expiry, &record.id, expiry, &[], &[]).await?,
                    (false, _) => self.write(Mode::Patch, &record.id, expiry, &set, &removed).await?,
                }
            }
            None => self.write(Mode::Replace, &record.id, expiry, &pairs(&encoded), &[]).await?,
        };
        if !written {
            // Expired, or deleted by a logout in another worker: do not bring it back.
            tracing::debug!("session vanished before it could be saved; not recreating it");
        }
        scope::with(|state| state.remember(record.id, Base::Written { values: encoded, expiry }));
        Ok(())
    }

    async fn create_record(&self, record: &mut Record) -> Result<(), StoreError> {
        let encoded = self.insert_new(record).await?;
        let replaced = scope::with(|state| {
            state.remember(record.id, Base::Written { values: encoded, expiry: record.expiry_date });
            state.deleted.pop()
        });
        if let Some(Some(old)) = replaced {
            // A login (`cycle_id`): the new record exists, so the old one may go, after a grace.
            // Noted first, so that a failure of either step below is undone with the request.
            scope::with(|state| state.rotation = Some((old, record.id)));
            // Linked only if there was a record to retire (a first login replaces an id that
            // was never stored). The new id reaches the client only with this response, so
            // no logout can use it before the link exists.
            let client = self.pool.next();
            if self.retire(client, &old).await? {
                self.link_predecessor(client, &record.id, &old).await?;
                // The old id is a revocation too: a failover must not extend it again.
                self.replica_wait.confirm(client).await?;
                self.notify(StoreEvent::Rotate);
            }
        }
        Ok(())
    }
}

/// Deletes one record and its link to the session it replaced (each asked again after an
/// error that may heal: a second `DEL` deletes nothing more).
async fn forget(client: &Client, key: &str) -> Result<(), StoreError> {
    for key in [key.to_owned(), Keys::replaced(key)] {
        let _: i64 = retry::retry(client, Replay::Idempotent, |client| {
            let key = &key;
            async move { client.del(key).await }
        })
        .await?;
    }
    Ok(())
}

/// Records why an operation failed, for [`SessionScopeLayer`]'s answer.
fn noted<T>(result: Result<T, StoreError>) -> session_store::Result<T> {
    result.map_err(|err| {
        if let Some(failure) = Failure::of(&err) {
            scope::with(|state| state.failure = Some(failure));
        }
        err.into()
    })
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        noted(self.create_record(record).await)
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        noted(self.save_record(record).await)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        noted(self.load_record(id).await)
    }

    /// Under [`SessionScopeLayer`] the deletion happens when the request has succeeded (and a
    /// login turns it into a retirement); otherwise at once.
    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        if scope::with(|state| state.deleted.push(*id)).is_some() {
            return Ok(());
        }
        noted(self.delete_now(id).await)
    }
}

/// What a read makes of a key that holds something else than a session in format 3 (an older
/// herd's, a future one's, another program's): no session, and a line in the log.
fn unknown_format() -> Option<Record> {
    tracing::warn!("session key holds a value in another format; treating it as missing");
    None
}

fn now_ms() -> i64 {
    unix_ms(OffsetDateTime::now_utc())
}

fn unix_ms(date: OffsetDateTime) -> i64 {
    i64::try_from(date.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX).max(1)
}
