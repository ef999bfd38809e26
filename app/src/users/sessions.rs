//! Every login of a user, so that all of them can be ended at once ("log out everywhere", and
//! after a password change). Each login adds its session key to `{prefix}user:{name}:sessions`;
//! ending them all deletes every listed session and the set. The set's TTL slides with each
//! login, so a user who stops logging in leaves nothing behind; listed sessions that already
//! expired cost a no-op `DEL`.

use fred::{
    clients::Pool,
    interfaces::{KeysInterface, SetsInterface},
};
use herd_session_store::{Keys, ReplicaWait, StoreError};

/// How long the index outlives the last login (longer than any session lives).
const INDEX_TTL_SECS: i64 = 14 * 24 * 3600;

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

    /// Records that `session_key` belongs to `user`: `SADD` and `EXPIRE` sent together in one
    /// pipeline, so the set is never left without its TTL by a worker stopping between two
    /// round trips.
    pub(crate) async fn add(&self, user: &str, session_key: &str) -> Result<(), StoreError> {
        let index = self.keys.user_sessions(user);
        let pipeline = self.pool.next().pipeline();
        let _: () = pipeline.sadd(&index, session_key).await?;
        let _: () = pipeline.expire(&index, INDEX_TTL_SECS, None).await?;
        let _: (i64, bool) = pipeline.all().await?;
        Ok(())
    }

    /// Forgets one session (a plain logout).
    pub(crate) async fn remove(&self, user: &str, session_key: &str) -> Result<(), StoreError> {
        let _: i64 = self.pool.srem(self.keys.user_sessions(user), session_key).await?;
        Ok(())
    }

    /// Deletes every session of `user`; returns how many were still alive, once a replica has
    /// the deletions (see [`ReplicaWait`]).
    pub(crate) async fn end_all(&self, user: &str) -> Result<u64, StoreError> {
        // One connection for the deletes and the `WAIT` that asks about them.
        let client = self.pool.next();
        let index = self.keys.user_sessions(user);
        let members: Vec<String> = client.smembers(&index).await?;
        let mut ended = 0;
        for key in members {
            let deleted: i64 = client.del(&key).await?;
            ended += u64::try_from(deleted).unwrap_or(0);
            let _: i64 = client.del(format!("{key}:visits")).await?;
        }
        let _: i64 = client.del(&index).await?;
        self.replica_wait.confirm(client).await?;
        Ok(ended)
    }
}
