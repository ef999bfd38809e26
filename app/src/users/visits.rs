//! The `/` visit counter of each session: its field in the user's login index
//! ([`super::sessions`]), not in the session record.
//!
//! tower-sessions saves a session by rewriting its whole record, so two concurrent requests of
//! one session that both count a visit would lose one (last write wins). `HINCRBY` is atomic:
//! 200 concurrent requests over any number of workers add exactly 200. A login starts the
//! count at zero ([`super::sessions::UserSessions::add`]) and a logout removes it with the
//! login.
//!
//! A count that failed is asked again within the command timeout
//! ([`herd_session_store::retry`]), and must then not count twice: fred may have lost the
//! answer to a count Redis applied (a connection it dropped on re-reading a Redis Cluster's
//! topology). So each request counts under a nonce: the script sets a marker key for it
//! ([`Keys::visit_counted`]) beside the index, in the same hash slot, and counts only if the
//! marker was not there. The marker costs one short-lived key per visit (about 100 bytes, for
//! two command timeouts) and the script's run instead of a two-command pipeline.

use std::{sync::LazyLock, time::Duration};

use fred::{clients::Pool, interfaces::ClientLike, types::scripts::Script};
use herd_session_store::{
    retry::{self, Replay},
    scripts, Keys, StoreError,
};

use super::sessions::INDEX_TTL_SECS;

/// Counts one visit, once per nonce, and keeps the index alive; returns the count.
///
/// KEYS[1]: the login index; KEYS[2] (optional): this request's marker. ARGV: the session
/// key (the index's field), the index's TTL (s), the marker's TTL (ms). A second run with
/// the same marker only reads the count.
static COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
if KEYS[2] and not redis.call('SET', KEYS[2], '', 'NX', 'PX', ARGV[3]) then
  return tonumber(redis.call('HGET', KEYS[1], ARGV[1])) or 0
end
local visits = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return visits
"#,
    )
});

#[derive(Clone)]
pub(crate) struct Visits {
    pool: Pool,
    keys: Keys,
}

impl Visits {
    pub(crate) fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys }
    }

    /// Counts one visit of `user`'s session and returns the new total, in one round trip
    /// (this runs on every `/` request of a logged-in session).
    pub(crate) async fn count(&self, user: &str, session_key: &str) -> Result<u64, StoreError> {
        self.count_under(user, session_key, &format!("{:016x}", rand::random::<u64>())).await
    }

    /// [`Visits::count`] under `nonce`: counted once however often it is asked.
    async fn count_under(&self, user: &str, session_key: &str, nonce: &str) -> Result<u64, StoreError> {
        let index = self.keys.user_logins(user);
        let client = self.pool.next();
        let marker = self.keys.visit_counted(&index, nonce);
        // The marker must outlive every attempt, and they all end within one command timeout.
        let timeout = client.perf_config().default_command_timeout;
        let marker_ttl =
            if timeout.is_zero() { Duration::from_secs(10) } else { (timeout * 2).max(Duration::from_secs(1)) };
        let args = [session_key.to_owned(), INDEX_TTL_SECS.to_string(), marker_ttl.as_millis().to_string()];
        let (keys, replay) = match &marker {
            Some(marker) => (vec![index.as_str(), marker.as_str()], Replay::Idempotent),
            // No key beside the index (braces in the prefix): counted without a marker, and so
            // asked again only when Redis provably did not count it.
            None => (vec![index.as_str()], Replay::Once),
        };
        let visits: i64 = retry::retry(client, replay, |client| {
            let (keys, args) = (&keys, &args);
            async move { scripts::evalsha(&client, &COUNT, keys, args).await }
        })
        .await?;
        Ok(u64::try_from(visits).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use herd_e2e::RedisServer;
    use herd_session_store::{Keys, RedisConfig};

    use super::Visits;

    #[tokio::test]
    async fn a_visit_asked_again_under_its_nonce_counts_once() {
        let redis = RedisServer::start();
        let pool = herd_session_store::connect(&RedisConfig::new(redis.url())).await.expect("Redis answers");
        let visits = Visits::new(pool.clone(), Keys::default());
        let count = |nonce: &'static str| visits.count_under("alice", "herd:sess:s", nonce);
        assert_eq!(count("n1").await.expect("counted"), 1);
        assert_eq!(count("n1").await.expect("read"), 1, "the same request asked again");
        assert_eq!(count("n2").await.expect("counted"), 2);
        assert_eq!(visits.count("alice", "herd:sess:s").await.expect("counted"), 3);
        let ttl = redis.cli(&["PTTL", "herd:visit:{herd:user:alice:logins}:n1"]).expect("PTTL");
        assert!(ttl.parse::<i64>().is_ok_and(|ms| (1..=2000).contains(&ms)), "two command timeouts: {ttl}");
        assert!(redis.cli(&["TTL", "herd:user:alice:logins"]).is_some_and(|s| s.parse::<i64>().is_ok_and(|s| s > 0)));

        // A prefix with a brace leaves no key for a marker: counted, without one.
        let braced = Visits::new(pool, Keys::new("a{"));
        assert_eq!(braced.count_under("bob", "k", "n1").await.expect("counted"), 1);
        assert_eq!(braced.count_under("bob", "k", "n1").await.expect("counted"), 2);
    }
}
