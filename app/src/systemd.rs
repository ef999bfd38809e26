//! `herd systemd-unit`: the `pm2 startup` equivalent. Prints a unit that runs `herd serve`
//! with the flags given here, as `Type=notify` (the primary sends `READY=1` once every worker
//! is ready), reloads with `SIGHUP` (a rolling reload), and stops with `SIGTERM` to the primary
//! only (`KillMode=mixed`), which drains the workers itself.

use std::fmt::Write;

use anyhow::Context;

use crate::cli::ServeArgs;

/// Environment variables `herd serve` reads, copied into the unit when set here.
const ENV_PREFIXES: [&str; 3] = ["HERD_", "REDIS_URL", "STICKY"];

pub fn print_unit(args: &ServeArgs) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("cannot find the herd executable")?;
    // The flags exactly as given after `systemd-unit`; clap has already validated them.
    let flags: Vec<String> = std::env::args().skip(2).map(|a| quote(&a)).collect();
    let mut unit = String::new();
    let _ = writeln!(
        unit,
        "[Unit]\nDescription=herd: {} workers on {}",
        args.workers.map_or("one per CPU".into(), |n| n.to_string()),
        args.bind
    );
    let _ = writeln!(unit, "After=network-online.target redis-server.service\nWants=network-online.target\n");
    let _ = writeln!(unit, "[Service]\nType=notify\nNotifyAccess=main");
    // Relative paths in the flags (--config, the private Redis's ./.herd) mean what they mean here.
    if let Ok(cwd) = std::env::current_dir() {
        let _ = writeln!(unit, "WorkingDirectory={}", quote(&cwd.to_string_lossy()));
    }
    let _ = writeln!(unit, "ExecStart={} serve {}", quote(&exe.to_string_lossy()), flags.join(" "));
    let _ = writeln!(unit, "ExecReload=/bin/kill -HUP $MAINPID");
    let _ = writeln!(unit, "KillMode=mixed\nTimeoutStopSec={}", args.shutdown_timeout.as_secs() + 5);
    let _ = writeln!(unit, "Restart=on-failure\nRestartSec=1");
    for (key, value) in std::env::vars().filter(|(k, _)| ENV_PREFIXES.iter().any(|p| k.starts_with(p))) {
        let _ = writeln!(unit, "Environment={}", quote(&format!("{key}={value}")));
    }
    let _ = writeln!(unit, "\n[Install]\nWantedBy=multi-user.target");
    print!("{unit}");
    Ok(0)
}

/// Quotes a word for a systemd command line when it needs it.
fn quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c)) {
        word.to_owned()
    } else {
        format!("\"{}\"", word.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "$$"))
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting() {
        assert_eq!(quote("--workers"), "--workers");
        assert_eq!(quote("0.0.0.0:3000"), "0.0.0.0:3000");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("p$ss\"x"), "\"p$$ss\\\"x\"");
    }
}
