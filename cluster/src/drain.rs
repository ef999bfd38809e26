//! Graceful draining of one worker.
//!
//! Closing an idle keep-alive connection races with a client that is just sending its next
//! request on it: the client sees a reset, which is how most "graceful" shutdowns lose requests.
//! So a draining worker does not close connections under its clients. It
//!
//! 1. stops accepting (the [`DrainableListener`] stops calling `accept`, so in shared mode the
//!    kernel hands new connections to the other workers),
//! 2. answers each request that still arrives on an open connection, normally, with
//!    `Connection: close` so the client takes its next request elsewhere (the [`guard`]
//!    middleware): to another worker when this one is only being replaced
//!    ([`DrainMode::Retire`], a reload or a scale-down), and when the whole cluster stops
//!    ([`DrainMode::Shutdown`]) to whatever serves the port next: with socket activation the
//!    socket outlives herd and the next herd takes the connection from its queue. A request
//!    that reached a worker is served, never refused, in both cases,
//! 3. waits until no request has been in flight for [`LINGER`], and only then lets the
//!    worker's connection loop close the connections that are still idle.

use std::{
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, Version},
    middleware::Next,
    response::Response,
};
use tokio::{net::TcpStream, sync::Notify, time::Instant};

use crate::{
    fdlimit::{AcceptErrorLog, FdBudget, ShedLog},
    shutdown,
};

/// How long a draining worker keeps idle connections open after its last request finished, so
/// that a client which already sent a request on one gets an answer instead of a reset.
pub const LINGER: Duration = Duration::from_millis(500);

/// How a worker drains, and why it stops (the reason [`crate::shutdown`]'s signal carries).
/// Ordered: a stronger mode overrides a weaker one already given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DrainMode {
    /// Being replaced (reload, scale-down) while the cluster keeps running: finish requests on
    /// open connections normally, but close each connection after its response.
    Retire = 1,
    /// The whole cluster stops: refuse new requests on open connections with 503.
    Shutdown = 2,
}

/// Shared state of one worker's drain: are we draining (and how), and how many requests are in
/// flight.
#[derive(Clone, Default)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// 0: serving; otherwise a [`DrainMode`] discriminant.
    mode: AtomicU8,
    /// Requests this worker has started handling.
    served: AtomicU64,
    in_flight: AtomicUsize,
    /// When the last request finished; `None` before any did.
    last_done: Mutex<Option<Instant>>,
    /// Woken whenever a request finishes.
    done: Notify,
}

impl Drain {
    /// Creates a drain that is not draining.
    pub fn new() -> Self {
        Self::default()
    }

    /// How the worker drains, once [`Drain::start`] was called.
    pub fn mode(&self) -> Option<DrainMode> {
        match self.inner.mode.load(Ordering::Acquire) {
            1 => Some(DrainMode::Retire),
            2 => Some(DrainMode::Shutdown),
            _ => None,
        }
    }

    /// Starts draining, or makes an ongoing drain stricter (a retiring worker told to shut down).
    pub fn start(&self, mode: DrainMode) {
        self.inner.mode.fetch_max(mode as u8, Ordering::AcqRel);
    }

    /// Requests started since the worker began serving.
    pub fn served(&self) -> u64 {
        self.inner.served.load(Ordering::Relaxed)
    }

    /// Number of requests currently being handled.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Resolves once no request is in flight and none has finished for [`LINGER`].
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.done.notified();
            if self.in_flight() == 0 {
                let quiet_for =
                    self.inner.last_done.lock().map(|last| last.map_or(LINGER, |t| t.elapsed())).unwrap_or(LINGER);
                if quiet_for >= LINGER {
                    return;
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(LINGER - quiet_for) => {}
                }
            } else {
                notified.await;
            }
        }
    }

    fn begin(&self) -> InFlight {
        self.inner.served.fetch_add(1, Ordering::Relaxed);
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// Counts one request as in flight until dropped (also when the handler panics or the client
/// goes away and the future is dropped).
struct InFlight(Drain);

impl Drop for InFlight {
    fn drop(&mut self) {
        let inner = &self.0.inner;
        if let Ok(mut last) = inner.last_done.lock() {
            *last = Some(Instant::now());
        }
        inner.in_flight.fetch_sub(1, Ordering::AcqRel);
        inner.done.notify_waiters();
    }
}

/// Middleware: count requests in flight and, while draining, ask the client to close the
/// connection after the response.
pub async fn guard(State(drain): State<Drain>, request: Request, next: Next) -> Response {
    let http1 = request.version() <= Version::HTTP_11;
    let _in_flight = drain.begin();
    let mut response = next.run(request).await;
    if http1 && drain.mode().is_some() {
        close_after(&mut response);
    }
    response
}

fn close_after(response: &mut Response) {
    // hyper closes an HTTP/1 connection after a response that carries `Connection: close`.
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// A TCP listener that stops accepting once the worker drains, leaving queued connections to
/// other workers, while the worker keeps serving the connections it already has. Connections
/// that would eat into the worker's descriptor reserve (`--fd-reserve`) are closed at once.
pub struct DrainableListener {
    inner: tokio::net::TcpListener,
    stop: shutdown::Signal,
    budget: FdBudget,
    shed: ShedLog,
    accept_errors: AcceptErrorLog,
    /// The listener is this worker's slot's alone (kernel steering): once stopping, what is
    /// queued on it is this worker's to serve (see [`crate::conn::Backlog`]).
    own_queue: bool,
}

impl DrainableListener {
    pub(crate) fn new(inner: tokio::net::TcpListener, stop: shutdown::Signal, budget: FdBudget) -> Self {
        let (shed, accept_errors) = (ShedLog::default(), AcceptErrorLog::default());
        Self { inner, stop, budget, shed, accept_errors, own_queue: false }
    }

    /// A listener only this worker's slot accepts on (kernel steering).
    pub(crate) fn own_queue(mut self) -> Self {
        self.own_queue = true;
        self
    }

    /// A connection this worker accepted: closed at once if it would eat into the descriptor
    /// reserve, else set `TCP_NODELAY` (small JSON responses should not wait for Nagle).
    fn admit(&mut self, stream: TcpStream) -> Option<TcpStream> {
        if !self.budget.admits(stream.as_raw_fd()) {
            drop(stream);
            self.shed.shed(1, "this worker is at its open files limit less --fd-reserve");
            return None;
        }
        let _ = stream.set_nodelay(true);
        Some(stream)
    }
}

impl axum::serve::Listener for DrainableListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            tokio::select! {
                biased;
                _ = self.stop.wait() => std::future::pending::<()>().await,
                accepted = self.inner.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if let Some(stream) = self.admit(stream) {
                            return (stream, peer);
                        }
                    }
                    Err(err) => self.accept_errors.recover(&err).await,
                },
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Once the worker drains, the connections in a shared listener's queue are left to the other
/// workers, or to whatever serves the port next. A slot's own listener has no one else while
/// the cluster stops or the slot is removed (the kernel sends nothing new there by then): its
/// queue is taken, without waiting, and served.
impl crate::conn::Backlog for DrainableListener {
    fn take_waiting(&mut self) -> Option<(TcpStream, std::net::SocketAddr)> {
        if !self.own_queue {
            return None;
        }
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            match self.inner.poll_accept(&mut cx) {
                std::task::Poll::Ready(Ok((stream, peer))) => {
                    if let Some(stream) = self.admit(stream) {
                        return Some((stream, peer));
                    }
                }
                // Empty (or failing): nothing more to take now.
                std::task::Poll::Ready(Err(_)) | std::task::Poll::Pending => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, http::StatusCode, middleware::from_fn_with_state, routing::get, Router};
    use tower::ServiceExt;

    fn app(drain: &Drain) -> Router {
        Router::new().route("/", get(|| async { "ok" })).layer(from_fn_with_state(drain.clone(), guard))
    }

    #[tokio::test]
    async fn a_draining_worker_serves_with_close() {
        let drain = Drain::new();
        let ok = app(&drain).oneshot(Request::new(Body::empty())).await.expect("infallible");
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(ok.headers().get(header::CONNECTION).is_none());

        drain.start(DrainMode::Retire);
        let served = app(&drain).oneshot(Request::new(Body::empty())).await.expect("infallible");
        assert_eq!(served.status(), StatusCode::OK, "a retiring worker still serves");
        assert_eq!(served.headers()[header::CONNECTION], "close");

        drain.start(DrainMode::Shutdown);
        drain.start(DrainMode::Retire); // never weakens
        assert_eq!(drain.mode(), Some(DrainMode::Shutdown));
        let served = app(&drain).oneshot(Request::new(Body::empty())).await.expect("infallible");
        assert_eq!(served.status(), StatusCode::OK, "so does one that shuts down: the request reached it");
        assert_eq!(served.headers()[header::CONNECTION], "close");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_in_flight_requests_and_the_linger() {
        let drain = Drain::new();
        let request = drain.begin();
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move { drain.idle().await }
        });
        tokio::time::sleep(LINGER * 4).await;
        assert!(!waiter.is_finished(), "idle while a request is in flight");
        let finished_at = tokio::time::Instant::now();
        drop(request);
        waiter.await.expect("waiter");
        assert!(finished_at.elapsed() >= LINGER, "idle before the linger passed");
    }
}
