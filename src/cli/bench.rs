//! `muster bench`: end-to-end benchmark on a private Redis.

use std::process::ExitCode;

/// Flags of `muster bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Tasks per measurement.
    #[arg(short = 'n', long, default_value_t = 50_000)]
    pub n: u64,
    /// Use this Redis instead of a private one.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the benchmark.
///
/// # Errors
/// redis-server missing.
pub async fn run(_args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
