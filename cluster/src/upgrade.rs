//! The primary hand-over (`herd ctl upgrade`, `SIGUSR2`): the running primary starts the
//! binary on disk as a new primary, which takes over the port without a connection refused.
//!
//! ```text
//!  old primary                                    new primary (the binary on disk now)
//!  ───────────                                    ────────────────────────────────────
//!  start it: listener at fd 3 (LISTEN_FDS=1),
//!  hand-over channel at fd 4 (HERD_UPGRADE_FD),
//!  admin listener at fd 5 (HERD_UPGRADE_ADMIN_FD)
//!  ── Hello { from, seed, workers } ──────────▶   starts its own workers, accepts on the
//!  (keeps accepting and serving)                  same listener alongside the old one
//!                                                 all workers ready: moves the control socket
//!                                                 to the path, tells systemd MAINPID=
//!  ◀──────────────────────────── Ready { pid } ──
//!  stops accepting, serves what it accepted,
//!  drains its workers, exits 0
//! ```
//!
//! Both primaries accept on the one listening socket while they overlap, so every connection
//! in its queue is taken by one of them: none is refused, whatever the timing. The old one stops
//! only on `Ready`; if the new one exits first, closes the channel or is not ready within
//! `--ready-timeout`, the old one kills it and goes on serving as before.
//!
//! The sticky key moves in `Hello` (the seed the dispatch hash is keyed with), so a client of
//! `ip-hash` keeps its slot; so does the worker count, which `herd ctl scale` may have changed
//! since the command line was written. The log files are the command line's, opened again by
//! the new primary (appending).
//!
//! The channel is the workers' kind ([`crate::channel::Channel`], `SOCK_SEQPACKET`): its end
//! of file tells each side at once that the other is gone, and nothing else can write to it,
//! unlike a socket with a name.

use std::{
    ffi::OsString,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    process::ExitStatus,
    time::Duration,
};

use command_fds::{CommandFdExt, FdMapping};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{
    activation,
    channel::{Channel, ChannelError, RecvBuf},
    error::ClusterError,
    fd::{self, Expect},
};

/// Names the fd of the hand-over channel in the new primary.
pub(crate) const ENV_UPGRADE_FD: &str = "HERD_UPGRADE_FD";
/// Names the fd of the admin listener (`--metrics-bind`), when there is one.
pub(crate) const ENV_UPGRADE_ADMIN_FD: &str = "HERD_UPGRADE_ADMIN_FD";
/// How many slot listeners (kernel steering, `crate::steering`) the new primary finds from
/// [`SLOT_FDS`] on, in slot order.
pub(crate) const ENV_UPGRADE_SLOT_FDS: &str = "HERD_UPGRADE_SLOT_FDS";
/// Where the new primary finds the listening socket (socket activation's first fd).
const LISTEN_FD: i32 = 3;
const UPGRADE_FD: i32 = 4;
const ADMIN_FD: i32 = 5;
const SLOT_FDS: i32 = 6;
/// How long the old primary waits for a new one whose channel failed to show it exited.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long a new primary waits for the old one's `Hello` (sent right after the spawn).
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Old primary → new primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// The old primary's pid.
    pub(crate) from: u32,
    /// The seed of the old primary's core: ip-hash keeps every client's slot.
    pub(crate) seed: u64,
    /// How many workers the old primary runs now.
    pub(crate) workers: usize,
}

/// New primary → old primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum ToPredecessor {
    /// Every worker is ready and the control socket is the new primary's: stop now.
    Ready { pid: u32 },
    /// The new primary cannot take over (the reason); it stops by itself.
    Failed { reason: String },
}

/// What the old primary hears of the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SuccessorEvent {
    /// It is ready to take over.
    Ready { pid: u32 },
    /// It will not take over: it exited, closed the channel, or said why.
    Failed { reason: String },
}

/// What starting a new primary needs, all of it the old primary's own.
pub(crate) struct Launch<'a> {
    pub(crate) exe: &'a std::path::Path,
    pub(crate) arg0: &'a OsString,
    /// The old primary's own arguments (not the workers').
    pub(crate) args: &'a [OsString],
    pub(crate) listener: &'a std::net::TcpListener,
    pub(crate) admin: Option<&'a std::net::TcpListener>,
    /// Kernel steering's slot listeners: the new primary's workers accept on the same ones.
    pub(crate) slot_listeners: &'a [std::net::TcpListener],
    pub(crate) hello: Hello,
}

/// The old primary's handle on a new primary that is not yet ready.
pub(crate) struct Successor {
    pub(crate) pid: u32,
    kill: mpsc::Sender<()>,
}

impl Successor {
    /// Starts the new primary and a task that reports, once, whether it became ready.
    pub(crate) fn start(
        launch: Launch<'_>,
        events: mpsc::UnboundedSender<SuccessorEvent>,
    ) -> Result<Successor, UpgradeError> {
        let (channel, theirs) = Channel::pair()?;
        let dup = |l: &std::net::TcpListener| l.as_fd().try_clone_to_owned().map_err(UpgradeError::Dup);
        let mut fds = vec![
            FdMapping { parent_fd: dup(launch.listener)?, child_fd: LISTEN_FD },
            FdMapping { parent_fd: theirs, child_fd: UPGRADE_FD },
        ];
        let mut cmd = tokio::process::Command::new(launch.exe);
        if let Some(admin) = launch.admin {
            fds.push(FdMapping { parent_fd: dup(admin)?, child_fd: ADMIN_FD });
            cmd.env(ENV_UPGRADE_ADMIN_FD, ADMIN_FD.to_string());
        }
        if !launch.slot_listeners.is_empty() {
            for (child_fd, listener) in (SLOT_FDS..).zip(launch.slot_listeners) {
                fds.push(FdMapping { parent_fd: dup(listener)?, child_fd });
            }
            cmd.env(ENV_UPGRADE_SLOT_FDS, launch.slot_listeners.len().to_string());
        } else {
            // This primary may have been started by a hand-over itself.
            cmd.env_remove(ENV_UPGRADE_SLOT_FDS);
        }
        cmd.arg0(launch.arg0)
            .args(launch.args)
            // Socket activation's variables, without LISTEN_PID: the new primary's pid is not
            // known before it exists (as `systemfd --no-pid`).
            .env(activation::ENV_LISTEN_FDS, "1")
            .env_remove(activation::ENV_LISTEN_PID)
            .env_remove(activation::ENV_LISTEN_FDNAMES)
            .env(ENV_UPGRADE_FD, UPGRADE_FD.to_string())
            .fd_mappings(fds)?;
        let mut child =
            cmd.spawn().map_err(|source| UpgradeError::Exec { exe: launch.exe.display().to_string(), source })?;
        let pid = child.id().unwrap_or_default();
        let (kill, mut kill_requests) = mpsc::channel(1);
        let hello = launch.hello;
        tokio::spawn(async move {
            let outcome = async {
                if let Err(err) = channel.send(&hello).await {
                    return Err(exited_or(&mut child, format!("cannot greet the new primary: {err}")).await);
                }
                let mut buf = RecvBuf::default();
                loop {
                    tokio::select! {
                        status = child.wait() => return Err(exited(status)),
                        Some(()) = kill_requests.recv() => {
                            let _ = child.start_kill();
                            let _ = child.wait().await;
                            return Err("killed".to_owned());
                        }
                        said = channel.recv::<ToPredecessor>(&mut buf) => match said {
                            Ok(Some((ToPredecessor::Ready { pid }, _))) => return Ok(pid),
                            Ok(Some((ToPredecessor::Failed { reason }, _))) => return Err(reason),
                            Ok(None) => return Err(exited(child.wait().await)),
                            Err(err) if err.is_bad_message() => tracing::warn!(error = %err, "a bad message from the new primary"),
                            Err(err) => {
                                return Err(exited_or(&mut child, format!("the hand-over channel failed: {err}")).await)
                            }
                        },
                    }
                }
            };
            let event = match outcome.await {
                Ok(pid) => SuccessorEvent::Ready { pid },
                Err(reason) => SuccessorEvent::Failed { reason },
            };
            let _ = events.send(event);
            // After `Ready` the process is the service's: it outlives this one, and whoever
            // inherits it reaps it.
        });
        Ok(Successor { pid, kill })
    }

    /// Kills it (it has not taken over); its `Failed` event follows.
    pub(crate) fn kill(&self) {
        let _ = self.kill.try_send(());
    }
}

/// A channel that failed usually means the new primary exited (its end was reset): say so if it
/// did within [`EXIT_GRACE`], else `otherwise`.
async fn exited_or(child: &mut tokio::process::Child, otherwise: String) -> String {
    match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
        Ok(status) => exited(status),
        Err(_) => otherwise,
    }
}

fn exited(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => format!("the new primary exited before it was ready ({status})"),
        Err(err) => format!("the new primary's exit could not be read: {err}"),
    }
}

/// The new primary's side: the old primary it takes over from.
pub(crate) struct Predecessor {
    channel: Channel,
    pub(crate) hello: Hello,
    /// The admin listener it passed, if it has one.
    pub(crate) admin: Option<std::net::TcpListener>,
    /// Its slot listeners (kernel steering), in slot order.
    pub(crate) slot_listeners: Vec<std::net::TcpListener>,
}

impl Predecessor {
    /// Whether this process was started by a hand-over, and if so the old primary's greeting.
    /// Called once, by the primary, before it starts any worker.
    pub(crate) async fn from_env() -> Result<Option<Predecessor>, ClusterError> {
        // Workers are started without these (see `primary::link`), and a successor of this
        // one gets its own.
        let Some(raw) = std::env::var_os(ENV_UPGRADE_FD) else { return Ok(None) };
        let admin_raw = std::env::var_os(ENV_UPGRADE_ADMIN_FD);
        let parse = |raw: OsString, what: &str| {
            raw.to_str().and_then(|s| s.parse::<i32>().ok()).ok_or_else(|| {
                ClusterError::Upgrade(format!("{what}={} is not a descriptor number", raw.to_string_lossy()))
            })
        };
        let channel = Channel::from_fd(fd::adopt(parse(raw, ENV_UPGRADE_FD)?, Expect::SeqPacket)?)
            .map_err(|err| ClusterError::Upgrade(err.to_string()))?;
        let admin = match admin_raw {
            Some(raw) => {
                let fd: OwnedFd = fd::adopt(parse(raw, ENV_UPGRADE_ADMIN_FD)?, Expect::TcpListener)?;
                Some(std::net::TcpListener::from(fd))
            }
            None => None,
        };
        let slot_listeners = match std::env::var_os(ENV_UPGRADE_SLOT_FDS) {
            Some(raw) => {
                let count = parse(raw, ENV_UPGRADE_SLOT_FDS)?;
                (SLOT_FDS..SLOT_FDS.saturating_add(count))
                    .map(|raw| fd::adopt(raw, Expect::TcpListener).map(std::net::TcpListener::from))
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => Vec::new(),
        };
        let mut buf = RecvBuf::default();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, channel.recv::<Hello>(&mut buf)).await {
            Ok(Ok(Some((hello, _)))) => hello,
            Ok(Ok(None)) => return Err(ClusterError::Upgrade("the old primary went away before the hand-over".into())),
            Ok(Err(err)) => return Err(ClusterError::Upgrade(format!("no greeting from the old primary: {err}"))),
            Err(_) => {
                return Err(ClusterError::Upgrade(format!("no greeting from the old primary within {HELLO_TIMEOUT:?}")))
            }
        };
        Ok(Some(Predecessor { channel, hello, admin, slot_listeners }))
    }

    /// Tells the old primary to stop: this one serves now.
    pub(crate) async fn ready(self, pid: u32) -> Result<(), ChannelError> {
        self.channel.send(&ToPredecessor::Ready { pid }).await
    }

    /// Tells the old primary this one cannot take over.
    pub(crate) async fn failed(self, reason: String) {
        let _ = self.channel.send(&ToPredecessor::Failed { reason }).await;
    }
}

/// Why a new primary could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("cannot duplicate a listening socket for the new primary: {0}")]
    Dup(std::io::Error),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("cannot map the new primary's fds: {0}")]
    FdMapping(#[from] command_fds::FdMappingCollision),
    #[error("cannot start {exe}: {source}")]
    Exec { exe: String, source: std::io::Error },
}

/// Where the new primary binds its control socket before moving it to `path`: beside it, so the
/// move is one `rename(2)` in one directory.
pub(crate) fn staging_path(path: &std::path::Path) -> PathBuf {
    let mut staged = path.as_os_str().to_owned();
    staged.push(format!(".{}.new", std::process::id()));
    PathBuf::from(staged)
}
