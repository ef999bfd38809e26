//! Every login of a user, so that all of them can be ended at once ("log out everywhere", and
//! after a password change): the hash `{prefix}user:{name}:logins`, one field per login, named
//! by its session key, holding that session's visit count ([`super::visits`]). Ending them all
//! deletes every listed session and the hash. Its TTL slides with each login and visit, so a
//! user who stops coming leaves nothing behind; listed sessions that already expired cost a
//! no-op `DEL`.
//!
//! Why one hash for both: a set of session keys plus a counter key per session cost ~1.2 KB
//! of Redis per logged-in session; a hash of up to 128 fields is one listpack, a few dozen
//! bytes per login (issue 19, bench/session_bytes.sh).

use fred::{
    clients::Pool,
    interfaces::{ClientLike, HashesInterface, KeysInterface, SetsInterface},
};
use herd_session_store::{
    retry::{self, Replay},
    Keys, ReplicaWait, StoreError,
};

/// How long the index outlives the last login or visit (longer than any session lives).
pub(crate) const INDEX_TTL_SECS: i64 = 14 * 24 * 3600;

#[derive(Clone)]
pub(crate) struct UserSessions {
    pool: Pool,
    keys: Keys,
    /// Ending every login is a revocation: confirmed once a replica has it.
    replica_wait: ReplicaWait,
}

impl UserSessions {
    pub(crate) fn new(pool: Pool, keys: Keys, replica_wait: ReplicaWait) -> Self {
        Self { pool, keys, replica_wait }
    }

    /// Records that `session_key` belongs to `user`, with no visits yet: `HSET` and `EXPIRE`
    /// sent together in one pipeline, so the hash is never left without its TTL by a worker
    /// stopping between two round trips.
    ///
    /// Both are asked again after an error that may heal ([`retry`]): applied twice they give
    /// the same hash, as no visit can be counted before the login's cookie reaches its client.
    pub(crate) async fn add(&self, user: &str, session_key: &str) -> Result<(), StoreError> {
        let index = &self.keys.user_logins(user);
        let _: (i64, bool) = retry::retry(self.pool.next(), Replay::Idempotent, |client| async move {
            let pipeline = client.pipeline().with_options(client.options());
            let _: () = pipeline.hset(index, (session_key, 0)).await?;
            let _: () = pipeline.expire(index, INDEX_TTL_SECS, None).await?;
            pipeline.all().await
        })
        .await?;
        Ok(())
    }

    /// Forgets one session and its visit count (a plain logout).
    pub(crate) async fn remove(&self, user: &str, session_key: &str) -> Result<(), StoreError> {
        let index = &self.keys.user_logins(user);
        let _: i64 = retry::retry(self.pool.next(), Replay::Idempotent, |client| async move {
            client.hdel(index, session_key).await
        })
        .await?;
        Ok(())
    }

    /// Deletes every session of `user`; returns how many were still alive, once a replica has
    /// the deletions (see [`ReplicaWait`]). Also those an older herd listed in its set.
    pub(crate) async fn end_all(&self, user: &str) -> Result<u64, StoreError> {
        // One connection for the deletes and the `WAIT` that asks about them.
        let client = self.pool.next();
        let index = self.keys.user_logins(user);
        let before = self.keys.user_sessions_before_logins(user);
        // Reads and `DEL`s, each asked again after an error that may heal ([`retry`]); a `DEL`
        // whose first answer was lost answers 0 the second time, so `ended` may then be short
        // by one: it is only reported.
        let (index, before) = (&index, &before);
        let mut members: Vec<String> =
            retry::retry(client, Replay::Idempotent, |client| async move { client.hkeys(index).await }).await?;
        members.extend(
            retry::retry(client, Replay::Idempotent, |client| async move {
                client.smembers::<Vec<String>, _>(before).await
            })
            .await?,
        );
        let del = |key: &str| {
            let key = key.to_owned();
            async move {
                let key = &key;
                retry::retry(client, Replay::Idempotent, |client| async move { client.del::<i64, _>(key).await }).await
            }
        };
        let mut ended = 0;
        for key in &members {
            ended += u64::try_from(del(key).await?).unwrap_or(0);
        }
        // One key per command: on a Redis Cluster the two may sit in different slots.
        for key in [index, before] {
            del(key).await?;
        }
        self.replica_wait.confirm(client).await?;
        Ok(ended)
    }
}
