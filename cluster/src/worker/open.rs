//! How many connections this worker holds open, in every balance mode: each accepted
//! connection is counted until its stream is dropped. The heartbeat reports the figure, and
//! `herd ctl status` shows it (`conns`).

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The count. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct OpenConnections(Arc<AtomicU64>);

impl OpenConnections {
    /// Connections open now.
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts every connection `listener` yields, until it is dropped.
    pub(crate) fn count<L: axum::serve::Listener>(&self, listener: L) -> CountingListener<L> {
        CountingListener { inner: listener, open: self.clone() }
    }

    fn track<S>(&self, stream: S) -> Counted<S> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Counted { inner: stream, open: self.clone() }
    }
}

/// A listener whose connections are counted.
pub(crate) struct CountingListener<L> {
    inner: L,
    open: OpenConnections,
}

impl<L: axum::serve::Listener> axum::serve::Listener for CountingListener<L> {
    type Io = Counted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = self.inner.accept().await;
        (self.open.track(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection counted as open until dropped.
pub(crate) struct Counted<S> {
    inner: S,
    open: OpenConnections,
}

impl<S> Counted<S> {
    /// The counted stream.
    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> Drop for Counted<S> {
    fn drop(&mut self) {
        self.open.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
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

    #[test]
    fn a_connection_counts_until_dropped() {
        let open = OpenConnections::default();
        let a = open.track(());
        let b = open.track(());
        assert_eq!(open.get(), 2);
        drop(a);
        assert_eq!(open.get(), 1);
        drop(b);
        assert_eq!(open.get(), 0);
    }
}
