//! The node agent: registers with the control plane, heartbeats, long-polls leases up
//! to its free capacity, runs each task with an executor, renews leases at a third of
//! the TTL and reports outcomes. Nodes speak HTTP only; they never touch Redis.

use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How an agent runs a task.
#[derive(Debug, Clone)]
pub enum Executor {
    /// Shell command: payload JSON on stdin, result JSON on stdout.
    Exec(String),
    /// POST the payload to this URL; a 2xx body is the result.
    Http(String),
    /// In-process handlers for the kinds echo, sleep, fail, noop, wordcount.
    Builtin,
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Control-plane URLs, tried in turn.
    pub servers: Vec<String>,
    /// Token allowed to register nodes.
    pub token: Option<String>,
    /// Queues served.
    pub queues: Vec<String>,
    /// Tasks run at once.
    pub capacity: u32,
    /// Node tags.
    pub tags: Vec<String>,
    /// Node name.
    pub name: String,
    /// How tasks run.
    pub executor: Executor,
    /// Time running tasks get after shutdown starts.
    pub grace: Duration,
}

/// Runs an agent until `shutdown` is cancelled, then drains and deregisters.
///
/// # Errors
/// Registration failure.
pub async fn run(_config: AgentConfig, _shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

/// `muster agent`.
///
/// # Errors
/// Registration failure or bad flags.
pub async fn run_cli(_args: crate::cli::agent::AgentArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
