//! `herd systemd-unit`: the `pm2 startup` equivalent. Prints a unit that runs `herd serve`
//! with the flags given here, as `Type=notify` (the primary sends `READY=1` once every worker
//! is ready), reloads with `SIGHUP` (a rolling reload), and stops with `SIGTERM` to the primary
//! only (`KillMode=mixed`), which drains the workers itself.
//!
//! With `--socket` it prints a `herd.socket` unit first, which systemd binds and holds: herd
//! takes the socket over (`LISTEN_FDS`, see `herd_cluster`'s socket activation) instead of
//! binding `--bind`, and since the socket outlives the service, a `systemctl restart herd`
//! leaves connections waiting in the kernel's queue instead of refusing them. Each unit starts
//! with a `# file: NAME` line, for splitting the output into `/etc/systemd/system/`.

use std::fmt::Write;

use anyhow::Context;

use crate::cli::SystemdUnitArgs;

/// Environment variables `herd serve` reads, copied into the unit when set here.
const ENV_PREFIXES: [&str; 3] = ["HERD_", "REDIS_URL", "STICKY"];

/// Where the unit reads its secrets from (the Redis password, demo users): a unit file and
/// `systemctl show` are world-readable, and so is the command line of the process it starts,
/// so secrets given to `systemd-unit` go into no line of the unit but into this file, which
/// the operator creates readable by root only.
const SECRETS_FILE: &str = "/etc/herd/secrets.env";

/// The open files limit (`LimitNOFILE`, soft and hard) the unit gives herd: room for tens of
/// thousands of connections, well below the kernel's default `nr_open` (1048576).
const UNIT_LIMIT_NOFILE: u32 = 65536;

/// The backlog of the socket unit: the connections that may wait while herd restarts (the
/// same as herd's own listen backlog).
const SOCKET_BACKLOG: u32 = 1024;

pub(crate) fn print_unit(unit_args: &SystemdUnitArgs) -> anyhow::Result<i32> {
    let args = &unit_args.serve;
    let exe = std::env::current_exe().context("cannot find the herd executable")?;
    // The flags exactly as given after `systemd-unit` (clap has already validated them), but
    // --socket (ours) and --redis-url, --demo-user and --metrics-token, which travel as
    // environment variables instead.
    let given = std::env::args_os().skip(2).filter(|arg| arg != "--socket");
    let (public, _) = crate::secrets::worker_args(given);
    let flags: Vec<String> = public.iter().map(|a| quote(&a.to_string_lossy())).collect();
    let mut public_env: Vec<(String, String)> =
        std::env::vars().filter(|(k, _)| ENV_PREFIXES.iter().any(|p| k.starts_with(p))).collect();
    if let Some(url) = &args.redis.redis_url {
        public_env.retain(|(k, _)| k != "REDIS_URL");
        public_env.push(("REDIS_URL".into(), url.clone()));
    }
    if !args.demo_users.is_empty() {
        public_env.retain(|(k, _)| k != "HERD_DEMO_USER");
        public_env.push(("HERD_DEMO_USER".into(), String::new()));
    }
    if args.metrics_token.is_some() {
        public_env.retain(|(k, _)| k != "HERD_METRICS_TOKEN");
        public_env.push(("HERD_METRICS_TOKEN".into(), String::new()));
    }
    let secret = |(k, v): &(String, String)| {
        k == "HERD_DEMO_USER" || k == "HERD_METRICS_TOKEN" || (k == "REDIS_URL" && crate::secrets::has_password(v))
    };
    let secrets: Vec<String> = public_env.iter().filter(|e| secret(e)).map(|(k, _)| k.clone()).collect();
    public_env.retain(|e| !secret(e));
    let mut unit = String::new();
    if unit_args.socket_unit {
        let _ =
            writeln!(unit, "# file: herd.socket\n[Unit]\nDescription=herd: the listening socket on {}\n", args.bind);
        let _ = writeln!(unit, "[Socket]\nListenStream={}\nBacklog={SOCKET_BACKLOG}\nNoDelay=true\n", args.bind);
        let _ = writeln!(unit, "[Install]\nWantedBy=sockets.target\n");
        let _ = writeln!(unit, "# file: herd.service");
    }
    let _ = writeln!(
        unit,
        "[Unit]\nDescription=herd: {} workers on {}",
        args.workers.map_or("one per CPU".into(), |n| n.to_string()),
        args.bind
    );
    let after = if unit_args.socket_unit { " herd.socket\nRequires=herd.socket" } else { "" };
    let _ = writeln!(unit, "After=network-online.target redis-server.service{after}\nWants=network-online.target\n");
    // `all`: after `herd ctl upgrade` the new primary, started by the old one, tells systemd
    // `MAINPID=` (itself) and `READY=1`; with `main` systemd would ignore it.
    let _ = writeln!(unit, "[Service]\nType=notify\nNotifyAccess=all");
    // Relative paths in the flags (--config, the private Redis's ./.herd) mean what they mean here.
    if let Ok(cwd) = std::env::current_dir() {
        let _ = writeln!(unit, "WorkingDirectory={}", quote(&cwd.to_string_lossy()));
    }
    let _ = writeln!(unit, "ExecStart={} serve {}", quote(&exe.to_string_lossy()), flags.join(" "));
    let _ = writeln!(
        unit,
        "# systemctl reload herd: a rolling reload of the workers. A new herd binary without a refused\n\
         # connection: herd ctl upgrade, or systemctl kill --kill-whom=main --signal=SIGUSR2 herd."
    );
    let _ = writeln!(unit, "ExecReload=/bin/kill -HUP $MAINPID");
    let _ = writeln!(unit, "KillMode=mixed\nTimeoutStopSec={}", args.shutdown_timeout.as_secs() + 5);
    let _ = writeln!(unit, "Restart=on-failure\nRestartSec=1");
    // systemd's default soft limit is 1024 open files; every held connection costs one in the
    // primary (until a worker takes it) and one in a worker. herd raises its soft limit to this
    // hard one at start.
    let _ = writeln!(unit, "LimitNOFILE={UNIT_LIMIT_NOFILE}");
    for (key, value) in &public_env {
        let _ = writeln!(unit, "Environment={}", quote(&format!("{key}={value}")));
    }
    if !secrets.is_empty() {
        let _ = writeln!(unit, "# {} (secrets): in {SECRETS_FILE}, mode 0600, never in this file", secrets.join(", "));
        let _ = writeln!(unit, "EnvironmentFile={SECRETS_FILE}");
        eprintln!(
            "herd systemd-unit: {} kept out of the unit (unit files and command lines are world-readable); \
             put them in {SECRETS_FILE} as NAME=VALUE lines, owned by root, mode 0600",
            secrets.join(" and ")
        );
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
