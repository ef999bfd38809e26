//! Logging. Every line says which process wrote it: text lines start with `primary pid=…` or
//! `worker=1 pid=4242`, JSON lines (`--log-format json`) carry `"process"`, `"worker"` and
//! `"pid"` fields. In the primary, lines go through the cluster's merged log (stderr, the
//! `--log-file`/`--error-log-file` files, `herd ctl logs`); workers write to their stderr,
//! which the primary reads into the same merged log. `RUST_LOG` overrides the default filter.

use std::io::{self, IsTerminal, Write};

use clap::ValueEnum;
use herd_cluster::{logs::LogSink, Role};
use tracing_subscriber::{fmt::MakeWriter, EnvFilter};

const DEFAULT_FILTER: &str = "info,fred=warn,tower_sessions=warn,tower_sessions_core=warn";

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

pub fn init(role: Role, format: LogFormat, sink: Option<LogSink>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only for a person at a terminal, never into files or pipes.
    let ansi = sink.is_none() && io::stderr().is_terminal();
    let writer = LineWriter { tag: Tag::of(role), sink };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_target(false);
    match format {
        LogFormat::Pretty => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Who writes.
#[derive(Clone)]
struct Tag {
    text: String,
    json_fields: String,
}

impl Tag {
    fn of(role: Role) -> Self {
        let pid = std::process::id();
        match role {
            Role::Primary => {
                Self { text: format!("primary pid={pid}"), json_fields: format!(r#""process":"primary","pid":{pid},"#) }
            }
            Role::Worker(id) => Self {
                text: format!("worker={} pid={pid}", id.slot),
                json_fields: format!(r#""process":"worker","worker":{},"pid":{pid},"#, id.slot),
            },
        }
    }

    fn apply(&self, line: &str) -> String {
        match line.strip_prefix('{') {
            Some(rest) => format!("{{{}{rest}", self.json_fields),
            None => format!("{} {line}", self.text),
        }
    }
}

/// Hands each formatted event, tagged, to the merged log or to stderr.
struct LineWriter {
    tag: Tag,
    sink: Option<LogSink>,
}

impl<'a> MakeWriter<'a> for LineWriter {
    type Writer = LineBuf<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineBuf { buf: Vec::with_capacity(256), to: self }
    }
}

/// One event's bytes; emitted line by line when the formatter is done with it.
struct LineBuf<'a> {
    buf: Vec<u8>,
    to: &'a LineWriter,
}

impl Write for LineBuf<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuf<'_> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        for line in text.lines().filter(|l| !l.is_empty()) {
            let tagged = self.to.tag.apply(line);
            match &self.to.sink {
                Some(sink) => sink.write_line(&tagged),
                None => {
                    let _ = writeln!(io::stderr().lock(), "{tagged}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_tagged_in_both_formats() {
        let tag =
            Tag { text: "worker=1 pid=7".into(), json_fields: r#""process":"worker","worker":1,"pid":7,"#.into() };
        assert_eq!(tag.apply("INFO ready"), "worker=1 pid=7 INFO ready");
        let json: serde_json::Value =
            serde_json::from_str(&tag.apply(r#"{"level":"INFO","fields":{"message":"ready"}}"#)).expect("still JSON");
        assert_eq!(
            (json["worker"].as_u64(), json["pid"].as_u64(), json["level"].as_str()),
            (Some(1), Some(7), Some("INFO"))
        );
    }
}
