//! The connections whose PROXY header is being read, concurrently and bounded.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::{net::TcpStream, task::JoinSet};

use super::{read_header, ProxyProtocol, Rejected};
use crate::{fdlimit::SHED_LOG_INTERVAL, forwarded::TrustedProxies, tally::Tally};

/// A connection whose header has been read.
#[derive(Debug)]
pub(crate) struct Proxied {
    /// Positioned at the first byte after the header.
    pub(crate) stream: TcpStream,
    /// The socket's peer: the proxy.
    pub(crate) peer: SocketAddr,
    /// The client the header named, or the peer when it named none.
    pub(crate) client: SocketAddr,
    /// When it was accepted (its header took some of the time since).
    pub(crate) accepted_at: Instant,
}

/// What a read task ends with: the connection as accepted, and its header's verdict.
struct Read {
    stream: TcpStream,
    peer: SocketAddr,
    accepted_at: Instant,
    client: Result<Option<SocketAddr>, Rejected>,
}

/// Header reads in progress, each in its own task under the timeout, at most
/// [`ProxyProtocol::max_pending`] at once.
pub(crate) struct PendingHeaders {
    reads: JoinSet<Read>,
    settings: ProxyProtocol,
    trusted: Arc<TrustedProxies>,
    /// Closed connections, logged at most once per [`SHED_LOG_INTERVAL`]: a flood of bad
    /// headers must not flood the log.
    rejections: Tally,
}

impl PendingHeaders {
    pub(crate) fn new(settings: ProxyProtocol, trusted: TrustedProxies) -> Self {
        Self { reads: JoinSet::new(), settings, trusted: Arc::new(trusted), rejections: Tally::new(SHED_LOG_INTERVAL) }
    }

    /// Whether another read may start; while not, the caller leaves new connections in the
    /// kernel's accept queue.
    pub(crate) fn has_room(&self) -> bool {
        self.reads.len() < self.settings.max_pending
    }

    /// Starts reading the header of a connection just accepted from `peer`; one from outside
    /// `--trusted-proxies` is closed at once, unread.
    pub(crate) fn start(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        if !self.trusted.contains(peer.ip()) {
            drop(stream);
            self.rejected(peer, &Rejected::Untrusted);
            return;
        }
        let (timeout, accepted_at) = (self.settings.header_timeout, Instant::now());
        self.reads.spawn(async move {
            let client = match tokio::time::timeout(timeout, read_header(&mut stream)).await {
                Ok(read) => read,
                Err(_elapsed) => Err(Rejected::Slow),
            };
            Read { stream, peer, accepted_at, client }
        });
    }

    /// The next connection whose header is complete; those whose header failed are closed
    /// (and logged) on the way. `None` at once when no read is in progress. Cancel-safe: a read
    /// that completes while nobody waits is returned by the next call.
    pub(crate) async fn next(&mut self) -> Option<Proxied> {
        loop {
            match self.reads.join_next().await? {
                Ok(Read { stream, peer, accepted_at, client: Ok(client) }) => {
                    return Some(Proxied { stream, peer, client: client.unwrap_or(peer), accepted_at })
                }
                Ok(Read { stream, peer, client: Err(why), .. }) => {
                    drop(stream);
                    self.rejected(peer, &why);
                }
                // The task panicked (it cannot: it only reads) or was aborted (on drop).
                Err(_) => {}
            }
        }
    }

    fn rejected(&mut self, peer: SocketAddr, why: &Rejected) {
        if let Some(count) = self.rejections.due(1, Instant::now()) {
            tracing::warn!(
                %peer,
                reason = why.reason(),
                "closed {count} connection(s) without serving them since the last such line; the latest: {why}"
            );
        }
    }
}

/// Shared mode's listener under `--proxy-protocol`: accepts on `inner`, reads each
/// connection's header concurrently, and yields the connection with the client's address.
pub(crate) struct ProxiedListener<L> {
    inner: L,
    pending: PendingHeaders,
}

impl<L> ProxiedListener<L> {
    pub(crate) fn new(inner: L, pending: PendingHeaders) -> Self {
        Self { inner, pending }
    }
}

/// As the shared listener it wraps: nothing is taken once stopping. A header still being read
/// then is dropped with its connection (a balancer sends it with the first packet, so the
/// window is the few microseconds a read takes).
impl<L> crate::conn::Backlog for ProxiedListener<L> where L: axum::serve::Listener<Io = TcpStream, Addr = SocketAddr> {}

impl<L> axum::serve::Listener for ProxiedListener<L>
where
    L: axum::serve::Listener<Io = TcpStream, Addr = SocketAddr>,
{
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let has_room = self.pending.has_room();
            tokio::select! {
                Some(proxied) = self.pending.next() => return (proxied.stream, proxied.client),
                (stream, peer) = self.inner.accept(), if has_room => self.pending.start(stream, peer),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    async fn listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        (listener, addr)
    }

    fn pending(trusted: &str, max_pending: usize) -> PendingHeaders {
        let settings = ProxyProtocol { header_timeout: Duration::from_millis(300), max_pending };
        PendingHeaders::new(settings, trusted.parse().expect("proxies"))
    }

    #[tokio::test]
    async fn a_silent_connection_holds_up_no_other_and_times_out() {
        let (listener, addr) = listener().await;
        let mut pending = pending("127.0.0.1", 8);
        let _silent = TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        pending.start(stream, peer);
        let mut talker = TcpStream::connect(addr).await.expect("connect");
        talker.write_all(b"PROXY TCP4 198.51.100.1 127.0.0.1 1000 80\r\nGET").await.expect("write");
        let (stream, peer) = listener.accept().await.expect("accept");
        pending.start(stream, peer);
        let started = Instant::now();
        let mut proxied = pending.next().await.expect("the talker's header");
        assert!(started.elapsed() < Duration::from_millis(250), "the silent one made it wait");
        assert_eq!(proxied.client, "198.51.100.1:1000".parse().expect("literal"));
        assert_eq!(proxied.peer.ip(), addr.ip());
        let mut rest = [0u8; 3];
        proxied.stream.read_exact(&mut rest).await.expect("the request's start");
        assert_eq!(&rest, b"GET");
        // The silent one ends closed, not returned.
        assert!(pending.next().await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(250), "closed before its timeout");
    }

    #[tokio::test]
    async fn untrusted_sources_are_closed_unread_and_the_room_is_bounded() {
        let (listener, addr) = listener().await;
        let mut untrusting = pending("10.0.0.0/8", 8);
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(b"PROXY TCP4 198.51.100.1 127.0.0.1 1000 80\r\n").await.expect("write");
        let (stream, peer) = listener.accept().await.expect("accept");
        untrusting.start(stream, peer);
        assert!(untrusting.next().await.is_none(), "nothing to serve");
        let mut buf = [0u8; 1];
        assert!(matches!(client.read(&mut buf).await, Ok(0) | Err(_)), "closed");

        let mut one = pending("127.0.0.1", 1);
        assert!(one.has_room());
        let _c = TcpStream::connect(addr).await.expect("connect");
        let (stream, peer) = listener.accept().await.expect("accept");
        one.start(stream, peer);
        assert!(!one.has_room(), "one read at a time");
    }
}
