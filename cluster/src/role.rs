//! How a process learns whether it is the primary or a worker.
//!
//! The primary starts workers by re-executing its own binary with the same arguments and a few
//! extra environment variables. Their presence is what makes a process a worker.

use crate::error::ClusterError;

/// Slot number of this worker, for application code (like PM2's `NODE_APP_INSTANCE`).
pub const ENV_WORKER_SLOT: &str = "HERD_WORKER";
/// How many times the slot has been (re)started, starting at 0.
pub(crate) const ENV_GENERATION: &str = "HERD_CLUSTER_GENERATION";
/// File descriptor number of the inherited listening socket.
pub(crate) const ENV_LISTEN_FD: &str = "HERD_CLUSTER_LISTEN_FD";
/// File descriptor number of the inherited IPC socket.
pub(crate) const ENV_IPC_FD: &str = "HERD_CLUSTER_IPC_FD";

/// The fd numbers the primary maps the listener and the IPC socket to in a worker.
pub(crate) const LISTEN_FD: i32 = 3;
pub(crate) const IPC_FD: i32 = 4;

/// Which part this process plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The supervisor: owns the listener and the workers.
    Primary,
    /// A worker started by the primary.
    Worker(WorkerIdentity),
}

/// Who a worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerIdentity {
    /// The stable slot this worker fills (0..workers).
    pub slot: usize,
    /// Which of the primary's workers this is (counted from 0 across all slots).
    pub generation: u64,
}

impl Role {
    /// Reads the role from the environment the primary sets for its workers.
    pub fn detect() -> Result<Role, ClusterError> {
        if std::env::var_os(ENV_IPC_FD).is_none() {
            return Ok(Role::Primary);
        }
        Ok(Role::Worker(WorkerIdentity { slot: env_number(ENV_WORKER_SLOT)?, generation: env_number(ENV_GENERATION)? }))
    }

    /// True in a worker process.
    pub fn is_worker(&self) -> bool {
        matches!(self, Role::Worker(_))
    }
}

fn env_number<T: std::str::FromStr>(name: &'static str) -> Result<T, ClusterError> {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).ok_or(ClusterError::BadWorkerEnv { name })
}
