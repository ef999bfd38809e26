//! The primary's accept loop for primary-accept modes.
//!
//! Accepted sockets are plain `std` sockets that never touch the primary's event loop: the
//! primary only passes them on, so registering each one with epoll would be wasted syscalls.

use std::{io, net::SocketAddr, time::Duration};

use tokio::io::{unix::AsyncFd, Interest};

use crate::fd;

pub(crate) struct Acceptor {
    listener: AsyncFd<std::net::TcpListener>,
}

impl Acceptor {
    /// Accepts on a duplicate of `listener`.
    pub(crate) fn new(listener: &std::net::TcpListener) -> io::Result<Self> {
        let listener = listener.try_clone()?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener: fd::register(listener)? })
    }

    /// The next connection. Errors that concern one connection (the client already gave up)
    /// are skipped; resource errors (out of file descriptors) pause accepting for a moment
    /// instead of spinning on a listener that stays readable.
    pub(crate) async fn accept(&self) -> (std::net::TcpStream, SocketAddr) {
        loop {
            match self.listener.async_io(Interest::READABLE, |l| l.accept()).await {
                Ok(accepted) => return accepted,
                Err(err) if matches!(err.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) => {
                }
                Err(err) => {
                    tracing::error!(error = %err, "accept failed; pausing accepts for 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
