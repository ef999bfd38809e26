use std::io;

/// Errors that stop the primary or a worker from running.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The configuration cannot work (checked before anything starts).
    #[error("invalid cluster configuration: {0}")]
    InvalidConfig(#[from] crate::config::ConfigError),
    /// The listening socket could not be created.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// A worker's environment lacks a variable the primary always sets.
    #[error(
        "worker environment variable {name} is missing or malformed (was this process started by a herd primary?)"
    )]
    BadWorkerEnv {
        /// The variable.
        name: &'static str,
    },
    /// An inherited file descriptor could not be adopted.
    #[error("cannot adopt inherited fd {fd} ({what}): {source}")]
    InheritedFd {
        /// Which descriptor.
        fd: i32,
        /// What it should have been.
        what: &'static str,
        /// What went wrong.
        source: io::Error,
    },
    /// `LISTEN_FDS` asks for something herd cannot do (several sockets, a non-number).
    #[error("socket activation: {0}")]
    SocketActivation(String),
    /// This process was started to take over from a primary and cannot (`crate::upgrade`).
    #[error("hand-over from the old primary: {0}")]
    Upgrade(String),
    /// The control socket could not be set up.
    #[error("cannot serve the control socket {path}: {source}")]
    ControlSocket {
        /// Where it should have been.
        path: std::path::PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The admin listener (`--metrics-bind`) could not be bound.
    #[error("cannot listen on {addr} for the admin listener: {source}")]
    AdminBind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    /// The path of the running executable is unknown, so workers cannot be started.
    #[error("cannot find the current executable to start workers: {0}")]
    CurrentExe(io::Error),
    /// The worker's application failed to build.
    #[error("worker application failed to start: {0}")]
    App(Box<dyn std::error::Error + Send + Sync>),
    /// The IPC channel failed.
    #[error(transparent)]
    Channel(#[from] crate::channel::ChannelError),
}
