//! Asking Redis again, within one command timeout, when fred's error proves the command was
//! not applied, or when applying it twice changes nothing.
//!
//! [`crate::pool`] lets fred write each command once (`max_command_attempts = 1`): fred 10 counts
//! a resend after `-MOVED` (never applied) and a resend of a command that was in flight on a
//! connection it dropped (perhaps applied) with one counter, so allowing the first would allow
//! the second, and an `HINCRBY` would count twice. The pool also follows no redirection
//! (`max_redirections = 0`): fred still re-reads the cluster's topology on a `-MOVED`, then
//! fails the command with [`ErrorKind::Routing`] ("Too many redirections."), which names the
//! one command Redis refused. Here herd does the resend itself, knowing which commands it may
//! repeat. During a planned Redis Cluster failover (`CLUSTER FAILOVER`) the old primary holds
//! writes while its replica catches up, then answers every held command `-MOVED`: asked again,
//! each lands on the new primary, and the request never sees the failover.
//!
//! What each error proves (fred 10.1 source, `router/commands.rs`, `router/utils.rs`):
//!
//! | fred error | applied? |
//! |---|---|
//! | `Routing`: "Too many redirections." after `-MOVED`/`-ASK`; "Failed to route command." | no: Redis refused it, or it was never written |
//! | `READONLY`, `TRYAGAIN`, `LOADING`, `MASTERDOWN` replies | no: Redis refused it |
//! | `Unknown` "Too many failed write attempts." (in flight on a connection fred dropped on re-reading the topology) | maybe |
//! | `IO` (in flight on a connection that closed) | maybe |
//! | `CLUSTERDOWN`: fred drops the connection and hands this one reply to *every* command in flight on it | maybe |
//! | `Timeout` | maybe; and the budget is spent |
//!
//! A command that may have been applied is asked again only if it is idempotent
//! ([`Replay::Idempotent`]). All attempts together stay within one command timeout, so a real
//! outage still answers in about a second.

use std::{future::Future, time::Duration, time::Instant};

use fred::{
    clients::{Client, WithOptions},
    error::{Error, ErrorKind},
    interfaces::ClientLike,
    types::config::Options,
};

/// Pause before each attempt after the first, the attempts bounded by these and the command
/// timeout. None right after the first failure: on a `-MOVED` fred has just re-read the
/// topology. Then longer: fred re-reads it from whichever node it asks, and in a failover
/// that node may not have heard of the new primary for some tens of ms (seen: a third
/// attempt went to the old primary again, a fourth, 50 ms after the first, was answered).
const BACKOFF: [Duration; 7] = [
    Duration::ZERO,
    Duration::from_millis(10),
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(80),
    Duration::from_millis(160),
    Duration::from_millis(320),
];

/// Whether a command may be applied twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Applying it twice would change the outcome (`INCR`, a create-if-absent): asked again
    /// only when the error proves it was not applied ([`not_applied`]).
    Once,
    /// A read, or a write whose second application changes nothing: asked again after any
    /// error that may heal ([`may_heal`]).
    Idempotent,
}

/// True when `err` proves Redis did not apply the command: fred never wrote it, or Redis
/// refused it before executing it.
pub fn not_applied(err: &Error) -> bool {
    let details = err.details();
    *err.kind() == ErrorKind::Routing
        || (*err.kind() == ErrorKind::Unknown && details == "Failed to route command.")
        || ["READONLY", "TRYAGAIN", "LOADING", "MASTERDOWN"].iter().any(|prefix| details.starts_with(prefix))
}

/// True when `err` is one a moment may heal (a dropped connection, a cluster re-arranging
/// itself), whether or not the command was applied: not a refusal a second attempt would get
/// again (`WRONGTYPE`, a script error, `OOM`), not a timeout (its budget is spent).
pub fn may_heal(err: &Error) -> bool {
    not_applied(err)
        || matches!(err.kind(), ErrorKind::IO | ErrorKind::Cluster)
        || (*err.kind() == ErrorKind::Unknown && err.details() == "Too many failed write attempts.")
}

/// Runs `command` on `client`, and again (after each pause of `BACKOFF` in turn) while it
/// fails with an error `replay` allows to retry and the command timeout is not spent. Each
/// attempt gets what is left of the timeout, so all of them end within it.
pub async fn retry<T, F, Fut>(client: &Client, replay: Replay, mut command: F) -> Result<T, Error>
where
    F: FnMut(WithOptions<Client>) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let budget = client.perf_config().default_command_timeout;
    let started = Instant::now();
    let left = || (!budget.is_zero()).then(|| budget.saturating_sub(started.elapsed()));
    let mut pauses = BACKOFF.iter();
    let mut attempt = 1;
    loop {
        let timeout = left();
        let err = match command(client.with_options(&Options { timeout, ..Options::default() })).await {
            Err(err) => err,
            done => return done,
        };
        let again = match replay {
            Replay::Once => not_applied(&err),
            Replay::Idempotent => may_heal(&err),
        };
        // A bounded command needs time for the pause and a round trip after it.
        match pauses.next() {
            Some(pause) if again && left().is_none_or(|left| left > *pause) => {
                tracing::debug!(error = %err, attempt, "asking Redis again");
                if !pause.is_zero() {
                    tokio::time::sleep(*pause).await;
                }
            }
            _ => return Err(err),
        }
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::{may_heal, not_applied};
    use fred::error::{Error, ErrorKind};

    #[test]
    fn only_refusals_prove_a_command_was_not_applied() {
        let moved = Error::new(ErrorKind::Routing, "Too many redirections.");
        assert!(not_applied(&moved) && may_heal(&moved));
        let readonly = Error::new(ErrorKind::Unknown, "READONLY You can't write against a read only replica.");
        assert!(not_applied(&readonly));
        let dropped = Error::new(ErrorKind::Unknown, "Too many failed write attempts.");
        assert!(!not_applied(&dropped) && may_heal(&dropped));
        let down = Error::new(ErrorKind::Cluster, "CLUSTERDOWN The cluster is down");
        assert!(!not_applied(&down) && may_heal(&down), "fred hands one CLUSTERDOWN to every command in flight");
        let closed = Error::new(ErrorKind::IO, "Connection closed.");
        assert!(!not_applied(&closed) && may_heal(&closed));
        let timeout = Error::new(ErrorKind::Timeout, "Request timed out.");
        assert!(!not_applied(&timeout) && !may_heal(&timeout));
        let wrongtype = Error::new(ErrorKind::InvalidArgument, "WRONGTYPE Operation against a key");
        assert!(!may_heal(&wrongtype));
        let oom = Error::new(ErrorKind::Unknown, "OOM command not allowed when used memory > 'maxmemory'.");
        assert!(!may_heal(&oom));
    }
}
