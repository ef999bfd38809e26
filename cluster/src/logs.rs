//! The merged log: the primary's own lines and every worker's output in one stream, like
//! `pm2 logs`. Each line goes to the primary's stderr, to the optional out file (every line)
//! and error file (warnings and errors), and to `herd ctl logs` followers. `SIGUSR1` reopens
//! both files, so logrotate can move them away.
//!
//! Workers write their lines to a pipe the primary reads (their output is captured only when
//! the cluster has a `LogSink`); lines keep whatever prefix the worker's logger gave them.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

/// Lines a slow `herd ctl logs` follower may lag behind before it misses some.
const FOLLOW_BUFFER: usize = 4096;

/// Where merged log lines go. Cheap to clone.
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<Inner>,
}

struct Inner {
    files: Mutex<Files>,
    feed: broadcast::Sender<Arc<str>>,
}

struct Files {
    out: Option<(PathBuf, File)>,
    err: Option<(PathBuf, File)>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink").finish_non_exhaustive()
    }
}

fn open(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogSink {
    /// A sink writing to stderr and, when given, to `out` (every line) and `err` (warnings and
    /// errors). The files are created if missing and appended to.
    pub fn new(out: Option<PathBuf>, err: Option<PathBuf>) -> io::Result<Self> {
        let out = out.map(|p| open(&p).map(|f| (p, f))).transpose()?;
        let err = err.map(|p| open(&p).map(|f| (p, f))).transpose()?;
        Ok(Self {
            inner: Arc::new(Inner { files: Mutex::new(Files { out, err }), feed: broadcast::channel(FOLLOW_BUFFER).0 }),
        })
    }

    /// Writes one line (without its newline) everywhere it belongs. The files come first, so
    /// a line seen on stderr or by a follower is already on disk.
    pub fn write_line(&self, line: &str) {
        if let Ok(mut files) = self.inner.files.lock() {
            if let Some((_, file)) = &mut files.out {
                let _ = writeln!(file, "{line}");
            }
            if is_warning_or_error(line) {
                if let Some((_, file)) = &mut files.err {
                    let _ = writeln!(file, "{line}");
                }
            }
        }
        let _ = writeln!(io::stderr().lock(), "{line}");
        let _ = self.inner.feed.send(Arc::from(line));
    }

    /// Reopens the files at their paths (after logrotate moved them).
    pub fn reopen(&self) -> io::Result<()> {
        let mut guard = self.inner.files.lock().map_err(|_| io::Error::other("log lock poisoned"))?;
        let files = &mut *guard;
        for (path, file) in [&mut files.out, &mut files.err].into_iter().flatten() {
            *file = open(path)?;
        }
        Ok(())
    }

    /// Every line from now on.
    pub fn follow(&self) -> broadcast::Receiver<Arc<str>> {
        self.inner.feed.subscribe()
    }
}

/// Warnings and errors, in the text format (` WARN `, ` ERROR `) or JSON (`"level":"WARN"`).
fn is_warning_or_error(line: &str) -> bool {
    ["WARN", "ERROR"]
        .iter()
        .any(|level| line.contains(&format!(" {level} ")) || line.contains(&format!("\"level\":\"{level}\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_to_the_right_files_and_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("herd-logs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (out, err) = (dir.join("out.log"), dir.join("err.log"));
        let sink = LogSink::new(Some(out.clone()), Some(err.clone())).expect("sink");
        let mut follower = sink.follow();
        sink.write_line("worker=1 pid=7 2026-01-01T00:00:00Z  INFO ready");
        sink.write_line("primary pid=6 2026-01-01T00:00:00Z  WARN worker 1 pid 7 killed by SIGKILL");
        sink.write_line(r#"{"level":"ERROR","fields":{"message":"boom"}}"#);
        assert_eq!(std::fs::read_to_string(&out).expect("out").lines().count(), 3);
        assert_eq!(std::fs::read_to_string(&err).expect("err").lines().count(), 2);
        assert!(follower.try_recv().expect("followed").contains("INFO ready"));

        std::fs::rename(&out, dir.join("out.log.1")).expect("rotate");
        sink.reopen().expect("reopen");
        sink.write_line("after rotation  INFO hello");
        assert_eq!(std::fs::read_to_string(&out).expect("new out"), "after rotation  INFO hello\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
