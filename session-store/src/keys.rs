//! The Redis key layout. Everything herd stores is under one prefix (default `herd:`):
//!
//! | key | holds |
//! |---|---|
//! | `{prefix}sess:{sha256(session id)}` | one session record |
//! | `{prefix}user:{name}` | a user (hash: `password` = argon2 PHC string) |
//! | `{prefix}user:{name}:sessions` | the session keys of the user's logins (for "log out everywhere") |
//! | `{prefix}cache:{key}` | a shared cache entry (`{key}:lock` while one worker computes it) |
//! | `{prefix}ratelimit:login:{ip\|user}:{id}` | failed logins in the current window (a counter with a TTL) |

use sha2::{Digest, Sha256};

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
    pub fn session(&self, session_id: &str) -> String {
        let digest = Sha256::digest(session_id.as_bytes());
        let mut key = String::with_capacity(self.prefix.len() + 5 + 64);
        key.push_str(&self.prefix);
        key.push_str("sess:");
        // Every session read builds this key: a table beats 32 `write!` calls.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for byte in digest {
            key.push(char::from(HEX[usize::from(byte >> 4)]));
            key.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        key
    }

    /// The key of a user record.
    pub fn user(&self, name: &str) -> String {
        format!("{}user:{name}", self.prefix)
    }

    /// A shared cache entry (and `{key}:lock` for its single-flight lock).
    pub fn cache(&self, key: &str) -> String {
        format!("{}cache:{key}", self.prefix)
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
    fn prefix_is_configurable() {
        assert_eq!(Keys::new("app1:").user("alice"), "app1:user:alice");
    }
}
