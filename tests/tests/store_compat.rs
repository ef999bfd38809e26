//! herd's session store next to the stock `tower-sessions-redis-store` 0.16: an app that
//! switches stores keeps its users logged in.

use std::collections::HashMap;

use herd_e2e::RedisServer;
use herd_session_store::{Keys, RedisConfig, RedisSessionStore};
use tower_sessions::{
    session::{Id, Record},
    SessionStore,
};

#[tokio::test]
async fn herd_reads_and_adopts_sessions_the_stock_store_wrote() {
    let redis = RedisServer::start();
    let pool = herd_session_store::connect(&RedisConfig::new(redis.url())).await.expect("connect");
    let stock = tower_sessions_redis_store::RedisStore::new(pool.clone());
    let mut record = Record {
        id: Id::default(),
        data: HashMap::from([("user".to_owned(), serde_json::json!("alice"))]),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    stock.create(&mut record).await.expect("the stock store writes a session");
    let raw = record.id.to_string();
    assert_eq!(redis.keys(&raw), vec![raw.clone()], "stored under the raw id");

    let plain = RedisSessionStore::new(pool.clone(), Keys::default());
    assert_eq!(plain.load(&record.id).await.expect("load"), None, "without the option, stock sessions are not read");

    let herd = plain.reading_stock_sessions();
    let loaded = herd.load(&record.id).await.expect("load").expect("the stock session is found");
    assert_eq!(loaded.data["user"], "alice");
    assert!(redis.keys(&raw).is_empty(), "the raw id left the keyspace");
    assert_eq!(redis.keys("herd:sess:*").len(), 1, "the session lives under herd's key now");
    let again = herd.load(&record.id).await.expect("load").expect("still there");
    assert_eq!(again.data, loaded.data);
}
