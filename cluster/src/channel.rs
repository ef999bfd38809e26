//! A typed, message-oriented channel over a `SOCK_SEQPACKET` Unix socket pair.
//!
//! `SOCK_SEQPACKET` keeps message boundaries (one `send` = one `recv`), is reliable and ordered,
//! carries file descriptors (`SCM_RIGHTS`) with the message they belong to, and reports the
//! peer's death as end-of-file, which is how a worker learns that its primary is gone even
//! when the primary was killed with SIGKILL. Each message is JSON.

use std::{
    io,
    os::fd::{AsFd, OwnedFd, RawFd},
    sync::Arc,
};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{unix::AsyncFd, Interest};

use crate::fd;

/// Largest message sent or accepted. The sender checks it before anything reaches the socket
/// (a message that does not fit is the caller's error, never the link's); the receiver treats
/// anything bigger as a bug in the peer, not a reason to allocate.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

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

impl ChannelError {
    /// True for errors about one message (the channel itself still works).
    pub(crate) fn is_bad_message(&self) -> bool {
        matches!(self, ChannelError::Codec(_) | ChannelError::Oversized(_))
    }

    /// True when sending or receiving failed for want of descriptors or kernel memory (too
    /// many descriptors in flight, say): the channel still works, and trying again once
    /// connections close succeeds.
    pub(crate) fn is_exhaustion(&self) -> bool {
        matches!(self, ChannelError::Recv(err) | ChannelError::Send(err) if crate::fdlimit::is_exhaustion(err))
    }
}

/// One end of the channel. Cloning shares the socket: one task may receive while others send
/// (each datagram is sent atomically, so concurrent senders never interleave).
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
        Ok(Channel { fd: Arc::new(fd::register(fd).map_err(ChannelError::Setup)?) })
    }

    /// Sends one message.
    pub(crate) async fn send<T: Serialize>(&self, msg: &T) -> Result<(), ChannelError> {
        self.send_with_fds(msg, &[]).await
    }

    /// Sends one message with descriptors attached (at most [`fd::MAX_FDS_PER_MESSAGE`]). A
    /// message bigger than [`MAX_MESSAGE`] is refused here, before it reaches the socket, as
    /// [`ChannelError::Oversized`]: one bad message, the channel still works.
    pub(crate) async fn send_with_fds<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> Result<(), ChannelError> {
        let bytes = encode(msg)?;
        self.fd.async_io(Interest::WRITABLE, |sock| fd::send_with_fds(sock.as_fd(), &bytes, fds)).await.map_err(
            |err| match err.raw_os_error() {
                // The kernel's own limit (the socket's send buffer) is per message too.
                Some(nix::libc::EMSGSIZE) => ChannelError::Oversized(bytes.len()),
                _ => ChannelError::Send(err),
            },
        )?;
        Ok(())
    }

    /// Receives one message and the descriptors that came with it; `None` when the peer has
    /// closed its end. When this process is out of descriptors the kernel delivers the message
    /// with only those it could install (the first ones, in order) and drops the rest; a
    /// message that lists what it carries ([`crate::proto::ToWorker::Connections`]) shows the
    /// shortfall. `buf` is scratch space the caller keeps between calls (see
    /// [`RecvBuf`]), so a busy channel does not allocate and zero 64 KiB per message.
    pub(crate) async fn recv<T: DeserializeOwned>(
        &self,
        buf: &mut RecvBuf,
    ) -> Result<Option<(T, Vec<OwnedFd>)>, ChannelError> {
        let buf = &mut buf.0;
        let received = self
            .fd
            .async_io(Interest::READABLE, |sock| fd::recv_with_fds(sock.as_fd(), buf))
            .await
            .map_err(ChannelError::Recv)?;
        if received.len == 0 && !received.truncated {
            return Ok(None);
        }
        if received.truncated {
            return Err(ChannelError::Oversized(received.len));
        }
        if received.fds_truncated {
            // Not an error: the message is whole, and its receiver sheds what did not arrive.
            tracing::debug!(
                arrived = received.fds.len(),
                "descriptors dropped by the kernel: this process is out of them"
            );
        }
        Ok(Some((serde_json::from_slice(&buf[..received.len])?, received.fds)))
    }
}

/// Encodes `msg` as it would be sent, refusing it if it does not fit in one message.
pub(crate) fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ChannelError> {
    let bytes = serde_json::to_vec(msg)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(ChannelError::Oversized(bytes.len()));
    }
    Ok(bytes)
}

/// Receive buffer for [`Channel::recv`], big enough for any valid message.
pub(crate) struct RecvBuf(Box<[u8]>);

impl Default for RecvBuf {
    fn default() -> Self {
        Self(vec![0u8; MAX_MESSAGE].into_boxed_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ToPrimary, ToWorker};
    use std::os::fd::AsRawFd;

    async fn recv_msg<T: DeserializeOwned>(ch: &Channel) -> Option<T> {
        ch.recv::<T>(&mut RecvBuf::default()).await.expect("recv").map(|(msg, _)| msg)
    }

    #[tokio::test]
    async fn messages_arrive_in_order_and_eof_is_none() {
        let (a, b) = Channel::pair().expect("socketpair");
        let b = Channel::from_fd(b).expect("wrap");
        a.send(&ToWorker::Shutdown).await.expect("send");
        b.send(&ToPrimary::Ready { pid: 7 }).await.expect("send");
        b.send(&ToPrimary::Draining).await.expect("send");
        assert_eq!(recv_msg::<ToWorker>(&b).await, Some(ToWorker::Shutdown));
        assert_eq!(recv_msg::<ToPrimary>(&a).await, Some(ToPrimary::Ready { pid: 7 }));
        assert_eq!(recv_msg::<ToPrimary>(&a).await, Some(ToPrimary::Draining));
        drop(b);
        assert_eq!(recv_msg::<ToPrimary>(&a).await, None);
    }

    #[tokio::test]
    async fn descriptors_travel_with_their_message() {
        let (a, b) = Channel::pair().expect("socketpair");
        let b = Channel::from_fd(b).expect("wrap");
        let file = std::fs::File::open("/dev/null").expect("open");
        a.send_with_fds(&ToWorker::Shutdown, &[file.as_raw_fd()]).await.expect("send");
        let (msg, fds) = b.recv::<ToWorker>(&mut RecvBuf::default()).await.expect("recv").expect("a message");
        assert_eq!((msg, fds.len()), (ToWorker::Shutdown, 1));
    }

    #[tokio::test]
    async fn garbage_and_oversized_messages_are_errors_not_panics() {
        let (a, b) = Channel::pair().expect("socketpair");
        fd::send_with_fds(b.as_fd(), b"{not json", &[]).expect("raw send");
        let mut buf = RecvBuf::default();
        assert!(matches!(a.recv::<ToPrimary>(&mut buf).await, Err(ChannelError::Codec(_))));
        fd::send_with_fds(b.as_fd(), &vec![b' '; MAX_MESSAGE + 1], &[]).expect("raw send");
        assert!(matches!(a.recv::<ToPrimary>(&mut buf).await, Err(ChannelError::Oversized(_))));
        // The channel still works afterwards.
        fd::send_with_fds(b.as_fd(), br#"{"type":"draining"}"#, &[]).expect("raw send");
        assert_eq!(recv_msg::<ToPrimary>(&a).await, Some(ToPrimary::Draining));
    }

    #[tokio::test]
    async fn an_oversized_send_is_refused_before_the_socket_and_the_channel_still_works() {
        let (a, b) = Channel::pair().expect("socketpair");
        let b = Channel::from_fd(b).expect("wrap");
        let huge = ToPrimary::Broadcast { payload: serde_json::Value::String("x".repeat(MAX_MESSAGE)) };
        let err = b.send(&huge).await.expect_err("too big");
        assert!(matches!(err, ChannelError::Oversized(n) if n > MAX_MESSAGE) && err.is_bad_message(), "{err}");
        b.send(&ToPrimary::Draining).await.expect("the next message goes");
        assert_eq!(recv_msg::<ToPrimary>(&a).await, Some(ToPrimary::Draining));
    }
}
