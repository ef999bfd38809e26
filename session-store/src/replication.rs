//! Revocations that survive a failover: [`ReplicaWait`].
//!
//! Redis replicates asynchronously. A master that acknowledges a logout's `DEL` and dies before
//! sending it on leaves the session alive on the replica a failover promotes, and the old
//! cookie works again: a revoked session comes back. So a revocation (a logout, "log out
//! everywhere", the old session of a login) is confirmed to the client only once a replica has
//! it: the writes go out on one connection, then `WAIT n timeout` blocks until `n` replicas
//! have everything that connection wrote. Fewer within the timeout is a failure the client is
//! told about (503), never a silent success.
//!
//! `n` is at most the number of replicas connected right now (`INFO replication`), so a Redis
//! without replicas pays one extra round trip, not the timeout. On a Redis Cluster the writes
//! of one revocation go to several nodes, and `WAIT` would ask a node that saw none of them:
//! there it is skipped, and the README says so.

use std::time::Duration;

use fred::{
    clients::Client,
    interfaces::{ClientLike, ServerInterface},
    types::{config::Options, InfoKind},
};

use crate::StoreError;

/// How many replicas must have a revocation before it is confirmed (`--redis-wait-replicas`).
pub const DEFAULT_WAIT_REPLICAS: u32 = 1;
/// How long a revocation waits for them (`--redis-wait-timeout`).
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_millis(500);

/// How revocations wait for replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaWait {
    /// Replicas that must have the write (capped by those connected); 0 never waits.
    pub replicas: u32,
    /// How long to wait for them.
    pub timeout: Duration,
}

impl Default for ReplicaWait {
    fn default() -> Self {
        Self { replicas: DEFAULT_WAIT_REPLICAS, timeout: DEFAULT_WAIT_TIMEOUT }
    }
}

impl ReplicaWait {
    /// Never waits.
    pub const OFF: ReplicaWait = ReplicaWait { replicas: 0, timeout: Duration::ZERO };

    /// Returns once enough replicas have every write `client` sent so far.
    pub async fn confirm(&self, client: &Client) -> Result<(), StoreError> {
        if self.replicas == 0 || client.is_clustered() {
            return Ok(());
        }
        let info: String = client.info(Some(InfoKind::Replication)).await?;
        let wanted = i64::from(self.replicas.min(connected_replicas(&info)));
        if wanted == 0 {
            return Ok(());
        }
        let timeout_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX).max(1);
        // The command may block for its whole timeout: give the client that long, and more.
        let options = Options { timeout: Some(self.timeout * 2 + Duration::from_secs(1)), ..Options::default() };
        let acked: i64 = client.with_options(&options).wait(wanted, timeout_ms).await?;
        if acked < wanted {
            return Err(StoreError::NotReplicated { acked, wanted });
        }
        Ok(())
    }
}

/// `connected_slaves:N` of `INFO replication`; 0 when absent (a replica, or garbage).
fn connected_replicas(info: &str) -> u32 {
    info.lines().find_map(|line| line.trim().strip_prefix("connected_slaves:")?.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::connected_replicas;

    #[test]
    fn connected_replicas_are_read_from_info() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\nslave0:ip=127.0.0.1,port=7001\r\n";
        assert_eq!(connected_replicas(info), 2);
        assert_eq!(connected_replicas("# Replication\r\nrole:slave\r\n"), 0);
        assert_eq!(connected_replicas("connected_slaves:x"), 0);
    }
}
