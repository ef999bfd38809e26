//! herd: the binary's parts, as a library so tests and benchmarks can reach them.
//!
//! # Layout
//!
//! - [`cli`]: the command line (every flag also reads an environment variable).
//! - [`config_file`]: `--config herd.toml`, the ecosystem file.
//! - [`serve`]: `herd serve` — primary-only preparation, then the cluster.
//! - [`ctl`]: `herd ctl` — talking to a running primary over its control socket.
//! - [`systemd`]: `herd systemd-unit` — a unit file for the current flags.
//! - [`private_redis`]: the `redis-server` child started when no Redis is configured.
//! - [`eviction`]: the Redis `maxmemory-policy` herd needs, checked at start.
//! - [`users`]: users and argon2 password hashes in Redis, and `herd users`.
//! - [`routes`]: the HTTP routes and [`routes::router`].
//! - [`error`]: how failures become JSON responses with the right status.
//! - [`logging`]: tracing setup; every worker line says which worker wrote it.
//! - [`secrets`]: the Redis URL and demo passwords: from files or the environment, never a
//!   worker's command line, redacted in logs.

pub mod cli;
pub mod config_file;
pub mod ctl;
pub mod error;
pub mod eviction;
pub mod logging;
pub mod private_redis;
pub mod routes;
pub mod secrets;
pub mod serve;
pub mod systemd;
pub mod users;
