//! Secrets on their way in: the Redis URL (its password) and the demo users' passwords.
//!
//! A process's command line is public on Linux (`ps`, `/proc/PID/cmdline` is world-readable)
//! while its environment is readable by its owner only. So secrets may come from the
//! environment (`REDIS_URL`, `HERD_DEMO_USER`) or from files (`--redis-url-file`,
//! `--demo-user-file`); when an operator still puts them on the primary's command line, the
//! primary warns, and its workers get them through their environment: [`worker_args`] is the
//! primary's argv without them. Every URL that reaches a log line or an error goes through
//! [`redact`].

use std::{ffi::OsString, path::Path};

use anyhow::{bail, Context};

use crate::cli::DemoUser;

/// Flags whose values are secrets: never passed to a worker on its command line.
const SECRET_FLAGS: [&str; 3] = ["--redis-url", "--demo-user", "--metrics-token"];

/// Hides the password of a `redis://user:pass@host` URL (and of malformed ones).
pub(crate) fn redact(url: &str) -> String {
    herd_session_store::redact_url(url)
}

/// The primary's arguments (after argv[0]) without [`SECRET_FLAGS`] and their values, and
/// whether any were removed.
pub(crate) fn worker_args(args: impl IntoIterator<Item = OsString>) -> (Vec<OsString>, bool) {
    let mut kept = Vec::new();
    let mut removed = false;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "--" {
            kept.push(arg);
            kept.extend(args);
            break;
        }
        if SECRET_FLAGS.iter().any(|flag| text == *flag) {
            removed = true;
            args.next(); // its value
        } else if SECRET_FLAGS.iter().any(|flag| text.starts_with(&format!("{flag}="))) {
            removed = true;
        } else {
            kept.push(arg);
        }
    }
    (kept, removed)
}

/// The first non-blank line of `--redis-url-file`, trimmed. Errors name the file, never its
/// content.
pub(crate) fn read_url_file(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read --redis-url-file {}", path.display()))?;
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(url) => Ok(url.to_owned()),
        None => bail!("--redis-url-file {} is empty", path.display()),
    }
}

/// `--demo-user-file`: one `NAME:PASSWORD` per line; blank lines and `#` comments skipped.
pub(crate) fn read_demo_users(path: &Path) -> anyhow::Result<Vec<DemoUser>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read --demo-user-file {}", path.display()))?;
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // The parse error says what is expected; the line itself may hold a password.
        let user = line
            .parse::<DemoUser>()
            .map_err(|why| anyhow::anyhow!("--demo-user-file {} line {}: {why}", path.display(), n + 1))?;
        users.push(user);
    }
    Ok(users)
}

/// The configured Redis URL: `--redis-url-file`'s, else `--redis-url`/`REDIS_URL`.
pub(crate) fn configured_url(redis: &crate::cli::RedisArgs) -> anyhow::Result<Option<String>> {
    match &redis.redis_url_file {
        Some(path) => read_url_file(path).map(Some),
        None => Ok(redis.redis_url.clone()),
    }
}

/// The demo users: `--demo-user`/`HERD_DEMO_USER`, then those of `--demo-user-file`.
pub(crate) fn demo_users(args: &crate::cli::ServeArgs) -> anyhow::Result<Vec<DemoUser>> {
    let mut users = args.demo_users.clone();
    if let Some(path) = &args.demo_user_file {
        users.extend(read_demo_users(path)?);
    }
    Ok(users)
}

/// The admin listener's token: `--metrics-token-file`'s first line, else `--metrics-token`.
/// Errors name the file, never its content.
pub(crate) fn metrics_token(args: &crate::cli::ServeArgs) -> anyhow::Result<Option<String>> {
    let Some(path) = &args.metrics_token_file else { return Ok(args.metrics_token.clone()) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --metrics-token-file {}", path.display()))?;
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(token) => Ok(Some(token.to_owned())),
        None => bail!("--metrics-token-file {} is empty", path.display()),
    }
}

/// True when `url` carries a password (`user:pass@` or `:pass@`).
pub(crate) fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.rfind('@').is_some_and(|at| rest[..at].contains(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn secret_flags_and_their_values_are_left_out_of_workers_arguments() {
        let (kept, removed) = worker_args(os(&[
            "serve",
            "--redis-url",
            "redis://:pw@h",
            "--workers",
            "2",
            "--demo-user=alice:wonderland",
            "--demo-user",
            "bob:pw",
        ]));
        assert_eq!((kept, removed), (os(&["serve", "--workers", "2"]), true));
        let (kept, removed) = worker_args(os(&["serve", "--redis-url-file", "/run/url", "--", "--demo-user"]));
        assert_eq!((kept, removed), (os(&["serve", "--redis-url-file", "/run/url", "--", "--demo-user"]), false));
    }

    #[test]
    fn passwords_in_urls_are_recognised() {
        assert!(has_password("redis://default:pw@h:1") && has_password("redis://:pw@h"));
        assert!(!has_password("redis://h:6379") && !has_password("redis://user@h"));
    }
}
