//! `herd ctl`: one request to the primary's control socket, printed for a human (or as JSON).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{bail, Context};
use herd_cluster::control::{self, Request, Status};

use crate::cli::{CtlArgs, CtlCommand, ScaleArg, DEFAULT_BIND};

/// How long `herd ctl` waits for the primary to accept and to answer, unless `--timeout`.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The same for `reload`, `restart` and `upgrade`, which answer once every new worker is ready.
pub(crate) const DEFAULT_ROLLOUT_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) async fn run(args: CtlArgs) -> anyhow::Result<i32> {
    let socket = args.socket.unwrap_or_else(default_socket);
    let timeout = args.timeout.unwrap_or(match args.command {
        CtlCommand::Reload | CtlCommand::Restart { .. } | CtlCommand::Upgrade => DEFAULT_ROLLOUT_TIMEOUT,
        _ => DEFAULT_TIMEOUT,
    });
    let unreachable = || format!("cannot talk to a herd primary at {} (is it running? see --socket)", socket.display());
    let (request, json) = match args.command {
        CtlCommand::Logs => {
            control::follow_logs(&socket, timeout, |line| println!("{line}")).await.with_context(unreachable)?;
            return Ok(0);
        }
        CtlCommand::Top => return top(&socket, timeout).await.with_context(unreachable),
        CtlCommand::Status { json } => (Request::Status, json),
        CtlCommand::Metrics => (Request::Metrics, false),
        CtlCommand::Reload => (Request::Reload, false),
        CtlCommand::Upgrade => (Request::Upgrade, false),
        CtlCommand::Scale { count: ScaleArg::To(n) } => (Request::Scale { to: Some(n), by: None }, false),
        CtlCommand::Scale { count: ScaleArg::By(k) } => (Request::Scale { to: None, by: Some(k) }, false),
        CtlCommand::Restart { slot } => (Request::Restart { slot }, false),
        CtlCommand::Stop => (Request::Stop, false),
        CtlCommand::Broadcast { json } => (Request::Send { slot: None, payload: parse_json(&json)? }, false),
        CtlCommand::Send { slot, json } => (Request::Send { slot: Some(slot), payload: parse_json(&json)? }, false),
    };
    let response = control::request(&socket, &request, timeout).await.with_context(unreachable)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(if response.ok { 0 } else { 1 });
    }
    if !response.ok {
        bail!("{}", response.error.unwrap_or_else(|| "request failed".to_owned()));
    }
    if let Some(text) = &response.metrics {
        print!("{text}");
        return Ok(0);
    }
    match (request, response.status, response.workers) {
        (Request::Status, Some(status), _) => print!("{}", table(&status)),
        (Request::Scale { .. }, _, Some(n)) => println!("scaled to {n} workers"),
        (Request::Reload, _, _) => println!("reloaded: every worker was replaced"),
        (Request::Upgrade, _, _) => println!(
            "upgraded: the new primary (pid {}) serves; the old one drains its workers and exits",
            response.pid.map_or_else(|| "?".to_owned(), |pid| pid.to_string())
        ),
        (Request::Restart { slot }, _, _) => println!("slot {slot} restarted"),
        (Request::Stop, _, _) => println!("stopping"),
        (Request::Send { .. }, _, Some(n)) => println!("sent to {n} worker(s)"),
        _ => println!("ok"),
    }
    Ok(0)
}

fn parse_json(text: &str) -> anyhow::Result<serde_json::Value> {
    serde_json::from_str(text)
        .with_context(|| format!("the message must be JSON, e.g. '{{\"type\":\"reset-stats\"}}', not {text:?}"))
}

/// `status`, redrawn every second, like `pm2 monit`.
async fn top(socket: &std::path::Path, timeout: Duration) -> std::io::Result<i32> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let response = control::request(socket, &Request::Status, timeout).await?;
        let Some(status) = response.status else {
            eprintln!("{}", response.error.unwrap_or_default());
            return Ok(1);
        };
        // Clear the screen and go home, then draw.
        print!("\x1b[2J\x1b[H{}", table(&status));
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }
}

/// Where `serve` puts the socket for the port in `HERD_BIND` (default [`DEFAULT_BIND`]'s).
fn default_socket() -> PathBuf {
    let port = std::env::var("HERD_BIND")
        .ok()
        .and_then(|b| b.parse::<SocketAddr>().ok())
        .map_or(DEFAULT_BIND.port(), |a| a.port());
    control::default_path(port)
}

/// A `pm2 ls`-style table.
pub(crate) fn table(status: &Status) -> String {
    let mut out = format!("{} · primary pid {} · balance {}", status.version, status.pid, status.balance);
    if !status.steering.is_empty() {
        out.push_str(&format!(" ({} steering)", status.steering));
    }
    if let Some(reload) = &status.last_reload {
        out.push_str(&format!(" · last reload: {reload}"));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:<5} {:<8} {:<9} {:>8} {:>8} {:>10} {:>6}\n",
        "slot", "pid", "state", "uptime", "restarts", "rss", "conns"
    ));
    for w in &status.workers {
        let rss = w.rss_bytes.map_or("-".to_owned(), |b| format!("{:.1}MiB", b as f64 / (1024.0 * 1024.0)));
        let conns = w.open_connections.map_or("-".to_owned(), |c| c.to_string());
        let pid = w.pid.map_or("-".to_owned(), |p| p.to_string());
        out.push_str(&format!(
            "{:<5} {:<8} {:<9} {:>8} {:>8} {:>10} {:>6}\n",
            w.slot,
            pid,
            w.state,
            uptime(w.uptime_s),
            w.restarts,
            rss,
            conns
        ));
    }
    out
}

fn uptime(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}
