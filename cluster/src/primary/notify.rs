//! Telling systemd how the cluster is doing (`sd_notify`), when it started us with
//! `NOTIFY_SOCKET` set (a `Type=notify` unit; `herd systemd-unit` writes one). Without the
//! variable every call does nothing.

use std::os::unix::net::UnixDatagram;

/// Sends one notification, e.g. `READY=1`. Failures are logged, never fatal: systemd being
/// unreachable must not take the cluster down.
pub(super) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let path = path.to_string_lossy();
        match path.strip_prefix('@') {
            // An abstract socket (Linux): the name has no file behind it.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), path.as_ref()),
        }
    });
    if let Err(err) = sent {
        tracing::warn!(error = %err, "cannot notify systemd ({state})");
    }
}
