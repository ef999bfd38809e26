//! The worker side: adopt the inherited sockets, build the app, report ready, serve, drain.

use std::{future::Future, net::SocketAddr, time::Instant};

use axum::{middleware::from_fn_with_state, serve::ListenerExt};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    channel::Channel,
    config::ClusterConfig,
    drain::{self, Drain, DrainableListener},
    error::ClusterError,
    fd::{self, Expect},
    proto::{ToPrimary, ToWorker},
    role::{WorkerIdentity, IPC_FD, LISTEN_FD},
    shutdown,
};

/// What a worker's application factory learns about the process it runs in.
#[derive(Debug, Clone, Copy)]
pub struct WorkerContext {
    /// The slot this worker fills (stable across restarts).
    pub slot: usize,
    /// How many workers this slot had before this one.
    pub generation: u64,
    /// This process's id.
    pub pid: u32,
    /// When this worker process started.
    pub started: Instant,
    /// The dispatch mode of the cluster.
    pub balance: crate::Balance,
}

pub(crate) async fn run<F, Fut, E>(
    identity: WorkerIdentity,
    config: &ClusterConfig,
    make_app: F,
) -> Result<(), ClusterError>
where
    F: FnOnce(WorkerContext) -> Fut,
    Fut: Future<Output = Result<axum::Router, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let ctx = WorkerContext {
        slot: identity.slot,
        generation: identity.generation,
        pid: std::process::id(),
        started: Instant::now(),
        balance: config.balance,
    };
    let listener = std::net::TcpListener::from(fd::adopt(LISTEN_FD, Expect::TcpListener)?);
    let channel = Channel::from_fd(fd::adopt(IPC_FD, Expect::SeqPacket)?)?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ClusterError::InheritedFd { fd: LISTEN_FD, what: "listening socket", source })?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|source| ClusterError::InheritedFd { fd: LISTEN_FD, what: "listening socket", source })?;

    let (trigger, mut stop) = shutdown::channel();
    watch_primary(channel.clone(), trigger.clone());
    watch_signals(trigger)?;

    // The app may take a while to build (it waits for its database); a shutdown request in the
    // meantime ends the worker without ever reporting ready.
    let router = tokio::select! {
        built = make_app(ctx) => built.map_err(|e| ClusterError::App(e.into()))?,
        _ = stop.wait() => {
            tracing::info!("shutdown requested before the worker was ready");
            return Ok(());
        }
    };

    let drain = Drain::new();
    let app = router.layer(from_fn_with_state(drain.clone(), drain::guard));
    let listener = DrainableListener::new(listener, stop.clone()).tap_io(|tcp| {
        // Small JSON responses should not wait for Nagle's algorithm.
        let _ = tcp.set_nodelay(true);
    });

    channel.send(&ToPrimary::Ready { pid: ctx.pid }).await?;
    tracing::info!(slot = ctx.slot, generation = ctx.generation, "worker ready");

    let graceful = {
        let (drain, channel, mut stop) = (drain.clone(), channel.clone(), stop.clone());
        async move {
            stop.wait().await;
            drain.start();
            tracing::info!(in_flight = drain.in_flight(), "worker draining");
            // The primary may already be gone; nothing to do about a failed notice then.
            let _ = channel.send(&ToPrimary::Draining).await;
            drain.idle().await;
        }
    };
    let serve = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(graceful);
    // The primary enforces the deadline by killing us; stopping a little earlier ourselves lets
    // the log say why.
    let deadline = async {
        stop.wait().await;
        tokio::time::sleep(config.shutdown_timeout).await;
    };
    tokio::select! {
        served = serve => {
            if let Err(err) = served {
                tracing::error!(error = %err, "server failed");
            }
            tracing::info!("worker drained");
        }
        _ = deadline => tracing::warn!(in_flight = drain.in_flight(), "shutdown deadline passed with requests in flight"),
    }
    Ok(())
}

/// Reads the primary's messages; a shutdown request, or the primary's death (end of file),
/// starts the drain.
fn watch_primary(channel: Channel, trigger: shutdown::Trigger) {
    tokio::spawn(async move {
        loop {
            match channel.recv::<ToWorker>().await {
                Ok(Some(ToWorker::Shutdown)) => {
                    tracing::debug!("primary asked for shutdown");
                    trigger.fire();
                }
                Ok(None) => {
                    tracing::warn!("primary is gone, draining");
                    trigger.fire();
                    return;
                }
                Err(err) => {
                    tracing::error!(error = %err, "IPC with the primary failed, draining");
                    trigger.fire();
                    return;
                }
            }
        }
    });
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
        trigger.fire();
    });
    Ok(())
}
