//! `lockstep`: the command line of Lockstep. Each subcommand lives in its own
//! module under `cli/`; this file only parses and dispatches.
#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing(args.verbose);
    match cli::dispatch(args.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("lockstep: error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
