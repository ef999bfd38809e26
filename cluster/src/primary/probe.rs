//! Which queued connections' clients have gone (the shell's answer to
//! `supervisor::Effect::Probe`): they would only cost a descriptor here and a hand-off later.

/// For each stream, whether its client has gone: one `poll` for all of them, then a peek at
/// those that have something to read. End of file with nothing before it means the client
/// left; bytes mean a request waits (perhaps followed by FIN, which a client may send after
/// its request), and that request still deserves an answer.
pub(super) fn departed<'a>(streams: impl Iterator<Item = &'a std::net::TcpStream>) -> Vec<bool> {
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
