//! The `/` visit counter of each session, kept beside the session record as a Redis counter.
//!
//! tower-sessions saves a session by rewriting its whole record, so two concurrent requests of
//! one session that both count a visit would lose one (last write wins). `INCR` is atomic: 200
//! concurrent requests over any number of workers add exactly 200. The counter lives at
//! `{session key}:visits` and slides with the session's idle timeout.

use std::time::Duration;

use fred::{clients::Pool, interfaces::KeysInterface, types::Expiration};
use herd_session_store::StoreError;

#[derive(Clone)]
pub(crate) struct Visits {
    pool: Pool,
    idle: Duration,
}

fn key(session_key: &str) -> String {
    format!("{session_key}:visits")
}

impl Visits {
    pub(crate) fn new(pool: Pool, idle: Duration) -> Self {
        Self { pool, idle }
    }

    fn ttl(&self) -> i64 {
        i64::try_from(self.idle.as_secs()).unwrap_or(i64::MAX)
    }

    /// Counts one visit and returns the new total: `INCR` and `EXPIRE` in one round trip,
    /// since this runs on every `/` request of a logged-in session.
    pub(crate) async fn count(&self, session_key: &str) -> Result<u64, StoreError> {
        let key = key(session_key);
        let pipeline = self.pool.next().pipeline();
        let _: () = pipeline.incr(&key).await?;
        let _: () = pipeline.expire(&key, self.ttl(), None).await?;
        let (visits, _): (i64, bool) = pipeline.all().await?;
        Ok(u64::try_from(visits).unwrap_or(0))
    }

    /// Starts a new session's count at zero.
    pub(crate) async fn reset(&self, session_key: &str) -> Result<(), StoreError> {
        let _: Option<String> =
            self.pool.set(key(session_key), 0, Some(Expiration::EX(self.ttl())), None, false).await?;
        Ok(())
    }

    /// Forgets a session's count.
    pub(crate) async fn forget(&self, session_key: &str) -> Result<(), StoreError> {
        let _: i64 = self.pool.del(key(session_key)).await?;
        Ok(())
    }
}
