//! A typed, message-oriented channel over a `SOCK_SEQPACKET` Unix socket pair.
//!
//! `SOCK_SEQPACKET` keeps message boundaries (one `send` = one `recv`), is reliable and ordered,
//! and reports the peer's death as end-of-file, which is how a worker learns that its primary is
//! gone even when the primary was killed with SIGKILL.

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::Arc,
};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{unix::AsyncFd, Interest};

/// Largest message accepted; anything bigger is a bug in the peer, not a reason to allocate.
const MAX_MESSAGE: usize = 64 * 1024;

/// Errors on the IPC channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The socket pair could not be created or registered with the runtime.
    #[error("cannot set up the IPC socket: {0}")]
    Setup(io::Error),
    /// Sending failed (the peer is usually dead).
    #[error("IPC send failed: {0}")]
    Send(io::Error),
    /// Receiving failed.
    #[error("IPC receive failed: {0}")]
    Recv(io::Error),
    /// A message did not fit in [`MAX_MESSAGE`] bytes.
    #[error("IPC message of {0} bytes exceeds the {MAX_MESSAGE}-byte limit")]
    Oversized(usize),
    /// A message could not be encoded or decoded.
    #[error("IPC message is not valid: {0}")]
    Codec(#[from] serde_json::Error),
}

/// One end of the channel. Cloning shares the socket: one task may receive while others send.
#[derive(Clone)]
pub(crate) struct Channel {
    fd: Arc<AsyncFd<OwnedFd>>,
}

impl Channel {
    /// Creates a connected pair: this process's end, and the raw end to hand to a child.
    pub(crate) fn pair() -> Result<(Channel, OwnedFd), ChannelError> {
        let (ours, theirs) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(|e| ChannelError::Setup(e.into()))?;
        Ok((Channel::from_fd(ours)?, theirs))
    }

    /// Wraps an already connected, non-blocking `SOCK_SEQPACKET` socket.
    pub(crate) fn from_fd(fd: OwnedFd) -> Result<Channel, ChannelError> {
        let fd = crate::fd::register(fd).map_err(ChannelError::Setup)?;
        Ok(Channel { fd: Arc::new(fd) })
    }

    /// Sends one message.
    pub(crate) async fn send<T: Serialize>(&self, msg: &T) -> Result<(), ChannelError> {
        let bytes = serde_json::to_vec(msg)?;
        if bytes.len() > MAX_MESSAGE {
            return Err(ChannelError::Oversized(bytes.len()));
        }
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                // MSG_NOSIGNAL: a dead peer must be an error here, not a SIGPIPE for the process.
                socket::send(fd.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL)
                    .map_err(io::Error::from)
            })
            .await
            .map_err(ChannelError::Send)?;
        Ok(())
    }

    /// Receives one message; `None` when the peer has closed its end.
    pub(crate) async fn recv<T: DeserializeOwned>(&self) -> Result<Option<T>, ChannelError> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let len = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                // MSG_TRUNC makes recv report the datagram's real length, so an oversized
                // message is detected instead of silently cut.
                socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_TRUNC).map_err(io::Error::from)
            })
            .await
            .map_err(ChannelError::Recv)?;
        if len == 0 {
            return Ok(None);
        }
        if len > MAX_MESSAGE {
            return Err(ChannelError::Oversized(len));
        }
        Ok(Some(serde_json::from_slice(&buf[..len])?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ToPrimary, ToWorker};

    #[tokio::test]
    async fn messages_arrive_in_order_and_eof_is_none() {
        let (a, b) = Channel::pair().expect("socketpair");
        let b = Channel::from_fd(b).expect("wrap");
        a.send(&ToWorker::Shutdown).await.expect("send");
        b.send(&ToPrimary::Ready { pid: 7 }).await.expect("send");
        b.send(&ToPrimary::Draining).await.expect("send");
        assert_eq!(b.recv::<ToWorker>().await.expect("recv"), Some(ToWorker::Shutdown));
        assert_eq!(a.recv::<ToPrimary>().await.expect("recv"), Some(ToPrimary::Ready { pid: 7 }));
        assert_eq!(a.recv::<ToPrimary>().await.expect("recv"), Some(ToPrimary::Draining));
        drop(b);
        assert_eq!(a.recv::<ToPrimary>().await.expect("recv"), None);
    }

    #[tokio::test]
    async fn garbage_is_a_codec_error_not_a_panic() {
        let (a, b) = Channel::pair().expect("socketpair");
        socket::send(b.as_raw_fd(), b"{not json", MsgFlags::empty()).expect("raw send");
        assert!(matches!(a.recv::<ToPrimary>().await, Err(ChannelError::Codec(_))));
    }
}
