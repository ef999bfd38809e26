//! Running one command of the Docker tooling with a deadline, its output kept in files (a
//! child's children may hold a pipe open after it is killed; a file never blocks), and an
//! error that names the step, the command line and the tail of what it printed.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::Duration,
};

/// How many lines of output a failure shows.
const TAIL_LINES: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("{what}: cannot run `{command}`: {source}")]
    Spawn { what: String, command: String, source: std::io::Error },
    #[error("{what}: `{command}` failed ({status}); output tail:\n{tail}")]
    Failed { what: String, command: String, status: ExitStatus, tail: String },
    #[error("{what}: `{command}` still running after {timeout:?}, killed; output tail:\n{tail}")]
    TimedOut { what: String, command: String, timeout: Duration, tail: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{what}: {detail}")]
    Other { what: String, detail: String },
}

impl DockerError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { what: what.into(), source }
    }

    pub fn other(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Other { what: what.into(), detail: detail.into() }
    }
}

/// A command to run to completion: `what` names the step in errors.
pub struct Run {
    what: String,
    cmd: Command,
    timeout: Duration,
    /// Where stdout and stderr go, named after the step.
    log_dir: PathBuf,
    /// Nothing unless [`Run::stdin`] gave something.
    stdin: Option<Stdio>,
}

/// The command line as a user would type it (environment settings the kit adds left out).
pub(super) fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `TAIL_LINES` lines of `text`.
pub(super) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

impl Run {
    pub fn new(what: impl Into<String>, cmd: Command, timeout: Duration, log_dir: &Path) -> Self {
        Self { what: what.into(), cmd, timeout, log_dir: log_dir.to_owned(), stdin: None }
    }

    /// Feeds the command this (a pipe from another process, a file).
    pub fn stdin(mut self, stdin: impl Into<Stdio>) -> Self {
        self.stdin = Some(stdin.into());
        self
    }

    /// Runs it; `Ok(stdout)` when it exits 0 within its timeout.
    pub fn stdout(self) -> Result<String, DockerError> {
        self.output().map(|(stdout, _)| stdout)
    }

    /// Runs it; `Ok((stdout, stderr))` when it exits 0 within its timeout.
    pub fn output(mut self) -> Result<(String, String), DockerError> {
        let command = command_line(&self.cmd);
        let what = self.what.clone();
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out_path = self.log_dir.join(format!("cmd-{n}.out"));
        let err_path = self.log_dir.join(format!("cmd-{n}.err"));
        let io = |source| DockerError::io(format!("{what}: output file in {}", self.log_dir.display()), source);
        let out = File::create(&out_path).map_err(io)?;
        let err = File::create(&err_path).map_err(io)?;
        self.cmd.stdin(self.stdin.take().unwrap_or_else(Stdio::null));
        let mut child = self.cmd.stdout(out).stderr(err).spawn().map_err(|source| DockerError::Spawn {
            what: what.clone(),
            command: command.clone(),
            source,
        })?;
        let status = match crate::poll_every(Duration::from_millis(50), self.timeout, || child.try_wait().transpose()) {
            Some(Ok(status)) => Some(status),
            Some(Err(source)) => return Err(DockerError::io(format!("{what}: wait for `{command}`"), source)),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        };
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        let both = || tail(&format!("{stdout}\n{stderr}"));
        match status {
            Some(status) if status.success() => Ok((stdout, stderr)),
            Some(status) => Err(DockerError::Failed { what, command, status, tail: both() }),
            None => Err(DockerError::TimedOut { what, command, timeout: self.timeout, tail: both() }),
        }
    }
}
