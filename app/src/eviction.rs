//! What herd needs of Redis's eviction policy, checked once at start by the primary.
//!
//! Users (`{prefix}user:{name}`) are stored without a TTL in the same Redis as sessions, the
//! cache and the login counters, which all have one. When Redis reaches `maxmemory`:
//!
//! - `noeviction` (recommended): writes are refused; herd answers 507 and logs it as an
//!   operator problem. Nothing is lost.
//! - `volatile-*`: only keys with a TTL are evicted: sessions (their users are logged out),
//!   cache entries, login-failure counters (which resets a rate limit) and each user's
//!   session index. Users are never evicted.
//! - `allkeys-*`: any key, users included, is evicted, and an evicted user is gone for good.
//!   herd warns loudly at start.
//!
//! `CONFIG` may be disabled or renamed (managed Redis services often do): then herd says it
//! could not check. On a Redis Cluster every primary node is asked.

use std::collections::HashMap;

use fred::{
    clients::Pool,
    interfaces::ClientLike,
    types::{ClusterHash, CustomCommand},
};

/// What a `maxmemory-policy` means for herd's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// `noeviction`: a full Redis refuses writes, loses nothing.
    Safe,
    /// `volatile-*`: keys with a TTL (sessions, cache, counters) may go; users stay.
    EvictsSessions,
    /// `allkeys-*`: users may be evicted.
    EvictsUsers,
    /// A policy this version of herd does not know.
    Unknown,
}

fn verdict(policy: &str) -> Verdict {
    match policy {
        "noeviction" => Verdict::Safe,
        p if p.starts_with("volatile-") => Verdict::EvictsSessions,
        p if p.starts_with("allkeys-") => Verdict::EvictsUsers,
        _ => Verdict::Unknown,
    }
}

/// Reads `maxmemory-policy` from Redis (each primary node of a cluster) and logs what it means;
/// never fails: an unreadable policy is logged as unchecked.
pub(crate) async fn check(pool: &Pool) {
    // A custom command: herd's fred is built without the `CONFIG` interface. `maxmemory*`
    // answers `maxmemory` and `maxmemory-policy` at once, on Redis 6 and 7 alike.
    let config_get = || CustomCommand::new_static("CONFIG", ClusterHash::Random, false);
    let args = vec!["GET", "maxmemory*"];
    let client = pool.next();
    if !client.is_clustered() {
        report("Redis", client.custom::<HashMap<String, String>, _>(config_get(), args).await);
        return;
    }
    // A cluster client connects to every primary node.
    for node in client.active_connections() {
        let answer =
            client.with_cluster_node(&node).custom::<HashMap<String, String>, _>(config_get(), args.clone()).await;
        report(&format!("Redis node {node}"), answer);
    }
}

fn report(who: &str, answer: Result<HashMap<String, String>, fred::error::Error>) {
    let config = match answer {
        Ok(config) => config,
        Err(err) => {
            tracing::warn!(
                "could not check {who}'s maxmemory-policy (CONFIG GET refused: {err}); herd needs \
                 `noeviction` (or `volatile-*`): with `allkeys-*` a full Redis evicts user accounts"
            );
            return;
        }
    };
    let Some(policy) = config.get("maxmemory-policy") else {
        tracing::warn!("could not check {who}'s maxmemory-policy (CONFIG GET did not return it)");
        return;
    };
    let maxmemory = config.get("maxmemory").map_or("?", String::as_str);
    match verdict(policy) {
        Verdict::Safe => {
            tracing::info!("{who}: maxmemory-policy {policy} (maxmemory {maxmemory}): a full Redis refuses writes, herd answers 507")
        }
        Verdict::EvictsSessions => tracing::warn!(
            "{who}: maxmemory-policy {policy} (maxmemory {maxmemory}): when full, Redis evicts sessions (logging \
             users out), cache entries and login-failure counters; users are kept. `noeviction` is recommended"
        ),
        Verdict::EvictsUsers => tracing::warn!(
            "!!! {who}: maxmemory-policy {policy} (maxmemory {maxmemory}) lets Redis EVICT USER ACCOUNTS when it \
             is full: an evicted user is gone for good. Set `maxmemory-policy noeviction` (or a volatile-* \
             policy) on this Redis; see docs/hardening.md, \"Redis requirements\" !!!"
        ),
        Verdict::Unknown => {
            tracing::warn!("{who}: unknown maxmemory-policy {policy}; herd needs `noeviction` (or `volatile-*`)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_judged_by_what_they_may_evict() {
        assert_eq!(verdict("noeviction"), Verdict::Safe);
        for p in ["volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"] {
            assert_eq!(verdict(p), Verdict::EvictsSessions, "{p}");
        }
        for p in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            assert_eq!(verdict(p), Verdict::EvictsUsers, "{p}");
        }
        assert_eq!(verdict("sometimes"), Verdict::Unknown);
    }
}
