//! Serving a router on client connections with hyper directly, because `axum::serve` offers no
//! timeouts: every connection here has a header timeout, a keep-alive timeout, a send timeout,
//! a request count, a timed body and a place under the worker's connection cap
//! ([`crate::config::ConnectionLimits`]).
//!
//! What `axum::serve` gave is kept: `ConnectInfo<SocketAddr>` holds the real peer, HTTP/1
//! upgrades work, and on the graceful signal the accept loop stops, every connection is asked
//! to finish its request and close (idle ones close at once), and [`serve`] returns once all
//! of them have.
//!
//! Queue time: in the primary-accept modes a handed-off connection carries the moment the
//! primary accepted it ([`AcceptTime`]). Its *first* request gets `X-Request-Start:
//! t=<microseconds since the epoch>` (replacing one the client sent), the header New Relic,
//! Sentry and queue-time autoscalers read, and the wait from accept to that request reaching
//! the app goes into `herd_queue_time_seconds`. Later requests on the same keep-alive
//! connection are left as the client sent them: the primary saw only the connection arrive,
//! not them. In shared mode nothing is stamped or measured (the wait is in the kernel's accept
//! queue, which no process can see, as in Puma).

mod activity;
mod body;
mod cap;
mod io;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use axum::{
    extract::ConnectInfo,
    http::{header, HeaderValue, StatusCode, Version},
    response::{IntoResponse, Response},
    serve::Listener,
    Router,
};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
};
use tower::ServiceExt;

use crate::{config::ConnectionLimits, metrics::WorkerMetrics};
use activity::Activity;
use body::{ResponseBody, TimedBody};
pub(crate) use cap::ConnectionCap;

/// When the primary accepted a connection, if it did (see the module documentation).
pub(crate) trait AcceptTime {
    /// Microseconds since the Unix epoch.
    fn accepted_us(&self) -> Option<u64> {
        None
    }
}

impl AcceptTime for tokio::net::TcpStream {}

/// Connections a listener already holds for this server, taken without waiting. On the
/// graceful signal [`serve`] serves these before it stops accepting: a hand-off the worker
/// adopted just before it was told to stop is the worker's to answer, and dropping it would
/// close a client's connection with its request unanswered.
pub(crate) trait Backlog: Listener {
    /// The next connection already waiting, if any.
    fn take_waiting(&mut self) -> Option<(Self::Io, Self::Addr)> {
        None
    }
}

/// Nothing is taken from the kernel's queue once stopping: whatever serves the port next does.
impl Backlog for tokio::net::TcpListener {}

/// The request header that carries the accept time.
pub(crate) const REQUEST_START: &str = "x-request-start";

/// Serves `router` on the connections `listener` yields, each under `cap`, until `graceful`
/// resolves, then lets the open connections finish and returns once they have. With `metrics`,
/// queue times are recorded there.
pub(crate) async fn serve<L>(
    mut listener: L,
    router: Router,
    limits: &ConnectionLimits,
    cap: ConnectionCap,
    metrics: Option<WorkerMetrics>,
    graceful: impl Future<Output = ()>,
) where
    L: Backlog<Addr = SocketAddr>,
    L::Io: AsyncRead + AsyncWrite + AcceptTime + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    // The timer drives hyper's internal timeouts; its header timeout is replaced by our own
    // (see `activity`), which also covers keep-alive pauses.
    builder.timer(TokioTimer::new()).header_read_timeout(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone; `closed()` resolves when the last one ends.
    let (done_tx, done_rx) = watch::channel(());
    tokio::pin!(graceful);
    let mut graceful_done = false;
    loop {
        let (io, peer) = if graceful_done {
            match listener.take_waiting() {
                Some(waiting) => waiting,
                None => break,
            }
        } else {
            tokio::select! {
                accepted = listener.accept() => accepted,
                _ = &mut graceful => {
                    graceful_done = true;
                    let _ = stop_tx.send(true);
                    continue;
                }
            }
        };
        let Some(slot) = cap.try_acquire() else {
            cap.refuse(io);
            continue;
        };
        let activity = Arc::new(Activity::new());
        let accepted_us = io.accepted_us();
        let io = TokioIo::new(io::WatchedIo::new(io, activity.clone(), slot));
        let service = ConnService {
            router: router.clone(),
            peer,
            activity: activity.clone(),
            limits: limits.clone(),
            accepted_us,
            metrics: metrics.clone(),
            stopping: stop_rx.clone(),
        };
        let conn = builder.serve_connection(io, service).with_upgrades();
        let (mut stop, done) = (stop_rx.clone(), done_rx.clone());
        let limits = limits.clone();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let mut stopping = false;
            loop {
                tokio::select! {
                    served = conn.as_mut() => {
                        if let Err(err) = served {
                            tracing::debug!(%peer, error = %err, "connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.wait_for(|stop| *stop), if !stopping => {
                        stopping = true;
                        // A connection still waiting for a request head may have one on its way
                        // (a fresh connection's request sits unread in the socket): closing it
                        // would drop that request. Its response carries `Connection: close`
                        // instead (see `ConnService`), and the header timeout bounds a client
                        // that never sends.
                        if !activity.awaiting_head() {
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                    // No expiry leaves anything to answer: a partial head has no request yet, an
                    // idle connection's last response was handed to the socket, a stalled one
                    // is not being read. So the connection is simply closed, as nginx does.
                    expiry = activity.expired(&limits) => {
                        tracing::debug!(%peer, ?expiry, "closing a connection that timed out");
                        break;
                    }
                }
            }
            drop(done);
        });
    }
    // Stop accepting (for handed-off connections this refuses the ones still coming); every
    // connection was asked to finish: wait for them.
    drop(listener);
    drop(done_rx);
    done_tx.closed().await;
}

/// The router as hyper's per-connection service: adds `ConnectInfo`, times the request body,
/// and closes the connection after its last allowed request.
struct ConnService {
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
    limits: ConnectionLimits,
    /// When the primary accepted the connection (primary-accept modes).
    accepted_us: Option<u64>,
    metrics: Option<WorkerMetrics>,
    /// Set once the server stops: every response then closes its connection.
    stopping: watch::Receiver<bool>,
}

/// Now, in microseconds since the Unix epoch (0 for a clock before it).
pub(crate) fn epoch_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for ConnService {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let started = self.activity.request_started();
        let last = started >= self.limits.keepalive_requests;
        let timed_out = Arc::new(AtomicBool::new(false));
        let mut request = request.map(|incoming| {
            let body = TimedBody::new(incoming, self.limits.body_timeout, self.limits.body_deadline, timed_out.clone());
            axum::body::Body::new(body)
        });
        request.extensions_mut().insert(ConnectInfo(self.peer));
        if let (1, Some(accepted)) = (started, self.accepted_us) {
            if let Ok(value) = HeaderValue::from_str(&format!("t={accepted}")) {
                request.headers_mut().insert(REQUEST_START, value);
            }
            if let Some(metrics) = &self.metrics {
                let waited = epoch_us().saturating_sub(accepted);
                metrics.http().queue_time.observe(&[], waited as f64 / 1e6);
            }
        }
        let (router, activity) = (self.router.clone(), self.activity.clone());
        let stopping = self.stopping.clone();
        Box::pin(async move {
            let http1 = request.version() <= Version::HTTP_11;
            let mut response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            // Read when the response is ready: the stop may have come while the app worked.
            let stopping = *stopping.borrow();
            if timed_out.load(Ordering::Relaxed) {
                // Whatever the handler made of the failed read (axum's extractors say 400),
                // the client was too slow.
                response = body_timeout_response();
            }
            if http1 && (last || stopping || response.status() == StatusCode::REQUEST_TIMEOUT) {
                // hyper closes an HTTP/1 connection after a response that says so.
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| ResponseBody::new(body, activity)))
        })
    }
}

fn body_timeout_response() -> Response {
    (StatusCode::REQUEST_TIMEOUT, axum::Json(serde_json::json!({ "error": "the request body did not arrive in time" })))
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::{body::Bytes, routing::get};
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        time::Instant,
    };

    use super::*;
    use crate::metrics::Collect;

    async fn get_small(addr: SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.write_all(b"GET /small HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
        let mut response = Vec::new();
        let _ = stream.read_to_end(&mut response).await;
        String::from_utf8_lossy(&response).into_owned()
    }

    #[tokio::test]
    async fn a_response_the_client_does_not_read_is_abandoned_after_the_send_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        // More than the socket buffers of both ends can hold.
        let big = Bytes::from(vec![b'x'; 64 << 20]);
        let router = Router::new()
            .route("/big", get(move || async move { big.clone() }))
            .route("/small", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }));
        let limits =
            ConnectionLimits { send_timeout: Duration::from_secs(1), max_connections: Some(1), ..Default::default() };
        let cap = ConnectionCap::new(limits.max_connections());
        tokio::spawn(async move { serve(listener, router, &limits, cap, None, std::future::pending()).await });

        let mut stalled = TcpStream::connect(addr).await.expect("connect");
        stalled.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").await.expect("request");
        let started = Instant::now();
        let refused = get_small(addr).await;
        assert!(refused.starts_with("HTTP/1.1 503"), "the stalled connection holds the only slot: {refused:?}");
        let served = loop {
            assert!(started.elapsed() < Duration::from_secs(10), "the stalled response was never abandoned");
            let response = get_small(addr).await;
            if response.starts_with("HTTP/1.1 200") {
                break response;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(started.elapsed() >= Duration::from_millis(900), "abandoned before the send timeout");
        assert!(served.contains("\r\n\r\n127.0.0.1:"), "ConnectInfo is the peer: {served}");
    }

    /// A connection as a handed-off one looks: with the primary's accept time.
    struct Stamped(TcpStream, u64);

    impl AcceptTime for Stamped {
        fn accepted_us(&self) -> Option<u64> {
            Some(self.1)
        }
    }

    impl AsyncRead for Stamped {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Stamped {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    struct StampingListener(TcpListener, u64);

    impl Backlog for StampingListener {}

    impl Listener for StampingListener {
        type Io = Stamped;
        type Addr = SocketAddr;
        async fn accept(&mut self) -> (Stamped, SocketAddr) {
            loop {
                if let Ok((stream, peer)) = self.0.accept().await {
                    return (Stamped(stream, self.1), peer);
                }
            }
        }
        fn local_addr(&self) -> std::io::Result<SocketAddr> {
            self.0.local_addr()
        }
    }

    #[tokio::test]
    async fn the_first_request_of_a_handed_off_connection_carries_its_accept_time() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let accepted = epoch_us() - 250_000; // a quarter of a second in the primary's queue
        let echo = |headers: axum::http::HeaderMap| async move {
            headers.get(REQUEST_START).map_or("none".to_owned(), |v| v.to_str().unwrap_or("?").to_owned())
        };
        let router = Router::new().route("/", get(echo));
        let metrics = WorkerMetrics::default();
        let (limits, cap) = (ConnectionLimits::default(), ConnectionCap::new(8));
        let recorded = metrics.clone();
        tokio::spawn(async move {
            let listener = StampingListener(listener, accepted);
            serve(listener, router, &limits, cap, Some(recorded), std::future::pending()).await
        });
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut bodies = Vec::new();
        for forged in ["", "X-Request-Start: t=1\r\n"] {
            let request = format!("GET / HTTP/1.1\r\nHost: t\r\n{forged}\r\n");
            stream.write_all(request.as_bytes()).await.expect("request");
            let mut buf = vec![0u8; 4096];
            let n = stream.read(&mut buf).await.expect("response");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            bodies.push(text.rsplit("\r\n\r\n").next().unwrap_or_default().to_owned());
        }
        assert_eq!(bodies[0], format!("t={accepted}"), "the first request gets the accept time");
        assert_eq!(bodies[1], "t=1", "later ones keep what the client sent");
        let mut families = Vec::new();
        metrics.http().queue_time.collect(&mut families);
        let crate::metrics::Value::Histogram(h) = &families[0].samples[0].value else { panic!("a histogram") };
        assert_eq!(h.count, 1, "one connection, one queue time");
        assert!(h.sum >= 0.25 && h.sum < 5.0, "{}", h.sum);
    }
}
