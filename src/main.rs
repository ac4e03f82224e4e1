//! The `muster` binary: parses the command line, sets up logging and runs the chosen
//! command. All logic lives in the library so that tests can drive it.

use clap::Parser;

/// mimalloc instead of glibc's malloc: a batch submit spent about 45% of the server's
/// CPU in glibc's `malloc`/`free` (perf, `muster bench`'s batch phase); see
/// docs/benchmarks.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = muster::cli::Cli::parse();
    muster::telemetry::init(&cli.log_format, cli.command.quiet());
    muster::cli::main(cli)
}
