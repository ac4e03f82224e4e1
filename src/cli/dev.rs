//! `muster dev`: private redis-server, the control plane in-process, local agents.

use crate::agent::{AgentConfig, Executor};
use crate::cli::local::{self, PrivateRedis};
use crate::config::Config;
use crate::startup::Application;
use anyhow::Context as _;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Flags of `muster dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// API address.
    #[arg(long, default_value = crate::config::DEFAULT_LISTEN)]
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
    /// Tasks each local agent runs at once.
    #[arg(long, default_value_t = 4)]
    pub capacity: u32,
    /// Queue the local agents serve; repeat for several.
    #[arg(long = "queue", default_value = "default")]
    pub queues: Vec<String>,
    /// Seconds running tasks get to finish after Ctrl-C.
    #[arg(long, default_value_t = 10)]
    pub grace_secs: u64,
}

/// How long the control plane gets to stop after the agents.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs until Ctrl-C.
///
/// # Errors
/// redis-server missing or the address taken.
pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.capacity >= 1, "--capacity must be at least 1");
    let using_private = args.redis_url.is_none();
    if using_private && local::find_on_path("redis-server").is_none() {
        anyhow::bail!(local::NO_REDIS_SERVER);
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let data_dir = std::path::absolute(&args.data_dir)?;
    let dev_pid_file = data_dir.join("dev.pid");
    check_not_running(&data_dir, &dev_pid_file).await?;
    let token = local::load_or_create_token(&data_dir.join("admin-token"))?;

    let redis = match &args.redis_url {
        Some(_) => None,
        None => Some(PrivateRedis::start(&data_dir, local::AOF_EVERYSEC).await?),
    };
    let _ = std::fs::write(&dev_pid_file, format!("{}\n", std::process::id()));
    let redis_url = match (&args.redis_url, &redis) {
        (Some(u), _) => u.clone(),
        (None, Some(r)) => r.url(),
        (None, None) => unreachable!("a private redis was started"),
    };
    let res = run_stack(&args, &token, &redis_url, redis.as_ref(), &data_dir).await;
    if let Some(r) = redis {
        r.stop().await;
    }
    let _ = std::fs::remove_file(&dev_pid_file);
    if res.is_ok() {
        println!("muster dev stopped");
    }
    res
}

/// Refuses a data directory that another `muster dev` is using, and stops a
/// redis-server left behind by one that was killed hard.
async fn check_not_running(data_dir: &Path, dev_pid_file: &Path) -> anyhow::Result<()> {
    let read_pid = |p: &Path| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    if let Some(pid) = read_pid(dev_pid_file)
        && pid != std::process::id()
        && local::process_matches(pid, "muster")
    {
        anyhow::bail!(
            "another muster dev (pid {pid}) is using {}; stop it or pass another --data-dir",
            data_dir.display()
        );
    }
    if let Some(pid) = read_pid(&data_dir.join("redis.pid"))
        && local::process_matches(pid, "redis-server")
    {
        tracing::warn!(
            pid,
            "stopping a redis-server left behind by an earlier muster dev"
        );
        // A redis that cannot write its AOF out refuses SIGTERM: SIGKILL after 5 s.
        for signal in ["TERM", "KILL"] {
            local::send_signal(pid, signal);
            for _ in 0..100 {
                if !local::process_matches(pid, "redis-server") {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(())
}

async fn run_stack(
    args: &DevArgs,
    token: &str,
    redis_url: &str,
    redis: Option<&PrivateRedis>,
    data_dir: &Path,
) -> anyhow::Result<ExitCode> {
    let mut cfg = Config::new(args.listen.clone(), redis_url.to_string());
    cfg.admin_token = Some(token.to_string());
    let app = Application::build(cfg).await?;
    let addr = app.local_addr();
    let server_url = format!("http://{addr}");

    let server_stop = CancellationToken::new();
    let mut server = tokio::spawn(app.run(server_stop.clone()));

    let executor = match &args.exec {
        Some(cmd) => Executor::Exec(cmd.clone()),
        None => Executor::Builtin,
    };
    let agents_stop = CancellationToken::new();
    let mut agents = tokio::task::JoinSet::new();
    for i in 1..=args.agents {
        let config = AgentConfig {
            servers: vec![server_url.clone()],
            token: Some(token.to_string()),
            queues: args.queues.clone(),
            capacity: args.capacity,
            prefetch: 0,
            tags: Vec::new(),
            name: format!("dev-agent-{i}"),
            executor: executor.clone(),
            grace: Duration::from_secs(args.grace_secs),
        };
        let stop = agents_stop.clone();
        agents.spawn(async move {
            if let Err(e) = crate::agent::run(config, stop).await {
                tracing::error!(agent = i, error = %e, "local agent stopped");
            }
        });
    }

    // Listening before the banner: whoever reads it may press Ctrl-C at once.
    let first_signal = crate::shutdown::signal();
    print_banner(
        args,
        &server_url,
        token,
        redis_url,
        redis,
        data_dir,
        &executor,
    );

    let mut server_done = None;
    tokio::select! {
        sig = first_signal => {
            eprintln!("{sig}: stopping muster dev (agents, then the control plane, then redis-server)");
        }
        r = &mut server => server_done = Some(r),
    }

    // Stop the agents first (they drain and report through the server), then the
    // server. A second Ctrl-C cuts the drain short.
    agents_stop.cancel();
    let drain = async {
        let limit = Duration::from_secs(args.grace_secs) + Duration::from_secs(40);
        if tokio::time::timeout(limit, async { while agents.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!("local agents did not stop in time");
        }
    };
    let mut forced = false;
    tokio::select! {
        _ = drain => {}
        sig = crate::shutdown::signal() => {
            eprintln!("{sig} again: stopping now");
            forced = true;
        }
    }
    agents.abort_all();
    while agents.join_next().await.is_some() {}
    server_stop.cancel();
    let server_res = match server_done {
        Some(r) => Some(r),
        None => match tokio::time::timeout(SERVER_STOP_TIMEOUT, &mut server).await {
            Ok(r) => Some(r),
            Err(_) => {
                server.abort();
                tracing::warn!("the control plane did not stop in time");
                None
            }
        },
    };
    match server_res {
        Some(Ok(Err(e))) => return Err(e),
        Some(Err(e)) => anyhow::bail!("the control plane panicked: {e}"),
        _ => {}
    }
    Ok(if forced {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_banner(
    args: &DevArgs,
    server_url: &str,
    token: &str,
    redis_url: &str,
    redis: Option<&PrivateRedis>,
    data_dir: &Path,
    executor: &Executor,
) {
    let redis_line = match redis {
        Some(r) => format!(
            "{redis_url} (private redis-server, pid {}, AOF everysec, data in {})",
            r.pid(),
            data_dir.display()
        ),
        None => redis_url.to_string(),
    };
    let exec_line = match executor {
        Executor::Exec(cmd) => format!("runs `{cmd}` per task"),
        _ => format!(
            "built-in kinds: {}",
            crate::agent::builtin::KINDS.join(", ")
        ),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "muster dev is running");
    let _ = writeln!(out, "  API:    {server_url}");
    let _ = writeln!(out, "  docs:   {server_url}/docs");
    let _ = writeln!(out, "  redis:  {redis_line}");
    let _ = writeln!(
        out,
        "  agents: {} x capacity {} on queue {} ({exec_line})",
        args.agents,
        args.capacity,
        args.queues.join(", ")
    );
    let _ = writeln!(out, "token: {token}");
    let _ = writeln!(out);
    let _ = writeln!(out, "Try it from another shell:");
    let _ = writeln!(
        out,
        "  export MUSTER_SERVER={server_url} MUSTER_TOKEN={token}"
    );
    let _ = writeln!(
        out,
        "  muster submit --kind echo --payload '{{\"hi\":1}}' --wait"
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Ctrl-C stops everything.");
    let _ = out.flush();
}
