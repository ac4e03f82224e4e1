//! `muster agent`: maps the flags onto an [`AgentConfig`] and runs [`agent::run`]
//! until SIGTERM or Ctrl-C.

use crate::agent::{self, AgentConfig, Executor};
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `muster agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// Control-plane URL; repeat for fail-over between replicas.
    #[arg(
        long = "server",
        env = "MUSTER_SERVER",
        default_value = crate::client::DEFAULT_SERVER,
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
    /// Tasks leased beyond --capacity, waiting for a free slot (their leases renewed):
    /// the next tasks are at hand when slots free, held from other nodes meanwhile.
    #[arg(long, default_value_t = 0)]
    pub prefetch: u32,
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
    /// Pass this variable of the agent's environment on to `--exec` commands (repeat it).
    /// They get only PATH, HOME, LANG, LC_ALL, TZ, TMPDIR, USER and the MUSTER_TASK_*
    /// variables otherwise: never the agent's token.
    #[arg(long = "env", value_name = "NAME")]
    pub env: Vec<String>,
}

/// Runs the agent until SIGTERM / Ctrl-C.
///
/// # Errors
/// Registration failure or an unusable flag combination.
pub async fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    agent::exec::pass_env(args.env.clone());
    let config = config(args)?;
    let shutdown = crate::shutdown::on_signals("draining");
    agent::run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Maps the flags onto an [`AgentConfig`].
fn config(args: AgentArgs) -> anyhow::Result<AgentConfig> {
    let executor = match (args.exec, args.http, args.builtin) {
        (Some(cmd), None, false) => Executor::Exec(cmd),
        (None, Some(url), false) => Executor::Http(url),
        (None, None, true) => Executor::Builtin,
        (None, None, false) => anyhow::bail!("give --exec CMD, --http URL or --builtin"),
        _ => anyhow::bail!("give only one of --exec CMD, --http URL or --builtin"),
    };
    Ok(AgentConfig {
        servers: args.servers,
        token: args.token,
        queues: args.queues,
        capacity: args.capacity,
        prefetch: args.prefetch,
        tags: args.tags,
        name: args
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(agent::default_name),
        executor,
        grace: Duration::from_secs(args.grace_secs),
    })
}
