//! The Lua scripts that change a session record, each in one round trip. (Reading is a plain
//! `HGETALL`: the cheapest thing Redis can do for the request that happens most.)
//!
//! A record is a Redis hash (see [`crate::store`] for its fields). Every script touches exactly
//! one key, so they run unchanged on a Redis Cluster. Numbers cross into Lua as strings and are
//! written back with `%d`: Lua 5.1 numbers are doubles, and `tostring` would turn a millisecond
//! timestamp into `1.7e+12`.

use std::sync::LazyLock;

use fred::{clients::Pool, prelude::FromValue, types::scripts::Script};

use crate::StoreError;

/// Extends a session's idle timeout: one field and the TTL, never the data; only if nobody
/// did since `touch after` ms ago (concurrent requests touch once), and never for a retired or
/// vanished record.
///
/// KEYS[1]: the record. ARGV: now (ms), idle (ms), max age (ms), touch after (ms).
/// Reply: 1 touched, 0 not.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local meta = redis.call('HMGET', KEYS[1], 'v', 'created', 'seen', 'retired')
local now, created, seen = tonumber(ARGV[1]), tonumber(meta[2]), tonumber(meta[3])
if meta[1] ~= '2' or meta[4] or not created or not seen then return 0 end
if now - seen < tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[1], 'seen', ARGV[1])
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.max(1, math.min(tonumber(ARGV[2]), created + tonumber(ARGV[3]) - now))))
return 1
"#,
    )
});

/// Creates a record, or applies a request's changes to one.
///
/// KEYS[1]: the record. ARGV: now, idle, max age, mode, n, then n name/JSON pairs to set, then
/// names to delete. Modes: `create` (only if the key is free), `patch` (set and delete the
/// given names, leave the others alone), `replace` (the given names become the whole data).
/// `patch` and `replace` never bring back a record that is gone. A retired record (replaced by
/// a login, living out its grace period) takes changes but is never extended.
/// Reply: 1 written, 0 not (key taken for `create`, gone otherwise).
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
local now, idle, max_age, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local n = tonumber(ARGV[5])
local created, retired = now, false
if mode == 'create' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
  redis.call('HSET', KEYS[1], 'v', '2', 'created', ARGV[1])
else
  if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
  local meta = redis.call('HMGET', KEYS[1], 'v', 'created', 'retired')
  created = tonumber(meta[2])
  if meta[1] ~= '2' or not created then return 0 end
  if now - created >= max_age then
    redis.call('DEL', KEYS[1])
    return 0
  end
  retired = meta[3] ~= false
  if mode == 'replace' then
    local keep = {}
    for i = 0, n - 1 do keep['d:' .. ARGV[6 + 2 * i]] = true end
    for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
      if string.sub(field, 1, 2) == 'd:' and not keep[field] then redis.call('HDEL', KEYS[1], field) end
    end
  end
end
for i = 0, n - 1 do redis.call('HSET', KEYS[1], 'd:' .. ARGV[6 + 2 * i], ARGV[7 + 2 * i]) end
for i = 6 + 2 * n, #ARGV do redis.call('HDEL', KEYS[1], 'd:' .. ARGV[i]) end
if not retired then
  redis.call('HSET', KEYS[1], 'seen', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], string.format('%d', math.min(idle, created + max_age - now)))
end
return 1
"#,
    )
});

/// Retires a record replaced by a login (it lives `grace` ms more, unextendable), or undoes
/// that when the login failed.
///
/// KEYS[1]: the old record. ARGV: `retire` and grace (ms), or `restore`, now, idle, max age.
static RETIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::from_lua(
        r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
if ARGV[1] == 'retire' then
  redis.call('HSET', KEYS[1], 'retired', '1')
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 or ttl > tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return 1
end
redis.call('HDEL', KEYS[1], 'retired')
local now, idle, max_age = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local created = tonumber(redis.call('HGET', KEYS[1], 'created')) or now
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.max(1, math.min(idle, created + max_age - now))))
return 1
"#,
    )
});

/// Which script to run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Touch,
    Write,
    Retire,
}

/// Runs a script on `key`, loading it first if this Redis has not seen it (a fresh server,
/// or one that restarted).
pub(crate) async fn run<R: FromValue>(pool: &Pool, op: Op, key: &str, args: Vec<String>) -> Result<R, StoreError> {
    let script = match op {
        Op::Touch => &*TOUCH,
        Op::Write => &*WRITE,
        Op::Retire => &*RETIRE,
    };
    Ok(script.evalsha_with_reload(pool.next(), key, args).await?)
}
