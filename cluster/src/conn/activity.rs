//! What one connection is doing, and when its client has had long enough.
//!
//! A connection is always in one of three phases:
//!
//! - **head**: the server waits for a request line and headers (right after accept, or since
//!   the first byte after a keep-alive pause). Bounded by the header timeout, counted from the
//!   start of the phase, so a client trickling a byte at a time gains nothing.
//! - **busy**: a request is being handled and its response sent. A body the handler reads is
//!   bounded by [`super::body::TimedBody`], the handler is the app's business; bounded here is a
//!   response the client does not read: a write that cannot progress for the send timeout.
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

use tokio::time::Instant;

use crate::config::ConnectionLimits;

/// Which timeout ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// The request head did not arrive within the header timeout.
    Head,
    /// The connection was idle for the keep-alive timeout.
    KeepAlive,
    /// The client read none of the response for the send timeout.
    Send,
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
    /// Since when a write has been waiting for the client to read (its window is full).
    write_stalled: Option<Instant>,
}

/// The phase of one connection, shared by its reader, its service and its watchdog.
#[derive(Debug)]
pub(super) struct Activity {
    state: Mutex<State>,
}

/// The shortest sleep of the watchdog, whatever the timeouts (a zero one would make it spin).
const MIN_STEP: Duration = Duration::from_millis(10);

impl Activity {
    /// A connection just accepted: waiting for its first request head.
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(State { phase: Phase::Head, since: Instant::now(), requests: 0, write_stalled: None }),
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
        state.requests
    }

    /// Whether the connection waits for a request head: just accepted, or bytes of a new
    /// request arrived after a keep-alive pause.
    pub(super) fn awaiting_head(&self) -> bool {
        self.state().phase == Phase::Head
    }

    /// A write could not proceed: the client is not reading.
    pub(super) fn write_blocked(&self) {
        let mut state = self.state();
        if state.write_stalled.is_none() {
            state.write_stalled = Some(Instant::now());
        }
    }

    /// A write went through.
    pub(super) fn write_progressed(&self) {
        self.state().write_stalled = None;
    }

    /// The response was sent (or abandoned): the connection is idle.
    pub(super) fn response_done(&self) {
        self.enter(Phase::Idle);
    }

    /// Resolves when the current phase has lasted longer than its timeout.
    ///
    /// Nothing wakes it: it sleeps until the earliest deadline of the state it saw, but never
    /// longer than the shortest timeout (`step`), and looks again. Every change of state starts
    /// a timeout at least `step` long, so a deadline set while it sleeps falls after it wakes:
    /// looking again then is never late, and the connection's task is not woken on each of the
    /// three changes every request makes.
    pub(super) async fn expired(&self, limits: &ConnectionLimits) -> Expiry {
        let step = limits.header_timeout.min(limits.keepalive_timeout).min(limits.send_timeout).max(MIN_STEP);
        loop {
            let now = Instant::now();
            let (phase, since, write_stalled) = {
                let state = self.state();
                (state.phase, state.since, state.write_stalled)
            };
            let phase_deadline = match phase {
                Phase::Head => Some((since + limits.header_timeout, Expiry::Head)),
                Phase::Idle => Some((since + limits.keepalive_timeout, Expiry::KeepAlive)),
                Phase::Busy => None,
            };
            // A stalled write counts in every phase: hyper may already have taken the last
            // frame of a response (the connection looks idle) and still be writing it.
            let send_deadline = write_stalled.map(|stalled| (stalled + limits.send_timeout, Expiry::Send));
            match phase_deadline.into_iter().chain(send_deadline).min_by_key(|(at, _)| *at) {
                Some((deadline, expiry)) if deadline <= now => return expiry,
                Some((deadline, _)) => tokio::time::sleep_until(deadline.min(now + step)).await,
                None => tokio::time::sleep_until(now + step).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HEADER: Duration = Duration::from_secs(2);
    const KEEPALIVE: Duration = Duration::from_secs(10);
    const SEND: Duration = Duration::from_secs(5);

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: HEADER,
            keepalive_timeout: KEEPALIVE,
            send_timeout: SEND,
            ..ConnectionLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_expires_after_the_header_timeout() {
        let activity = Activity::new();
        let started = Instant::now();
        assert_eq!(activity.expired(&limits()).await, Expiry::Head);
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
            async move { activity.expired(&limits()).await }
        });
        tokio::time::sleep(HEADER * 2).await;
        assert!(!watchdog.is_finished(), "an idle connection outlives the header timeout");
        assert_eq!(watchdog.await.expect("watchdog"), Expiry::KeepAlive);
        assert_eq!(idle_since.elapsed(), KEEPALIVE);

        // The first byte of the next request switches to the header timeout.
        activity.bytes_read();
        let head_since = Instant::now();
        assert_eq!(activity.expired(&limits()).await, Expiry::Head);
        assert_eq!(head_since.elapsed(), HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_never_expires() {
        let activity = Activity::new();
        activity.request_started();
        let expired = tokio::time::timeout(KEEPALIVE * 10, activity.expired(&limits())).await;
        assert!(expired.is_err(), "a request in progress is not timed here");
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_the_client_does_not_read_expires_after_the_send_timeout() {
        let activity = Activity::new();
        activity.request_started();
        activity.write_blocked();
        tokio::time::sleep(SEND / 2).await;
        activity.write_progressed();
        activity.write_blocked();
        let stalled_again = Instant::now();
        assert_eq!(activity.expired(&limits()).await, Expiry::Send);
        assert_eq!(stalled_again.elapsed(), SEND, "progress restarts the send timeout");
    }
}
