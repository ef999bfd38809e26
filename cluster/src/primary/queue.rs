//! Handing accepted connections to workers (primary-accept modes), and holding them while no
//! worker can take them (for `--queue-timeout` at most: see [`super::unavailable`]).

use std::time::Instant;

use tokio::sync::mpsc;

use super::{State, Supervisor, MAX_QUEUED};
use crate::{
    config::Balance,
    dispatch::{Candidate, Conn},
};

impl Supervisor {
    /// Hands `conn` to the worker the policy picks, or queues it until one is ready.
    pub(super) fn dispatch(&mut self, conn: Conn) {
        let mut conn = conn;
        let (now, worker_timeout) = (Instant::now(), self.config.recycling.worker_timeout);
        loop {
            let candidates: Vec<Candidate> = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(slot, s)| {
                    let w = s.worker.as_ref().filter(|w| w.state == State::Ready)?;
                    Some(Candidate { slot, open: w.open, suspect: w.liveness.is_suspect(now, worker_timeout) })
                })
                .collect();
            let Some(slot) = self.chooser.choose(conn.peer.ip(), &candidates) else {
                return self.enqueue(conn);
            };
            let Some(worker) = self.slots[slot].worker.as_mut() else {
                return self.enqueue(conn);
            };
            match worker.outbox.send(conn) {
                Ok(()) => {
                    if self.config.balance == Balance::LeastConn {
                        worker.open += 1;
                    }
                    return;
                }
                Err(mpsc::error::SendError(returned)) => {
                    // Its link task has ended: the exit event is on its way. Choose again.
                    worker.state = State::Draining;
                    conn = returned;
                }
            }
        }
    }

    pub(super) fn redispatch(&mut self, conns: Vec<Conn>, stopping: bool) {
        if stopping {
            // Nobody is left to serve them.
            for conn in conns {
                self.unavailable.answer(conn.stream, "the cluster is shutting down");
            }
            return;
        }
        for conn in conns {
            self.dispatch(conn);
        }
    }

    fn enqueue(&mut self, conn: Conn) {
        if self.no_worker_coming() {
            return self.unavailable.answer(conn.stream, "every slot is errored");
        }
        if self.queue.is_empty() {
            // Once per episode: `flush_queue` empties the queue when a worker is ready again.
            tracing::info!(
                "no worker can take connections: holding new connections until one can (then 503 after --queue-timeout {:?})",
                self.config.queue_timeout
            );
        }
        self.queue.push_back(conn);
        if self.queue.len() >= MAX_QUEUED && !self.queue_full_logged {
            self.queue_full_logged = true;
            tracing::warn!(
                "dispatch queue full: {MAX_QUEUED} connections wait for a ready worker; further \
                 connections wait in the kernel's accept queue"
            );
        }
    }

    /// Closes queued connections whose client has gone (sent FIN with nothing before it, or
    /// reset): they would only cost a descriptor here and a hand-off later. Called every check
    /// interval and before the queue is handed to workers.
    pub(super) fn drop_departed(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let gone = departed(self.queue.iter().map(|c| &c.stream));
        let before = self.queue.len();
        let mut gone = gone.into_iter();
        self.queue.retain(|_| !gone.next().unwrap_or(false));
        let dropped = before - self.queue.len();
        if dropped > 0 {
            tracing::info!(
                "dropped {dropped} queued connection(s) whose client had gone; {} still queued",
                self.queue.len()
            );
        }
    }

    /// Hands queued connections to workers, oldest first, as long as one can take them.
    pub(super) fn flush_queue(&mut self) {
        let (now, worker_timeout) = (Instant::now(), self.config.recycling.worker_timeout);
        let has_candidate =
            self.slots.iter().any(|s| s.worker.as_ref().is_some_and(|w| w.is_responsive(now, worker_timeout)));
        if !has_candidate || self.queue.is_empty() {
            return;
        }
        self.drop_departed();
        let queued = std::mem::take(&mut self.queue);
        tracing::info!("handing {} queued connection(s) to workers", queued.len());
        self.queue_full_logged = false;
        for conn in queued {
            self.dispatch(conn);
        }
    }
}

/// For each stream, whether its client has gone: one `poll` for all of them, then a peek at
/// those that have something to read. End of file with nothing before it means the client
/// left; bytes mean a request waits (perhaps followed by FIN, which a client may send after
/// its request), and that request still deserves an answer.
fn departed<'a>(streams: impl Iterator<Item = &'a std::net::TcpStream>) -> Vec<bool> {
    use nix::{
        poll::{poll, PollFd, PollFlags, PollTimeout},
        sys::socket::{recv, MsgFlags},
    };
    use std::os::fd::{AsFd, AsRawFd};

    let streams: Vec<&std::net::TcpStream> = streams.collect();
    let mut polled: Vec<PollFd<'_>> = streams.iter().map(|s| PollFd::new(s.as_fd(), PollFlags::POLLIN)).collect();
    if poll(&mut polled, PollTimeout::ZERO).is_err() {
        return vec![false; streams.len()]; // keep them all; the next check tries again
    }
    let readable = PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR;
    polled
        .iter()
        .zip(&streams)
        .map(|(p, stream)| {
            if !p.revents().is_some_and(|r| r.intersects(readable)) {
                return false; // idle: the client may still send its request
            }
            let mut byte = [0u8; 1];
            match recv(stream.as_raw_fd(), &mut byte, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
                Ok(0) => true,                           // end of file, nothing sent before it
                Ok(_) => false,                          // a request waits: serve it
                Err(nix::errno::Errno::EAGAIN) => false, // nothing after all
                Err(_) => true,                          // reset
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::departed;
    use std::{
        io::Write,
        net::{Shutdown, TcpListener, TcpStream},
    };

    #[test]
    fn only_clients_that_left_without_a_request_count_as_departed() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).expect("connect"));
            accepted.push(listener.accept().expect("accept").0);
        }
        // 0 stays idle, 1 leaves, 2 sends a request and then shuts its side.
        let mut leaving = clients.remove(1);
        leaving.flush().expect("flush");
        drop(leaving);
        clients[1].write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        clients[1].shutdown(Shutdown::Write).expect("shutdown");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let gone = departed(accepted.iter());
            if gone == [false, true, false] {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "departed: {gone:?}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
