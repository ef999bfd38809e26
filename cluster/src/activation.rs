//! Socket activation: a listening socket bound by someone else and inherited at fd 3, the way
//! systemd hands one over from a `.socket` unit (and `systemd-socket-activate`, `systemfd`,
//! `catflap` do in development): `LISTEN_FDS=1`, and `LISTEN_PID` naming this process
//! (`sd_listen_fds(3)`).
//!
//! Why it matters: the socket outlives herd. While herd is stopped and started again (a full
//! `systemctl restart`, a new version), connections wait in the kernel's accept queue of the
//! socket the service manager holds, instead of being refused, and herd takes them when it is
//! up. herd uses the inherited socket in every balance mode, exactly as one it bound itself.
//!
//! `LISTEN_PID` may be missing (`systemfd --no-pid`): a process cannot know its own pid before
//! it exists, so development tools that exec the server through others leave it out. When it is
//! present and names another process, the variables were meant for someone else (a parent that
//! leaked them) and herd binds `--bind` as usual.

use std::{
    os::fd::RawFd,
    sync::atomic::{AtomicBool, Ordering},
};

use crate::{
    error::ClusterError,
    fd::{self, Expect},
};

/// How many sockets were passed.
pub(crate) const ENV_LISTEN_FDS: &str = "LISTEN_FDS";
/// Which process they were passed to.
pub(crate) const ENV_LISTEN_PID: &str = "LISTEN_PID";
/// Their names (`FileDescriptorName=`); herd takes one socket, whatever its name.
pub(crate) const ENV_LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The first passed descriptor (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

/// What the environment asks of this process.
#[derive(Debug, PartialEq, Eq)]
enum Passed {
    /// No socket, or sockets meant for another process.
    Nothing,
    /// One socket, at [`FIRST_FD`].
    One,
}

/// Reads `LISTEN_FDS` / `LISTEN_PID` for the process `own_pid`.
fn passed(fds: Option<&str>, pid: Option<&str>, own_pid: u32) -> Result<Passed, ClusterError> {
    let Some(fds) = fds else { return Ok(Passed::Nothing) };
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            tracing::warn!(
                listen_pid = pid,
                pid = own_pid,
                "LISTEN_FDS is set for another process; binding --bind instead of using an inherited socket"
            );
            return Ok(Passed::Nothing);
        }
    }
    match fds.trim().parse::<u32>() {
        Ok(0) => Ok(Passed::Nothing),
        Ok(1) => Ok(Passed::One),
        Ok(n) => Err(ClusterError::SocketActivation(format!(
            "LISTEN_FDS={n}: herd serves one listening socket; give its service one ListenStream="
        ))),
        Err(_) => Err(ClusterError::SocketActivation(format!("LISTEN_FDS={fds:?} is not a number of sockets"))),
    }
}

/// The listener this process was started with, if it was socket-activated. It must be a
/// listening TCP socket; anything else is an error rather than a silent fallback to `--bind`
/// (the operator asked for activation, and binding the port instead would fail or, worse,
/// succeed beside the socket systemd holds).
///
/// Takes the socket at most once per process (a second `herd_cluster::run` in the same process
/// binds `--bind`): fd 3 must have one owner.
pub(crate) fn inherited_listener() -> Result<Option<std::net::TcpListener>, ClusterError> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let fds = std::env::var(ENV_LISTEN_FDS).ok();
    let pid = std::env::var(ENV_LISTEN_PID).ok();
    if passed(fds.as_deref(), pid.as_deref(), std::process::id())? == Passed::Nothing
        || TAKEN.swap(true, Ordering::SeqCst)
    {
        return Ok(None);
    }
    let listener = std::net::TcpListener::from(fd::adopt(FIRST_FD, Expect::TcpListener)?);
    // A Unix stream socket passes the checks above; it has no IP address.
    listener.local_addr().map_err(|source| ClusterError::InheritedFd {
        fd: FIRST_FD,
        what: "listening socket (a TCP one: ListenStream=host:port)",
        source,
    })?;
    Ok(Some(listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_socket_for_this_process_is_taken() {
        assert_eq!(passed(Some("1"), Some("42"), 42).ok(), Some(Passed::One));
        assert_eq!(passed(Some("1"), None, 42).ok(), Some(Passed::One), "systemfd --no-pid");
    }

    #[test]
    fn nothing_passed_or_passed_to_another_process_binds_as_usual() {
        assert_eq!(passed(None, None, 42).ok(), Some(Passed::Nothing));
        assert_eq!(passed(None, Some("42"), 42).ok(), Some(Passed::Nothing));
        assert_eq!(passed(Some("0"), Some("42"), 42).ok(), Some(Passed::Nothing));
        assert_eq!(passed(Some("1"), Some("41"), 42).ok(), Some(Passed::Nothing));
        assert_eq!(passed(Some("1"), Some("x"), 42).ok(), Some(Passed::Nothing));
    }

    #[test]
    fn more_sockets_or_garbage_is_an_error() {
        for fds in ["2", "x", "-1", ""] {
            let err = passed(Some(fds), None, 42).expect_err(fds);
            assert!(err.to_string().contains("LISTEN_FDS"), "{err}");
        }
    }
}
