//! Body wrappers: a request body whose reads are timed, and a response body that tells the
//! connection's [`Activity`] when the response is over.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::activity::Activity;

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    /// The connection failed or the client sent a malformed body.
    #[error("cannot read the request body: {0}")]
    Read(#[from] hyper::Error),
    /// The client paused too long between two parts of the body, or took too long over all.
    #[error("the request body did not arrive in time")]
    TimedOut,
}

/// A request body whose reads time out after a pause longer than `idle`, or once the whole
/// body has taken longer than its deadline, however steadily it trickles.
pub(super) struct TimedBody {
    inner: hyper::body::Incoming,
    idle: Duration,
    /// When the whole body must have arrived.
    deadline: Instant,
    /// Created on the first read that has to wait (most bodies arrive with their headers).
    timers: Option<Timers>,
    /// Set when a read timed out, so that the response can say 408 whatever the handler did
    /// with the error.
    timed_out: Arc<AtomicBool>,
}

struct Timers {
    idle: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
}

impl TimedBody {
    pub(super) fn new(
        inner: hyper::body::Incoming,
        idle: Duration,
        total: Duration,
        timed_out: Arc<AtomicBool>,
    ) -> Self {
        Self { inner, idle, deadline: Instant::now() + total, timers: None, timed_out }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.timed_out.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(BodyError::TimedOut)));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            if let Some(timers) = &mut this.timers {
                timers.idle.as_mut().reset(Instant::now() + this.idle);
            }
            return Poll::Ready(frame.map(|f| f.map_err(BodyError::from)));
        }
        let (idle, deadline) = (this.idle, this.deadline);
        let timers = this.timers.get_or_insert_with(|| Timers {
            idle: Box::pin(tokio::time::sleep(idle)),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
        });
        if timers.idle.as_mut().poll(cx).is_ready() || timers.deadline.as_mut().poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyError::TimedOut)));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks the connection idle when hyper drops it: after its last frame
/// was written, or when the response was abandoned (the client went away).
pub(super) struct ResponseBody {
    inner: axum::body::Body,
    activity: Arc<Activity>,
}

impl ResponseBody {
    pub(super) fn new(inner: axum::body::Body, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.activity.response_done();
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
