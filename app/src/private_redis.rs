//! The no-Docker quick start: when no Redis is configured and none answers at the default
//! address, the primary runs its own `redis-server` child with data under `./.herd/redis/`
//! (append-only file on, so sessions survive a restart of herd) and stops it on exit.
//!
//! The child gets its own process group so that Ctrl-C in the terminal reaches herd, which
//! drains its workers while Redis is still up, and only then stops Redis.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
    time::{sleep, timeout, Instant},
};

/// Where the private Redis keeps its files, relative to the working directory.
pub(crate) const DATA_DIR: &str = ".herd/redis";
const START_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub(crate) enum PrivateRedisError {
    #[error("cannot create {dir}: {source}")]
    DataDir { dir: PathBuf, source: std::io::Error },
    #[error("cannot find a free port for redis-server: {0}")]
    Port(std::io::Error),
    #[error("cannot start redis-server: {0}")]
    Spawn(std::io::Error),
    #[error("redis-server exited during start ({status}); see {log}")]
    Exited { status: std::process::ExitStatus, log: PathBuf },
    #[error("redis-server did not answer within {START_TIMEOUT:?}; see {log}")]
    NoAnswer { log: PathBuf },
}

/// A `redis-server` owned by this process.
pub(crate) struct PrivateRedis {
    child: Child,
    pub url: String,
}

/// True if a Redis answers `PING` at `addr` within half a second (an error reply such as
/// `-NOAUTH` counts: something speaking RESP is there).
pub(crate) async fn answers(addr: SocketAddr) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut reply = [0u8; 1];
        stream.read_exact(&mut reply).await.ok()?;
        Some(matches!(reply[0], b'+' | b'-'))
    };
    matches!(timeout(Duration::from_millis(500), probe).await, Ok(Some(true)))
}

/// True if `redis-server` can be found on `PATH`.
pub(crate) fn available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("redis-server").is_file()))
}

impl PrivateRedis {
    pub(crate) async fn start() -> Result<Self, PrivateRedisError> {
        let dir = std::env::current_dir().map(|cwd| cwd.join(DATA_DIR)).unwrap_or_else(|_| PathBuf::from(DATA_DIR));
        std::fs::create_dir_all(&dir).map_err(|source| PrivateRedisError::DataDir { dir: dir.clone(), source })?;
        let port = free_port().map_err(PrivateRedisError::Port)?;
        let log = dir.join("redis.log");
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--appendonly", "yes", "--save", ""])
            // What herd needs (docs/hardening.md): a full Redis refuses writes, never evicts users.
            .args(["--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(PrivateRedisError::Spawn)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + START_TIMEOUT;
        while !answers(addr).await {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(PrivateRedisError::Exited { status, log });
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(PrivateRedisError::NoAnswer { log });
            }
            sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(
            "no Redis configured and none at the default address: started a private redis-server \
             (pid {}) on {addr}, data in {}",
            child.id().unwrap_or_default(),
            dir.display()
        );
        Ok(Self { child, url: format!("redis://{addr}") })
    }

    /// Stops Redis with SIGTERM (it flushes the append-only file) and waits for it.
    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(_) => tracing::info!("private redis-server stopped"),
            Err(_) => {
                tracing::warn!("private redis-server did not stop within {STOP_TIMEOUT:?}; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// The data directory of the private Redis, for messages.
pub(crate) fn data_dir() -> &'static Path {
    Path::new(DATA_DIR)
}
