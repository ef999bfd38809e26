//! The messages a primary and its workers exchange, one serde enum per direction.
//!
//! Each message is one `SOCK_SEQPACKET` datagram holding JSON, so the kernel keeps message
//! boundaries and no length prefix is needed; accepted connections ride along as `SCM_RIGHTS`
//! descriptors, in the order of the message's list. Compatibility rule: a primary and its
//! workers are the same build except during a rolling reload, so add variants freely but never
//! change the meaning of an existing one.
//!
//! The connection handoff, in primary-accept modes:
//!
//! ```text
//! primary                                   worker
//!   accept() ─┐
//!   accept() ─┴─ Connections{[(1,peer),(2,peer)]} + fds ──►  wraps fds as TcpStreams
//!   (keeps its copies)                                      ◄── Accepted{[1,2]}
//!   closes its copies                                        ... serves ...
//!                                                           ◄── Closed{n: 2}   (least-conn)
//! ```
//!
//! A draining worker answers `Refused` instead, and the primary hands those connections to
//! another worker; a worker out of file descriptors answers `Shed`, and the primary closes
//! them; a worker that dies before acknowledging has its connections re-dispatched.
//!
//! A worker that is alive but stopped (SIGSTOP, a runtime stuck in a handler) neither
//! acknowledges nor refuses. Each hand-off therefore carries the time it was sent
//! ([`Stamp`]); the primary takes back what stays unacknowledged for twice
//! [`HANDOFF_EXPIRY`] and hands it to another worker, and a worker that wakes up drops,
//! unserved, every hand-off older than [`HANDOFF_EXPIRY`]: by then the primary may have given
//! it to someone else, and two workers must never serve one socket.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::messaging::Reply;

/// Worker → primary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ToPrimary {
    /// The application is built and its dependencies answer; the worker accepts connections.
    Ready {
        /// The worker's process id, as the worker sees it.
        pid: u32,
    },
    /// The worker has begun draining (it was asked to, or it got a signal itself).
    Draining,
    /// These handed-off connections are now the worker's; the primary may close its copies.
    Accepted { ids: Vec<u64> },
    /// The worker is draining and will not serve these; the primary should hand them on.
    Refused { ids: Vec<u64> },
    /// The worker is out of file descriptors (its reserve, or the kernel could not install
    /// them): it serves on, but cannot take these. The primary closes them.
    Shed { ids: Vec<u64> },
    /// This many handed-off connections have closed since the last report.
    Closed { count: u64 },
    /// Sent every second while the worker serves: it is alive and its runtime makes progress.
    Heartbeat {
        /// Requests served since the worker started.
        requests: u64,
        /// Connections the worker holds open now (absent from workers older than this field).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        open: Option<u64>,
    },
    /// Deliver `payload` to every live worker (this one included).
    Broadcast { payload: Value },
    /// Ask every ready worker `payload`; the answers come back as [`ToWorker::Gathered`].
    Gather { id: u64, payload: Value },
    /// This worker's answer to [`ToWorker::Query`] `id`.
    Reply { id: u64, payload: Value },
    /// The worker has drained and is about to exit: its last [`crate::metrics::Snapshot`], so
    /// that what it counted since the last scrape stays in its slot's totals.
    Final { snapshot: Value },
    /// This worker cannot answer [`ToWorker::Query`] `id` (its answer would not fit in one
    /// message); the asker's gather fails with `reason` instead of waiting for it.
    Unanswered { id: u64, reason: String },
}

/// Primary → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ToWorker {
    /// The cluster stops: stop accepting, finish in-flight requests, refuse new ones on open
    /// connections with 503, close idle connections, exit.
    Shutdown,
    /// This worker is being replaced (reload, scale-down) while the others keep serving: stop
    /// accepting, serve what arrives on open connections but close each after its response,
    /// exit once idle.
    Retire,
    /// Accepted connections, one per attached descriptor, in the same order.
    Connections { conns: Vec<Handoff> },
    /// An application message, from another worker (`from` = its slot) or the primary.
    Message { from: Option<usize>, payload: Value },
    /// The primary is being scraped: answer with [`ToPrimary::Reply`] (the same id) holding this
    /// worker's [`crate::metrics::Snapshot`], or [`ToPrimary::Unanswered`].
    Scrape { id: u64 },
    /// A question from a [`ToPrimary::Gather`]; answer with [`ToPrimary::Reply`] and the same id.
    Query { id: u64, payload: Value },
    /// Some of the answers to this worker's [`ToPrimary::Gather`] `id`; more follow. A reply set
    /// that does not fit in one message travels as parts and a final [`ToWorker::Gathered`].
    GatheredPart { id: u64, replies: Vec<Reply> },
    /// The (last) answers to this worker's [`ToPrimary::Gather`] `id`, and the workers that
    /// could not answer.
    Gathered {
        id: u64,
        replies: Vec<Reply>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unanswered: Vec<Unanswered>,
    },
}

/// A worker that could not answer a gather, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Unanswered {
    pub(crate) slot: usize,
    pub(crate) reason: String,
}

/// One handed-off connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Handoff {
    /// The primary's id for acknowledging it.
    pub(crate) id: u64,
    /// The client's address, as the primary's `accept` saw it.
    pub(crate) peer: SocketAddr,
    /// Under `--proxy-protocol`: the client the connection's PROXY header named (the primary
    /// has read the header; the socket is positioned after it). Absent otherwise, and from
    /// primaries older than this field: then `peer` is the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) client: Option<SocketAddr>,
    /// When the primary sent it (absent from primaries older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sent_at: Option<Stamp>,
    /// When the primary accepted it, in microseconds since the Unix epoch (wall clock, as
    /// `X-Request-Start` carries it; absent from primaries older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) accepted_us: Option<u64>,
}

/// How often a serving worker sends [`ToPrimary::Heartbeat`].
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A worker drops, unserved, a hand-off it receives later than this after it was sent (see
/// the module documentation); the primary reclaims unacknowledged hand-offs after twice this.
pub(crate) const HANDOFF_EXPIRY: Duration = Duration::from_secs(1);

/// How long a hand-off may stay unacknowledged before the primary takes it back: twice the
/// age at which the worker drops it, so a worker that took it in time has long acknowledged.
pub(crate) const RECLAIM_AFTER: Duration = HANDOFF_EXPIRY.saturating_mul(2);

/// A reading of the system-wide monotonic clock (`CLOCK_MONOTONIC`, which every process on
/// the host shares and no clock adjustment moves), in microseconds: a worker compares it with
/// its own reading to learn how long a hand-off waited in its socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct Stamp(u64);

impl Stamp {
    /// Now; `None` if the clock cannot be read (then nothing expires).
    pub(crate) fn now() -> Option<Stamp> {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
        u64::try_from(Duration::from(now).as_micros()).ok().map(Stamp)
    }

    /// The stamp `age` ago.
    #[cfg(test)]
    pub(crate) fn ago(age: Duration) -> Option<Stamp> {
        let micros = u64::try_from(age.as_micros()).ok()?;
        Stamp::now().map(|now| Stamp(now.0.saturating_sub(micros)))
    }

    /// Time since this stamp (zero for a stamp from the future or an unreadable clock).
    pub(crate) fn elapsed(self) -> Duration {
        Stamp::now().map_or(Duration::ZERO, |now| Duration::from_micros(now.0.saturating_sub(self.0)))
    }
}
