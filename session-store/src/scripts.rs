//! The Lua scripts that change a session record, each in one round trip. (Reading is a plain
//! `GET`: the cheapest thing Redis can do for the request that happens most.)
//!
//! A record is one string in format 4 (see `record.rs`). Every script touches exactly one
//! key, so they run unchanged on a Redis Cluster. Timestamps cross into Lua as the header's
//! zero-padded strings and are written back as received: Lua 5.1 numbers are doubles, and
//! `tostring` would turn a millisecond timestamp into `1.7e+12`.

use std::sync::LazyLock;

use fred::{
    clients::{Client, WithOptions},
    interfaces::ClientLike,
    prelude::FromValue,
    types::{scripts::Script, CustomCommand, Value as FredValue},
};

use crate::{
    retry::{self, Replay},
    StoreError,
};

/// What every script shares: reading the header of a record (see [`crate::record`]; format 4,
/// or format 3 which has no expiry field) and setting a record's lifetime.
///
/// `head(blob)` gives `{created, seen}` (numbers), the same as stored (`created_stamp`,
/// `seen_stamp`, to write back unchanged), `retired`, the app's expiry (`expiry`, unix ms, and
/// `expiry_field`, the stored text; nil in format 3) and `len`, the header's length; or nil
/// for anything that is not a record. `lifetime` is what is left of a record: the earliest of
/// herd's idle timeout, its max age (each 0 when not set) and the app's expiry; nil when
/// nothing bounds it (a format-3 record with no herd limits: its TTL stays as it was).
const PRELUDE: &str = r#"
local HEADER = 62
local function head(blob)
  local magic, len = string.sub(blob, 1, 3), nil
  if magic == 'h4:' then len = HEADER elseif magic == 'h3:' then len = 39 else return nil end
  if #blob < len then return nil end
  local h = {len = len, created_stamp = string.sub(blob, 4, 19), seen_stamp = string.sub(blob, 21, 36)}
  local flag = string.sub(blob, 38, 38)
  h.created, h.seen, h.retired = tonumber(h.created_stamp), tonumber(h.seen_stamp), flag == 'r'
  if not h.created or not h.seen or (flag ~= '-' and flag ~= 'r') then return nil end
  if len == HEADER then
    h.expiry_field = string.sub(blob, 40, 61)
    h.expiry = tonumber(string.sub(blob, 40, 55))
    if not h.expiry then return nil end
  end
  return h
end
local function header_of(key)
  if redis.call('TYPE', key).ok ~= 'string' then return nil end
  return head(redis.call('GETRANGE', key, 0, HEADER - 1))
end
local function lifetime(now, idle, max_age, created, expiry)
  local left = nil
  local function bound(ms) if not left or ms < left then left = ms end end
  if idle > 0 then bound(idle) end
  if max_age > 0 then bound(created + max_age - now) end
  if expiry then bound(expiry - now) end
  return left
end
local function set_lifetime(key, left)
  if not left then return end
  if left <= 0 then
    redis.call('DEL', key)
  else
    redis.call('PEXPIRE', key, string.format('%d', left))
  end
end
"#;

fn script(body: &str) -> Script {
    Script::from_lua(format!("{PRELUDE}{body}"))
}

/// Extends a session's idle timeout: `seen` in place and the TTL, never the data; only if
/// nobody did since `touch after` ms ago (concurrent requests touch once), and never for a
/// retired or vanished record. The TTL still ends at the app's expiry, if that comes first.
///
/// KEYS[1]: the record. ARGV: now (a header stamp), idle (ms), max age (ms, 0: none), touch
/// after (ms). Reply: 1 touched, 0 not.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local h, now = header_of(KEYS[1]), tonumber(ARGV[1])
if not h or h.retired or now - h.seen < tonumber(ARGV[4]) then return 0 end
redis.call('SETRANGE', KEYS[1], 20, ARGV[1])
set_lifetime(KEYS[1], lifetime(now, tonumber(ARGV[2]), tonumber(ARGV[3]), h.created, h.expiry))
return 1
"#,
    )
});

/// Creates a record, or applies a request's changes to one.
///
/// KEYS[1]: the record. ARGV: now (a header stamp), idle, max age (ms, 0: none), the app's
/// expiry (a header field), mode, n, then n name/JSON pairs to set, then names to delete.
/// Modes: `create` (only if the key is free), `patch` (set and delete the given names, leave
/// the others alone), `replace` (the given names become the whole data), `expiry` (only the
/// app's expiry moves: the header and the TTL, not the data). `patch`, `replace` and `expiry`
/// never bring back a record that is gone. A retired record (replaced by a login, living out
/// its grace period) takes changes but is never extended. A record whose lifetime is over
/// once written (an expiry in the past) is deleted instead.
/// Reply: 1 written, 0 not (key taken for `create`, gone otherwise).
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local now, idle, max_age, expiry_field, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local n = tonumber(ARGV[6])
local stamp, created, seen, retired = ARGV[1], now, ARGV[1], false
local names, values = {}, {}
if mode == 'create' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
else
  if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end
  local blob = redis.call('GET', KEYS[1])
  local h = head(blob)
  if not h then return 0 end
  if max_age > 0 and now - h.created >= max_age then
    redis.call('DEL', KEYS[1])
    return 0
  end
  stamp, created, retired = h.created_stamp, h.created, h.retired
  if retired then
    seen = h.seen_stamp
    expiry_field = h.expiry_field or expiry_field
  end
  if mode == 'expiry' then
    if retired then return 1 end
    if h.len == HEADER then
      redis.call('SETRANGE', KEYS[1], 20, ARGV[1])
      redis.call('SETRANGE', KEYS[1], 39, expiry_field)
      set_lifetime(KEYS[1], lifetime(now, idle, max_age, created, tonumber(string.sub(expiry_field, 1, 16))))
      return 1
    end
    -- Format 3 has no expiry field: rewritten whole, as format 4.
    mode = 'patch'
  end
  if mode == 'patch' then
    local pos = h.len + 1
    while pos <= #blob do
      local entry = {}
      for part = 1, 2 do
        local colon = string.find(blob, ':', pos, true)
        local len = colon and tonumber(string.sub(blob, pos, colon - 1))
        -- Damaged (it was read as a record moments ago): as good as gone.
        if not len or colon + len > #blob then return 0 end
        entry[part] = string.sub(blob, colon + 1, colon + len)
        pos = colon + len + 1
      end
      if values[entry[1]] == nil then names[#names + 1] = entry[1] end
      values[entry[1]] = entry[2]
    end
  end
end
for i = 0, n - 1 do
  local name = ARGV[7 + 2 * i]
  if values[name] == nil then names[#names + 1] = name end
  values[name] = ARGV[8 + 2 * i]
end
for i = 7 + 2 * n, #ARGV do values[ARGV[i]] = false end
local parts = {'h4:', stamp, ':', seen, ':', retired and 'r' or '-', ':', expiry_field, '\n'}
for _, name in ipairs(names) do
  local json = values[name]
  if json then parts[#parts + 1] = #name .. ':' .. name .. #json .. ':' .. json end
end
redis.call('SET', KEYS[1], table.concat(parts), 'KEEPTTL')
if not retired then
  set_lifetime(KEYS[1], lifetime(now, idle, max_age, created, tonumber(string.sub(expiry_field, 1, 16))))
end
return 1
"#,
    )
});

/// Retires a record replaced by a login (it lives `grace` ms more, unextendable), or undoes
/// that when the login failed.
///
/// KEYS[1]: the old record. ARGV: `retire` and grace (ms), or `restore`, now, idle, max age.
/// Reply: 1 done, 0 no record there.
static RETIRE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r#"
local h = header_of(KEYS[1])
if not h then return 0 end
if ARGV[1] == 'retire' then
  redis.call('SETRANGE', KEYS[1], 37, 'r')
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl < 0 or ttl > tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return 1
end
redis.call('SETRANGE', KEYS[1], 37, '-')
set_lifetime(KEYS[1], lifetime(tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), h.created, h.expiry))
return 1
"#,
    )
});

/// Which script to run.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Touch,
    /// `create` mode: applying it twice would find the key taken by the first, so it is asked
    /// again only when the error proves it was not applied ([`Replay::Once`]).
    Create,
    /// `patch`, `replace`, `expiry`: a second application writes the same record again.
    Write,
    Retire,
}

/// Runs a script on `key`, loading it first if this Redis has not seen it (a fresh server,
/// or one that restarted), and again within the command timeout if Redis did not take it
/// ([`crate::retry`]). Every script but a create gives the same record when applied twice
/// (a touch after a touch does nothing, a retirement stays one), so those are asked again
/// after any error that may heal.
/// On `client`: the connection a revocation's `WAIT` then asks about.
pub(crate) async fn run<R: FromValue>(client: &Client, op: Op, key: &str, args: Vec<String>) -> Result<R, StoreError> {
    let (script, replay) = match op {
        Op::Touch => (&*TOUCH, Replay::Idempotent),
        Op::Create => (&*WRITE, Replay::Once),
        Op::Write => (&*WRITE, Replay::Idempotent),
        Op::Retire => (&*RETIRE, Replay::Idempotent),
    };
    let keys = [key];
    Ok(retry::retry(client, replay, |client| {
        let args = &args;
        async move { evalsha(&client, script, &keys, args).await }
    })
    .await?)
}

/// `EVALSHA` of `script` on `keys` (all in one hash slot) with `args`, under `client`'s options
/// (the time left of a command timeout); `SCRIPT LOAD` first if this Redis does not know it, as
/// a promoted replica may not. fred's own `evalsha` takes no per-command options.
pub async fn evalsha<R: FromValue>(
    client: &WithOptions<Client>,
    script: &Script,
    keys: &[&str],
    args: &[String],
) -> Result<R, fred::error::Error> {
    let slot = keys.first().map(|key| fred::util::redis_keyslot(key.as_bytes()));
    let mut argv: Vec<FredValue> = Vec::with_capacity(2 + keys.len() + args.len());
    argv.push(script.sha1().clone().into());
    argv.push(FredValue::Integer(i64::try_from(keys.len()).unwrap_or(i64::MAX)));
    argv.extend(keys.iter().map(|key| FredValue::from(*key)));
    argv.extend(args.iter().map(|arg| FredValue::from(arg.as_str())));
    let command = CustomCommand::new_static("EVALSHA", slot, false);
    match client.custom(command.clone(), argv.clone()).await {
        Err(err) if err.details().starts_with("NOSCRIPT") => {
            script.load(client).await?;
            client.custom(command, argv).await
        }
        result => result,
    }
}
