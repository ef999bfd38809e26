//! The `herd` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use herd::Command;

// glibc's malloc serialises threads on arena locks when memory allocated on one runtime thread
// (fred's connection task) is freed on another (the request's task); under load that lock and
// its futex wakeups were a sixth of a worker's CPU (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match herd::parse_command_line() {
        Ok(cli) => cli,
        Err(err) => {
            eprintln!("herd: {}", causes(&err));
            return ExitCode::from(2);
        }
    };
    let role = match herd_cluster::Role::detect() {
        Ok(role) => role,
        Err(err) => {
            eprintln!("herd: {err}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Command::Serve(_)) && role == herd_cluster::Role::Primary {
        without_huge_pages();
    }
    let (format, sink) = match &cli.command {
        Command::Serve(args) => {
            let sink = match role {
                // The primary merges everyone's lines; workers write theirs to its pipe.
                herd_cluster::Role::Primary => {
                    match herd_cluster::logs::LogSink::new(args.log_file.clone(), args.error_log_file.clone()) {
                        Ok(sink) => Some(sink),
                        Err(err) => {
                            eprintln!("herd: cannot open the log files: {err}");
                            return ExitCode::FAILURE;
                        }
                    }
                }
                herd_cluster::Role::Worker(_) => None,
            };
            (args.log_format, sink)
        }
        _ => (herd::LogFormat::Pretty, None),
    };
    herd::init_logging(role, format, sink.clone());
    // The primary only supervises and passes sockets on: one thread does that with no
    // cross-thread wake-ups. Workers have `--threads` (default 1: the cores are used by
    // running a worker per core, not threads per worker).
    let threads = match (&cli.command, role) {
        (Command::Serve(args), herd_cluster::Role::Worker(_)) => usize::from(args.threads),
        _ => 1,
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("herd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(herd::run(cli.command, role, sink));
    let code = match result {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{}", causes(&err));
            1
        }
    };
    // Exit without dropping the runtime: dropping it would wait for blocking tasks (a long
    // `/heavy` computation) that the drain deadline has already given up on.
    std::process::exit(code)
}

/// The error and its causes, `: `-joined, as `{:#}` writes them, but leaving out a cause whose
/// text the message already holds: the library errors name their source in their own message
/// (`cannot listen on 127.0.0.1:3000: Address already in use`), and it must not come twice.
fn causes(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// mimalloc asks for transparent huge pages on its arena (`MADV_HUGEPAGE`), so every 2 MiB of
/// heap it touched at all was 2 MiB resident: 10-12 MiB of RSS in each idle process for a heap
/// of a few hundred KiB (bench/idle_memory.sh, docs/benchmarks.md). `PR_SET_THP_DISABLE` turns
/// that off, and is inherited through fork and exec, so every worker starts with it; but it
/// only applies to pages touched from then on, and the runtime has touched two huge pages
/// before `main`. So the primary sets it and executes itself again, once: the same binary,
/// arguments, environment, descriptors and pid (systemd, socket activation and a supervisor
/// see no difference). If anything fails it goes on as it is, only with more memory.
fn without_huge_pages() {
    use std::os::unix::process::CommandExt;
    match nix::sys::prctl::get_thp_disable() {
        Ok(false) => {}
        // Set already (this is the second start, or an upgrade's new primary), or unknown to
        // this kernel.
        _ => return,
    }
    if nix::sys::prctl::set_thp_disable(true).is_err() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(argv0) = args.next() {
        command.arg0(argv0);
    }
    let err = command.args(args).exec();
    eprintln!("herd: could not restart without transparent huge pages ({err}); going on with them");
}
