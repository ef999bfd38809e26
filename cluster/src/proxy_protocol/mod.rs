//! `--proxy-protocol`: every connection on the listener starts with a PROXY protocol header
//! (HAProxy's, v1 text or v2 binary) that names the client, because behind an L4 balancer
//! (HAProxy `send-proxy-v2`, nginx `stream` + `proxy_protocol on`, a cloud load balancer)
//! the socket's peer is the balancer.
//!
//! Where the header is read:
//! - primary-accept modes: by the primary, *before* it chooses a worker, so `ip-hash` hashes
//!   the client; the worker gets the socket positioned after the header, and the client's
//!   address in the hand-off (`crate::proto::Handoff::client`);
//! - shared mode: by each worker, on the connections it accepts ([`ProxiedListener`]).
//!
//! Either way the reads run concurrently in [`PendingHeaders`], at most
//! `--proxy-headers-pending` at once and each within `--proxy-header-timeout`, so a slow or
//! silent proxy connection never holds up the accept loop or the other connections. A header
//! that is malformed, truncated or too slow, or any connection from a source outside
//! `--trusted-proxies`, closes that connection only, with a rate-limited log line, and is counted
//! in `herd_proxy_headers_rejected` by [`Rejected::reason`] ([`rejections`]): in the primary's own
//! series in primary-accept modes, in each worker's (labelled by slot) in shared mode, wherever
//! the header was read.
//!
//! Only the header's own bytes are read, never one more: the rest of the stream is the
//! client's request, and belongs to whoever serves it (in primary-accept modes another
//! process). A v1 header ends at its CRLF (107 bytes at most); a v2 header is a 16-byte fixed
//! part and then the length that part gives. Parsing is the `ppp` crate's.
//!
//! A v2 `LOCAL` command (a balancer's health check) and a v1 `UNKNOWN` carry no client: the
//! connection keeps the socket's address.

mod pending;
mod read;

use std::{sync::Arc, time::Duration};

use crate::metrics::CounterVec;

pub(crate) use pending::{PendingHeaders, Proxied, ProxiedListener};
pub(crate) use read::{read_header, Rejected};

/// How long a connection may take to deliver its whole PROXY header. A balancer sends it with
/// its first packet, so anything beyond a few round trips is a stuck or hostile peer.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// PROXY headers read at once per accepting process; beyond it accepting pauses (connections
/// wait in the kernel's accept queue) until one completes or times out.
pub const DEFAULT_MAX_PENDING: usize = 1024;

/// Largest v2 header accepted (its 16-byte fixed part included). The protocol allows 64 KiB of
/// TLVs, but balancers send addresses and a few short TLVs (a unique id, a VPC endpoint, TLS
/// details); a cap keeps what each pending connection may make the process hold small.
pub const MAX_V2_HEADER: usize = 4096;

/// `--proxy-protocol` and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// See [`DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// See [`DEFAULT_MAX_PENDING`].
    pub max_pending: usize,
}

impl Default for ProxyProtocol {
    fn default() -> Self {
        Self { header_timeout: DEFAULT_HEADER_TIMEOUT, max_pending: DEFAULT_MAX_PENDING }
    }
}

/// The counter of connections closed for their PROXY header, by [`Rejected::reason`], every
/// reason present from the start (at 0) so a dashboard's series do not appear out of nowhere.
/// One per header-reading process: the primary's in primary-accept modes, a worker's in shared
/// mode (never both, so the series has one home in a scrape).
pub(crate) fn rejections() -> Arc<CounterVec> {
    let counter = CounterVec::new(
        "herd_proxy_headers_rejected",
        "Connections closed unserved for their PROXY header, by reason",
        &["reason"],
    );
    for reason in Rejected::REASONS {
        counter.add(&[reason], 0);
    }
    Arc::new(counter)
}
