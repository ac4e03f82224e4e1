//! `muster doctor`: checks DESIGN.md's invariants in Redis.

use std::process::ExitCode;

/// Flags of `muster doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Redis to check.
    #[arg(long, env = "MUSTER_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Key namespace.
    #[arg(long, env = "MUSTER_NAMESPACE", default_value = "muster")]
    pub namespace: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the checks.
///
/// # Errors
/// Redis unreachable.
pub async fn run(_args: DoctorArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
