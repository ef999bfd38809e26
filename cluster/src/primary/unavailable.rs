//! The primary's own answer when no worker can serve: `503 Service Unavailable` with
//! `Retry-After` and `Connection: close`, then close.
//!
//! Without it a connection that arrives while every slot is errored (or no worker has been
//! ready for `--queue-timeout`) would wait forever, and a balancer probing `/healthz` would see
//! a hang instead of a refusal. Every request gets the same answer, `/healthz` included: the
//! body says no worker is serving, so a balancer takes the host out until one serves again.
//!
//! Each answer runs in its own task with bounded reads and writes, never in the supervisor, and
//! at most [`MAX_ANSWERING`] at a time: beyond that a connection is simply closed.
//!
//! When: in primary-accept modes a queued connection is answered once it waited
//! `--queue-timeout` for a worker that can take it, at once when every slot is errored (no
//! worker is coming), and when the cluster shuts down. In shared mode the workers accept on
//! the listener themselves, so without a worker the kernel would queue connections forever:
//! once none has served for `--queue-timeout` (at once when every slot is errored) the primary
//! becomes their stand-in, accepting on the listener to answer 503, until a worker serves again.

use std::{
    io,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
};

use crate::tally::Tally;

/// Connections answered at once; further ones are closed without an answer.
const MAX_ANSWERING: usize = 256;
/// How long the client may take to send its request head (read so that closing the socket
/// with unread data does not reset the connection before the client reads the answer).
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// How long writing the answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// After answering, how long to wait for the client to close, discarding what it still sends.
const LINGER: Duration = Duration::from_secs(1);
/// Most request bytes read before answering.
const MAX_HEAD: usize = 16 * 1024;
/// The error the answer gives.
const ERROR: &str = "no worker is serving; retry shortly";
/// At most one log line per this interval about connections answered 503.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Answers connections with `503` when no worker can.
pub(super) struct Unavailable {
    response: Arc<[u8]>,
    permits: Arc<Semaphore>,
    log: Tally,
}

impl Default for Unavailable {
    fn default() -> Self {
        Self {
            response: crate::canned::service_unavailable(ERROR).into(),
            permits: Arc::new(Semaphore::new(MAX_ANSWERING)),
            log: Tally::new(LOG_INTERVAL),
        }
    }
}

impl Unavailable {
    /// Answers `stream` in a task of its own (or closes it when [`MAX_ANSWERING`] are busy);
    /// `why` goes into the (rate-limited) log line.
    pub(super) fn answer(&mut self, stream: std::net::TcpStream, why: &str) {
        if let Some(count) = self.log.due(1, Instant::now()) {
            tracing::warn!(
                "answering 503 (no worker is serving): {why}; {count} connection(s) since the last such line"
            );
        }
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            return; // dropping it closes it
        };
        let response = Arc::clone(&self.response);
        tokio::spawn(async move {
            if let Err(err) = respond(stream, &response).await {
                tracing::debug!(error = %err, "could not answer 503 to a client");
            }
            drop(permit);
        });
    }
}

async fn respond(stream: std::net::TcpStream, response: &[u8]) -> io::Result<()> {
    stream.set_nonblocking(true)?;
    let mut stream = TcpStream::from_std(stream)?;
    let mut head = Vec::with_capacity(1024);
    // Whatever arrived by then; a client that sends nothing still gets its answer.
    let _ = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream, &mut head)).await;
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "write timed out");
    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(response)).await.map_err(|_| timed_out())??;
    stream.shutdown().await?;
    let _ = tokio::time::timeout(LINGER, discard(&mut stream)).await;
    Ok(())
}

/// Reads until the end of the request head (or [`MAX_HEAD`] bytes, or the client's end).
async fn read_head(stream: &mut TcpStream, head: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 2048];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// Reads and drops everything until the client closes.
async fn discard(stream: &mut TcpStream) -> io::Result<()> {
    let mut chunk = [0u8; 2048];
    while stream.read(&mut chunk).await? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[tokio::test]
    async fn answers_503_with_retry_after_and_closes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::thread::spawn(move || {
            let mut conn = std::net::TcpStream::connect(addr).expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
            let mut answer = String::new();
            conn.read_to_string(&mut answer).expect("read to the end: the primary closes");
            answer
        });
        let (stream, _) = listener.accept().expect("accept");
        Unavailable::default().answer(stream, "a test");
        let answer = tokio::task::spawn_blocking(move || client.join().expect("client")).await.expect("join");
        assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{answer}");
        assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
        assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).expect("a body");
        let json: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert!(json["error"].as_str().is_some_and(|e| e.contains("no worker")), "{json}");
    }
}
