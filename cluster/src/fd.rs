//! File descriptors crossing process boundaries: adopting the ones inherited across `exec`,
//! and passing accepted connections over a Unix socket with `SCM_RIGHTS`. One of the three
//! modules allowed `unsafe` (with `steering::kernel` and `code_pages`), because turning a
//! number the kernel hands us into an owned descriptor is a promise the compiler cannot check.
#![allow(unsafe_code)]

use std::{
    io::{self, IoSlice},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use nix::{
    fcntl::{fcntl, FcntlArg, FdFlag},
    sys::socket::{getsockopt, sendmsg, sockopt, ControlMessage, MsgFlags},
};

/// Most descriptors sent in one message. Linux allows 253 (`SCM_MAX_FD`); staying well below
/// keeps the control buffer small while still batching a burst of connections.
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 64;

use crate::error::ClusterError;

/// What an inherited descriptor must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    /// A listening TCP socket.
    TcpListener,
    /// A `SOCK_SEQPACKET` Unix socket.
    SeqPacket,
}

impl Expect {
    fn describe(self) -> &'static str {
        match self {
            Expect::TcpListener => "listening socket",
            Expect::SeqPacket => "IPC socket",
        }
    }
}

/// Takes ownership of `raw`, an fd the primary (or, for a socket-activated primary, the service
/// manager) mapped into this process, after checking that it really is the kind of socket we
/// expect, and marks it close-on-exec so it does not leak into processes this one starts.
///
/// The checks come before taking ownership: if the number is something else (a variable that
/// promised a socket nobody passed, so fd 3 is whatever this process opened first, such as the
/// runtime's epoll instance), it must be left open, not closed by a dropped owner.
pub(crate) fn adopt(raw: RawFd, expect: Expect) -> Result<OwnedFd, ClusterError> {
    let err = |source: std::io::Error| ClusterError::InheritedFd { fd: raw, what: expect.describe(), source };
    // Refuse before looking further if the number is not an open descriptor at all.
    fcntl(raw, FcntlArg::F_GETFD).map_err(|e| err(e.into()))?;
    // SAFETY: `raw` is open (checked above), and this borrow lives only for the checks below,
    // which neither close it nor keep it; whoever owns it keeps owning it if they fail.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    let sock_type = getsockopt(&borrowed, sockopt::SockType).map_err(|e| err(e.into()))?;
    let ok = match expect {
        Expect::TcpListener => {
            sock_type == nix::sys::socket::SockType::Stream
                && getsockopt(&borrowed, sockopt::AcceptConn).map_err(|e| err(e.into()))?
        }
        Expect::SeqPacket => sock_type == nix::sys::socket::SockType::SeqPacket,
    };
    if !ok {
        return Err(err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "wrong socket type")));
    }
    fcntl(raw, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| err(e.into()))?;
    // SAFETY: `raw` is open and is the socket we expect, placed at this number for this process
    // alone, by the primary (a worker's listener and IPC socket) or by the service manager (a
    // socket-activated primary's listener); nothing else in this process refers to it
    // (`Role::detect` is the only reader of the env vars naming a worker's, `worker::run` adopts
    // each number exactly once, and `activation::inherited_listener` adopts fd 3 at most once
    // per process), so creating the sole owner here cannot lead to a double close.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// An owned descriptor type: it closes its descriptor only when dropped and never swaps it.
pub(crate) trait Owned: AsRawFd {}
impl Owned for OwnedFd {}
impl Owned for std::net::TcpListener {}

/// Registers an owned socket with the tokio reactor.
pub(crate) fn register<T: Owned>(fd: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T: Owned` holds its descriptor open for as long as it lives and always returns
    // the same number from `as_raw_fd`; it is moved into the `AsyncFd`, so the descriptor stays
    // open and unchanged for the `AsyncFd`'s whole lifetime, which is what `register` requires.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// Sends `bytes` as one datagram with `fds` attached (`SCM_RIGHTS`). The receiver gets its own
/// duplicates; ours stay open.
pub(crate) fn send_with_fds(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    debug_assert!(fds.len() <= MAX_FDS_PER_MESSAGE, "callers batch at most MAX_FDS_PER_MESSAGE fds");
    let iov = [IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    // MSG_NOSIGNAL: a dead peer must be an error here, not a SIGPIPE for the process.
    Ok(sendmsg::<()>(socket.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?)
}

/// One received datagram: its real length (may exceed the buffer if it was truncated) and the
/// descriptors that came with it.
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) truncated: bool,
    /// Fewer descriptors arrived than were sent (`MSG_CTRUNC`): the kernel could not install
    /// the rest because this process is out of descriptors, and dropped them. `fds` holds the
    /// ones that did arrive, in order; the message itself is intact.
    pub(crate) fds_truncated: bool,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Control buffer for [`recv_with_fds`], in `u64`s so it is aligned for `cmsghdr`: room for
/// one `SCM_RIGHTS` header and [`MAX_FDS_PER_MESSAGE`] descriptors, with slack for padding.
const CONTROL_WORDS: usize = (MAX_FDS_PER_MESSAGE * std::mem::size_of::<RawFd>()) / 8 + 8;

/// Receives one datagram into `buf`, taking ownership of any descriptors attached to it. A
/// length of 0 means the peer closed its end.
///
/// This calls `recvmsg(2)` directly rather than through nix, because nix refuses to read the
/// control data of a message marked `MSG_CTRUNC`, and that is exactly the case where the
/// descriptors that did arrive must be taken (and closed, or used) instead of leaked.
pub(crate) fn recv_with_fds(socket: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    use nix::libc;
    let mut control = [0u64; CONTROL_WORDS];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: an all-zero `msghdr` is a valid empty header (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let len = loop {
        // SAFETY: `msg` points at `iov` (which covers exactly `buf`) and at `control`, all of
        // which outlive the call; the kernel writes at most `iov_len` and `msg_controllen` bytes
        // into them.
        let received = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match usize::try_from(received) {
            Ok(len) => break len,
            Err(_) => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel set `msg_controllen` to the bytes of control data it wrote into
    // `control`, so the CMSG_* macros walk only initialised, in-bounds headers; each header's
    // `cmsg_len` covers its data.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points at a header inside `control` (see above).
        let header = unsafe { &*cmsg };
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: pure arithmetic on a constant.
            let data_len = (header.cmsg_len as usize).saturating_sub(unsafe { libc::CMSG_LEN(0) } as usize);
            // SAFETY: as above; the data follows the header within `cmsg_len`.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..data_len / std::mem::size_of::<RawFd>() {
                // SAFETY: `i` indexes within the header's data; the data may be unaligned for
                // `RawFd`, hence `read_unaligned`. The kernel just installed this descriptor in
                // this process for this message (SCM_RIGHTS), so it is open and nothing else in
                // the process knows its number; wrapping it here makes it owned exactly once.
                fds.push(unsafe { OwnedFd::from_raw_fd(data.add(i).read_unaligned()) });
            }
        }
        // SAFETY: `cmsg` is a header of `msg`'s control data (see above).
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Received {
        len,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        fds_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        fds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::{
        io::{Read, Write},
        os::fd::AsFd,
    };

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).expect("socketpair")
    }

    #[test]
    fn passed_sockets_are_the_same_connection() {
        let (a, b) = pair();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");

        send_with_fds(a.as_fd(), b"conn", &[accepted.as_raw_fd()]).expect("send");
        drop(accepted); // the sender's copy goes; the receiver's must keep the connection up
        let mut buf = [0u8; 16];
        let received = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(&buf[..received.len], b"conn");
        assert_eq!(received.fds.len(), 1);

        let mut server = std::net::TcpStream::from(received.fds.into_iter().next().expect("fd"));
        client.write_all(b"ping").expect("client write");
        let mut got = [0u8; 4];
        server.read_exact(&mut got).expect("server read");
        assert_eq!(&got, b"ping");
    }

    #[test]
    fn a_batch_of_fds_arrives_in_order_in_one_message() {
        let (a, b) = pair();
        let files: Vec<std::fs::File> =
            (0..MAX_FDS_PER_MESSAGE).map(|_| std::fs::File::open("/dev/null").expect("open")).collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        send_with_fds(a.as_fd(), b"batch", &raw).expect("send");
        let mut buf = [0u8; 16];
        let received = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!(received.fds.len(), MAX_FDS_PER_MESSAGE);
        assert!(!received.truncated);
        for fd in &received.fds {
            let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).expect("fcntl");
            assert!(FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC), "received fds are close-on-exec");
        }
    }

    #[test]
    fn descriptors_that_do_not_fit_are_reported_and_the_ones_that_came_are_owned() {
        // More descriptors than the receive side makes room for: the kernel installs what fits
        // and sets MSG_CTRUNC, as it does when the receiver runs out of descriptors.
        let (a, b) = pair();
        let files: Vec<std::fs::File> = (0..100).map(|_| std::fs::File::open("/dev/null").expect("open")).collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        sendmsg::<()>(a.as_raw_fd(), &[IoSlice::new(b"many")], &rights, MsgFlags::empty(), None).expect("send");
        let mut buf = [0u8; 16];
        let received = recv_with_fds(b.as_fd(), &mut buf).expect("a truncated transfer is not an error");
        assert_eq!(&buf[..received.len], b"many");
        assert!(received.fds_truncated);
        assert!(!received.fds.is_empty() && received.fds.len() < 100, "{} fds", received.fds.len());
        for fd in &received.fds {
            fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD).expect("each received fd is open and ours");
        }
        // The channel goes on working.
        send_with_fds(a.as_fd(), b"next", &[]).expect("send");
        let next = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!((&buf[..next.len], next.fds_truncated), (&b"next"[..], false));
    }

    #[test]
    fn messages_without_fds_and_peer_close() {
        let (a, b) = pair();
        send_with_fds(a.as_fd(), b"plain", &[]).expect("send");
        let mut buf = [0u8; 16];
        let received = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!((received.len, received.fds.len()), (5, 0));
        drop(a);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf).expect("eof").len, 0);
    }

    #[test]
    fn adopt_rejects_descriptors_that_are_not_the_expected_socket() {
        use std::os::fd::IntoRawFd;
        assert!(adopt(987_654, Expect::SeqPacket).is_err(), "a closed number");
        // `adopt` owns the descriptor from its type check on (and closes it on failure).
        let raw = std::fs::File::open("/dev/null").expect("open").into_raw_fd();
        assert!(adopt(raw, Expect::TcpListener).is_err(), "a file");
        let (a, _b) = pair();
        assert!(adopt(a.into_raw_fd(), Expect::TcpListener).is_err(), "a Unix socket");
    }
}
