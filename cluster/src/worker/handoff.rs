//! The worker side of primary-accept modes: connections arrive over the IPC socket and feed
//! the worker's connection loop (`crate::conn`) through [`HandoffListener`], an ordinary
//! [`axum::serve::Listener`], so `ConnectInfo<SocketAddr>` shows the real client and graceful
//! shutdown, timeouts and the connection cap work as for the shared listener.

use std::{
    io,
    net::SocketAddr,
    os::fd::OwnedFd,
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

impl HandoffSink {
    /// Adopts the received descriptors; returns the ids accepted and the ids refused (a
    /// descriptor that could not be registered, or a missing one). Hand-offs older than
    /// [`HANDOFF_EXPIRY`] are dropped unserved and in neither list: the primary has taken
    /// them back for another worker (this one was stopped or stuck meanwhile).
    pub(crate) fn adopt(&self, conns: Vec<Handoff>, fds: Vec<OwnedFd>) -> (Vec<u64>, Vec<u64>) {
        let (mut accepted, mut refused) = (Vec::with_capacity(conns.len()), Vec::new());
        let mut fds = fds.into_iter();
        let mut expired = 0;
        for handoff in conns {
            if handoff.sent_at.is_some_and(|sent| sent.elapsed() > HANDOFF_EXPIRY) {
                drop(fds.next()); // our copy only: the primary still holds the connection
                expired += 1;
                continue;
            }
            let stream = fds.next().ok_or_else(|| io::Error::other("missing descriptor")).and_then(|fd| {
                let std_stream = std::net::TcpStream::from(fd);
                std_stream.set_nonblocking(true)?;
                TcpStream::from_std(std_stream)
            });
            match stream {
                Ok(stream) => {
                    let tracked = TrackedStream { inner: stream, closed: self.closed.clone() };
                    if self.incoming.send((tracked, handoff.peer)).is_ok() {
                        accepted.push(handoff.id);
                    } else {
                        refused.push(handoff.id);
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot adopt a handed-off connection");
                    refused.push(handoff.id);
                }
            }
        }
        if expired > 0 {
            tracing::warn!("dropped {expired} connection(s) handed over more than {HANDOFF_EXPIRY:?} ago: the primary gave them to another worker");
        }
        (accepted, refused)
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

/// A handed-off connection that reports its closing to the primary when dropped.
pub(crate) struct TrackedStream {
    inner: TcpStream,
    closed: mpsc::UnboundedSender<()>,
}

impl TrackedStream {
    /// The underlying socket.
    pub(crate) fn tcp(&self) -> &TcpStream {
        &self.inner
    }
}

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
            Handoff { id: 1, peer: local, sent_at: Stamp::now() },
            Handoff { id: 2, peer: local, sent_at: Stamp::ago(HANDOFF_EXPIRY * 2) },
            Handoff { id: 3, peer: local, sent_at: None },
        ];
        let (accepted, refused) = sink.adopt(conns, fds);
        assert_eq!(accepted, [1, 3], "fresh and unstamped hand-offs are served");
        assert!(refused.is_empty(), "the expired one is not refused either: the primary took it back");
        for _ in 0..2 {
            let _served = axum::serve::Listener::accept(&mut incoming).await;
        }
        assert!(incoming.incoming.try_recv().is_err(), "nothing else reached the server");
    }
}
