//! The `muster` binary: parses the command line, sets up logging and runs the chosen
//! command. All logic lives in the library so that tests can drive it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = muster::cli::Cli::parse();
    muster::telemetry::init(&cli.log_format, cli.command.quiet());
    muster::cli::main(cli)
}
