//! Any axum `Router` in a supervised cluster, with the client's real address.
//!
//! ```sh
//! cargo run -p herd-cluster --example hello            # round-robin over 4 workers on :3000
//! HELLO_BALANCE=ip-hash cargo run -p herd-cluster --example hello
//! curl http://127.0.0.1:3000/                          # run it a few times
//! ```
//!
//! The same `main` runs in the primary and in every worker: `herd_cluster::run` decides which
//! role this process plays, and only workers call the closure that builds the router. Ctrl-C
//! drains every worker gracefully.

use std::net::SocketAddr;

use axum::{extract::ConnectInfo, routing::get, Router};
use herd_cluster::{Balance, ClusterConfig, WorkerContext};

#[tokio::main]
async fn main() -> Result<(), herd_cluster::ClusterError> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let bind = std::env::var("HELLO_BIND").ok().and_then(|b| b.parse().ok());
    let mut config = ClusterConfig::new(bind.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 3000))));
    config.workers = 4;
    config.balance = match std::env::var("HELLO_BALANCE").as_deref() {
        Ok("shared") => Balance::Shared,
        Ok("least-conn") => Balance::LeastConn,
        Ok("ip-hash") => Balance::IpHash,
        _ => Balance::RoundRobin,
    };
    herd_cluster::run(config, |ctx: WorkerContext| async move {
        let (slot, pid) = (ctx.slot, ctx.pid);
        let hello = move |ConnectInfo(client): ConnectInfo<SocketAddr>| async move {
            format!("hello {client}, this is worker {slot} (pid {pid})\n")
        };
        Ok::<_, std::convert::Infallible>(Router::new().route("/", get(hello)))
    })
    .await?;
    Ok(())
}
