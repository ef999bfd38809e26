//! The Redis key layout. Everything herd stores is under one prefix (default `herd:`):
//!
//! | key | holds |
//! |---|---|
//! | `{prefix}sess:{digest}` | one session record; the digest is the first 128 bits of SHA-256 of the session id, URL-safe base64 (22 characters) |
//! | `{prefix}sess:{digest}:replaced` | the key of the session a login replaced with this one, while its grace runs |
//! | `{prefix}user:{name}` | a user (hash: `password` = argon2 PHC string) |
//! | `{prefix}user:{name}:logins` | the user's logins (for "log out everywhere"): a hash from each session key to its visit count |
//! | `{prefix}visit:{{prefix}user:{name}:logins}:{nonce}` | one `/` request's visit was counted, so that asking again does not count it twice; in the login index's hash slot (the braces are a hash tag); lives two command timeouts |
//! | `{prefix}user:{name}:sessions` | the same as a set of session keys without counts, as herd wrote it before; only deleted now |
//! | `{prefix}cache:{key}` | a shared cache entry (`{key}:lock` while one worker computes it) |
//! | `{prefix}cache-budget` | what the cache wrote in its current window (hash `entries`, `bytes`; a TTL) |
//! | `{prefix}ratelimit:login:{ip\|user\|user-ip}:{id}` | login attempts in the current window (a counter with a TTL) |

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use sha2::{Digest, Sha256};
use tower_sessions::session::Id;

/// Length of the digest in a session key (128 bits in unpadded base64).
pub const SESSION_DIGEST_LEN: usize = 22;

/// The default prefix of every key.
pub const DEFAULT_PREFIX: &str = "herd:";

/// Builds keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Shared: every store, cache and limiter holds a copy, cloned per request.
    prefix: std::sync::Arc<str>,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Keys {
    /// Keys under `prefix` (use something ending in `:`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into().into() }
    }

    /// The key of a session. The id itself is never stored, only a digest: the first 128 bits
    /// of its SHA-256 (as many bits as the id has, so as hard to invert as guessing the id),
    /// in URL-safe base64. Every session costs its key twice in Redis (the record's name and
    /// its entry in the user's login index), so the 22 characters instead of the 64 hex digits
    /// of the whole hash were a sixth of a session's memory (issue 19). Keys of the old length
    /// are simply not found: their sessions end, cleanly, at an upgrade.
    pub fn session(&self, session_id: impl AsRef<[u8]>) -> String {
        let digest = Sha256::digest(session_id);
        let mut text = [0u8; SESSION_DIGEST_LEN];
        let len = URL_SAFE_NO_PAD.encode_slice(&digest[..16], &mut text).unwrap_or_default();
        let mut key = String::with_capacity(self.prefix.len() + 5 + SESSION_DIGEST_LEN);
        key.push_str(&self.prefix);
        key.push_str("sess:");
        // Only base64 bytes, all ASCII: this never takes the empty default.
        key.push_str(std::str::from_utf8(&text[..len]).unwrap_or_default());
        key
    }

    /// The key of the session with this id: [`Keys::session`] of the id as its cookie carries
    /// it (tower-sessions: URL-safe base64 of its 16 little-endian bytes), encoded on the
    /// stack; `to_string` went through a formatter and an allocation on every read.
    pub fn session_of(&self, id: &Id) -> String {
        let mut text = [0u8; 22];
        match URL_SAFE_NO_PAD.encode_slice(id.0.to_le_bytes(), &mut text) {
            Ok(len) => self.session(&text[..len]),
            Err(_) => self.session(id.to_string()),
        }
    }

    /// Where the session stored under `session_key` notes the key of the session it replaced
    /// (a login's predecessor, alive for the grace period): a logout ends both.
    pub fn replaced(session_key: &str) -> String {
        format!("{session_key}:replaced")
    }

    /// The key of a user record.
    pub fn user(&self, name: &str) -> String {
        format!("{}user:{name}", self.prefix)
    }

    /// A shared cache entry (and `{key}:lock` for its single-flight lock).
    pub fn cache(&self, key: &str) -> String {
        format!("{}cache:{key}", self.prefix)
    }

    /// The shared cache's budget: what it wrote in the current window (see
    /// [`crate::cache::CacheLimits`]). Outside the entries' namespace, so no cache key can
    /// name it.
    pub fn cache_budget(&self) -> String {
        format!("{}cache-budget", self.prefix)
    }

    /// The user's login index: a hash from the key of each session the user logged in with to
    /// that session's visit count. A small hash is one compact listpack in Redis, where a set
    /// of keys and a counter key per session cost a few hundred bytes more (issue 19).
    pub fn user_logins(&self, name: &str) -> String {
        format!("{}user:{name}:logins", self.prefix)
    }

    /// The set of session keys herd kept per user before [`Keys::user_logins`]; sessions an
    /// older herd listed there are still ended by "log out everywhere".
    pub fn user_sessions_before_logins(&self, name: &str) -> String {
        format!("{}user:{name}:sessions", self.prefix)
    }

    /// The counter of failed logins for one client address or one user name.
    pub fn login_failures(&self, by: &str, id: &str) -> String {
        format!("{}ratelimit:login:{by}:{id}", self.prefix)
    }

    /// The marker that one request's visit to a session of `user_logins` (that index's key)
    /// was counted: under the prefix, and in the index's Redis Cluster hash slot so that one
    /// script can check it and count; `None` if no such key can be built ([`same_slot`]).
    pub fn visit_counted(&self, user_logins: &str, nonce: &str) -> Option<String> {
        same_slot(&format!("{}visit:", self.prefix), user_logins, &format!(":{nonce}"))
    }
}

/// A key that lies in `key`'s Redis Cluster hash slot, so that one command or script may use
/// both: `{head}{{key}}{tail}`, the whole of `key` as the hash tag.
///
/// Redis hashes only the text between the first `{` and the next `}` if that is not empty
/// (the hash tag), otherwise the whole key. A key that has a tag keeps it with `tail`
/// appended; one without becomes the tag, unless it holds a `}` (which would end the tag
/// early) or `head` a `{` (which would start another): `None` (herd's default prefix and user
/// names have no braces).
pub fn same_slot(head: &str, key: &str, tail: &str) -> Option<String> {
    let tagged = key.find('{').is_some_and(|open| key[open + 1..].find('}').is_some_and(|len| len > 0));
    if tagged {
        Some(format!("{key}{tail}"))
    } else if key.contains('}') || head.contains('{') {
        None
    } else {
        Some(format!("{head}{{{key}}}{tail}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_hash_the_id_under_the_prefix() {
        let keys = Keys::default();
        let key = keys.session("ZP8aewv7YUQt3lcZ98SYPw");
        assert!(key.starts_with("herd:sess:"));
        assert_eq!(key.len(), "herd:sess:".len() + SESSION_DIGEST_LEN);
        assert!(!key.contains("ZP8aewv7YUQt3lcZ98SYPw"));
        assert_eq!(key, keys.session("ZP8aewv7YUQt3lcZ98SYPw"), "stable");
        assert_ne!(key, keys.session("ZP8aewv7YUQt3lcZ98SYPx"));
    }

    #[test]
    fn the_key_is_the_first_half_of_the_ids_sha256_in_base64() {
        // SHA-256("abc") begins ba7816bf 8f01cfea 414140de 5dae2223.
        let key = Keys::new("p:").session("abc");
        assert_eq!(key, "p:sess:ungWv48Bz-pBQUDeXa4iIw");
        let digest = URL_SAFE_NO_PAD.decode(key.trim_start_matches("p:sess:")).expect("base64");
        assert_eq!(digest, Sha256::digest("abc")[..16]);
    }

    #[test]
    fn an_ids_key_hashes_the_text_its_cookie_carries() {
        let keys = Keys::default();
        let random = (0..200).map(|_| rand::random::<i128>());
        for id in [0, -1, 1, i128::MIN, i128::MAX].into_iter().chain(random).map(Id) {
            assert_eq!(keys.session_of(&id), keys.session(id.to_string()), "{id}");
        }
    }

    #[test]
    fn a_key_beside_another_shares_its_hash_slot() {
        let slot = |key: &str| fred::util::redis_keyslot(key.as_bytes());
        for key in ["herd:user:alice:logins", "a{tag}b", "x{b", "{a{b}c"] {
            let beside = same_slot("p:visit:", key, ":n0nce").expect("a key beside it");
            assert!(beside.ends_with(":n0nce"), "{beside}");
            assert_eq!(slot(&beside), slot(key), "{key} -> {beside}");
        }
        let keys = Keys::default();
        let marker = keys.visit_counted(&keys.user_logins("alice"), "n0nce");
        assert_eq!(marker.as_deref(), Some("herd:visit:{herd:user:alice:logins}:n0nce"), "under the prefix");
        assert_eq!(same_slot("", "a}b", ":n"), None, "a brace that would close the tag early");
        assert_eq!(same_slot("", "{}y", ":n"), None, "an empty tag: the whole key is hashed, braces and all");
        assert_eq!(same_slot("", "p{}q{r}", ":n"), None);
        assert_eq!(same_slot("a{", "plain", ":n"), None, "a brace in the head would start the tag");
    }

    #[test]
    fn prefix_is_configurable() {
        assert_eq!(Keys::new("app1:").user("alice"), "app1:user:alice");
    }
}
