//! Adopting file descriptors inherited across `exec`. The only module allowed `unsafe`.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::{
    fcntl::{fcntl, FcntlArg, FdFlag},
    sys::socket::{getsockopt, sockopt},
};

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

/// Takes ownership of `raw`, an fd the primary mapped into this process, after checking that
/// it really is the kind of socket we expect, and marks it close-on-exec so it does not leak
/// into processes this worker starts.
pub(crate) fn adopt(raw: RawFd, expect: Expect) -> Result<OwnedFd, ClusterError> {
    let err = |source: std::io::Error| ClusterError::InheritedFd { fd: raw, what: expect.describe(), source };
    // Refuse before taking ownership if the number is not an open descriptor at all.
    fcntl(raw, FcntlArg::F_GETFD).map_err(|e| err(e.into()))?;
    // SAFETY: `raw` is open (checked above) and was placed at this number by the primary for this
    // process alone; nothing else in this process refers to it (`Role::detect` is the only reader
    // of the env var naming it, and `worker::run` adopts each number exactly once), so creating
    // the sole owner here cannot lead to a double close.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let sock_type = getsockopt(&fd, sockopt::SockType).map_err(|e| err(e.into()))?;
    let ok = match expect {
        Expect::TcpListener => {
            sock_type == nix::sys::socket::SockType::Stream
                && getsockopt(&fd, sockopt::AcceptConn).map_err(|e| err(e.into()))?
        }
        Expect::SeqPacket => sock_type == nix::sys::socket::SockType::SeqPacket,
    };
    if !ok {
        return Err(err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "wrong socket type")));
    }
    fcntl(raw, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| err(e.into()))?;
    Ok(fd)
}

/// Registers an owned socket with the tokio reactor.
pub(crate) fn register(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `OwnedFd` is open for as long as it lives, always returns the same number from
    // `as_raw_fd`, and is moved into the `AsyncFd`, so it stays open and unchanged for the
    // `AsyncFd`'s whole lifetime, which is what `register` requires.
    unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(std::io::Error::from)
}
