//! Logging to standard error. Workers inherit the primary's stderr, so one stream holds
//! everyone's lines; each line starts with who wrote it (`primary pid=…` or
//! `worker=1 pid=4242`). `RUST_LOG` overrides the default filter.

use std::{fmt, io::IsTerminal};

use herd_cluster::Role;
use tracing_subscriber::{
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields},
    registry::LookupSpan,
    EnvFilter,
};

const DEFAULT_FILTER: &str = "info,fred=warn,tower_sessions=warn";

pub fn init(role: Role) {
    let pid = std::process::id();
    let tag = match role {
        Role::Primary => format!("primary pid={pid}"),
        Role::Worker(id) => format!("worker={} pid={pid}", id.slot),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .event_format(Tagged {
            tag,
            inner: tracing_subscriber::fmt::format().with_target(false).with_ansi(std::io::stderr().is_terminal()),
        })
        .init();
}

/// Prefixes every line with the process's tag.
struct Tagged<F> {
    tag: String,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for Tagged<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &tracing::Event<'_>) -> fmt::Result {
        write!(writer, "{} ", self.tag)?;
        self.inner.format_event(ctx, writer, event)
    }
}
