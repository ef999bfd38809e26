//! `bare-axum ADDR`: `GET /healthz` on one runtime thread (as each herd worker runs), printing
//! `ready` once it listens. Nothing else: no sessions, no limits, no supervisor.

use axum::{routing::get, Router};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3001".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    println!("ready");
    axum::serve(listener, app).await?;
    Ok(())
}
