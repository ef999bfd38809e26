//! Hashing a password in a short-lived child process, for the primary.
//!
//! An argon2 hash takes 19 MiB for a moment, and the allocator keeps that memory once it is
//! freed: the primary, which hashes the demo users' passwords at start and then only
//! supervises for days, held ~29 MiB it would never use again (docs/benchmarks.md, issue 19).
//! So the primary runs its own binary as `herd hash-password`, which reads the password on
//! standard input (never argv, which every local user can read), prints the PHC string and
//! exits, giving all of it back.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::UserError;

/// `herd hash-password`: the child's side. Prints the hash of standard input's bytes.
pub(crate) fn run_child() -> anyhow::Result<i32> {
    use std::io::Read;
    let mut password = String::new();
    std::io::stdin().read_to_string(&mut password)?;
    if password.is_empty() || password.len() > super::MAX_PASSWORD_BYTES {
        anyhow::bail!("{}", UserError::InvalidPassword);
    }
    println!("{}", super::hash(&password)?);
    Ok(0)
}

/// The PHC string of `password`, hashed by a child `herd hash-password`; in this process if
/// the child cannot be started (no binary at `current_exe`, say), which only costs memory.
pub(crate) async fn hash_in_child(password: &str) -> Result<String, UserError> {
    match run(password).await {
        Ok(phc) => Ok(phc),
        Err(why) => {
            tracing::warn!("could not hash in a child process ({why}); hashing here");
            let password = password.to_owned();
            tokio::task::spawn_blocking(move || super::hash(&password))
                .await
                .map_err(|e| UserError::Hash(e.to_string()))?
        }
    }
}

async fn run(password: &str) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("no path to this binary: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start it: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    stdin.write_all(password.as_bytes()).await.map_err(|e| format!("cannot write to it: {e}"))?;
    // Closed: the child reads to the end.
    drop(stdin);
    let mut out = String::new();
    child.stdout.take().ok_or("no stdout")?.read_to_string(&mut out).await.map_err(|e| e.to_string())?;
    let status = child.wait().await.map_err(|e| e.to_string())?;
    let phc = out.trim_end();
    // Only a parseable argon2 PHC string is stored: anything else would lock the user out.
    match argon2::PasswordHash::new(phc) {
        Ok(parsed) if status.success() && parsed.algorithm.as_str() == "argon2id" => Ok(phc.to_owned()),
        _ => Err(format!("it exited with {status} and printed no argon2id hash")),
    }
}
