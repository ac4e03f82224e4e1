//! `muster serve`: the control plane.

use crate::config::Config;
use crate::startup::Application;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `muster serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// HTTP listen address.
    #[arg(long, env = "MUSTER_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Redis URL.
    #[arg(
        long,
        env = "MUSTER_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
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
    /// File of tokens, one `ROLE:TOKEN` a line (`#` comments); keep it readable only by
    /// the service user.
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
    #[arg(long, env = "MUSTER_NAMESPACE", default_value = "muster")]
    pub namespace: String,
    /// Heartbeat interval told to agents, ms; a node is offline after 3 missed.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_interval_ms: u64,
    /// Longest a long-poll is held, ms (clients may ask for up to 60000).
    #[arg(long, default_value_t = 60_000)]
    pub max_wait_ms: u64,
    /// Reaper interval (expired leases, due tasks), ms.
    #[arg(long, default_value_t = 1000)]
    pub reaper_interval_ms: u64,
}

/// Runs the control plane until SIGTERM / Ctrl-C.
///
/// # Errors
/// Bad flags, Redis unusable, or a component that died.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = Config::new(args.listen, args.redis_url);
    cfg.namespace = args.namespace;
    cfg.admin_token = args.admin_token.filter(|t| !t.is_empty());
    cfg.no_auth = args.no_auth;
    if let Some(r) = args.rate_limit {
        anyhow::ensure!(r > 0.0, "--rate-limit must be above 0");
        cfg.rate_limit = Some((r, args.rate_burst.unwrap_or(2.0 * r)));
    }
    let mut entries: Vec<String> = args.tokens.clone();
    if let Some(path) = &args.tokens_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read --tokens-file {}: {e}", path.display()))?;
        entries.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    for t in entries.iter().filter(|t| !t.trim().is_empty()) {
        cfg.tokens.push(
            crate::api::auth::parse_role_token(t).map_err(|e| anyhow::anyhow!("--token: {e}"))?,
        );
    }
    if let Some(n) = args.dispatchers {
        anyhow::ensure!(n >= 1, "--dispatchers must be at least 1");
        cfg.dispatchers = n;
    }
    anyhow::ensure!(
        args.heartbeat_interval_ms >= 100,
        "--heartbeat-interval-ms must be at least 100"
    );
    anyhow::ensure!(
        args.reaper_interval_ms >= 10,
        "--reaper-interval-ms must be at least 10"
    );
    cfg.heartbeat_interval = Duration::from_millis(args.heartbeat_interval_ms);
    cfg.reaper_interval = Duration::from_millis(args.reaper_interval_ms);
    anyhow::ensure!(
        args.max_wait_ms <= 60_000,
        "--max-wait-ms must be at most 60000"
    );
    cfg.max_wait = Duration::from_millis(args.max_wait_ms);
    let app = Application::build(cfg).await?;
    app.run(crate::shutdown::on_signals()).await?;
    Ok(ExitCode::SUCCESS)
}
