//! herd: the `herd` binary's parts; `main.rs` parses the command line, sets up logging and calls [`run`].
//!
//! # Layout
//!
//! - `cli`: the command line (every flag also reads an environment variable).
//! - `config_file`: `--config herd.toml`, the ecosystem file.
//! - `serve`: `herd serve` — primary-only preparation, then the cluster.
//! - `ctl`: `herd ctl` — talking to a running primary over its control socket.
//! - `systemd`: `herd systemd-unit` — a unit file for the current flags.
//! - `private_redis`: the `redis-server` child started when no Redis is configured.
//! - `eviction`: the Redis `maxmemory-policy` herd needs, checked at start.
//! - `users`: users and argon2 password hashes in Redis, and `herd users`.
//! - `routes`: the HTTP routes and `routes::router`.
//! - `error`: how failures become JSON responses with the right status.
//! - `logging`: tracing setup; every worker line says which worker wrote it.
//! - `secrets`: the Redis URL and demo passwords: from files or the environment, never a
//!   worker's command line, redacted in logs.
//!
//! The library is what the `herd` binary (`main.rs`) runs, and a library so the unit tests and
//! the in-process route tests (`routes::tests`) reach every part. Its public surface is only
//! what `main` needs; everything else is `pub(crate)`, so `unreachable_pub` flags any `pub`
//! that is not.

mod cli;
mod config_file;
mod ctl;
mod error;
mod eviction;
mod logging;
mod metrics;
mod private_redis;
mod routes;
mod secrets;
mod serve;
mod systemd;
mod users;

pub use cli::{Cli, Command};
pub use config_file::parse as parse_command_line;
pub use logging::{init as init_logging, LogFormat};

/// Runs one `herd` command in this process's role; returns the process exit code.
pub async fn run(
    command: Command,
    role: herd_cluster::Role,
    logs: Option<herd_cluster::logs::LogSink>,
) -> anyhow::Result<i32> {
    match command {
        Command::Serve(args) => serve::run(*args, role, logs).await,
        Command::Users(command) => users::cli::run(command).await,
        Command::Ctl(args) => ctl::run(args).await,
        Command::SystemdUnit(args) => systemd::print_unit(&args),
        Command::HashPassword => users::hasher::run_child(),
        Command::Config(cli::ConfigCommand::Example) => {
            print!("{}", config_file::example());
            Ok(0)
        }
    }
}
