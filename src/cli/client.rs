//! Client commands against a running server: submit, task, queues, nodes.

use std::process::ExitCode;

/// Connection flags shared by client commands.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// Control-plane URL.
    #[arg(long, env = "MUSTER_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token.
    #[arg(long, env = "MUSTER_TOKEN")]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `muster submit`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Handler name.
    #[arg(long)]
    pub kind: String,
    /// Queue.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Payload JSON (`-` reads stdin).
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// File holding the payload JSON.
    #[arg(long)]
    pub payload_file: Option<std::path::PathBuf>,
    /// 0..=9, higher first.
    #[arg(long)]
    pub priority: Option<i64>,
    /// Run no sooner than this many ms from now.
    #[arg(long)]
    pub delay_ms: Option<i64>,
    /// Attempts allowed.
    #[arg(long)]
    pub max_attempts: Option<i64>,
    /// Lease TTL.
    #[arg(long)]
    pub timeout_ms: Option<i64>,
    /// Idempotency-Key header.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait for the task to finish and print its result.
    #[arg(long)]
    pub wait: bool,
}

/// Flags of `muster task`.
#[derive(Debug, Clone, clap::Args)]
pub struct TaskArgs {
    #[command(subcommand)]
    pub action: TaskAction,
}

/// `muster task` actions.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TaskAction {
    /// Show a task.
    Get {
        /// Task id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Wait until a task is terminal and show it.
    Wait {
        /// Task id.
        id: String,
        /// Give up after this long (the task is shown as it stands).
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel a task.
    Cancel {
        /// Task id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Retry a failed or cancelled task.
    Retry {
        /// Task id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Flags of `muster queues` and `muster nodes`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// `muster submit`.
///
/// # Errors
/// Bad flags, an unreachable server, or an error answer.
pub async fn submit(_args: SubmitArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

/// `muster task …`.
///
/// # Errors
/// An unreachable server or an error answer.
pub async fn task(_args: TaskArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

/// `muster queues`.
///
/// # Errors
/// An unreachable server or an error answer.
pub async fn queues(_args: ListArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}

/// `muster nodes`.
///
/// # Errors
/// An unreachable server or an error answer.
pub async fn nodes(_args: ListArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
