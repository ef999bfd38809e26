//! The `/` visit counter of each session: its field in the user's login index
//! ([`super::sessions`]), not in the session record.
//!
//! tower-sessions saves a session by rewriting its whole record, so two concurrent requests of
//! one session that both count a visit would lose one (last write wins). `HINCRBY` is atomic:
//! 200 concurrent requests over any number of workers add exactly 200. A login starts the
//! count at zero ([`super::sessions::UserSessions::add`]) and a logout removes it with the
//! login.

use fred::{
    clients::Pool,
    interfaces::{HashesInterface, KeysInterface},
};
use herd_session_store::{Keys, StoreError};

use super::sessions::INDEX_TTL_SECS;

#[derive(Clone)]
pub(crate) struct Visits {
    pool: Pool,
    keys: Keys,
}

impl Visits {
    pub(crate) fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys }
    }

    /// Counts one visit of `user`'s session and returns the new total: `HINCRBY` and the
    /// index's `EXPIRE` in one round trip, since this runs on every `/` request of a logged-in
    /// session.
    pub(crate) async fn count(&self, user: &str, session_key: &str) -> Result<u64, StoreError> {
        let index = self.keys.user_logins(user);
        let pipeline = self.pool.next().pipeline();
        let _: () = pipeline.hincrby(&index, session_key, 1).await?;
        let _: () = pipeline.expire(&index, INDEX_TTL_SECS, None).await?;
        let (visits, _): (i64, bool) = pipeline.all().await?;
        Ok(u64::try_from(visits).unwrap_or(0))
    }
}
