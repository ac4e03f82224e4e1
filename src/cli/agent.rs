//! `muster agent`: a node agent (see `crate::agent`).

use std::process::ExitCode;

/// Flags of `muster agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Control-plane URL; repeat for fail-over between replicas.
    #[arg(
        long = "server",
        env = "MUSTER_SERVER",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ','
    )]
    pub servers: Vec<String>,
    /// Token allowed to register nodes (the admin token).
    #[arg(long, env = "MUSTER_TOKEN")]
    pub token: Option<String>,
    /// Queue to serve; repeat for several.
    #[arg(long = "queue", default_value = "default")]
    pub queues: Vec<String>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 1)]
    pub capacity: u32,
    /// Node tag; repeat for several.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Node name (default: host name and pid).
    #[arg(long)]
    pub name: Option<String>,
    /// Shell command run per task: payload JSON on stdin, result JSON on stdout.
    #[arg(long, conflicts_with_all = ["http", "builtin"])]
    pub exec: Option<String>,
    /// URL the payload is POSTed to; a 2xx body is the result.
    #[arg(long, conflicts_with_all = ["exec", "builtin"])]
    pub http: Option<String>,
    /// Built-in executor (kinds echo, sleep, fail, noop, wordcount).
    #[arg(long, conflicts_with_all = ["exec", "http"])]
    pub builtin: bool,
    /// Seconds running tasks get to finish after SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
}

/// Runs the agent until SIGTERM / Ctrl-C.
///
/// # Errors
/// Registration failure or an unusable flag combination.
pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    crate::agent::run_cli(args).await
}
