//! The worker side: adopt the inherited sockets, build the app, report ready, serve, drain.

mod handoff;

use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{middleware::from_fn_with_state, Router};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    channel::{Channel, RecvBuf},
    config::ClusterConfig,
    conn,
    drain::{self, Drain, DrainMode, DrainableListener},
    error::ClusterError,
    fd::{self, Expect},
    fdlimit::FdBudget,
    messaging::Messenger,
    metrics::WorkerMetrics,
    proto::{ToPrimary, ToWorker, HEARTBEAT_INTERVAL},
    proxy_protocol::{self, PendingHeaders, ProxiedListener},
    role::{WorkerIdentity, ENV_LISTEN_FD, IPC_FD, LISTEN_FD},
    shutdown,
};
use handoff::{HandoffListener, HandoffSink};

/// What a worker's application factory learns about the process it runs in.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// The slot this worker fills (stable across restarts).
    pub slot: usize,
    /// A number no other worker of this primary had: workers are counted from 0 across all
    /// slots, so a higher one started later.
    pub generation: u64,
    /// This process's id.
    pub pid: u32,
    /// When this worker process started.
    pub started: Instant,
    /// The dispatch mode of the cluster.
    pub balance: crate::Balance,
    /// Messages to and from the other workers and the primary.
    pub messenger: Messenger,
    /// This worker's metrics, which the primary gathers when it is scraped; register the
    /// application's series here ([`WorkerMetrics::register`]).
    pub metrics: WorkerMetrics,
}

impl WorkerContext {
    /// The context of a worker that runs without a primary: slot `slot`, generation 0, this
    /// process, started now, [`Balance::Shared`](crate::Balance::Shared). Its messenger is a
    /// cluster of one: broadcasts come back to it and gathers get its own answer only. For
    /// tests that drive an app factory's router in-process (`tower::ServiceExt::oneshot`), and
    /// for embedding that router in a server of your own.
    pub fn standalone(slot: usize) -> Self {
        let pid = std::process::id();
        Self {
            slot,
            generation: 0,
            pid,
            started: Instant::now(),
            balance: crate::Balance::Shared,
            messenger: Messenger::alone(slot, pid),
            metrics: WorkerMetrics::default(),
        }
    }
}

/// Where this worker's connections come from.
enum Source {
    /// Shared mode: accept on the inherited listener.
    Shared(tokio::net::TcpListener),
    /// Primary-accept modes: connections arrive over IPC.
    Handoff(HandoffListener, HandoffSink),
    /// Kernel steering: this slot's own listener, and over IPC what the primary took from
    /// slots that were not ready.
    Steered(tokio::net::TcpListener, HandoffListener, HandoffSink),
}

pub(crate) async fn run<F, Fut, E>(
    identity: WorkerIdentity,
    config: &ClusterConfig,
    make_app: F,
) -> Result<(), ClusterError>
where
    F: FnOnce(WorkerContext) -> Fut,
    Fut: Future<Output = Result<Router, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let channel = Channel::from_fd(fd::adopt(IPC_FD, Expect::SeqPacket)?)?;
    let messenger = Messenger::new(channel.clone());
    let ctx = WorkerContext {
        slot: identity.slot,
        generation: identity.generation,
        pid: std::process::id(),
        started: Instant::now(),
        balance: config.balance,
        messenger: messenger.clone(),
        metrics: WorkerMetrics::default(),
    };
    let source = if config.balance.primary_accepts() {
        let report_closes = config.balance == crate::Balance::LeastConn;
        let (listener, sink) = handoff::handoff(channel.clone(), config.bind, report_closes);
        // The primary passes a listener only when the kernel steers (it may have fallen back).
        match std::env::var_os(ENV_LISTEN_FD) {
            Some(_) => Source::Steered(inherited_listener()?, listener, sink),
            None => Source::Handoff(listener, sink),
        }
    } else {
        Source::Shared(inherited_listener()?)
    };

    let (trigger, mut stop) = shutdown::channel();
    let sink = match &source {
        Source::Handoff(_, sink) | Source::Steered(_, _, sink) => Some(sink.clone()),
        Source::Shared(_) => None,
    };
    let budget = FdBudget::current(config.fd_reserve);
    let watched = Watched { sink: sink.map(|sink| (sink, budget)), messenger, metrics: ctx.metrics.clone() };
    watch_primary(channel.clone(), trigger.clone(), stop.clone(), watched);
    watch_signals(trigger)?;

    let drain = Drain::new();
    let cap = conn::ConnectionCap::new(config.connections.max_connections());
    // From the start, not only once ready: a worker whose app waits for its database is alive
    // and is left to wait, and one that is stuck before it gets ready is told apart by silence.
    heartbeat(channel.clone(), drain.clone(), cap.clone());
    // The app may take a while to build (it waits for its database); a shutdown request in the
    // meantime ends the worker without ever reporting ready.
    let metrics = ctx.metrics.clone();
    let router = tokio::select! {
        built = make_app(ctx.clone()) => built.map_err(|e| ClusterError::App(e.into()))?,
        _ = stop.wait() => {
            tracing::info!("shutdown requested before the worker was ready");
            return Ok(());
        }
    };

    channel.send(&ToPrimary::Ready { pid: ctx.pid }).await?;
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(
        slot = ctx.slot,
        generation = ctx.generation,
        threads,
        max_connections = config.connections.max_connections(),
        "worker ready"
    );
    // Built and serving: the code that got it here is not needed again (see `code_pages`).
    crate::code_pages::release();
    let (last_word, last_counts) = (channel.clone(), metrics.clone());
    match source {
        Source::Shared(listener) => {
            let listener = DrainableListener::new(listener, stop.clone(), budget);
            match proxied(config, &metrics) {
                Some(pending) => {
                    let listener = ProxiedListener::new(listener, pending);
                    serve(listener, router, drain, cap, channel, stop, config, metrics).await
                }
                None => serve(listener, router, drain, cap, channel, stop, config, metrics).await,
            }
        }
        Source::Steered(own, handed, sink) => {
            let own = DrainableListener::new(own, stop.clone(), budget).own_queue();
            match proxied(config, &metrics) {
                Some(pending) => {
                    let listener = sink.steered(ProxiedListener::new(own, pending), handed);
                    serve(listener, router, drain, cap, channel, stop, config, metrics).await
                }
                None => serve(sink.steered(own, handed), router, drain, cap, channel, stop, config, metrics).await,
            }
        }
        // The sink sets TCP_NODELAY on each connection it adopts.
        Source::Handoff(listener, _sink) => serve(listener, router, drain, cap, channel, stop, config, metrics).await,
    }
    // Drained: nothing more will be counted. The primary keeps this as the worker's last
    // counts (an oversized snapshot is skipped: the last scrape's counts stand).
    if let Ok(snapshot) = serde_json::to_value(last_counts.snapshot()) {
        if crate::messaging::check_size(&snapshot).is_ok() {
            let _ = last_word.send(&ToPrimary::Final { snapshot }).await;
        }
    }
    Ok(())
}

/// Under `--proxy-protocol`, where a worker that accepts itself (shared mode, kernel steering)
/// reads the PROXY headers of what it accepts, counting the rejected ones in its own series.
fn proxied(config: &ClusterConfig, metrics: &WorkerMetrics) -> Option<PendingHeaders> {
    let proxy = config.proxy_protocol?;
    let counted = proxy_protocol::rejections();
    metrics.register(counted.clone());
    Some(PendingHeaders::new(proxy, config.trusted_proxies.clone(), counted))
}

/// Tells the primary, every second, that this worker's runtime still makes progress (the task
/// runs on the same runtime as the requests, so a runtime whose threads are all stuck stops
/// sending), how many requests it served and how many connections it holds open.
fn heartbeat(channel: Channel, drain: Drain, open: conn::ConnectionCap) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tick.tick().await;
            let beat = ToPrimary::Heartbeat {
                requests: drain.served(),
                open: Some(u64::try_from(open.open()).unwrap_or(u64::MAX)),
            };
            match channel.send(&beat).await {
                Ok(()) => {}
                // One message's trouble is not the link's: keep beating.
                Err(err) if err.is_bad_message() => tracing::warn!(error = %err, "cannot send a heartbeat"),
                Err(_) => return, // the primary is gone; the IPC reader starts the drain
            }
        }
    });
}

fn inherited_listener() -> Result<tokio::net::TcpListener, ClusterError> {
    let err = |source| ClusterError::InheritedFd { fd: LISTEN_FD, what: "listening socket", source };
    let listener = std::net::TcpListener::from(fd::adopt(LISTEN_FD, Expect::TcpListener)?);
    listener.set_nonblocking(true).map_err(err)?;
    tokio::net::TcpListener::from_std(listener).map_err(err)
}

/// Serves `router` until the worker is asked to stop, then drains (see [`crate::drain`]).
#[allow(clippy::too_many_arguments)] // each is one of the worker's parts, built in `run`
async fn serve<L>(
    listener: L,
    router: Router,
    drain: Drain,
    cap: conn::ConnectionCap,
    channel: Channel,
    stop: shutdown::Signal,
    config: &ClusterConfig,
    metrics: WorkerMetrics,
) where
    L: conn::Backlog<Addr = SocketAddr>,
    L::Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + conn::AcceptTime + Unpin + Send + 'static,
{
    // Outside the drain guard, so it times every request, those a draining worker serves too.
    let mut app = router
        .layer(from_fn_with_state(drain.clone(), drain::guard))
        .layer(from_fn_with_state(metrics.clone(), crate::metrics::http::record));
    if !config.trusted_proxies.is_empty() {
        // Outermost, so every layer of the app sees the client, not the proxy.
        let trusted = std::sync::Arc::new(config.trusted_proxies.clone());
        app = app.layer(from_fn_with_state(trusted, crate::forwarded::resolve));
    }
    let graceful = {
        let (drain, channel, mut stop) = (drain.clone(), channel.clone(), stop.clone());
        async move {
            let mode = stop.wait().await;
            drain.start(mode);
            tracing::info!(in_flight = drain.in_flight(), ?mode, "worker draining");
            // The primary may already be gone; nothing to do about a failed notice then.
            let _ = channel.send(&ToPrimary::Draining).await;
            loop {
                tokio::select! {
                    _ = drain.idle() => break,
                    // A retiring worker may be told to shut down while it drains.
                    Some(stricter) = stop.changed() => drain.start(stricter),
                }
            }
        }
    };
    let served = conn::serve(listener, app, &config.connections, cap, Some(metrics), graceful);
    // The primary enforces the deadline by killing us; stopping a little earlier ourselves lets
    // the log say why.
    let mut stop = stop;
    let deadline = async {
        stop.wait().await;
        tokio::time::sleep(config.shutdown_timeout).await;
    };
    tokio::select! {
        () = served => tracing::info!("worker drained"),
        _ = deadline => tracing::warn!(in_flight = drain.in_flight(), "shutdown deadline passed with requests in flight"),
    }
}

/// How long the IPC reader waits before reading again after the kernel lacked the memory or
/// descriptors to deliver a message.
const EXHAUSTED_RETRY: Duration = Duration::from_millis(50);

/// Reads the primary's messages: connections to adopt (or refuse while draining, or shed when
/// out of descriptors), a shutdown request, or the primary's death (end of file), which starts
/// the drain. Running out of descriptors or memory is never a reason to leave.
/// What the IPC reader hands messages to.
struct Watched {
    /// Primary-accept modes: where handed-off connections go.
    sink: Option<(HandoffSink, FdBudget)>,
    messenger: Messenger,
    metrics: WorkerMetrics,
}

fn watch_primary(channel: Channel, trigger: shutdown::Trigger, stop: shutdown::Signal, watched: Watched) {
    let Watched { sink, messenger, metrics } = watched;
    tokio::spawn(async move {
        let mut buf = RecvBuf::default();
        loop {
            let (msg, fds) = match channel.recv::<ToWorker>(&mut buf).await {
                Ok(Some(received)) => received,
                Ok(None) => {
                    tracing::warn!("primary is gone, draining");
                    trigger.fire(DrainMode::Shutdown);
                    return;
                }
                Err(err) if err.is_bad_message() => {
                    tracing::warn!(error = %err, "ignoring a bad message from the primary");
                    continue;
                }
                Err(err) if err.is_exhaustion() => {
                    tracing::warn!(error = %err, "IPC receive failed for want of resources; retrying");
                    tokio::time::sleep(EXHAUSTED_RETRY).await;
                    continue;
                }
                Err(err) => {
                    tracing::error!(error = %err, "IPC with the primary failed, draining");
                    trigger.fire(DrainMode::Shutdown);
                    return;
                }
            };
            match msg {
                ToWorker::Shutdown => trigger.fire(DrainMode::Shutdown),
                ToWorker::Message { from, payload } => messenger.deliver(from, payload),
                ToWorker::Query { id, payload } => {
                    let messenger = messenger.clone();
                    tokio::spawn(async move { messenger.answer(id, payload).await });
                }
                ToWorker::Scrape { id } => {
                    let (channel, metrics) = (channel.clone(), metrics.clone());
                    tokio::spawn(async move { answer_scrape(&channel, &metrics, id).await });
                }
                ToWorker::GatheredPart { id, replies } => messenger.gathered_part(id, replies),
                ToWorker::Gathered { id, replies, unanswered } => messenger.gathered(id, replies, unanswered),
                ToWorker::Retire => trigger.fire(DrainMode::Retire),
                ToWorker::Connections { conns } => {
                    let adopted = match &sink {
                        // A retiring worker has a successor in its slot: the primary hands them
                        // there. A stopping cluster has no one else, and the primary sent these
                        // before it told this worker to stop: they are served here.
                        Some((sink, budget)) if stop.fired() != Some(DrainMode::Retire) => {
                            sink.adopt(conns, fds, *budget)
                        }
                        _ => handoff::Adopted { refused: conns.iter().map(|c| c.id).collect(), ..Default::default() },
                    };
                    let handoff::Adopted { accepted, refused, shed } = adopted;
                    if !accepted.is_empty() {
                        let _ = channel.send(&ToPrimary::Accepted { ids: accepted }).await;
                    }
                    if !refused.is_empty() {
                        let _ = channel.send(&ToPrimary::Refused { ids: refused }).await;
                    }
                    if !shed.is_empty() {
                        let _ = channel.send(&ToPrimary::Shed { ids: shed }).await;
                    }
                }
            }
        }
    });
}

/// Answers the primary's scrape with this worker's snapshot (or why it cannot).
async fn answer_scrape(channel: &Channel, metrics: &WorkerMetrics, id: u64) {
    let answer = serde_json::to_value(metrics.snapshot())
        .map_err(crate::messaging::MessagingError::from)
        .and_then(|payload| crate::messaging::check_size(&payload).map(|()| payload));
    let msg = match answer {
        Ok(payload) => ToPrimary::Reply { id, payload },
        Err(err) => {
            tracing::warn!(error = %err, "cannot answer a metrics scrape");
            ToPrimary::Unanswered { id, reason: err.to_string() }
        }
    };
    if let Err(err) = channel.send(&msg).await {
        tracing::warn!(error = %err, "cannot send a metrics snapshot");
    }
}

/// SIGTERM or SIGINT sent to the worker itself (Ctrl-C reaches the whole process group) drains
/// it like the primary's request does.
fn watch_signals(trigger: shutdown::Trigger) -> Result<(), ClusterError> {
    let mut term = signal(SignalKind::terminate()).map_err(ClusterError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ClusterError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        trigger.fire(DrainMode::Shutdown);
    });
    Ok(())
}
