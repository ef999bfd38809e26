//! Starting one worker process: re-execute this binary with the listener and an IPC socket
//! mapped to fixed fd numbers, then watch it until it exits.

use std::{
    ffi::OsString,
    io,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    process::ExitStatus,
};

use command_fds::{CommandFdExt, FdMapping};
use tokio::sync::mpsc;

use crate::{
    channel::{Channel, ChannelError},
    proto::ToPrimary,
    role::{ENV_GENERATION, ENV_IPC_FD, ENV_LISTEN_FD, ENV_WORKER_SLOT, IPC_FD, LISTEN_FD},
};

/// What the supervisor hears about its workers.
#[derive(Debug)]
pub(crate) enum Event {
    /// A worker sent a message.
    Message { slot: usize, generation: u64, msg: ToPrimary },
    /// A worker process ended.
    Exited { slot: usize, generation: u64, status: io::Result<ExitStatus> },
    /// A backoff delay for this slot is over.
    RespawnDue { slot: usize, generation: u64 },
}

/// The primary's handle on a running worker process.
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    pub(crate) channel: Channel,
    /// Asks the watcher task to SIGKILL the process. Going through the task that owns the
    /// `Child` means we never signal a pid that was already reaped and reused.
    pub(crate) kill: mpsc::Sender<()>,
}

/// Everything needed to start workers; lives as long as the primary.
pub(crate) struct Spawner {
    pub(crate) exe: PathBuf,
    /// The primary's own argv[0], and its other arguments, which workers get too.
    pub(crate) arg0: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) listener: std::net::TcpListener,
    pub(crate) events: mpsc::UnboundedSender<Event>,
}

/// Errors starting a worker.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    #[error("cannot duplicate the listening socket: {0}")]
    DupListener(io::Error),
    #[error(transparent)]
    Channel(#[from] crate::channel::ChannelError),
    #[error("cannot map inherited fds: {0}")]
    FdMapping(#[from] command_fds::FdMappingCollision),
    #[error("cannot start {exe}: {source}")]
    Exec { exe: String, source: io::Error },
}

impl Spawner {
    pub(crate) fn spawn(&self, slot: usize, generation: u64) -> Result<Spawned, SpawnError> {
        let listener: OwnedFd =
            self.listener.as_fd().try_clone_to_owned().map_err(SpawnError::DupListener)?;
        let (channel, worker_end) = Channel::pair()?;

        let mut cmd = tokio::process::Command::new(&self.exe);
        // `ps` shows argv[0]: tell workers apart from the primary, and keep `pkill -f 'herd serve'`
        // aimed at the primary, which then drains its workers properly.
        cmd.arg0(format!("{} [worker {slot}]", self.arg0.to_string_lossy()))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(ENV_WORKER_SLOT, slot.to_string())
            .env(ENV_GENERATION, generation.to_string())
            .env(ENV_LISTEN_FD, LISTEN_FD.to_string())
            .env(ENV_IPC_FD, IPC_FD.to_string())
            .fd_mappings(vec![
                FdMapping { parent_fd: listener, child_fd: LISTEN_FD },
                FdMapping { parent_fd: worker_end, child_fd: IPC_FD },
            ])?;
        let spawned = cmd.spawn();
        // The command owns our copies of the worker's fds; drop it now so that the worker's end
        // of the IPC socket lives only in the worker and its death reads as end-of-file.
        drop(cmd);
        let mut child = spawned
            .map_err(|source| SpawnError::Exec { exe: self.exe.display().to_string(), source })?;
        let pid = child.id().unwrap_or_default();

        let (kill, mut kill_requests) = mpsc::channel(1);
        let events = self.events.clone();
        let ipc = channel.clone();
        tokio::spawn(async move {
            let mut ipc_open = true;
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    Some(()) = kill_requests.recv() => {
                        let _ = child.start_kill();
                    }
                    received = ipc.recv::<ToPrimary>(), if ipc_open => match received {
                        Ok(Some(msg)) => {
                            let _ = events.send(Event::Message { slot, generation, msg });
                        }
                        Ok(None) => ipc_open = false,
                        Err(err @ (ChannelError::Codec(_) | ChannelError::Oversized(_))) => {
                            tracing::warn!(slot, pid, error = %err, "ignoring a bad message from a worker");
                        }
                        Err(err) => {
                            tracing::warn!(slot, pid, error = %err, "IPC with worker failed");
                            ipc_open = false;
                        }
                    },
                }
            };
            let _ = events.send(Event::Exited { slot, generation, status });
        });
        Ok(Spawned { pid, channel, kill })
    }
}
