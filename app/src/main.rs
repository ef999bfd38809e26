//! The `herd` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use herd::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let role = match herd_cluster::Role::detect() {
        Ok(role) => role,
        Err(err) => {
            eprintln!("herd: {err}");
            return ExitCode::from(2);
        }
    };
    herd::logging::init(role);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("herd: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => herd::serve::run(*args, role).await,
            Command::Users(command) => herd::users::cli::run(command).await,
        }
    });
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
