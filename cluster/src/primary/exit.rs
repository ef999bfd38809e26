//! Human wording for how a worker process ended.

use std::{os::unix::process::ExitStatusExt, process::ExitStatus};

use nix::sys::signal::Signal;

/// "killed by SIGKILL", "exited with status 3", "exited cleanly".
pub(crate) fn describe(status: &std::io::Result<ExitStatus>) -> String {
    match status {
        Err(err) => format!("could not be waited for ({err})"),
        Ok(status) => match (status.code(), status.signal()) {
            (Some(0), _) => "exited cleanly".to_owned(),
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => match Signal::try_from(sig) {
                Ok(signal) => format!("killed by {}", signal.as_str()),
                Err(_) => format!("killed by signal {sig}"),
            },
            (None, None) => "ended".to_owned(),
        },
    }
}

/// The cause of death the supervisor counts.
pub(crate) fn death(status: &std::io::Result<ExitStatus>) -> crate::supervisor::Death {
    use crate::supervisor::Death;
    match status {
        Ok(status) if status.signal().is_some() => Death::Signal,
        Ok(status) if status.code() == Some(0) => Death::Clean,
        _ => Death::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wording() {
        assert_eq!(describe(&Ok(ExitStatus::from_raw(9))), "killed by SIGKILL");
        assert_eq!(describe(&Ok(ExitStatus::from_raw(3 << 8))), "exited with status 3");
        assert_eq!(describe(&Ok(ExitStatus::from_raw(0))), "exited cleanly");
        use crate::supervisor::Death;
        assert_eq!(death(&Ok(ExitStatus::from_raw(9))), Death::Signal);
        assert_eq!(death(&Ok(ExitStatus::from_raw(3 << 8))), Death::Failed);
        assert_eq!(death(&Ok(ExitStatus::from_raw(0))), Death::Clean);
    }
}
