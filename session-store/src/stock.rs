//! Reading sessions written by the stock `tower-sessions-redis-store` 0.16, so an app switching
//! to herd's store logs nobody out ([`RedisSessionStore::reading_stock_sessions`]).
//!
//! The stock store keeps a session under its raw id with the MessagePack `Record` as value. A
//! session found that way is moved under herd's key at once, with its expiry date (herd's own
//! limits, if set, count from the move), so the raw id leaves the keyspace and the next request is an ordinary read. This
//! costs one extra `GET` for session ids herd does not know; turn it off once the old sessions
//! have expired.

use fred::interfaces::KeysInterface;
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};

use crate::{
    scope,
    store::{encode, pairs, Base, Mode},
    RedisSessionStore, StoreError,
};

impl RedisSessionStore {
    /// A session the stock store wrote, moved under herd's key.
    pub(crate) async fn adopt_stock(&self, id: &Id) -> Result<Option<Record>, StoreError> {
        let raw_key = id.to_string();
        let value: Option<Vec<u8>> = self.pool.get(&raw_key).await?;
        let Some(bytes) = value else { return Ok(None) };
        let record = match rmp_serde::from_slice::<Record>(&bytes) {
            Ok(record) if record.id == *id && record.expiry_date > OffsetDateTime::now_utc() => record,
            Ok(_) => return Ok(None),
            Err(err) => {
                tracing::warn!(error = %err, "a value under a session id is not a stock tower-sessions record; ignoring it");
                return Ok(None);
            }
        };
        // False if another worker moved it first: the same data either way.
        let encoded = encode(&record.data)?;
        if self.write(Mode::Create, id, record.expiry_date, &pairs(&encoded), &[]).await? {
            tracing::info!("moved a tower-sessions-redis-store session under herd's key");
        }
        let _: i64 = self.pool.del(&raw_key).await?;
        scope::with(|state| state.remember(*id, Base::Written { values: encoded, expiry: record.expiry_date }));
        Ok(Some(record))
    }
}
