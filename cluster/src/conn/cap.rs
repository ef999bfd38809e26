//! The per-worker connection cap: a connection beyond it gets a canned 503 and is closed, so
//! that a flood of idle connections costs the worker a bounded number of descriptors instead
//! of running it out of them.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::tally::Tally;

/// Refusals answered at the same time; beyond them a connection is closed without a word, so
/// that refusing costs at most this many descriptors (within the reserve the default cap
/// leaves, [`crate::config::MIN_FD_RESERVE`]).
const MAX_REFUSALS_IN_PROGRESS: usize = 32;
/// How long a refusal waits for the client's request after answering, reading and discarding
/// it: closing a socket with unread input makes the kernel send a reset, which can destroy
/// the 503 before the client reads it.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);
/// The most often the cap's refusals are logged.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The answer to a connection over the cap, written before its request is even read.
const REFUSAL: &str = "too many connections, retry in a moment";

/// Counts a worker's open connections against its cap. The count is also what the heartbeat
/// reports as the worker's open connections (`herd ctl status`, `conns`).
#[derive(Clone)]
pub(crate) struct ConnectionCap {
    inner: Arc<Inner>,
}

struct Inner {
    max: usize,
    refusal: Vec<u8>,
    open: AtomicUsize,
    refusing: AtomicUsize,
    refusals_log: Mutex<Tally>,
}

/// One open connection's place under the cap, given back when dropped.
pub(super) struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionCap {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max,
                refusal: crate::canned::service_unavailable(REFUSAL),
                open: AtomicUsize::new(0),
                refusing: AtomicUsize::new(0),
                refusals_log: Mutex::new(Tally::new(LOG_INTERVAL)),
            }),
        }
    }

    /// Connections holding a place now.
    pub(crate) fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// A place for one more connection, unless the cap is reached.
    pub(super) fn try_acquire(&self) -> Option<Slot> {
        let inner = &self.inner;
        inner
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < inner.max).then_some(open + 1))
            .ok()
            .map(|_| Slot(inner.clone()))
    }

    /// Answers a connection over the cap with a 503 in the background, or closes it at once
    /// when too many refusals are already in progress.
    pub(super) fn refuse<I>(&self, mut io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.log_refusal();
        let inner = &self.inner;
        let claimed = inner
            .refusing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_REFUSALS_IN_PROGRESS).then_some(n + 1));
        if claimed.is_err() {
            return; // dropping `io` closes it
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                io.write_all(&inner.refusal).await?;
                io.shutdown().await?;
                let mut discard = [0u8; 1024];
                while io.read(&mut discard).await? > 0 {}
                Ok::<_, std::io::Error>(())
            })
            .await;
            inner.refusing.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn log_refusal(&self) {
        let Ok(mut log) = self.inner.refusals_log.lock() else { return };
        if let Some(refused) = log.due(1, Instant::now()) {
            tracing::warn!(
                max_connections = self.inner.max,
                refused,
                "connection cap reached, refusing new connections with 503"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back() {
        let cap = ConnectionCap::new(2);
        let (a, b) = (cap.try_acquire(), cap.try_acquire());
        assert!(a.is_some() && b.is_some());
        assert!(cap.try_acquire().is_none(), "over the cap");
        drop(a);
        assert!(cap.try_acquire().is_some(), "a closed connection frees its slot");
    }
}
