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
            eprintln!("herd: {err:#}");
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
            tracing::error!("{err:#}");
            1
        }
    };
    // Exit without dropping the runtime: dropping it would wait for blocking tasks (a long
    // `/heavy` computation) that the drain deadline has already given up on.
    std::process::exit(code)
}
