//! Run an axum [`Router`](axum::Router) in N supervised worker processes that share one port.
//!
//! The process that calls [`run`] first is the **primary**: it binds the listening socket, then
//! re-executes its own binary once per worker slot with the listener and a private IPC socket
//! inherited. Each re-executed copy calls [`run`] again, finds itself marked as a **worker**
//! through its environment, builds your router and serves it. The primary never serves HTTP;
//! it restarts workers that die (with backoff when they die young), and on SIGTERM/SIGINT drains
//! them gracefully within a deadline.
//!
//! Re-executing instead of `fork()`ing matters: forking a process that already runs a tokio
//! runtime copies its threads' locks in whatever state they were in. Because a worker runs the
//! same `main` with the same arguments, your CLI parsing and configuration code runs unchanged
//! in both roles; use [`Role::detect`] to skip primary-only setup (migrations, seeding) in
//! workers.
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use herd_cluster::{ClusterConfig, WorkerContext};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), herd_cluster::ClusterError> {
//!     let config = ClusterConfig::new("127.0.0.1:3000".parse().expect("literal address"));
//!     herd_cluster::run(config, |ctx: WorkerContext| async move {
//!         let app = Router::new().route("/", get(move || async move {
//!             format!("hello from worker {} (pid {})", ctx.slot, ctx.pid)
//!         }));
//!         Ok::<_, std::convert::Infallible>(app)
//!     })
//!     .await?;
//!     Ok(())
//! }
//! ```
//!
//! # Layout
//!
//! - [`client_ip`]: which addresses count as one client (IPv6 by /64), for affinity and limits.
//! - [`config`]: what the cluster needs to know (worker count, bind address, deadlines).
//! - [`control`]: the operator's control socket and its JSON protocol (`herd ctl`).
//! - [`role`]: how a process learns whether it is the primary or worker *k*.
//! - `supervisor`: the primary's decisions as a state machine with no I/O — restarts with
//!   backoff, rolling reload, scaling, queueing, graceful shutdown — tested by simulation.
//! - `primary`: the shell around it — the worker processes and their links, the listener
//!   (accepting in primary-accept modes), the control socket, signals and timers.
//! - `dispatch`: which worker gets a connection: round-robin, least-connections, or sticky
//!   rendezvous hashing of the client IP.
//! - `worker`: serving the router on the inherited listener or on handed-off connections, and
//!   draining on request.
//! - `conn`: one client connection on hyper: header, body and keep-alive timeouts, requests
//!   per connection, and the per-worker connection cap.
//! - `proto` and `channel`: the typed messages and the `SOCK_SEQPACKET` socket they travel on.
//! - `fd`: the one place with `unsafe`: adopting inherited descriptors and passing accepted
//!   sockets with `SCM_RIGHTS`.
//! - `fdlimit`: the open-files limit, the reserve each process keeps for its own work, and
//!   shedding the connections that would eat into it.
//! - [`drain`]: the middleware and listener that make a worker's shutdown graceful.
//! - [`messaging`]: application messages between workers and the primary (broadcast, gather).
//! - [`metrics`]: worker series, the snapshots the primary gathers at scrape time, and the
//!   Prometheus text of the admin listener (`--metrics-bind`).
//! - [`proxy_protocol`]: `--proxy-protocol`: reading the PROXY header that names the client
//!   behind an L4 balancer, before the connection is served (or, in primary-accept modes, even
//!   dispatched).
//! - [`logs`]: the merged log of the primary and its workers, its files and followers.

pub mod client_ip;
pub mod config;
pub mod control;
pub mod drain;
pub mod forwarded;
pub mod logs;
pub mod messaging;
pub mod metrics;
pub mod proxy_protocol;
pub mod role;

mod activation;
mod canned;
mod channel;
mod code_pages;
mod conn;
mod dispatch;
mod error;
mod fd;
mod fdlimit;
mod primary;
mod proto;
mod shutdown;
mod socket_path;
mod steering;
mod supervisor;
mod tally;
mod upgrade;
mod worker;

pub use config::{
    AdminConfig, Balance, ClusterConfig, ConfigError, ConnectionLimits, Recycling, RestartPolicy, Steering,
};
pub use error::ClusterError;
pub use messaging::{Message, Messenger, Reply};
pub use primary::ShutdownReport;
pub use role::{Role, WorkerIdentity};
pub use worker::WorkerContext;

use std::future::Future;

/// What [`run`] returns once the process's role is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This process was the primary; it shut the cluster down.
    Primary(ShutdownReport),
    /// This process was a worker; it drained and stopped serving.
    Worker,
}

/// Runs the cluster: as the primary in the first process, as a worker in the processes the
/// primary starts. `make_app` is only called in workers; the worker reports ready to the
/// primary after the future it returns resolves, so put readiness checks (database pings)
/// inside it. A configuration that [`ClusterConfig::validate`] refuses is returned as
/// [`ClusterError::InvalidConfig`] before anything is bound or started.
pub async fn run<F, Fut, E>(config: ClusterConfig, make_app: F) -> Result<Outcome, ClusterError>
where
    F: FnOnce(WorkerContext) -> Fut,
    Fut: Future<Output = Result<axum::Router, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    config.validate()?;
    match Role::detect()? {
        Role::Primary => {
            let (listener, origin) = match activation::inherited_listener()? {
                Some(listener) => (listener, primary::ListenerOrigin::Inherited),
                None => (primary::bind(config.bind)?, primary::ListenerOrigin::Bound),
            };
            primary::run(config, listener, origin).await.map(Outcome::Primary)
        }
        Role::Worker(identity) => {
            worker::run(identity, &config, make_app).await?;
            Ok(Outcome::Worker)
        }
    }
}
