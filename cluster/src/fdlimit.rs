//! The open-files limit (`RLIMIT_NOFILE`) and the share of it herd keeps for its own work.
//!
//! A process out of descriptors cannot start a worker, answer its control socket, open a log
//! file or reconnect to Redis, so every herd process keeps a *reserve* free and sheds (closes)
//! connections that would eat into it.
//!
//! The measure costs no syscall: `accept` and `SCM_RIGHTS` install a descriptor at the lowest
//! free number (POSIX requires it of every call that creates one), so a connection that lands
//! at number `limit − reserve` or above proves every number below it is taken. Closing each
//! such connection at once means connections never hold the top `reserve` numbers, which stay
//! free for everything else the process does.

use std::{
    os::fd::RawFd,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::tally::Tally;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// How often at most a process logs that it shed connections (with the count since the last
/// line), so an attack cannot flood the log.
pub(crate) const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Raises the soft open-files limit to the hard limit (the most an unprivileged process may
/// have) and logs the figure. Called once by the primary; workers inherit the raised limit.
pub(crate) fn raise_to_hard_limit() {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(err) => {
            tracing::warn!("cannot read the open files limit: {err}");
            return;
        }
    };
    if soft >= hard {
        tracing::info!("open files limit is {soft}");
        return;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => tracing::info!("open files limit raised from {soft} to {hard}"),
        Err(err) => tracing::warn!("open files limit is {soft}; cannot raise it to {hard}: {err}"),
    }
}

/// Which descriptor numbers a connection may occupy in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdBudget {
    /// The first number kept for the process's own work.
    first_reserved: u64,
}

impl FdBudget {
    /// The budget under this process's current soft limit, keeping `reserve` descriptors.
    pub(crate) fn current(reserve: usize) -> Self {
        // Unreadable limits are unheard of on Linux; the common default keeps the arithmetic sane.
        let limit = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
        Self::new(limit, reserve)
    }

    /// The budget for a process allowed `limit` descriptors that keeps `reserve` of them. The
    /// reserve is capped at half the limit, so a small limit still leaves room to serve.
    pub(crate) fn new(limit: u64, reserve: usize) -> Self {
        let reserve = u64::try_from(reserve).unwrap_or(u64::MAX).min(limit / 2);
        Self { first_reserved: limit - reserve }
    }

    /// True when a connection that was given descriptor `fd` may be kept.
    pub(crate) fn admits(self, fd: RawFd) -> bool {
        u64::try_from(fd).is_ok_and(|fd| fd < self.first_reserved)
    }
}

/// The log of connections shed at one place, at most one line per [`SHED_LOG_INTERVAL`].
#[derive(Debug)]
pub(crate) struct ShedLog(Tally);

impl Default for ShedLog {
    fn default() -> Self {
        Self(Tally::new(SHED_LOG_INTERVAL))
    }
}

impl ShedLog {
    /// Records `count` more shed connections and logs them, `why` they were shed, when a line
    /// is due.
    pub(crate) fn shed(&mut self, count: u64, why: &str) {
        if let Some(count) = self.0.due(count, Instant::now()) {
            tracing::warn!("shed {count} connection(s) (closed at once): {why}");
        }
    }
}

/// How long accepting pauses after a failure that is not about one connection: a listener
/// that stays readable while `accept` fails (out of descriptors) would otherwise spin.
pub(crate) const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What every accept loop (a worker's listener, the primary's acceptor) does with a failed
/// `accept`: errors that concern one connection (the client already gave up) are skipped;
/// anything else is logged, at most one line per [`SHED_LOG_INTERVAL`], and accepting pauses
/// for [`ACCEPT_ERROR_PAUSE`].
#[derive(Debug)]
pub(crate) struct AcceptErrorLog(Mutex<Tally>);

impl Default for AcceptErrorLog {
    fn default() -> Self {
        Self(Mutex::new(Tally::new(SHED_LOG_INTERVAL)))
    }
}

impl AcceptErrorLog {
    /// Handles one failed accept: returns at once for a per-connection error, else logs (when
    /// a line is due) and returns after the pause. Takes `&self` (the tally is behind a lock)
    /// so that an accept loop that is itself shared can call it.
    pub(crate) async fn recover(&self, err: &std::io::Error) {
        if is_about_one_connection(err) {
            return;
        }
        let due = self.0.lock().ok().and_then(|mut tally| tally.due(1, Instant::now()));
        if let Some(count) = due {
            tracing::error!(error = %err, "accept failed ({count} time(s) since the last report); pausing {ACCEPT_ERROR_PAUSE:?} each time");
        }
        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
    }
}

/// True for `accept` errors that only mean one client gave up before it was accepted.
fn is_about_one_connection(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(err.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// True for errors that mean "out of descriptors or kernel memory, for now": they pass when
/// connections close, so they call for shedding or a retry, never for giving up.
pub(crate) fn is_exhaustion(err: &std::io::Error) -> bool {
    use nix::libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM, ETOOMANYREFS};
    matches!(err.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM | ETOOMANYREFS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_stay_below_the_reserve() {
        let budget = FdBudget::new(256, 64);
        assert!(budget.admits(0));
        assert!(budget.admits(191));
        assert!(!budget.admits(192), "192..256 are the reserve");
        assert!(!budget.admits(255));
        assert!(!budget.admits(-1));
    }

    #[test]
    fn the_reserve_is_at_most_half_the_limit() {
        let budget = FdBudget::new(100, 64);
        assert!(budget.admits(49));
        assert!(!budget.admits(50));
        assert_eq!(FdBudget::new(1024, 0), FdBudget { first_reserved: 1024 });
        assert_eq!(FdBudget::new(0, 64), FdBudget { first_reserved: 0 });
        assert_eq!(FdBudget::new(u64::MAX, usize::MAX), FdBudget { first_reserved: u64::MAX - u64::MAX / 2 });
    }

    #[tokio::test(start_paused = true)]
    async fn accept_errors_pause_unless_about_one_connection() {
        let log = AcceptErrorLog::default();
        let start = tokio::time::Instant::now();
        log.recover(&std::io::Error::from(std::io::ErrorKind::ConnectionReset)).await;
        log.recover(&std::io::Error::from(std::io::ErrorKind::ConnectionAborted)).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "a client that gave up costs no pause");
        log.recover(&std::io::Error::from_raw_os_error(nix::libc::EMFILE)).await;
        assert_eq!(start.elapsed(), ACCEPT_ERROR_PAUSE, "out of descriptors pauses instead of spinning");
    }

    #[test]
    fn exhaustion_errors() {
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(nix::libc::EMFILE)));
        assert!(is_exhaustion(&std::io::Error::from_raw_os_error(nix::libc::ENOBUFS)));
        assert!(!is_exhaustion(&std::io::Error::from_raw_os_error(nix::libc::EBADF)));
        assert!(!is_exhaustion(&std::io::Error::other("no errno")));
    }
}
