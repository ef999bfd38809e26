//! The control socket: a Unix socket (mode 0600) on which the primary answers operators, and
//! the client side `herd ctl` uses. By default it lives in a private per-user directory, and
//! both sides refuse a socket or directory another user could control (see `socket_path`);
//! the client gives up after a timeout instead of waiting forever.
//!
//! # Protocol
//!
//! One JSON object per line in each direction; one request per connection.
//!
//! ```text
//! → {"cmd":"status"}
//! ← {"ok":true,"status":{"balance":"round-robin","listen":"127.0.0.1:3000","workers":[{"slot":0,...}],...}}
//! → {"cmd":"reload"}                 ← {"ok":true} once every slot runs a new worker
//! → {"cmd":"scale","to":4}           ← {"ok":true,"workers":4}
//! → {"cmd":"scale","by":-1}
//! → {"cmd":"restart","slot":2}       ← {"ok":true} once slot 2 runs a new worker
//! → {"cmd":"send","payload":{…}}     ← {"ok":true,"workers":4}  (to every worker)
//! → {"cmd":"send","slot":1,"payload":{…}}
//! → {"cmd":"metrics"}                ← {"ok":true,"metrics":"# HELP herd_workers …"} (Prometheus text)
//! → {"cmd":"logs"}                   ← {"ok":true} then every new log line, as plain text lines
//! → {"cmd":"upgrade"}                ← {"ok":true,"pid":4242} once a new primary serves; this one stops
//! → {"cmd":"stop"}                   ← {"ok":true} then the cluster shuts down gracefully
//! ← {"ok":false,"error":"..."}       for anything that failed or could not be read
//! ```
//!
//! Requests longer than [`MAX_REQUEST`] bytes, or that are not valid JSON, get an error reply;
//! the primary keeps running.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::socket_path;
pub use crate::socket_path::SocketPathError;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// An operator's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The state of every worker.
    Status,
    /// Replace every worker, one slot at a time, each only after its successor is ready.
    Reload,
    /// Change the number of workers: to an absolute count, or by a relative amount.
    Scale {
        /// Absolute target.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<usize>,
        /// Relative change.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<i64>,
    },
    /// Gracefully replace one slot's worker.
    Restart {
        /// The slot.
        slot: usize,
    },
    /// Send an application message to one worker, or to all of them without a slot.
    Send {
        /// The slot; every worker when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot: Option<usize>,
        /// The message (any JSON).
        payload: serde_json::Value,
    },
    /// Follow the merged log: after `{"ok":true}`, every new line as it is written, until the
    /// client disconnects.
    Logs,
    /// Shut the cluster down gracefully, as SIGTERM does.
    Stop,
    /// Every series of the cluster and its workers, in the Prometheus text format (what
    /// `GET /metrics` on the admin listener serves).
    Metrics,
    /// Hand over to a new primary running the binary on disk (see `crate::upgrade`); answered
    /// once it serves (with its pid in `status`), or with why not.
    Upgrade,
}

/// The primary's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why not, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// For `scale`: the worker count now; for `send`: how many workers got the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// For `metrics`: the Prometheus text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    /// For `upgrade`: the new primary's pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl Response {
    /// Success without details.
    pub fn ok() -> Self {
        Self { ok: true, error: None, status: None, workers: None, metrics: None, pid: None }
    }

    /// A failure with its reason.
    pub fn error(reason: impl Into<String>) -> Self {
        Self { ok: false, error: Some(reason.into()), ..Self::ok() }
    }
}

/// The cluster as `herd ctl status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Dispatch mode.
    pub balance: String,
    /// Who puts connections on workers: `kernel` or `primary` (see `crate::Steering`).
    #[serde(default)]
    pub steering: String,
    /// Connections the primary accepted itself since it started: all of them when it steers,
    /// few under kernel steering (those for slots that were not ready).
    #[serde(default)]
    pub accepted: u64,
    /// The primary's pid.
    pub pid: u32,
    /// What the program runs (`ClusterConfig::version`: herd's binary gives its version and
    /// build).
    #[serde(default)]
    pub version: String,
    /// When the primary started, in seconds since the Unix epoch.
    #[serde(default)]
    pub started_unix_s: u64,
    /// The address the cluster accepts connections on, with the port the kernel chose when
    /// it was bound to port 0.
    pub listen: std::net::SocketAddr,
    /// One entry per running worker process (a slot being reloaded has two).
    pub workers: Vec<WorkerStatus>,
    /// Connections the primary holds because no worker can take them yet (primary-accept
    /// modes; they get 503 after `--queue-timeout`).
    #[serde(default)]
    pub queued: usize,
    /// How the last reload ended, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<String>,
}

/// One worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// Its slot.
    pub slot: usize,
    /// Its process id (none for an errored slot).
    pub pid: Option<u32>,
    /// `starting`, `ready`, `suspect` (ready, but it missed heartbeats: it gets no new
    /// connections until it answers again), `draining`, `retiring`, or `errored` (a slot left
    /// down).
    pub state: String,
    /// Seconds since it started.
    pub uptime_s: u64,
    /// How many times this slot's worker was replaced after dying.
    pub restarts: u64,
    /// Resident memory in bytes, when readable.
    pub rss_bytes: Option<u64>,
    /// Connections it holds open, in every balance mode, as of its last heartbeat (at most a
    /// second old); none before its first.
    pub open_connections: Option<usize>,
    /// Least-conn mode: the connections the primary handed it and has not yet heard closed
    /// (what least-conn compares; exact, unlike the heartbeat's count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assigned: Option<usize>,
    /// Requests it served, as of its last heartbeat.
    #[serde(default)]
    pub requests: u64,
    /// CPU time (user and system) it used, in seconds, when readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
}

/// A request on its way to the supervisor, with where to send the answer.
pub(crate) type Command = (Request, oneshot::Sender<Response>);

/// Binds the control socket at `path` (replacing a stale one) with mode 0600 and serves it,
/// forwarding each request to `commands`.
pub(crate) fn serve(
    path: &Path,
    commands: mpsc::Sender<Command>,
    logs: Option<crate::logs::LogSink>,
) -> std::io::Result<ControlSocket> {
    // A safe directory, and at the path nothing or a socket of ours (see `socket_path`).
    if socket_path::prepare_for_bind(path)? {
        // A socket left by a primary that died: connecting to it fails, so it is safe to replace.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another primary answers on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    listen(path, commands, logs)
}

/// A new primary taking over (`crate::upgrade`): binds beside `path`, then moves the socket
/// onto it in one `rename(2)`, so from that instant every `herd ctl` reaches this primary, and
/// none finds no socket at all. The old primary's socket, still open, is reachable by no path.
pub(crate) fn serve_in_place_of(
    path: &Path,
    commands: mpsc::Sender<Command>,
    logs: Option<crate::logs::LogSink>,
) -> std::io::Result<ControlSocket> {
    socket_path::prepare_for_bind(path)?;
    let staged = crate::upgrade::staging_path(path);
    let _ = std::fs::remove_file(&staged);
    let mut socket = listen(&staged, commands, logs)?;
    std::fs::rename(&staged, path)?;
    socket.path = path.to_owned();
    Ok(socket)
}

/// Binds at `at`, mode 0600, and serves.
fn listen(
    at: &Path,
    commands: mpsc::Sender<Command>,
    logs: Option<crate::logs::LogSink>,
) -> std::io::Result<ControlSocket> {
    use std::os::unix::fs::MetadataExt;
    let listener = UnixListener::bind(at)?;
    std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o600))?;
    let inode = std::fs::symlink_metadata(at)?.ino();
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, commands.clone(), logs.clone()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(ControlSocket { path: at.to_owned(), inode, task })
}

/// Removes the socket file and stops serving when dropped.
pub(crate) struct ControlSocket {
    path: PathBuf,
    /// The socket file's inode: after a hand-over the path is the new primary's socket, which
    /// the old one must leave alone when it exits.
    inode: u64,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        self.task.abort();
        if std::fs::symlink_metadata(&self.path).is_ok_and(|meta| meta.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn answer(stream: UnixStream, commands: mpsc::Sender<Command>, logs: Option<crate::logs::LogSink>) {
    let (read, mut write) = stream.into_split();
    let response = match tokio::time::timeout(READ_TIMEOUT, read_request(read)).await {
        Err(_) => Response::error("timed out waiting for the request"),
        Ok(Err(reason)) => Response::error(reason),
        Ok(Ok(Request::Logs)) => match logs {
            Some(sink) => return follow(sink, write).await,
            None => Response::error("this primary does not capture its workers' logs"),
        },
        Ok(Ok(request)) => {
            let (reply, answer) = oneshot::channel();
            if commands.send((request, reply)).await.is_err() {
                Response::error("the primary is shutting down")
            } else {
                answer.await.unwrap_or_else(|_| Response::error("the primary is shutting down"))
            }
        }
    };
    let mut line = serde_json::to_vec(&response).unwrap_or_else(|_| br#"{"ok":false}"#.to_vec());
    line.push(b'\n');
    let _ = write.write_all(&line).await;
}

/// Streams the merged log to one follower until it disconnects.
async fn follow(sink: crate::logs::LogSink, mut write: tokio::net::unix::OwnedWriteHalf) {
    let mut lines = sink.follow();
    if write.write_all(b"{\"ok\":true}\n").await.is_err() {
        return;
    }
    loop {
        let line = match lines.recv().await {
            Ok(line) => line,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                Arc::from(format!("[{missed} log lines skipped: the follower was too slow]"))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if write.write_all(line.as_bytes()).await.is_err() || write.write_all(b"\n").await.is_err() {
            return; // the follower went away
        }
    }
}

/// Follows the merged log of the primary at `path`, calling `on_line` for each line, until the
/// primary goes away. `timeout` bounds connecting and the primary's first answer.
pub async fn follow_logs(path: &Path, timeout: Duration, mut on_line: impl FnMut(&str)) -> std::io::Result<()> {
    let (read, mut write) = connect(path, timeout).await?;
    let mut line = serde_json::to_vec(&Request::Logs)?;
    line.push(b'\n');
    let mut lines = BufReader::new(read).lines();
    let first = within(timeout, path, async {
        write.write_all(&line).await?;
        lines.next_line().await
    })
    .await?
    .unwrap_or_default();
    let response: Response =
        serde_json::from_str(&first).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if !response.ok {
        return Err(std::io::Error::other(response.error.unwrap_or_default()));
    }
    while let Some(line) = lines.next_line().await? {
        on_line(&line);
    }
    Ok(())
}

async fn read_request(read: tokio::net::unix::OwnedReadHalf) -> Result<Request, String> {
    let mut line = Vec::new();
    let mut limited = BufReader::new(read.take(MAX_REQUEST as u64 + 1));
    limited.read_until(b'\n', &mut line).await.map_err(|e| format!("cannot read the request: {e}"))?;
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    serde_json::from_slice(&line).map_err(|e| format!("not a valid request: {e}"))
}

/// Sends one request to the primary listening on `path` and returns its answer, giving up
/// after `timeout` (connecting, and then the answer, each get that long).
pub async fn request(path: &Path, request: &Request, timeout: Duration) -> std::io::Result<Response> {
    let (read, mut write) = connect(path, timeout).await?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    let mut reply = String::new();
    within(timeout, path, async {
        write.write_all(&line).await?;
        BufReader::new(read).read_line(&mut reply).await
    })
    .await?;
    if reply.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{} closed without answering", path.display()),
        ));
    }
    serde_json::from_str(&reply).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Connects to the primary at `path`, after checking that the socket is this user's, and
/// checks that the process answering runs as this user (or root): a socket another local user
/// planted would otherwise receive the operator's commands.
async fn connect(
    path: &Path,
    timeout: Duration,
) -> std::io::Result<(tokio::net::unix::OwnedReadHalf, tokio::net::unix::OwnedWriteHalf)> {
    socket_path::check_before_connect(path)?;
    let stream = within(timeout, path, UnixStream::connect(path)).await?;
    let peer = stream.peer_cred()?;
    socket_path::check_peer(path, peer.uid())?;
    Ok(stream.into_split())
}

/// `io` with a deadline; the error says what did not answer.
async fn within<T>(
    timeout: Duration,
    path: &Path,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(timeout, io).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer on {} within {timeout:?}", path.display()),
        ))
    })
}

/// The control socket path used when none is configured: `herd-PORT.sock` in a private
/// per-user directory, `$XDG_RUNTIME_DIR/herd` or else `herd-UID` in the temp directory
/// (created mode 0700 and checked before each use).
pub fn default_path(port: u16) -> PathBuf {
    socket_path::default_dir().join(format!("herd-{port}.sock"))
}
