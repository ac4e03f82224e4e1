//! `muster serve`: the control plane.

use crate::config::{self, Config};
use crate::domain::limits::MAX_WAIT_MS;
use crate::domain::roles::parse_role_token;
use crate::startup::Application;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `muster serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// HTTP listen address.
    #[arg(long, env = "MUSTER_LISTEN", default_value = config::DEFAULT_LISTEN)]
    pub listen: String,
    /// Where the keyspace is: one server, a Cluster or Sentinels.
    #[command(flatten)]
    pub redis: crate::cli::redis::RedisArgs,
    /// Replicas every acknowledged write waits for (Redis `WAIT`), so a failover loses
    /// no acknowledged submission or result; 0 (the default) waits for none.
    #[arg(long, env = "MUSTER_REPLICA_ACKS", default_value_t = 0)]
    pub replica_acks: u32,
    /// Admin bearer token.
    #[arg(long, env = "MUSTER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// More tokens as ROLE:TOKEN (roles: admin, submit, read, agent); repeat, or
    /// comma-separate in MUSTER_TOKENS.
    #[arg(
        long = "token",
        env = "MUSTER_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub tokens: Vec<String>,
    /// File of tokens, one `ROLE:TOKEN [queues=PATTERN,...] [max_queues=N]
    /// [max_schedules=N] [max_locks=N] [max_streams=N]` a line (`#` comments); keep it
    /// readable only by the service user (docs/security.md).
    #[arg(long, env = "MUSTER_TOKENS_FILE")]
    pub tokens_file: Option<std::path::PathBuf>,
    /// Per-token rate limit in requests per second (off when absent); past it: 429.
    #[arg(long, env = "MUSTER_RATE_LIMIT")]
    pub rate_limit: Option<f64>,
    /// Burst allowed above the rate (default: twice the rate).
    #[arg(long)]
    pub rate_burst: Option<f64>,
    /// Serve without authentication (loopback listen addresses only).
    #[arg(long)]
    pub no_auth: bool,
    /// Dispatcher workers (default: number of cores).
    #[arg(long)]
    pub dispatchers: Option<usize>,
    /// Key namespace.
    #[arg(long, env = "MUSTER_NAMESPACE", default_value = config::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Heartbeat interval told to agents, ms; a node is offline after 3 missed.
    #[arg(long, default_value_t = config::DEFAULT_HEARTBEAT_MS)]
    pub heartbeat_interval_ms: u64,
    /// Longest a long-poll is held, ms (clients may ask for up to 60000).
    #[arg(long, default_value_t = MAX_WAIT_MS as u64)]
    pub max_wait_ms: u64,
    /// Reaper interval (expired leases, due tasks), ms.
    #[arg(long, default_value_t = config::DEFAULT_REAPER_MS)]
    pub reaper_interval_ms: u64,
}

/// Runs the control plane until SIGTERM / Ctrl-C.
///
/// # Errors
/// Bad flags (checked by [`Config::validate`] in [`Application::build`]), Redis
/// unusable, or a component that died.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let cfg = config(args)?;
    let app = Application::build(cfg).await?;
    app.run(crate::shutdown::on_signals("shutting down"))
        .await?;
    Ok(ExitCode::SUCCESS)
}

/// Maps the flags onto a [`Config`]; reads `--tokens-file`.
fn config(args: ServeArgs) -> anyhow::Result<Config> {
    let target = args.redis.target()?;
    let mut cfg = Config::new(args.listen, args.redis.redis_url.clone());
    if !matches!(target, crate::store::RedisTarget::Standalone(_)) {
        cfg.redis_target = Some(target);
    }
    cfg.replica_acks = args.replica_acks;
    cfg.namespace = args.namespace;
    cfg.admin_token = args.admin_token.filter(|t| !t.is_empty());
    cfg.no_auth = args.no_auth;
    cfg.rate_limit = args
        .rate_limit
        .map(|r| (r, args.rate_burst.unwrap_or(2.0 * r)));
    if let Some(path) = &args.tokens_file {
        // Refuses a file the group or others may read (it says `chmod 600`).
        // Keeps each token's `queues=` limit.
        crate::config::add_tokens_file(&mut cfg, path)?;
    }
    for t in args.tokens.iter().filter(|t| !t.trim().is_empty()) {
        cfg.tokens
            .push(parse_role_token(t).map_err(|e| anyhow::anyhow!("--token: {e}"))?);
    }
    if let Some(n) = args.dispatchers {
        cfg.dispatchers = n;
    }
    cfg.heartbeat_interval = Duration::from_millis(args.heartbeat_interval_ms);
    cfg.reaper_interval = Duration::from_millis(args.reaper_interval_ms);
    cfg.max_wait = Duration::from_millis(args.max_wait_ms);
    Ok(cfg)
}
