//! Login rate limiting, shared by every worker through Redis: failed logins are counted per
//! client address and per user name in fixed windows; past the limit, logins are refused with
//! 429 and `Retry-After` before any password is checked (so a guessing attack also stops
//! costing argon2 time). A successful login clears its user name's counter.

use std::net::IpAddr;

use fred::{clients::Pool, interfaces::KeysInterface};
use herd_session_store::{Keys, StoreError};

/// Failed logins allowed per user name per window.
pub const PER_USER: i64 = 5;
/// Failed logins allowed per client address per window (several users may share a NAT).
pub const PER_IP: i64 = 20;
/// The window, in seconds.
pub const WINDOW_SECS: i64 = 300;

#[derive(Clone)]
pub struct LoginLimiter {
    pool: Pool,
    keys: Keys,
}

impl LoginLimiter {
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys }
    }

    fn keys_for(&self, ip: IpAddr, user: &str) -> [(String, i64); 2] {
        [(self.keys.login_failures("ip", &ip.to_string()), PER_IP), (self.keys.login_failures("user", user), PER_USER)]
    }

    /// `Some(seconds)` to wait when this address or user name has failed too often.
    pub async fn check(&self, ip: IpAddr, user: &str) -> Result<Option<u64>, StoreError> {
        for (key, limit) in self.keys_for(ip, user) {
            let failures: Option<i64> = self.pool.get(&key).await?;
            if failures.unwrap_or(0) >= limit {
                let ttl: i64 = self.pool.ttl(&key).await?;
                return Ok(Some(u64::try_from(ttl).unwrap_or(1).max(1)));
            }
        }
        Ok(None)
    }

    /// Counts one failed login against the address and the user name.
    pub async fn failed(&self, ip: IpAddr, user: &str) -> Result<(), StoreError> {
        for (key, _) in self.keys_for(ip, user) {
            let count: i64 = self.pool.incr(&key).await?;
            if count == 1 {
                // The window starts with its first failure.
                let _: bool = self.pool.expire(&key, WINDOW_SECS, None).await?;
            }
        }
        Ok(())
    }

    /// Forgets the user name's failures after a successful login.
    pub async fn succeeded(&self, user: &str) -> Result<(), StoreError> {
        let _: i64 = self.pool.del(self.keys.login_failures("user", user)).await?;
        Ok(())
    }
}
