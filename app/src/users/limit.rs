//! Login rate limiting, shared by every worker through Redis.
//!
//! Each login attempt takes one unit from three budgets, in fixed windows, *before* its password
//! is checked:
//!
//! | budget | default | stops |
//! |---|---|---|
//! | one user name from one client | [`DEFAULT_PER_USER_ADDRESS`] | guessing one account from one place |
//! | one user name from anywhere | [`DEFAULT_PER_USER`] | guessing one account from many places |
//! | one client, any user names | [`DEFAULT_PER_ADDRESS`] | trying many accounts from one place |
//!
//! A client is an IPv4 address or an IPv6 /64 ([`herd_cluster::client_ip`]). The per-user cap is
//! well above the per-user+client one, so one client cannot lock the real user out (it runs out
//! of its own budget first); it takes `per_user / per_user_address` clients (20 by default) to
//! exhaust it, and then only until the window ends.
//!
//! Taking a unit is one Lua script per counter (check, count and start the window in one step,
//! so 60 concurrent attempts cannot all pass a check before any of them counts, and a counter
//! never lives without its TTL). An attempt refused by one budget gives back what it took from
//! the others: refusals cost no argon2 time and must not use up anyone else's budget. A wrong
//! password keeps its units; a success clears the user+client counter and gives back the
//! others; an attempt that could not be checked (Redis failed, the hashing queue was full)
//! gives everything back.
//!
//! Every script touches one key, so the limits work unchanged on a Redis Cluster.

use std::{net::IpAddr, sync::LazyLock, time::Duration};

use fred::{clients::Pool, interfaces::KeysInterface, types::scripts::Script};
use herd_session_store::{
    retry::{self, Replay},
    scripts, Keys, StoreError,
};

/// Attempts allowed per user name from one client per window.
pub(crate) const DEFAULT_PER_USER_ADDRESS: u32 = 5;
/// Attempts allowed per user name from all clients together per window.
pub(crate) const DEFAULT_PER_USER: u32 = 100;
/// Attempts allowed per client, whatever the user names, per window (several users may share
/// a NAT).
pub(crate) const DEFAULT_PER_ADDRESS: u32 = 20;
/// The window, from a counter's first attempt.
pub(crate) const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

/// How many attempts each budget allows, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoginLimits {
    /// Per user name from one client.
    pub per_user_address: u32,
    /// Per user name from all clients.
    pub per_user: u32,
    /// Per client.
    pub per_address: u32,
    /// How long a counter lives from its first attempt.
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_user_address: DEFAULT_PER_USER_ADDRESS,
            per_user: DEFAULT_PER_USER,
            per_address: DEFAULT_PER_ADDRESS,
            window: DEFAULT_WINDOW,
        }
    }
}

/// Takes or gives back one attempt of a counter.
///
/// KEYS[1]: the counter. ARGV: `take`, the limit, the window (ms); or `give`.
/// Reply for `take`: `{1, ttl ms}` counted, `{0, ttl ms}` refused (the limit is reached; not
/// counted). For `give`: `{1, 0}`; a counter that expired meanwhile is left alone (a `DECR`
/// would bring it back without a TTL).
static COUNTER: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
if ARGV[1] == 'give' then
  local n = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
  if n > 0 then redis.call('DECR', KEYS[1]) end
  return {1, 0}
end
local limit, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local ttl = redis.call('PTTL', KEYS[1])
if n >= limit then
  if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], window)
    ttl = window
  end
  return {0, ttl}
end
redis.call('INCR', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], window)
  ttl = window
end
return {1, ttl}
"#,
    )
});

#[derive(Clone)]
pub(crate) struct LoginLimiter {
    pool: Pool,
    keys: Keys,
    limits: LoginLimits,
}

/// An attempt that passed every budget: its units are held until the password is checked.
#[must_use = "settle the attempt: failed, succeeded or abandoned"]
pub(crate) struct Attempt {
    /// The user+client counter, then the client's and the user's.
    user_address: String,
    others: [String; 2],
}

impl LoginLimiter {
    pub(crate) fn new(pool: Pool, keys: Keys, limits: LoginLimits) -> Self {
        Self { pool, keys, limits }
    }

    /// Takes one attempt from every budget of `user` logging in from `ip`: the attempt, or
    /// `Err(seconds)` to wait when one budget is spent (nothing is then counted).
    pub(crate) async fn admit(&self, ip: IpAddr, user: &str) -> Result<Result<Attempt, u64>, StoreError> {
        let [user_address, address, all] = counter_keys(&self.keys, ip, user);
        let budgets = [
            (&user_address, self.limits.per_user_address),
            (&address, self.limits.per_address),
            (&all, self.limits.per_user),
        ];
        let window = millis(self.limits.window);
        for (taken, (key, limit)) in budgets.iter().enumerate() {
            let args = vec!["take".to_owned(), limit.to_string(), window.to_string()];
            let (counted, ttl_ms) = self.counter(key, args).await?;
            if counted == 0 {
                // Refusals use up nobody's budget.
                for (key, _) in &budgets[..taken] {
                    self.give_back(key).await?;
                }
                let secs = u64::try_from(ttl_ms).unwrap_or(0).div_ceil(1000);
                return Ok(Err(secs.max(1)));
            }
        }
        Ok(Ok(Attempt { user_address, others: [address, all] }))
    }

    /// A wrong password: the attempt stays counted.
    pub(crate) fn failed(&self, attempt: Attempt) {
        drop(attempt);
    }

    /// The right password: this client's failures for the user are forgotten, and the attempt
    /// does not count against the others.
    pub(crate) async fn succeeded(&self, attempt: Attempt) -> Result<(), StoreError> {
        let _: i64 = self.pool.del(&attempt.user_address).await?;
        for key in &attempt.others {
            self.give_back(key).await?;
        }
        Ok(())
    }

    /// The password could not be checked: the attempt counts nowhere.
    pub(crate) async fn abandoned(&self, attempt: Attempt) -> Result<(), StoreError> {
        self.give_back(&attempt.user_address).await?;
        for key in &attempt.others {
            self.give_back(key).await?;
        }
        Ok(())
    }

    async fn give_back(&self, key: &str) -> Result<(), StoreError> {
        self.counter(key, vec!["give".to_owned()]).await.map(drop)
    }

    /// Runs [`COUNTER`] on `key`, asked again within the command timeout only when Redis
    /// provably did not run it (a `-MOVED` in a Redis Cluster failover): a second `take` would
    /// count one attempt twice.
    async fn counter(&self, key: &str, args: Vec<String>) -> Result<(i64, i64), StoreError> {
        let keys = [key];
        let counted = retry::retry(self.pool.next(), Replay::Once, |client| {
            let args = &args;
            async move { scripts::evalsha(&client, &COUNTER, &keys, args).await }
        })
        .await?;
        Ok(counted)
    }
}

/// The counters of `user` logging in from `ip`: per user and client, per client, per user.
/// User names cannot hold `:` (see [`crate::users::validate`]), so the keys cannot collide.
fn counter_keys(keys: &Keys, ip: IpAddr, user: &str) -> [String; 3] {
    let client = herd_cluster::client_ip::group_label(ip);
    [
        keys.login_failures("user-ip", &format!("{user}:{client}")),
        keys.login_failures("ip", &client),
        keys.login_failures("user", user),
    ]
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ip: &str) -> [String; 3] {
        counter_keys(&Keys::default(), ip.parse().expect("literal address"), "alice")
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_slash_64() {
        assert_eq!(keys("2001:db8:1:2::1"), keys("2001:db8:1:2:ffff:ffff:ffff:fffe"), "one /64, one client");
        assert_ne!(keys("2001:db8:1:2::1")[1], keys("2001:db8:1:3::1")[1]);
        assert_eq!(keys("2001:db8:1:2::1")[1], "herd:ratelimit:login:ip:2001:db8:1:2::/64");
        assert_eq!(keys("::ffff:192.0.2.7"), keys("192.0.2.7"), "a mapped IPv4 client is that IPv4 client");
    }

    #[test]
    fn the_three_budgets_have_their_own_keys() {
        assert_eq!(
            keys("192.0.2.7"),
            [
                "herd:ratelimit:login:user-ip:alice:192.0.2.7".to_owned(),
                "herd:ratelimit:login:ip:192.0.2.7".to_owned(),
                "herd:ratelimit:login:user:alice".to_owned(),
            ]
        );
    }
}
