//! The messages a primary and its workers exchange, one serde enum per direction.
//!
//! Each message is one `SOCK_SEQPACKET` datagram holding JSON, so the kernel keeps message
//! boundaries and no length prefix is needed. Compatibility rule: a primary and its workers are
//! always the same build except during a rolling reload, so add variants freely but never change
//! the meaning of an existing one.

use serde::{Deserialize, Serialize};

/// Worker → primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ToPrimary {
    /// The application is built and its dependencies answer; the worker accepts connections.
    Ready {
        /// The worker's process id, as the worker sees it.
        pid: u32,
    },
    /// The worker has begun draining (it was asked to, or it got a signal itself).
    Draining,
}

/// Primary → worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ToWorker {
    /// Stop accepting, finish in-flight requests, close idle connections, exit.
    Shutdown,
}
