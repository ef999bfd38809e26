//! The worker side of primary-accept modes: connections arrive over the IPC socket and feed
//! the worker's connection loop (`crate::conn`) through [`HandoffListener`], an ordinary
//! [`axum::serve::Listener`], so `ConnectInfo<SocketAddr>` shows the real client and graceful
//! shutdown, timeouts and the connection cap work as for the shared listener.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::mpsc,
};

use crate::{
    channel::Channel,
    fdlimit::FdBudget,
    proto::{Handoff, ToPrimary, HANDOFF_EXPIRY},
};

/// Yields the connections the primary handed to this worker.
pub(crate) struct HandoffListener {
    incoming: mpsc::UnboundedReceiver<(TrackedStream, SocketAddr)>,
    local: SocketAddr,
}

/// The IPC reader's end: where received connections go.
#[derive(Clone)]
pub(crate) struct HandoffSink {
    incoming: mpsc::UnboundedSender<(TrackedStream, SocketAddr)>,
    closed: mpsc::UnboundedSender<()>,
}

/// How long closes are collected into one report: at most one message per window per worker,
/// however many connections close, so the report costs the primary little under churn.
const CLOSE_REPORT_WINDOW: Duration = Duration::from_millis(5);

/// Creates the listener and the sink that feeds it. With `report_closes` (least-conn, which
/// needs the primary to know each worker's open connections) a task tells the primary how many
/// connections closed, batched per [`CLOSE_REPORT_WINDOW`].
pub(crate) fn handoff(channel: Channel, local: SocketAddr, report_closes: bool) -> (HandoffListener, HandoffSink) {
    let (incoming, incoming_rx) = mpsc::unbounded_channel();
    let (closed, mut closed_rx) = mpsc::unbounded_channel::<()>();
    if report_closes {
        tokio::spawn(async move {
            while closed_rx.recv().await.is_some() {
                tokio::time::sleep(CLOSE_REPORT_WINDOW).await;
                let mut count = 1;
                while closed_rx.try_recv().is_ok() {
                    count += 1;
                }
                match channel.send(&ToPrimary::Closed { count }).await {
                    Ok(()) => {}
                    Err(err) if err.is_bad_message() => {
                        tracing::warn!(error = %err, "cannot report closed connections")
                    }
                    Err(_) => return, // the primary is gone; the worker is draining anyway
                }
            }
        });
    }
    (HandoffListener { incoming: incoming_rx, local }, HandoffSink { incoming, closed })
}

/// What became of one message's connections.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Adopted {
    /// Now this worker's.
    pub(crate) accepted: Vec<u64>,
    /// Not served here (the listener is gone): for another worker.
    pub(crate) refused: Vec<u64>,
    /// This worker is out of descriptors for them: to be closed.
    pub(crate) shed: Vec<u64>,
}

impl HandoffSink {
    /// Adopts the received descriptors, in the order of `conns`. A connection whose descriptor
    /// is missing (the kernel could not install it: this process is out of descriptors), lands
    /// in the reserve of `budget`, or cannot be registered is shed: taking it would leave the
    /// worker without descriptors for its own work. Hand-offs older than [`HANDOFF_EXPIRY`]
    /// are dropped unserved and in no list: the primary has taken them back for another worker
    /// (this one was stopped or stuck meanwhile).
    pub(crate) fn adopt(&self, conns: Vec<Handoff>, fds: Vec<OwnedFd>, budget: FdBudget) -> Adopted {
        let mut adopted = Adopted { accepted: Vec::with_capacity(conns.len()), ..Adopted::default() };
        let mut fds = fds.into_iter();
        let mut expired = 0;
        for handoff in conns {
            if handoff.sent_at.is_some_and(|sent| sent.elapsed() > HANDOFF_EXPIRY) {
                drop(fds.next()); // our copy only: the primary still holds the connection
                expired += 1;
                continue;
            }
            let Some(fd) = fds.next().filter(|fd| budget.admits(fd.as_raw_fd())) else {
                adopted.shed.push(handoff.id);
                continue; // dropping the descriptor closes our copy
            };
            let stream = {
                let std_stream = std::net::TcpStream::from(fd);
                // Small JSON responses should not wait for Nagle's algorithm.
                let _ = std_stream.set_nodelay(true);
                std_stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(std_stream))
            };
            match stream {
                Ok(stream) => {
                    let tracked =
                        TrackedStream { inner: stream, closed: self.closed.clone(), accepted_us: handoff.accepted_us };
                    // Under --proxy-protocol the client is who the PROXY header named.
                    let client = handoff.client.unwrap_or(handoff.peer);
                    if self.incoming.send((tracked, client)).is_ok() {
                        adopted.accepted.push(handoff.id);
                    } else {
                        adopted.refused.push(handoff.id);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot adopt a handed-off connection");
                    adopted.shed.push(handoff.id);
                }
            }
        }
        if expired > 0 {
            tracing::warn!("dropped {expired} connection(s) handed over more than {HANDOFF_EXPIRY:?} ago: the primary gave them to another worker");
        }
        adopted
    }
}

impl axum::serve::Listener for HandoffListener {
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TrackedStream, SocketAddr) {
        match self.incoming.recv().await {
            Some(conn) => conn,
            // Every sink is gone: no connection will ever come again.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Hand-offs the worker adopted before it was told to stop are served, not dropped.
impl crate::conn::Backlog for HandoffListener {
    fn take_waiting(&mut self) -> Option<(TrackedStream, SocketAddr)> {
        self.incoming.try_recv().ok()
    }
}

/// Kernel steering's listener: what the kernel queued on this slot's listener (`own`) and what
/// the primary took from slots that were not ready and handed here.
pub(crate) struct SteeredListener<L> {
    own: L,
    handed: HandoffListener,
    closed: mpsc::UnboundedSender<()>,
}

impl HandoffSink {
    /// Serves `own`'s connections too, alongside `handed`'s.
    pub(crate) fn steered<L>(&self, own: L, handed: HandoffListener) -> SteeredListener<L> {
        SteeredListener { own, handed, closed: self.closed.clone() }
    }
}

impl<L> SteeredListener<L> {
    fn track(&self, inner: TcpStream) -> TrackedStream {
        TrackedStream { inner, closed: self.closed.clone(), accepted_us: None }
    }
}

impl<L> axum::serve::Listener for SteeredListener<L>
where
    L: crate::conn::Backlog<Io = TcpStream, Addr = SocketAddr>,
{
    type Io = TrackedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TrackedStream, SocketAddr) {
        // Both are cancel-safe: the one that loses the race keeps its connection.
        tokio::select! {
            handed = self.handed.accept() => handed,
            (own, peer) = self.own.accept() => (self.track(own), peer),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.own.local_addr()
    }
}

impl<L> crate::conn::Backlog for SteeredListener<L>
where
    L: crate::conn::Backlog<Io = TcpStream, Addr = SocketAddr>,
{
    fn take_waiting(&mut self) -> Option<(TrackedStream, SocketAddr)> {
        if let Some(handed) = self.handed.take_waiting() {
            return Some(handed);
        }
        let (own, peer) = self.own.take_waiting()?;
        Some((self.track(own), peer))
    }
}

/// A handed-off connection that reports its closing to the primary when dropped.
pub(crate) struct TrackedStream {
    inner: TcpStream,
    closed: mpsc::UnboundedSender<()>,
    /// When the primary accepted it.
    accepted_us: Option<u64>,
}

impl crate::conn::AcceptTime for TrackedStream {
    fn accepted_us(&self) -> Option<u64> {
        self.accepted_us
    }
}

impl TrackedStream {}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        let _ = self.closed.send(());
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Stamp;

    fn tcp_fd(listener: &std::net::TcpListener) -> (std::net::TcpStream, OwnedFd) {
        let client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        (client, OwnedFd::from(accepted))
    }

    #[tokio::test]
    async fn connections_without_a_descriptor_or_in_the_reserve_are_shed() {
        let (channel, _worker_end) = Channel::pair().expect("socketpair");
        let local: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let (mut listener, sink) = handoff(channel, local, false);
        let tcp = std::net::TcpListener::bind(local).expect("bind");
        let (_c1, first) = tcp_fd(&tcp);
        let (_c2, second) = tcp_fd(&tcp);
        let mut fds = [first, second];
        fds.sort_by_key(|fd| fd.as_raw_fd());
        // The higher of the two numbers starts the reserve.
        let high = u64::try_from(fds[1].as_raw_fd()).expect("fd");
        let budget = FdBudget::new(2 * high, usize::try_from(high).expect("fd"));
        let peer = local;
        let conns = (1..=3).map(|id| Handoff { id, peer, client: None, sent_at: None, accepted_us: None }).collect();
        // The kernel delivered two of three descriptors (MSG_CTRUNC): the third is missing.
        let adopted = sink.adopt(conns, fds.into(), budget);
        assert_eq!(adopted, Adopted { accepted: vec![1], refused: vec![], shed: vec![2, 3] });
        let (_stream, addr) = axum::serve::Listener::accept(&mut listener).await;
        assert_eq!(addr, peer);
    }

    #[tokio::test]
    async fn a_hand_off_older_than_the_expiry_is_dropped_unserved() {
        let (channel, _primary_end) = Channel::pair().expect("socketpair");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let local = listener.local_addr().expect("addr");
        let (mut incoming, sink) = handoff(channel, local, false);
        let mut fds = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(std::net::TcpStream::connect(local).expect("connect"));
            fds.push(OwnedFd::from(listener.accept().expect("accept").0));
        }
        let conns = vec![
            Handoff { id: 1, peer: local, client: None, sent_at: Stamp::now(), accepted_us: None },
            Handoff { id: 2, peer: local, client: None, sent_at: Stamp::ago(HANDOFF_EXPIRY * 2), accepted_us: None },
            Handoff { id: 3, peer: local, client: None, sent_at: None, accepted_us: None },
        ];
        let adopted = sink.adopt(conns, fds, FdBudget::new(u64::MAX, 0));
        let (accepted, refused) = (adopted.accepted, adopted.refused);
        assert_eq!(accepted, [1, 3], "fresh and unstamped hand-offs are served");
        assert!(refused.is_empty(), "the expired one is not refused either: the primary took it back");
        for _ in 0..2 {
            let _served = axum::serve::Listener::accept(&mut incoming).await;
        }
        assert!(incoming.incoming.try_recv().is_err(), "nothing else reached the server");
    }
}
