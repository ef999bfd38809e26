//! `--config herd.toml`: every `serve` flag in a file, like PM2's ecosystem file.
//!
//! Keys are the long flag names with `_` for `-` (`workers = 4`, `redis_url = "redis://…"`,
//! `demo_user = ["alice:wonderland"]`). Precedence: flag > environment variable > file >
//! default. The file is applied by turning each of its keys that neither a flag nor the
//! environment set into the flag itself, then letting clap parse everything once more — so a
//! file value is validated exactly like the flag, and an unknown key or a bad value stops
//! herd at start with the key named. Workers re-read the file when they start, so a reload
//! picks up changes to worker settings (the Redis URL, cookies, limits).

use std::{ffi::OsString, path::Path};

use anyhow::{bail, Context};
use clap::{parser::ValueSource, ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// Parses the command line, applying `serve --config FILE` when given.
pub fn parse() -> anyhow::Result<Cli> {
    parse_from(std::env::args_os().collect())
}

pub(crate) fn parse_from(argv: Vec<OsString>) -> anyhow::Result<Cli> {
    let matches = Cli::command().try_get_matches_from(&argv).unwrap_or_else(|e| e.exit());
    let Some(serve) = matches.subcommand_matches("serve") else {
        return Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()));
    };
    let Some(path) = serve.get_one::<std::path::PathBuf>("config") else {
        return Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()));
    };
    let extra = flags_from_file(path, serve)?;
    let mut argv = argv;
    argv.extend(extra);
    let matches = Cli::command().try_get_matches_from(&argv).map_err(|e| {
        anyhow::anyhow!("{}: {}", path.display(), e.render().to_string().trim_start_matches("error: ").trim())
    })?;
    Ok(Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit()))
}

/// The flags the file contributes: one per key that neither a flag nor an environment
/// variable already set.
fn flags_from_file(path: &Path, given: &ArgMatches) -> anyhow::Result<Vec<OsString>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the config file {}", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
    let serve = Cli::command().find_subcommand("serve").cloned().context("the serve command")?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let Some(arg) = serve.get_arguments().find(|a| file_key(a).as_deref() == Some(key.as_str())) else {
            bail!(
                "{}: unknown key `{key}` (keys are `serve` flags with _ for -; see `herd config example`)",
                path.display()
            );
        };
        let id = arg.get_id().as_str();
        if id == "config" {
            bail!("{}: `config` cannot be set from the config file", path.display());
        }
        let set_elsewhere = matches!(given.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable));
        if set_elsewhere {
            continue;
        }
        let flag = format!("--{}", arg.get_long().unwrap_or_default());
        let bad = |what: &str| anyhow::anyhow!("{}: `{key}` must be {what}", path.display());
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(on)) => {
                if *on {
                    flags.push(flag.into());
                }
            }
            (ArgAction::SetTrue, _) => return Err(bad("true or false")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    flags.push(flag.clone().into());
                    flags.push(scalar(item).ok_or_else(|| bad("a list of strings or numbers"))?.into());
                }
            }
            (_, value) => {
                flags.push(flag.into());
                flags.push(scalar(value).ok_or_else(|| bad("a string, number or boolean"))?.into());
            }
        }
    }
    Ok(flags)
}

/// A plausible value for keys that have no default.
fn example_value(key: &str) -> &'static str {
    match key {
        "workers" => "4",
        "redis_url" => "\"redis://127.0.0.1:6379\"",
        "control_socket" => "\"/run/herd/herd.sock\"",
        "max_memory" => "\"512MiB\"",
        "max_requests" => "10000",
        "max_connections" => "4096",
        "demo_user" => r#"["alice:wonderland"]"#,
        "login_concurrency" => "2",
        "allowed_origins" => r#"["https://app.example"]"#,
        _ => "\"\"",
    }
}

/// The file key of a flag: its long name with `_` for `-` (`--demo-user` → `demo_user`).
fn file_key(arg: &clap::Arg) -> Option<String> {
    arg.get_long().map(|long| long.replace('-', "_"))
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `herd config example`: a commented file with every key, its default and its help, made from
/// the `serve` flags themselves so it cannot drift from them.
pub(crate) fn example() -> String {
    let mut out = String::from(
        "# herd.toml — use with `herd serve --config herd.toml` (or HERD_CONFIG).\n\
         # Keys are the `serve` flags with _ for -. Flags and environment variables win over\n\
         # this file. Uncomment what you want to change.\n",
    );
    let serve = Cli::command().find_subcommand("serve").cloned().unwrap_or_else(|| clap::Command::new("serve"));
    for arg in serve
        .get_arguments()
        .filter(|a| a.get_long().is_some() && !a.is_hide_set() && a.get_id() != "config" && a.get_id() != "help")
    {
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        out.push('\n');
        for line in help.lines() {
            out.push_str(&format!("# {line}\n"));
        }
        let key = file_key(arg).unwrap_or_default();
        let default = arg.get_default_values().first().map(|d| d.to_string_lossy().into_owned());
        let example = match (arg.get_action(), default) {
            (ArgAction::SetTrue, _) => "false".to_owned(),
            (ArgAction::Append, _) => example_value(&key).to_owned(),
            (_, Some(d)) if d.parse::<f64>().is_ok() || d == "true" || d == "false" => d,
            (_, Some(d)) => format!("{d:?}"),
            (_, None) => example_value(&key).to_owned(),
        };
        out.push_str(&format!("# {key} = {example}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Vec<OsString> {
        ["herd", "serve"].iter().chain(extra).map(OsString::from).collect()
    }

    fn serve(cli: Cli) -> crate::cli::ServeArgs {
        match cli.command {
            crate::cli::Command::Serve(args) => *args,
            _ => unreachable!("serve"),
        }
    }

    fn file(text: &str) -> tempfile_path::Path {
        tempfile_path::Path::new(text)
    }

    /// A tiny self-cleaning temp file for the tests.
    mod tempfile_path {
        pub(super) struct Path(pub(super) std::path::PathBuf);
        impl Path {
            pub(super) fn new(text: &str) -> Self {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir().join(format!("herd-config-test-{}-{n}.toml", std::process::id()));
                std::fs::write(&path, text).expect("write");
                Self(path)
            }
            pub(super) fn arg(&self) -> String {
                self.0.display().to_string()
            }
        }
        impl Drop for Path {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let f = file("workers = 5\nbind = \"127.0.0.1:4000\"\nsticky = true\ndemo_user = [\"a:b\", \"c:d\"]\nsecure_cookies = false\nshutdown_timeout = \"3s\"\n");
        let args = serve(parse_from(args(&["--config", &f.arg(), "--workers", "2"])).expect("valid"));
        assert_eq!(args.workers, Some(2), "the flag wins");
        assert_eq!(args.bind.port(), 4000);
        assert!(args.sticky && !args.secure_cookies);
        assert_eq!(args.demo_users.len(), 2);
        assert_eq!(args.shutdown_timeout, std::time::Duration::from_secs(3));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let f = file("wrokers = 4\n");
        let err = parse_from(args(&["--config", &f.arg()])).expect_err("unknown key").to_string();
        assert!(err.contains("unknown key `wrokers`"), "{err}");
        let f = file("workers = \"many\"\n");
        let err = parse_from(args(&["--config", &f.arg()])).expect_err("bad value").to_string();
        assert!(err.contains("--workers") && err.contains("many"), "{err}");
        let f = file("sticky = \"yes\"\n");
        let err = parse_from(args(&["--config", &f.arg()])).expect_err("bad bool").to_string();
        assert!(err.contains("`sticky` must be true or false"), "{err}");
        let f = file("workers = [\n");
        assert!(parse_from(args(&["--config", &f.arg()]))
            .expect_err("bad toml")
            .to_string()
            .contains("not valid TOML"));
    }

    #[test]
    fn the_example_parses_as_a_config_file() {
        let example = example();
        let uncommented: String = example
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = ") && !l.starts_with("herd.toml"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(uncommented.contains("workers") || uncommented.contains("bind"), "{example}");
        // Every key in the example is accepted (values of keys without defaults are skipped).
        let keys_only: String =
            uncommented.lines().filter(|l| !l.ends_with("= \"\"")).map(|l| format!("{l}\n")).collect();
        let f = file(&keys_only);
        parse_from(args(&["--config", &f.arg()])).expect("the example's keys and defaults are valid");
    }
}
