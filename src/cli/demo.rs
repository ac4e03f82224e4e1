//! `muster demo`: word frequencies over a generated corpus, split into chunk tasks.

use std::process::ExitCode;

/// Flags of `muster demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Use this Redis instead of a private redis-server.
    #[arg(long, env = "MUSTER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Corpus size in MiB.
    #[arg(long, default_value_t = 64)]
    pub size_mb: u64,
    /// Local agents.
    #[arg(long, default_value_t = 3)]
    pub agents: u32,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the demo and exits.
///
/// # Errors
/// redis-server missing, or a wrong answer.
pub async fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
