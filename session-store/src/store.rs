//! [`RedisSessionStore`]: a `tower_sessions::SessionStore` on a fred pool.
//!
//! # Value format
//!
//! `h1` followed by JSON `{"data": {...}, "expires": <unix seconds>}`. The two-byte tag names
//! the format: a value with another tag (a future format, or something else entirely) loads as
//! "no session" instead of failing the request. The session id is not inside the value; it is
//! only known to the client, and the key holds its hash.

use std::collections::HashMap;

use async_trait::async_trait;
use fred::{
    clients::Pool,
    interfaces::KeysInterface,
    types::{Expiration, SetOptions},
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tower_sessions::{
    session::{Id, Record},
    session_store, SessionStore,
};

use crate::{keys::Keys, StoreError};

/// Tag of the current value format.
const FORMAT_V1: &[u8] = b"h1";

#[derive(Serialize, Deserialize)]
struct StoredV1 {
    data: HashMap<String, serde_json::Value>,
    expires: i64,
}

/// Sessions in Redis under [`Keys::session`], expiring with the record (`EXAT`).
#[derive(Debug, Clone)]
pub struct RedisSessionStore {
    pool: Pool,
    keys: Keys,
    read_stock: bool,
}

impl RedisSessionStore {
    /// A store on `pool` (build it with [`crate::connect`] to get bounded I/O).
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys, read_stock: false }
    }

    /// Also finds sessions written by `tower-sessions-redis-store` 0.16 (key: the raw session
    /// id, value: the MessagePack `Record`), so an app switching stores logs nobody out. A
    /// session found that way is moved under herd's key at once, so the raw id leaves the
    /// keyspace and the next request is an ordinary read. Costs one extra `GET` for session
    /// ids herd does not know; turn it off once the old sessions have expired.
    pub fn reading_stock_sessions(mut self) -> Self {
        self.read_stock = true;
        self
    }

    /// A session the stock store wrote, moved under herd's key.
    async fn adopt_stock(&self, id: &Id) -> Result<Option<Record>, StoreError> {
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
        // NX: if herd already has this session (another worker moved it first), keep that one.
        self.set(&record, SetOptions::NX).await?;
        let _: i64 = self.pool.del(&raw_key).await?;
        tracing::info!("moved a tower-sessions-redis-store session under herd's key");
        Ok(Some(record))
    }

    /// The Redis key of a session.
    pub fn key(&self, id: &Id) -> String {
        self.keys.session(&id.to_string())
    }

    /// Writes `record` with the given `SET` condition; returns false when the condition failed.
    async fn set(&self, record: &Record, condition: SetOptions) -> Result<bool, StoreError> {
        let expires = record.expiry_date.unix_timestamp();
        let mut value = FORMAT_V1.to_vec();
        serde_json::to_writer(&mut value, &StoredV1 { data: record.data.clone(), expires })?;
        // `SET … NX|XX` answers nil when the condition fails; ask for an Option so that nil is a
        // value, not a parse error (the stock store's 500 on a vanished key).
        let reply: Option<String> = self
            .pool
            .set(self.key(&record.id), value, Some(Expiration::EXAT(expires)), Some(condition), false)
            .await?;
        Ok(reply.is_some())
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        // 128 random bits make a collision practically impossible, but it would hand one user
        // another's session, so check anyway.
        while !self.set(record, SetOptions::NX).await? {
            record.id = Id::default();
        }
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        if !self.set(record, SetOptions::XX).await? {
            // Expired, or deleted by a logout in another worker: do not bring it back.
            tracing::debug!("session vanished before it could be saved; not recreating it");
        }
        Ok(())
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        let value: Option<Vec<u8>> = self.pool.get(self.key(id)).await.map_err(StoreError::from)?;
        match value {
            Some(bytes) => Ok(decode(id, &bytes)),
            None if self.read_stock => Ok(self.adopt_stock(id).await?),
            None => Ok(None),
        }
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        let _: i64 = self.pool.del(self.key(id)).await.map_err(StoreError::from)?;
        Ok(())
    }
}

/// Decodes a stored value; anything unexpected is a miss, logged, never an error.
fn decode(id: &Id, bytes: &[u8]) -> Option<Record> {
    let Some(json) = bytes.strip_prefix(FORMAT_V1) else {
        tracing::warn!("session value in an unknown format; treating it as missing");
        return None;
    };
    let stored: StoredV1 = serde_json::from_slice(json)
        .map_err(|err| tracing::warn!(error = %err, "corrupt session value; treating it as missing"))
        .ok()?;
    let expiry_date = OffsetDateTime::from_unix_timestamp(stored.expires).ok()?;
    if expiry_date <= OffsetDateTime::now_utc() {
        return None;
    }
    Some(Record { id: *id, data: stored.data, expiry_date })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_round_trips_and_rejects_other_formats() {
        let id = Id::default();
        let expires = (OffsetDateTime::now_utc() + time::Duration::hours(1)).unix_timestamp();
        let mut value = FORMAT_V1.to_vec();
        value.extend_from_slice(format!(r#"{{"data":{{"user":"alice"}},"expires":{expires}}}"#).as_bytes());
        let record = decode(&id, &value).expect("valid value");
        assert_eq!(record.id, id);
        assert_eq!(record.data["user"], "alice");

        assert!(decode(&id, b"\x93\xc4\x10stock-msgpack").is_none(), "other format is a miss");
        assert!(decode(&id, b"h1{not json").is_none(), "corrupt value is a miss");
        let past = format!(r#"h1{{"data":{{}},"expires":{}}}"#, expires - 7200);
        assert!(decode(&id, past.as_bytes()).is_none(), "expired record is a miss");
    }
}
