//! `muster dev`: private redis-server, the control plane in-process, local agents.

use std::process::ExitCode;

/// Flags of `muster dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// API address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Local agents to start.
    #[arg(long, default_value_t = 2)]
    pub agents: u32,
    /// Command the agents run per task (default: the built-in executor).
    #[arg(long)]
    pub exec: Option<String>,
    /// Use this Redis instead of a private redis-server.
    #[arg(long, env = "MUSTER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Data directory of the private redis-server.
    #[arg(long, default_value = ".muster")]
    pub data_dir: std::path::PathBuf,
}

/// Runs until Ctrl-C.
///
/// # Errors
/// redis-server missing or the address taken.
pub async fn run(_args: DevArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
