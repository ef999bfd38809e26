//! What one connection is doing, and when its client has had long enough.
//!
//! A connection is always in one of three phases:
//!
//! - **head**: the server waits for a request line and headers (right after accept, or since
//!   the first byte after a keep-alive pause). Bounded by the header timeout, counted from the
//!   start of the phase, so a client trickling a byte at a time gains nothing.
//! - **busy**: a request is being handled and its response sent. Not bounded here: a body the
//!   handler reads is bounded by [`super::body::TimedBody`], the handler is the app's business.
//! - **idle**: a response was sent and nothing has arrived since. Bounded by the keep-alive
//!   timeout.
//!
//! hyper's own `header_read_timeout` cannot do this: it starts when hyper begins reading a
//! head, which for a keep-alive connection is the moment the previous response ends, so it
//! would close idle keep-alive connections after the (short) header timeout and leave no room
//! for a longer keep-alive one.

use std::{
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

/// Which timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// The request head did not arrive within the header timeout.
    Head,
    /// The connection was idle for the keep-alive timeout.
    KeepAlive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Head,
    Busy,
    Idle,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// When the phase began.
    since: Instant,
    /// Requests started on this connection.
    requests: u64,
}

/// The phase of one connection, shared by its reader, its service and its watchdog.
#[derive(Debug)]
pub(super) struct Activity {
    state: Mutex<State>,
    changed: Notify,
}

impl Activity {
    /// A connection just accepted: waiting for its first request head.
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State { phase: Phase::Head, since: Instant::now(), requests: 0 }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds a consistent state.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn enter(&self, phase: Phase) {
        let mut state = self.state();
        state.phase = phase;
        state.since = Instant::now();
        drop(state);
        self.changed.notify_waiters();
    }

    /// The client sent bytes: after a keep-alive pause, a new request head has begun.
    pub(super) fn bytes_read(&self) {
        if self.state().phase == Phase::Idle {
            self.enter(Phase::Head);
        }
    }

    /// A request head was parsed and the request handed to the app; returns how many requests
    /// this connection has started, this one included.
    pub(super) fn request_started(&self) -> u64 {
        let mut state = self.state();
        state.phase = Phase::Busy;
        state.requests += 1;
        let requests = state.requests;
        drop(state);
        self.changed.notify_waiters();
        requests
    }

    /// The response was sent (or abandoned): the connection is idle.
    pub(super) fn response_done(&self) {
        self.enter(Phase::Idle);
    }

    /// Resolves when the current phase has lasted longer than its timeout.
    pub(super) async fn expired(&self, header_timeout: Duration, keepalive_timeout: Duration) -> Expiry {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before reading the state, so a change in between is not missed.
            changed.as_mut().enable();
            let (phase, since) = {
                let state = self.state();
                (state.phase, state.since)
            };
            let (deadline, expiry) = match phase {
                Phase::Head => (since + header_timeout, Expiry::Head),
                Phase::Idle => (since + keepalive_timeout, Expiry::KeepAlive),
                Phase::Busy => {
                    changed.await;
                    continue;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    let state = self.state();
                    if state.phase == phase && state.since == since {
                        return expiry;
                    }
                }
                _ = changed => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Duration = Duration::from_secs(2);
    const KEEPALIVE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_after_the_header_timeout() {
        let activity = Activity::new();
        let started = Instant::now();
        assert_eq!(activity.expired(HEADER, KEEPALIVE).await, Expiry::Head);
        assert_eq!(started.elapsed(), HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_is_longer_than_the_header_timeout_and_a_new_head_restarts_it() {
        let activity = std::sync::Arc::new(Activity::new());
        assert_eq!(activity.request_started(), 1);
        activity.response_done();
        let idle_since = Instant::now();
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move { activity.expired(HEADER, KEEPALIVE).await }
        });
        tokio::time::sleep(HEADER * 2).await;
        assert!(!watchdog.is_finished(), "an idle connection outlives the header timeout");
        assert_eq!(watchdog.await.expect("watchdog"), Expiry::KeepAlive);
        assert_eq!(idle_since.elapsed(), KEEPALIVE);

        // The first byte of the next request switches to the header timeout.
        activity.bytes_read();
        let head_since = Instant::now();
        assert_eq!(activity.expired(HEADER, KEEPALIVE).await, Expiry::Head);
        assert_eq!(head_since.elapsed(), HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_never_expires() {
        let activity = Activity::new();
        activity.request_started();
        let expired = tokio::time::timeout(KEEPALIVE * 10, activity.expired(HEADER, KEEPALIVE)).await;
        assert!(expired.is_err(), "a request in progress is not timed here");
    }
}
