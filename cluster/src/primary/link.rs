//! Starting one worker process, and the task that links the primary to it for its whole life.
//!
//! The worker is this binary re-executed with the IPC socket (and, in shared mode, the
//! listener) mapped to fixed fd numbers. Its link task owns the `Child`, receives its messages,
//! sends it the connections the supervisor routes to it (batched: everything queued goes out in
//! one `sendmsg`), and keeps the primary's copy of each connection until the worker
//! acknowledges it. When the worker refuses connections or dies, the unacknowledged ones go
//! back to the supervisor, which hands them to another worker: a client never sees a reset
//! because of a worker it had not yet been handed to. A worker that neither acknowledges nor
//! refuses (stopped, or stuck) has its hand-offs taken back after [`RECLAIM_AFTER`] (see
//! [`crate::proto`] for why that cannot make two workers serve one connection).

use std::{
    collections::{HashMap, VecDeque},
    ffi::OsString,
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
    path::PathBuf,
    process::ExitStatus,
    time::Instant,
};

use command_fds::{CommandFdExt, FdMapping};
use tokio::{process::Child, sync::mpsc};

use crate::{
    activation,
    channel::{Channel, RecvBuf},
    dispatch::Conn,
    fd::MAX_FDS_PER_MESSAGE,
    proto::{Handoff, Stamp, ToPrimary, ToWorker, RECLAIM_AFTER},
    role::{ENV_GENERATION, ENV_IPC_FD, ENV_LISTEN_FD, ENV_WORKER_SLOT, IPC_FD, LISTEN_FD},
    supervisor::WorkerId,
};

/// What the supervisor hears about its workers.
#[derive(Debug)]
pub(crate) enum Event {
    /// A worker sent a message.
    Message { worker: WorkerId, msg: ToPrimary },
    /// A draining worker refused these connections.
    Refused { worker: WorkerId, conns: Vec<Conn> },
    /// These many connections for this worker were closed because it (or the primary, passing
    /// them) was out of file descriptors.
    Shed { worker: WorkerId, count: usize, why: ShedReason },
    /// A worker left these connections unacknowledged for [`RECLAIM_AFTER`]: they are the
    /// primary's again (the worker will drop its copies unserved).
    Reclaimed { worker: WorkerId, conns: Vec<Conn> },
    /// A worker process ended; `orphans` were handed to it but never acknowledged.
    Exited { worker: WorkerId, status: io::Result<ExitStatus>, orphans: Vec<Conn> },
}

/// Why connections for a worker were shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShedReason {
    /// The worker said it has no descriptors to spare.
    WorkerFull,
    /// Passing them failed for want of descriptors or kernel memory.
    SendExhausted,
}

/// The supervisor's handle on a running worker.
pub(crate) struct Link {
    pub(crate) pid: u32,
    /// Asks the link task to SIGKILL the process. Going through the task that owns the `Child`
    /// means we never signal a pid that was already reaped and reused.
    pub(crate) kill: mpsc::Sender<()>,
    /// Connections to hand to this worker.
    pub(crate) outbox: mpsc::UnboundedSender<Conn>,
    /// Messages for this worker, sent in order by its link task.
    pub(crate) mailbox: mpsc::UnboundedSender<ToWorker>,
}

impl Link {
    /// Queues a message for the worker's link task, which sends messages in order without
    /// holding up the supervisor. A failure means the worker is dying, and its link task
    /// reports that.
    pub(crate) fn tell(&self, msg: ToWorker) {
        let _ = self.mailbox.send(msg);
    }

    pub(crate) fn kill(&self) {
        let _ = self.kill.try_send(());
    }
}

/// Everything needed to start workers; lives as long as the primary.
pub(crate) struct Spawner {
    pub(crate) exe: PathBuf,
    /// The primary's own argv[0], and the other arguments workers get (the primary's own
    /// unless the app chose them: [`crate::ClusterConfig::worker_args`]).
    pub(crate) arg0: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    /// The listener, passed to workers only in shared mode.
    pub(crate) shared_listener: Option<std::net::TcpListener>,
    /// Where workers' output goes, when it is captured.
    pub(crate) logs: Option<crate::logs::LogSink>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
}

/// How long a link waits before reading again after the kernel lacked the memory or
/// descriptors to deliver a message.
const EXHAUSTED_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

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

impl SpawnError {
    /// True when the primary (or the machine) is out of descriptors, processes or memory for
    /// now: nothing is wrong with the worker, so the failure must not count as a crash.
    pub(crate) fn is_exhaustion(&self) -> bool {
        use crate::fdlimit::is_exhaustion;
        match self {
            SpawnError::DupListener(err) | SpawnError::Exec { source: err, .. } => {
                is_exhaustion(err) || err.raw_os_error() == Some(nix::libc::EAGAIN)
            }
            SpawnError::Channel(crate::channel::ChannelError::Setup(err)) => is_exhaustion(err),
            SpawnError::Channel(_) | SpawnError::FdMapping(_) => false,
        }
    }
}

impl Spawner {
    /// Starts `worker`, giving it `slot_listener` to accept on (kernel steering), else the
    /// shared listener in shared mode, else none: connections then come over its channel only.
    pub(crate) fn spawn(
        &self,
        worker: WorkerId,
        slot_listener: Option<&std::net::TcpListener>,
    ) -> Result<Link, SpawnError> {
        let (slot, generation) = (worker.slot, worker.generation);
        let (channel, worker_end) = Channel::pair()?;
        let mut fds = vec![FdMapping { parent_fd: worker_end, child_fd: IPC_FD }];
        let mut cmd = tokio::process::Command::new(&self.exe);
        if let Some(listener) = slot_listener.or(self.shared_listener.as_ref()) {
            let dup: OwnedFd = listener.as_fd().try_clone_to_owned().map_err(SpawnError::DupListener)?;
            fds.push(FdMapping { parent_fd: dup, child_fd: LISTEN_FD });
            cmd.env(ENV_LISTEN_FD, LISTEN_FD.to_string());
        }
        // `ps` shows argv[0]: tell workers apart from the primary, and keep `pkill -f 'herd serve'`
        // aimed at the primary, which then drains its workers properly.
        cmd.arg0(format!("{} [worker {slot}]", self.arg0.to_string_lossy()))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(ENV_WORKER_SLOT, slot.to_string())
            .env(ENV_GENERATION, generation.to_string())
            .env(ENV_IPC_FD, IPC_FD.to_string())
            // A socket-activated primary's variables are not the worker's: its fd 3 is what the
            // primary maps there (or nothing), and an app that looks for LISTEN_FDS must not
            // take it.
            .env_remove(activation::ENV_LISTEN_FDS)
            .env_remove(activation::ENV_LISTEN_PID)
            .env_remove(activation::ENV_LISTEN_FDNAMES)
            // Nor are a new primary's hand-over descriptors.
            .env_remove(crate::upgrade::ENV_UPGRADE_FD)
            .env_remove(crate::upgrade::ENV_UPGRADE_ADMIN_FD)
            .env_remove(crate::upgrade::ENV_UPGRADE_SLOT_FDS)
            .fd_mappings(fds)?;
        if self.logs.is_some() {
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        }
        let spawned = cmd.spawn();
        // The command owns our copies of the worker's fds; drop it now so that the worker's end
        // of the IPC socket lives only in the worker and its death reads as end-of-file.
        drop(cmd);
        let mut child = spawned.map_err(|source| SpawnError::Exec { exe: self.exe.display().to_string(), source })?;
        let pid = child.id().unwrap_or_default();
        if let Some(sink) = &self.logs {
            forward_lines(child.stdout.take(), sink.clone());
            forward_lines(child.stderr.take(), sink.clone());
        }

        let (kill, kill_requests) = mpsc::channel(1);
        let (outbox, outbox_rx) = mpsc::unbounded_channel();
        let (mailbox, mailbox_rx) = mpsc::unbounded_channel();
        let task = LinkTask {
            worker,
            pid,
            child,
            ipc: channel,
            kill_requests,
            outbox: outbox_rx,
            mailbox: mailbox_rx,
            unacked: HashMap::new(),
            sent: VecDeque::new(),
            events: self.events.clone(),
        };
        tokio::spawn(task.run());
        Ok(Link { pid, kill, outbox, mailbox })
    }
}

struct LinkTask {
    worker: WorkerId,
    pid: u32,
    child: Child,
    ipc: Channel,
    kill_requests: mpsc::Receiver<()>,
    outbox: mpsc::UnboundedReceiver<Conn>,
    mailbox: mpsc::UnboundedReceiver<ToWorker>,
    /// Connections sent to the worker and not yet acknowledged, by id.
    unacked: HashMap<u64, Conn>,
    /// When each hand-off went out, oldest first (acknowledged ones are skipped lazily).
    sent: VecDeque<(u64, Instant)>,
    events: mpsc::UnboundedSender<Event>,
}

impl LinkTask {
    async fn run(mut self) {
        let mut ipc_open = true;
        let mut buf = RecvBuf::default();
        let status = loop {
            let reclaim_at = self.oldest_unacked().map(|sent| tokio::time::Instant::from_std(sent + RECLAIM_AFTER));
            tokio::select! {
                status = self.child.wait() => {
                    // What it said last (its final metrics) may still wait in the socket.
                    if ipc_open {
                        self.take_waiting_messages(&mut buf).await;
                    }
                    break status;
                }
                Some(()) = self.kill_requests.recv() => {
                    let _ = self.child.start_kill();
                }
                received = self.ipc.recv::<ToPrimary>(&mut buf), if ipc_open => match received {
                    Ok(Some((msg, _fds))) => self.on_message(msg),
                    Ok(None) => ipc_open = false,
                    Err(err) if err.is_bad_message() => {
                        tracing::warn!(slot = self.worker.slot, worker_pid = self.pid, error = %err, "ignoring a bad message from a worker");
                    }
                    Err(err) if err.is_exhaustion() => {
                        // Out of memory or descriptors for a moment: the link itself is fine.
                        tracing::warn!(slot = self.worker.slot, worker_pid = self.pid, error = %err, "IPC receive from a worker failed for want of resources; retrying");
                        tokio::time::sleep(EXHAUSTED_RETRY).await;
                    }
                    Err(err) => {
                        tracing::warn!(slot = self.worker.slot, worker_pid = self.pid, error = %err, "IPC with worker failed");
                        ipc_open = false;
                    }
                },
                Some(msg) = self.mailbox.recv(), if ipc_open => {
                    // What the supervisor decided first leaves first: connections it handed
                    // this worker before telling it to stop arrive before the stop, so the
                    // worker serves them instead of refusing them.
                    while ipc_open {
                        let Ok(first) = self.outbox.try_recv() else { break };
                        ipc_open = self.hand_off(first).await;
                    }
                    if !ipc_open {
                        continue;
                    }
                    // A stopped worker stops reading; once its socket is full a send waits
                    // until it reads again, and the kill that ends it must still get through.
                    let sent = tokio::select! {
                        sent = self.ipc.send(&msg) => sent,
                        Some(()) = self.kill_requests.recv() => {
                            let _ = self.child.start_kill();
                            Err(crate::channel::ChannelError::Send(io::Error::other("killed while sending")))
                        }
                    };
                    match sent {
                        Ok(()) => {}
                        // One message that could not be sent (too large) is that message's loss;
                        // only a failed channel (the worker is going away) ends the link.
                        Err(err) if err.is_bad_message() => {
                            tracing::error!(slot = self.worker.slot, worker_pid = self.pid, error = %err, "a message to a worker was dropped");
                        }
                        Err(_) => ipc_open = false,
                    }
                }
                Some(first) = self.outbox.recv(), if ipc_open => {
                    ipc_open = self.hand_off(first).await;
                }
                _ = super::sleep_until(reclaim_at), if ipc_open => {
                    // An acknowledgement already waiting must count before anything is taken back.
                    ipc_open = self.take_waiting_messages(&mut buf).await;
                    self.reclaim();
                }
            }
        };
        let mut orphans: Vec<Conn> = self.unacked.into_values().collect();
        self.outbox.close();
        while let Ok(conn) = self.outbox.try_recv() {
            orphans.push(conn);
        }
        orphans.sort_by_key(|c| c.id);
        let _ = self.events.send(Event::Exited { worker: self.worker, status, orphans });
    }

    /// Hands `first` and what else waits in the outbox (up to one message's worth) to the
    /// worker in one `sendmsg`. Returns whether the IPC socket is still open.
    async fn hand_off(&mut self, first: Conn) -> bool {
        let batch = self.take_batch(first);
        let sent_at = Stamp::now();
        let now_us = crate::conn::epoch_us();
        let conns: Vec<Handoff> = batch
            .iter()
            .map(|c| {
                // The wall-clock moment of the accept, from how long ago it was.
                let waited = u64::try_from(c.accepted_at.elapsed().as_micros()).unwrap_or(u64::MAX);
                Handoff {
                    id: c.id,
                    peer: c.peer,
                    client: (c.client != c.peer).then_some(c.client),
                    sent_at,
                    accepted_us: Some(now_us.saturating_sub(waited)),
                }
            })
            .collect();
        let fds: Vec<RawFd> = batch.iter().map(|c| c.stream.as_raw_fd()).collect();
        let msg = ToWorker::Connections { conns };
        let sent = tokio::select! {
            sent = self.ipc.send_with_fds(&msg, &fds) => sent,
            Some(()) = self.kill_requests.recv() => {
                let _ = self.child.start_kill();
                Err(crate::channel::ChannelError::Send(io::Error::other("killed while handing off")))
            }
        };
        match sent {
            // Cannot happen with a bounded batch of fixed-size entries; if it did, the
            // worker never saw these, and closing them beats stopping the link.
            Err(err) if err.is_bad_message() => {
                tracing::error!(slot = self.worker.slot, worker_pid = self.pid, error = %err, "closing {} connection(s) that could not be handed off", batch.len());
            }
            // Too many descriptors in flight, or no kernel memory: the worker is fine,
            // these connections are what cannot be afforded. Dropping them closes them.
            Err(err) if err.is_exhaustion() => {
                tracing::debug!(slot = self.worker.slot, worker_pid = self.pid, error = %err, "cannot pass connections");
                let (worker, count) = (self.worker, batch.len());
                let _ = self.events.send(Event::Shed { worker, count, why: ShedReason::SendExhausted });
            }
            // Sent or not, they stay ours until acknowledged: a failed send means the
            // worker is dying, and its exit returns everything unacknowledged.
            sent => {
                let now = Instant::now();
                self.sent.extend(batch.iter().map(|c| (c.id, now)));
                self.unacked.extend(batch.into_iter().map(|c| (c.id, c)));
                if let Err(err) = sent {
                    tracing::debug!(slot = self.worker.slot, worker_pid = self.pid, error = %err, "cannot hand off connections");
                    return false;
                }
            }
        }
        true
    }

    fn on_message(&mut self, msg: ToPrimary) {
        let worker = self.worker;
        match msg {
            ToPrimary::Accepted { ids } => {
                // The worker has its own copies now; closing ours does not touch the connection.
                for id in ids {
                    self.unacked.remove(&id);
                }
            }
            ToPrimary::Refused { ids } => {
                let conns = ids.iter().filter_map(|id| self.unacked.remove(id)).collect();
                let _ = self.events.send(Event::Refused { worker, conns });
            }
            ToPrimary::Shed { ids } => {
                // Dropping our copies closes the connections: the worker has none.
                let count = ids.iter().filter_map(|id| self.unacked.remove(id)).count();
                let _ = self.events.send(Event::Shed { worker, count, why: ShedReason::WorkerFull });
            }
            msg => {
                let _ = self.events.send(Event::Message { worker, msg });
            }
        }
    }

    /// `first` and whatever else is queued, up to one message's worth (one `sendmsg`).
    fn take_batch(&mut self, first: Conn) -> Vec<Conn> {
        let mut batch = vec![first];
        while batch.len() < MAX_FDS_PER_MESSAGE {
            match self.outbox.try_recv() {
                Ok(conn) => batch.push(conn),
                Err(_) => break,
            }
        }
        batch
    }

    /// When the oldest hand-off still unacknowledged went out.
    fn oldest_unacked(&mut self) -> Option<Instant> {
        while let Some(&(id, sent)) = self.sent.front() {
            if self.unacked.contains_key(&id) {
                return Some(sent);
            }
            self.sent.pop_front();
        }
        None
    }

    /// Handles the messages already waiting from the worker (up to a bound, so a chatty worker
    /// cannot hold the link here), without waiting for more; false if the link has ended.
    async fn take_waiting_messages(&mut self, buf: &mut RecvBuf) -> bool {
        for _ in 0..1024 {
            let received = tokio::select! {
                biased;
                received = self.ipc.recv::<ToPrimary>(buf) => received,
                () = std::future::ready(()) => return true,
            };
            match received {
                Ok(Some((msg, _fds))) => self.on_message(msg),
                Ok(None) => return false,
                Err(err) if err.is_bad_message() || err.is_exhaustion() => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Takes back every hand-off unacknowledged for [`RECLAIM_AFTER`], for the supervisor to
    /// hand to another worker.
    fn reclaim(&mut self) {
        let now = Instant::now();
        let mut conns = Vec::new();
        while let Some(&(id, sent)) = self.sent.front() {
            if now.saturating_duration_since(sent) < RECLAIM_AFTER {
                break;
            }
            self.sent.pop_front();
            conns.extend(self.unacked.remove(&id));
        }
        if conns.is_empty() {
            return;
        }
        let _ = self.events.send(Event::Reclaimed { worker: self.worker, conns });
    }
}

/// Copies a worker's output, line by line, into the merged log.
fn forward_lines(output: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>, sink: crate::logs::LogSink) {
    use tokio::io::AsyncBufReadExt;
    let Some(output) = output else { return };
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(output).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.write_line(&line);
        }
    });
}
