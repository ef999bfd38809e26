//! Users in Redis: `{prefix}user:{name}` is a hash whose `password` field is an argon2id PHC
//! string (argon2 crate defaults: m = 19 MiB, t = 2, p = 1, OWASP's first recommendation).
//! Hashing runs on the blocking pool so a login never stalls the worker's other requests.
//!
//! Each hash holds 19 MiB for its duration, so the number running at once is capped per
//! process ([`HashLimit`]): without the cap, tokio's 512 blocking threads let a burst of
//! logins take ~10 GiB. Past the cap a login waits at most [`HashLimit::queue_timeout`] for
//! its turn, then gets [`UserError::Busy`] (503). Every hash, also the one an unknown user
//! costs, goes through the same cap.

pub(crate) mod cli;
pub(crate) mod hasher;
pub(crate) mod limit;
pub(crate) mod sessions;
pub(crate) mod visits;

use std::{sync::Arc, time::Duration};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use fred::{clients::Pool, interfaces::HashesInterface};
use herd_session_store::{
    retry::{self, Replay},
    Keys, StoreError,
};
use tokio::sync::Semaphore;

/// Longest password accepted; argon2 does not need more and a huge one is a cheap DoS.
const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub(crate) enum UserError {
    #[error("user names are 1-64 characters of letters, digits and _ . @ -")]
    InvalidName,
    #[error("passwords are 1-{MAX_PASSWORD_BYTES} bytes")]
    InvalidPassword,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// Every hashing permit stayed taken for the whole queue timeout.
    #[error("too many logins at once")]
    Busy,
}

/// How long a login waits for a hashing permit by default.
pub(crate) const DEFAULT_HASH_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many argon2 hashes may run at once in this process, and how long one waits for its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HashLimit {
    /// Hashes running at once; each holds 19 MiB while it runs.
    pub concurrency: usize,
    /// Longest wait for a permit before the login is refused as busy.
    pub queue_timeout: Duration,
}

impl Default for HashLimit {
    /// One hash per core: more would only queue for the CPU while holding their memory.
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self { concurrency: cores, queue_timeout: DEFAULT_HASH_QUEUE_TIMEOUT }
    }
}

impl From<fred::error::Error> for UserError {
    fn from(err: fred::error::Error) -> Self {
        UserError::Store(err.into())
    }
}

#[derive(Clone)]
pub(crate) struct Users {
    pool: Pool,
    keys: Arc<Keys>,
    /// Permits to run a hash; never closed.
    hashing: Arc<Semaphore>,
    queue_timeout: Duration,
}

impl Users {
    /// Users in Redis, hashing within the default [`HashLimit`].
    pub(crate) fn new(pool: Pool, keys: Keys) -> Self {
        Self::with_hash_limit(pool, keys, HashLimit::default())
    }

    pub(crate) fn with_hash_limit(pool: Pool, keys: Keys, limit: HashLimit) -> Self {
        let permits = limit.concurrency.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            pool,
            keys: Arc::new(keys),
            hashing: Arc::new(Semaphore::new(permits)),
            queue_timeout: limit.queue_timeout,
        }
    }

    /// Creates the user or replaces its password.
    pub(crate) async fn set_password(&self, name: &str, password: &str) -> Result<(), UserError> {
        validate(name, password)?;
        let password = password.to_owned();
        let hash = self.hash_within_limit(move || hash(&password)).await??;
        self.store_hash(name, hash).await
    }

    /// [`Users::set_password`] with the hash made in a short-lived child process
    /// ([`hasher`]): for the long-lived primary, which must not keep the hash's memory.
    pub(crate) async fn set_password_in_child(&self, name: &str, password: &str) -> Result<(), UserError> {
        validate(name, password)?;
        let hash = hasher::hash_in_child(password).await?;
        self.store_hash(name, hash).await
    }

    async fn store_hash(&self, name: &str, hash: String) -> Result<(), UserError> {
        // Asked again after an error that may heal: setting the same hash twice changes nothing.
        let (key, hash) = (&self.keys.user(name), &hash);
        let _: i64 = retry::retry(self.pool.next(), Replay::Idempotent, |client| async move {
            client.hset(key, ("password", hash.as_str())).await
        })
        .await?;
        Ok(())
    }

    /// True when `password` is the user's. An unknown user costs the same argon2 work as a
    /// wrong password, so response times do not reveal which names exist.
    pub(crate) async fn verify(&self, name: &str, password: &str) -> Result<bool, UserError> {
        validate(name, password)?;
        let key = &self.keys.user(name);
        let stored: Option<String> =
            retry::retry(
                self.pool.next(),
                Replay::Idempotent,
                |client| async move { client.hget(key, "password").await },
            )
            .await?;
        let known = stored.is_some();
        let password = password.to_owned();
        let matches = self
            .hash_within_limit(move || {
                let phc = stored.as_deref().unwrap_or(DUMMY_HASH);
                PasswordHash::new(phc)
                    .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
                    .map_err(|e| UserError::Hash(e.to_string()))
            })
            .await??;
        Ok(known && matches)
    }

    /// Runs one hash on the blocking pool once a permit is free, or fails with
    /// [`UserError::Busy`] after the queue timeout. The permit is held until the hash is done,
    /// even if the request is dropped meanwhile: its memory is in use until then.
    async fn hash_within_limit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, UserError> {
        let permit = match tokio::time::timeout(self.queue_timeout, self.hashing.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            // Timed out; or closed, which never happens (no one calls `close`).
            Ok(Err(_)) | Err(_) => return Err(UserError::Busy),
        };
        tokio::task::spawn_blocking(move || {
            let result = f();
            drop(permit);
            result
        })
        .await
        .map_err(|e| UserError::Hash(e.to_string()))
    }
}

/// Checks the form of a name and a password, before any work is spent on them.
pub(crate) fn validate(name: &str, password: &str) -> Result<(), UserError> {
    let name_ok = (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'));
    if !name_ok {
        return Err(UserError::InvalidName);
    }
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(UserError::InvalidPassword);
    }
    Ok(())
}

fn hash(password: &str) -> Result<String, UserError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// What unknown users are verified against, so that they cost the same argon2 work as a known
/// user with a wrong password. A fixed hash (of 32 random bytes, thrown away; the default
/// parameters, which a test checks) rather than one made at start: making it cost every worker
/// a 19 MiB hash before its first request, memory the allocator then kept (issue 19). Nobody
/// can log in with it either way: an unknown user fails even when the password matches.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$QjByV0pLK25rTnVoNXFhZQ$mgWVfP2in6NqCkeLULBGlXGj80i1vbRAaUKArS+3pOg";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_passwords_are_validated() {
        assert!(validate("alice", "wonderland").is_ok());
        assert!(validate("a.b-c_d@e", "x").is_ok());
        assert!(matches!(validate("", "x"), Err(UserError::InvalidName)));
        assert!(matches!(validate("al ice", "x"), Err(UserError::InvalidName)));
        assert!(matches!(validate("<script>", "x"), Err(UserError::InvalidName)));
        assert!(matches!(validate(&"a".repeat(65), "x"), Err(UserError::InvalidName)));
        assert!(matches!(validate("alice", ""), Err(UserError::InvalidPassword)));
        assert!(matches!(validate("alice", &"x".repeat(1025)), Err(UserError::InvalidPassword)));
    }

    #[test]
    fn hashes_verify_and_are_argon2id() {
        let phc = hash("wonderland").expect("hash");
        assert!(phc.starts_with("$argon2id$"));
        let parsed = PasswordHash::new(&phc).expect("parse");
        assert!(Argon2::default().verify_password(b"wonderland", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"wrong", &parsed).is_err());
    }

    #[test]
    fn the_unknown_user_hash_costs_what_a_real_one_does() {
        let dummy = PasswordHash::new(DUMMY_HASH).expect("a PHC string");
        let real_phc = hash("wonderland").expect("hash");
        let real = PasswordHash::new(&real_phc).expect("parse");
        assert_eq!(dummy.algorithm, real.algorithm);
        assert_eq!(dummy.version, real.version);
        assert_eq!(dummy.params, real.params, "m, t and p of Argon2::default()");
        assert_eq!(dummy.hash.map(|h| h.len()), real.hash.map(|h| h.len()));
        assert!(Argon2::default().verify_password(b"wonderland", &dummy).is_err());
    }
}
