//! The shared cache beyond single flight: local copies dropped by an invalidation from any
//! worker, TTL jitter, negative caching.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use herd_e2e::{wait_for, Herd, RedisServer};
use herd_session_store::{cache::Source, Cache, Keys, RedisConfig};

#[test]
fn an_invalidation_reaches_every_workers_local_copy() {
    let redis = RedisServer::start();
    let debug_cache = [("RUST_LOG", "info,herd_session_store::cache=debug")];
    // The primary's strict turns (the kernel's choice is random): six fresh connections reach
    // each of the three workers twice.
    let herd =
        Herd::start_with_env(&redis, &["--workers", "3", "--admin-routes", "--steering", "primary"], &debug_cache);
    let get = || herd.client().get("/heavy/cached?n=123456").expect("GET /heavy/cached").json();

    // Round-robin over fresh connections: every worker reads it once, then has a local copy.
    let first: Vec<_> = (0..6).map(|_| get()).collect();
    assert_eq!(first.iter().filter(|a| a["source"] == "computed").count(), 1, "{first:?}");
    let locals: HashSet<_> = first.iter().filter(|a| a["source"] == "local").map(|a| a["pid"].clone()).collect();
    assert_eq!(locals.len(), 3, "every worker answers the repeat from memory: {first:?}");

    // One worker invalidates; all of them forget, so the value is computed again once. The
    // message travels asynchronously: wait until every worker has said it dropped its copy (no
    // status shows a worker's cache: its log line is the only sign).
    let res = herd.client().request("DELETE", "/heavy/cached?n=123456", &[], b"").expect("DELETE");
    assert_eq!((res.status, res.json()["invalidated"].clone()), (200, 123456.into()), "{}", res.body);
    wait_for("every worker to drop its copy", Duration::from_secs(5), || {
        let heard: HashSet<_> = herd
            .log()
            .iter()
            .filter(|l| l.contains("dropped the local cache copy") && l.contains("123456"))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("pid=")).map(str::to_owned))
            .collect();
        (heard.len() == 3).then_some(())
    });
    let after: Vec<_> = (0..6).map(|_| get()).collect();
    assert_eq!(after[0]["source"], "computed", "no worker kept a stale copy: {after:?}");
    assert_eq!(after.iter().filter(|a| a["cached"] == false).count(), 1, "{after:?}");
    assert!(after.iter().all(|a| a["result"] == 7_620_630_240u64));
}

async fn cache(redis: &RedisServer) -> Cache {
    let pool = herd_session_store::connect(&RedisConfig::new(redis.url())).await.expect("connect");
    Cache::new(pool, Keys::default())
}

#[tokio::test]
async fn nothing_is_cached_too_for_its_own_ttl() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await;
    let lookups = AtomicUsize::new(0);
    let find = || async {
        lookups.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::convert::Infallible>(None)
    };
    let ttl = Duration::from_secs(60);
    let negative = Duration::from_millis(300);
    let first = cache.get_or_compute_optional("user:404", ttl, negative, find).await.expect("lookup");
    assert_eq!((first.value, first.source), (None, Source::Computed));
    let again = cache.get_or_compute_optional("user:404", ttl, negative, find).await.expect("lookup");
    assert_eq!((again.value, again.source), (None, Source::Redis), "the miss itself was cached");
    assert_eq!(lookups.load(Ordering::SeqCst), 1);
    let pttl: i64 = redis.cli(&["PTTL", "herd:cache:user:404"]).and_then(|t| t.parse().ok()).unwrap_or(-1);
    assert!((1..=300).contains(&pttl), "for the negative TTL, not the long one: {pttl}");
    // Redis expires it, not the test's clock: wait until the key is gone.
    wait_for("the negative entry to expire", Duration::from_secs(5), || {
        (redis.cli(&["EXISTS", "herd:cache:user:404"]).as_deref() == Some("0")).then_some(())
    });
    cache.get_or_compute_optional("user:404", ttl, negative, find).await.expect("lookup");
    assert_eq!(lookups.load(Ordering::SeqCst), 2, "looked up again once the negative entry expired");
}

#[tokio::test]
async fn entries_written_together_expire_apart() {
    let redis = RedisServer::start();
    let cache = cache(&redis).await.with_jitter(0.1);
    let mut ttls = HashSet::new();
    for i in 0..20 {
        let key = format!("k{i}");
        cache
            .get_or_compute(&key, Duration::from_secs(100), || async {
                Ok::<_, std::convert::Infallible>("v".to_owned())
            })
            .await
            .expect("set");
        let pttl: i64 = redis.cli(&["PTTL", &format!("herd:cache:{key}")]).and_then(|t| t.parse().ok()).unwrap_or(-1);
        assert!((89_000..=110_000).contains(&pttl), "within ±10 % of 100 s: {pttl}");
        ttls.insert(pttl / 1000);
    }
    assert!(ttls.len() >= 5, "spread over seconds, not one expiry: {ttls:?}");
}
