//! Users in Redis: `{prefix}user:{name}` is a hash whose `password` field is an argon2id PHC
//! string (argon2 crate defaults: m = 19 MiB, t = 2, p = 1, OWASP's first recommendation).
//! Hashing runs on the blocking pool so a login never stalls the worker's other requests.

pub mod cli;
pub mod limit;
pub mod sessions;
pub mod visits;

use std::sync::{Arc, OnceLock};

use argon2::{
    password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use fred::{clients::Pool, interfaces::HashesInterface};
use herd_session_store::{Keys, StoreError};

/// Longest password accepted; argon2 does not need more and a huge one is a cheap DoS.
const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user names are 1-64 characters of letters, digits and _ . @ -")]
    InvalidName,
    #[error("passwords are 1-{MAX_PASSWORD_BYTES} bytes")]
    InvalidPassword,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

impl From<fred::error::Error> for UserError {
    fn from(err: fred::error::Error) -> Self {
        UserError::Store(err.into())
    }
}

#[derive(Clone)]
pub struct Users {
    pool: Pool,
    keys: Arc<Keys>,
}

impl Users {
    pub fn new(pool: Pool, keys: Keys) -> Self {
        Self { pool, keys: Arc::new(keys) }
    }

    /// Creates the user or replaces its password.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<(), UserError> {
        validate(name, password)?;
        let password = password.to_owned();
        let hash = blocking(move || hash(&password)).await??;
        let _: i64 = self.pool.hset(self.keys.user(name), ("password", hash)).await?;
        Ok(())
    }

    /// True when `password` is the user's. An unknown user costs the same argon2 work as a
    /// wrong password, so response times do not reveal which names exist.
    pub async fn verify(&self, name: &str, password: &str) -> Result<bool, UserError> {
        validate(name, password)?;
        let stored: Option<String> = self.pool.hget(self.keys.user(name), "password").await?;
        let known = stored.is_some();
        let password = password.to_owned();
        let matches = blocking(move || {
            let phc = stored.as_deref().unwrap_or_else(|| dummy_hash());
            PasswordHash::new(phc)
                .map(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
                .map_err(|e| UserError::Hash(e.to_string()))
        })
        .await??;
        Ok(known && matches)
    }
}

fn validate(name: &str, password: &str) -> Result<(), UserError> {
    let name_ok = (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'));
    if !name_ok {
        return Err(UserError::InvalidName);
    }
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(UserError::InvalidPassword);
    }
    Ok(())
}

fn hash(password: &str) -> Result<String, UserError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// A real hash of a random password, made once, to verify unknown users against.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(salt.as_str().as_bytes(), &salt)
            .map(|h| h.to_string())
            // Hashing with default parameters and a fresh salt only fails on allocation failure;
            // an empty string then makes every unknown-user check fail, which is still correct.
            .unwrap_or_default()
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, UserError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| UserError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_passwords_are_validated() {
        assert!(validate("alice", "wonderland").is_ok());
        assert!(validate("a.b-c_d@e", "x").is_ok());
        assert!(matches!(validate("", "x"), Err(UserError::InvalidName)));
        assert!(matches!(validate("al ice", "x"), Err(UserError::InvalidName)));
        assert!(matches!(validate("<script>", "x"), Err(UserError::InvalidName)));
        assert!(matches!(validate(&"a".repeat(65), "x"), Err(UserError::InvalidName)));
        assert!(matches!(validate("alice", ""), Err(UserError::InvalidPassword)));
        assert!(matches!(validate("alice", &"x".repeat(1025)), Err(UserError::InvalidPassword)));
    }

    #[test]
    fn hashes_verify_and_are_argon2id() {
        let phc = hash("wonderland").expect("hash");
        assert!(phc.starts_with("$argon2id$"));
        let parsed = PasswordHash::new(&phc).expect("parse");
        assert!(Argon2::default().verify_password(b"wonderland", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"wrong", &parsed).is_err());
        assert!(PasswordHash::new(dummy_hash()).is_ok());
    }
}
