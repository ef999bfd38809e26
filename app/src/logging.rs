//! Logging. Every line says which process wrote it: text lines start with `primary pid=…` or
//! `worker=1 pid=4242`, JSON lines (`--log-format json`) carry `"process"`, `"worker"` and
//! `"pid"` fields. In the primary, lines go through the cluster's merged log (stderr, the
//! `--log-file`/`--error-log-file` files, `herd ctl logs`); workers write to their stderr,
//! which the primary reads into the same merged log. `RUST_LOG` overrides the default filter.
//!
//! A log line is one line whatever a client sent: control characters in the message or in any
//! field (a user name with `\n` and a forged `ERROR …` after it, terminal escapes) are written
//! as visible escapes ([`one_line`]), for every event, in both formats. Lines a client can
//! trigger per request are rate-limited per call site ([`LINES_PER_SECOND`]).

use std::{
    collections::HashMap,
    io::{self, IsTerminal, Write},
    sync::Mutex,
    time::{Duration, Instant},
};

use clap::ValueEnum;
use herd_cluster::{logs::LogSink, Role};
use tracing::{callsite::Identifier, Metadata};
use tracing_subscriber::{fmt::MakeWriter, EnvFilter};

const DEFAULT_FILTER: &str = "info,fred=warn,tower_sessions_core=warn";

/// Lines any client can trigger at will, once per request, stay out of the log (issue 13: 41 MB
/// from 60 s of anonymous load) unless `RUST_LOG` names their target: tower-sessions warns on
/// every malformed session cookie, and `/heavy` logs each computation at info.
const QUIET_BY_DEFAULT: [(&str, &str); 2] =
    [("tower_sessions", "tower_sessions=error"), ("herd::routes::heavy", "herd::routes::heavy=warn")];

/// `RUST_LOG` (else [`DEFAULT_FILTER`]), with [`QUIET_BY_DEFAULT`] for every target it does
/// not name.
fn filter() -> EnvFilter {
    let from_env = std::env::var("RUST_LOG").ok().filter(|f| !f.trim().is_empty());
    let mut filter =
        from_env.as_deref().and_then(|f| EnvFilter::try_new(f).ok()).unwrap_or_else(|| EnvFilter::new(DEFAULT_FILTER));
    for (target, directive) in QUIET_BY_DEFAULT {
        if !from_env.as_deref().is_some_and(|f| f.contains(target)) {
            if let Ok(directive) = directive.parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    filter
}

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
    let filter = filter();
    // Colours only for a person at a terminal, never into files or pipes.
    let ansi = sink.is_none() && io::stderr().is_terminal();
    let writer = LineWriter {
        tag: Tag::of(role),
        sink,
        colours: ansi && format == LogFormat::Pretty,
        json: format == LogFormat::Json,
        budgets: Mutex::new(HashMap::new()),
    };
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

/// Targets whose lines a client can trigger once per request (a failed or refused login, a 503
/// answered while Redis is down): each of their call sites writes at most
/// [`LINES_PER_SECOND`]; the next line after a second with more says how many were left out.
const BUDGETED_TARGETS: [&str; 3] = ["herd::routes", "herd::error", "herd_session_store"];
/// See [`BUDGETED_TARGETS`].
pub(crate) const LINES_PER_SECOND: u32 = 20;

/// Hands each formatted event, tagged, to the merged log or to stderr.
struct LineWriter {
    tag: Tag,
    sink: Option<LogSink>,
    /// The formatter colours its output: keep its colour codes (only those).
    colours: bool,
    /// Lines are JSON objects.
    json: bool,
    /// Lines written this second per budgeted call site.
    budgets: Mutex<HashMap<Identifier, Budget>>,
}

/// One call site's second.
struct Budget {
    since: Instant,
    written: u32,
    left_out: u64,
}

impl LineWriter {
    /// Whether this event may be written, and how many of its call site's lines were left out
    /// in the second before.
    fn admit(&self, meta: &Metadata<'_>) -> (bool, u64) {
        if !BUDGETED_TARGETS.iter().any(|t| meta.target().starts_with(t)) {
            return (true, 0);
        }
        let Ok(mut budgets) = self.budgets.lock() else { return (true, 0) };
        let budget =
            budgets.entry(meta.callsite()).or_insert_with(|| Budget { since: Instant::now(), written: 0, left_out: 0 });
        let mut reported = 0;
        if budget.since.elapsed() >= Duration::from_secs(1) {
            reported = std::mem::take(&mut budget.left_out);
            budget.since = Instant::now();
            budget.written = 0;
        }
        if budget.written < LINES_PER_SECOND {
            budget.written += 1;
            (true, reported)
        } else {
            budget.left_out += 1;
            (false, reported)
        }
    }

    fn emit(&self, line: &str) {
        let tagged = self.tag.apply(line);
        match &self.sink {
            Some(sink) => sink.write_line(&tagged),
            None => {
                let _ = writeln!(io::stderr().lock(), "{tagged}");
            }
        }
    }
}

impl<'a> MakeWriter<'a> for LineWriter {
    type Writer = LineBuf<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineBuf { buf: Vec::with_capacity(256), to: self, discard: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        let (admitted, left_out) = self.admit(meta);
        if left_out > 0 {
            let note =
                format!("{left_out} more line(s) like the next were left out (at most {LINES_PER_SECOND} a second)");
            self.emit(&if self.json {
                serde_json::json!({ "level": "WARN", "fields": { "message": note }, "target": meta.target() })
                    .to_string()
            } else {
                format!(" WARN {note}")
            });
        }
        LineBuf { buf: Vec::with_capacity(256), to: self, discard: !admitted }
    }
}

/// One event's bytes; emitted as one line when the formatter is done with it.
struct LineBuf<'a> {
    buf: Vec<u8>,
    to: &'a LineWriter,
    /// Over its call site's budget: written nowhere.
    discard: bool,
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
        // The formatter writes one event per writer: one line, ending in a newline.
        let text = String::from_utf8_lossy(&self.buf);
        let line = one_line(text.strip_suffix('\n').unwrap_or(&text), self.to.colours);
        if !line.is_empty() && !self.discard {
            self.to.emit(&line);
        }
    }
}

/// `event` with every control character (newlines, escapes, C1 codes) and bidirectional
/// override written as a visible escape (`\n`, `\x1b`, `\u{202e}`), so that text from a client
/// can neither start a forged line nor drive the terminal. With `colours`, the formatter's own
/// colour codes (`ESC [ digits;… m`, which only colour) are kept.
pub(crate) fn one_line(event: &str, colours: bool) -> String {
    let mut out = String::with_capacity(event.len());
    let mut chars = event.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '\x1b' && colours {
            let rest = &event[i + 1..];
            let params =
                rest.strip_prefix('[').map(|r| r.bytes().take_while(|b| b.is_ascii_digit() || *b == b';').count());
            if let Some(n) = params.filter(|n| rest.as_bytes().get(1 + n) == Some(&b'm')) {
                out.push_str(&event[i..i + 1 + 1 + n + 1]);
                for _ in 0..n + 2 {
                    chars.next();
                }
                continue;
            }
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push('\t'),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_clients_cannot_forge_lines_or_drive_the_terminal() {
        let forged = "login refused user=x\nERROR worker 0 pid 1 killed by SIGKILL\x1b[31m\x1b[2J\r\u{202e}\u{85}";
        let line = one_line(forged, false);
        assert_eq!(
            line,
            "login refused user=x\\nERROR worker 0 pid 1 killed by SIGKILL\\x1b[31m\\x1b[2J\\r\\u{202e}\\x85"
        );
        assert!(!line.chars().any(char::is_control));
        // At a terminal, the formatter's colours stay; anything else is still escaped.
        assert_eq!(
            one_line("\x1b[2m2026\x1b[0m \x1b[32mINFO\x1b[0m a\x1b[2Jb\x1b[", true),
            "\x1b[2m2026\x1b[0m \x1b[32mINFO\x1b[0m a\\x1b[2Jb\\x1b["
        );
        assert_eq!(one_line("tab\tstays, ünïcode too", false), "tab\tstays, ünïcode too");
    }

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
