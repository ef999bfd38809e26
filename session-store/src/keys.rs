//! The Redis key layout. Everything herd stores is under one prefix (default `herd:`):
//!
//! | key | holds |
//! |---|---|
//! | `{prefix}sess:{sha256(session id)}` | one session record |
//! | `{prefix}sess:{sha256(session id)}:replaced` | the key of the session a login replaced with this one, while its grace runs |
//! | `{prefix}user:{name}` | a user (hash: `password` = argon2 PHC string) |
//! | `{prefix}user:{name}:sessions` | the session keys of the user's logins (for "log out everywhere") |
//! | `{prefix}cache:{key}` | a shared cache entry (`{key}:lock` while one worker computes it) |
//! | `{prefix}cache-budget` | what the cache wrote in its current window (hash `entries`, `bytes`; a TTL) |
//! | `{prefix}ratelimit:login:{ip\|user\|user-ip}:{id}` | login attempts in the current window (a counter with a TTL) |

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use sha2::{Digest, Sha256};
use tower_sessions::session::Id;

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

    /// The key of a session. The id itself is never stored: only its SHA-256.
    pub fn session(&self, session_id: impl AsRef<[u8]>) -> String {
        let digest = Sha256::digest(session_id);
        // Every session read builds this key: a table into a buffer beats 32 `write!` calls
        // and 64 `String::push`es.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 64];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(digest) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        let mut key = String::with_capacity(self.prefix.len() + 5 + 64);
        key.push_str(&self.prefix);
        key.push_str("sess:");
        // Only table bytes, all ASCII: this never takes the empty default.
        key.push_str(std::str::from_utf8(&hex).unwrap_or_default());
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

    /// The set of session keys a user logged in with.
    pub fn user_sessions(&self, name: &str) -> String {
        format!("{}user:{name}:sessions", self.prefix)
    }

    /// The counter of failed logins for one client address or one user name.
    pub fn login_failures(&self, by: &str, id: &str) -> String {
        format!("{}ratelimit:login:{by}:{id}", self.prefix)
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
        assert_eq!(key.len(), "herd:sess:".len() + 64);
        assert!(!key.contains("ZP8aewv7YUQt3lcZ98SYPw"));
        assert_eq!(key, keys.session("ZP8aewv7YUQt3lcZ98SYPw"), "stable");
        assert_ne!(key, keys.session("ZP8aewv7YUQt3lcZ98SYPx"));
    }

    #[test]
    fn the_key_is_the_sha256_hex_of_the_id() {
        let key = Keys::new("p:").session("abc");
        assert_eq!(key, "p:sess:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
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
    fn prefix_is_configurable() {
        assert_eq!(Keys::new("app1:").user("alice"), "app1:user:alice");
    }
}
