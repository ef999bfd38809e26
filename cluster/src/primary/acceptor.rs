//! The primary's accept loop for primary-accept modes.
//!
//! Accepted sockets are plain `std` sockets that never touch the primary's event loop: the
//! primary only passes them on, so registering each one with epoll would be wasted syscalls.
//!
//! A connection that lands in the primary's descriptor reserve is closed at once (shed), so
//! the primary always has descriptors left to start workers and answer its control socket.
//!
//! Under churn the primary takes what the kernel has queued in one go ([`Acceptor::accept_batch`]):
//! one wake-up and one `EAGAIN` per batch instead of a trip round the primary's `select!` per
//! connection, and the whole batch reaches the link tasks before they run, so each worker gets
//! its share in one `sendmsg`.

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

    /// Waits for a connection, then accepts until the queue is empty (`EAGAIN`) or `batch`
    /// holds `max`. Shedding and failed accepts as in [`Acceptor::accept`]; an accept that
    /// fails after the first success ends the batch, and the next call meets it again.
    pub(crate) async fn accept_batch(&self, batch: &mut Vec<(std::net::TcpStream, SocketAddr)>, max: usize) {
        let max = max.max(1);
        loop {
            let mut ready = match self.listener.readable().await {
                Ok(ready) => ready,
                Err(err) => {
                    self.errors.recover(&err).await;
                    continue;
                }
            };
            let mut shed = 0;
            let failed = loop {
                if batch.len() >= max {
                    break None;
                }
                match ready.get_inner().accept() {
                    Ok((stream, _)) if !self.budget.admits(stream.as_raw_fd()) => {
                        drop(stream);
                        shed += 1;
                    }
                    Ok(accepted) => batch.push(accepted),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        // Edge-triggered: only an `EAGAIN` may clear the readiness.
                        ready.clear_ready();
                        break None;
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                    Err(err) => break Some(err),
                }
            };
            drop(ready);
            if shed > 0 {
                if let Ok(mut log) = self.shed.lock() {
                    log.shed(shed, "the primary is at its open files limit less --fd-reserve");
                }
            }
            match failed {
                _ if !batch.is_empty() => return,
                Some(err) => self.errors.recover(&err).await,
                None => {}
            }
        }
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
