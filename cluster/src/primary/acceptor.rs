//! The primary's accept loop for primary-accept modes.
//!
//! Accepted sockets are plain `std` sockets that never touch the primary's event loop: the
//! primary only passes them on, so registering each one with epoll would be wasted syscalls.
//!
//! A connection that lands in the primary's descriptor reserve is closed at once (shed), so
//! the primary always has descriptors left to start workers and answer its control socket.

use std::{io, net::SocketAddr, os::fd::AsRawFd, sync::Mutex};

use tokio::io::{unix::AsyncFd, Interest};

use crate::{
    fd,
    fdlimit::{AcceptErrorLog, FdBudget, ShedLog},
};

pub(crate) struct Acceptor {
    listener: AsyncFd<std::net::TcpListener>,
    budget: FdBudget,
    /// Behind a lock only because `accept` takes `&self`; the supervisor is its only user.
    shed: Mutex<ShedLog>,
    errors: AcceptErrorLog,
}

impl Acceptor {
    /// Accepts on a duplicate of `listener`, keeping connections out of `budget`'s reserve.
    pub(crate) fn new(listener: &std::net::TcpListener, budget: FdBudget) -> io::Result<Self> {
        let listener = listener.try_clone()?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener: fd::register(listener)?,
            budget,
            shed: Mutex::new(ShedLog::default()),
            errors: AcceptErrorLog::default(),
        })
    }

    /// The next connection. Connections shed for want of descriptors are skipped, and failed
    /// accepts are handled as every accept loop does ([`AcceptErrorLog::recover`]).
    pub(crate) async fn accept(&self) -> (std::net::TcpStream, SocketAddr) {
        loop {
            match self.listener.async_io(Interest::READABLE, |l| l.accept()).await {
                Ok((stream, _)) if !self.budget.admits(stream.as_raw_fd()) => {
                    drop(stream);
                    if let Ok(mut shed) = self.shed.lock() {
                        shed.shed(1, "the primary is at its open files limit less --fd-reserve");
                    }
                }
                Ok(accepted) => return accepted,
                Err(err) => self.errors.recover(&err).await,
            }
        }
    }
}
