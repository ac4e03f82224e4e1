//! `muster bench`: end-to-end benchmark on a private Redis.
//!
//! One process holds everything: a private `redis-server` (persistence off, for
//! throughput) or a given Redis (`--redis-url`, `--redis-cluster` or `--redis-sentinel`)
//! with a fresh key namespace, the control plane
//! ([`crate::startup::Application`] on `127.0.0.1:0`) and K *bench agents*: lean in-process HTTP clients
//! that register a node, long-poll `POST /v1/nodes/{id}/lease` (large `max`) in several
//! loops and report every leased task as succeeded with one
//! `POST /v1/nodes/{id}/reports` per lease batch. The no-op "executor" is in-process, so
//! the figures measure muster (HTTP, dispatcher, Lua scripts), not process spawning.
//!
//! Phases, each on its own queue:
//! 1. batch submit (`POST /v1/tasks/batch`, 1,000 per request, a few in flight), no
//!    agents: submit rate, Redis commands per submitted task, Redis memory per pending task;
//! 2. single submit (`POST /v1/tasks`, 64 clients), no agents;
//! 3. process only: N tasks pre-submitted, then the agents start (the peers' method);
//! 4. end-to-end: agents idle and long-polling, N tasks submitted in batches, from the
//!    first submit to the last accepted report; Redis commands / CPU per task here are
//!    the whole lifecycle (submit, dispatch, lease, report);
//! 5. latency: single submits at fixed offered rates, payload carrying the submit time;
//!    the agent takes start - submit when the lease arrives (first 100 excluded);
//! 6. idle: 100 agents long-polling, nothing to do: CPU of this process and of Redis.

mod agents;
mod load;
mod phases;
mod probe;
mod report;
mod runs;

use crate::cli::local;
use crate::domain::limits::MAX_WAIT_MS;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Flags of `muster bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Tasks per measurement (default 50,000; 2,000 with --quick).
    #[arg(short = 'n', long)]
    pub n: Option<u64>,
    /// Use this Redis instead of a private one (a fresh key namespace is used and
    /// removed afterwards; other clients' commands then count in the Redis figures).
    #[arg(long, conflicts_with_all = ["redis_cluster", "redis_sentinel"])]
    pub redis_url: Option<String>,
    /// Use this Redis Cluster instead: seed node URLs, comma-separated (a fresh key
    /// namespace as with --redis-url; the Redis figures are summed over its primaries).
    #[arg(long, conflicts_with = "redis_sentinel")]
    pub redis_cluster: Option<String>,
    /// Use the primary these Sentinels name --sentinel-master instead: their URLs,
    /// comma-separated (a fresh key namespace as with --redis-url).
    #[arg(long, requires = "sentinel_master")]
    pub redis_sentinel: Option<String>,
    /// The primary's name in the Sentinels' configuration (`sentinel monitor NAME …`).
    #[arg(long)]
    pub sentinel_master: Option<String>,
    /// Print JSON (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Short run for smoke tests (well under a minute even in a debug build): N = 2,000,
    /// latency at 200/s only for 2 s, census of 1,000 tasks, 1 s idle.
    #[arg(long)]
    pub quick: bool,
    /// In-process bench agents (nodes).
    #[arg(long, default_value_t = 4)]
    pub agents: usize,
    /// Lease loops per agent.
    #[arg(long, default_value_t = 4)]
    pub loops: usize,
    /// `max` of each lease call (at most 1,000).
    #[arg(long, default_value_t = 500)]
    pub lease_max: i64,
    /// `wait_ms` of each lease call (long-poll).
    #[arg(long, default_value_t = 1000)]
    pub wait_ms: i64,
    /// Tasks per `POST /v1/tasks/batch`.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Batch requests in flight.
    #[arg(long, default_value_t = 4)]
    pub batch_concurrency: usize,
    /// Tasks submitted one by one (default N/5, at most 10,000).
    #[arg(long)]
    pub single_n: Option<u64>,
    /// Concurrent clients of the single-submit run.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Offered rates of the latency runs, tasks/s (default 200,1000; 200 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<u64>>,
    /// Seconds per latency rate (default 10; 2 with --quick).
    #[arg(long)]
    pub latency_secs: Option<f64>,
    /// Long-polling agents of the idle measurement (0 skips it).
    #[arg(long, default_value_t = 100)]
    pub idle_agents: usize,
    /// Seconds of the idle measurement (default 5; 1 with --quick).
    #[arg(long)]
    pub idle_secs: Option<f64>,
    /// Tasks of the command census (end-to-end under `redis-cli MONITOR`, untimed, to
    /// split round trips from commands run inside scripts); default min(N, 5,000)
    /// (1,000 with --quick), 0 skips.
    #[arg(long)]
    pub census_n: Option<u64>,
    /// Last phase: a queue holding this many pending tasks (e.g. 1000000), from which
    /// the agents drain N; claim rate, claim p99 and memory per task are compared with
    /// the process phase's (a queue of N). 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub backlog: u64,
}

impl BenchArgs {
    /// The Redis the flags name (a server, a Cluster or Sentinels), or `None` for a
    /// private redis-server. Unlike `serve`, the bench reads no `MUSTER_REDIS_*`
    /// variables: it never writes to a shared Redis unless told on its command line.
    ///
    /// # Errors
    /// An empty list or a URL that does not parse, in one line.
    pub fn shared_redis(&self) -> anyhow::Result<Option<crate::store::RedisTarget>> {
        use crate::store::RedisTarget;
        let t = match (&self.redis_url, &self.redis_cluster, &self.redis_sentinel) {
            (Some(u), _, _) => RedisTarget::Standalone(u.clone()),
            (None, Some(c), _) => RedisTarget::Cluster(RedisTarget::list(c)),
            (None, None, Some(s)) => RedisTarget::Sentinel {
                sentinels: RedisTarget::list(s),
                master: self.sentinel_master.clone().unwrap_or_default(),
            },
            (None, None, None) => return Ok(None),
        };
        t.validate().map_err(anyhow::Error::msg)?;
        Ok(Some(t))
    }
}

/// Latency samples excluded as warm-up (as the peers do).
const LAT_SKIP: u64 = 100;
/// A phase fails when nothing progresses for this long.
const STALL: Duration = Duration::from_secs(60);
/// Padding of the ~100-byte payload (the peers' `pycommon.payload`).
const PAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
/// `wait_ms` of the idle agents (the real agent's `LEASE_WAIT_MS`).
const IDLE_WAIT_MS: i64 = crate::agent::LEASE_WAIT_MS as i64;

/// Runs the benchmark.
///
/// # Errors
/// redis-server missing, a phase stalled or the server failed.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.agents >= 1, "--agents must be at least 1");
    anyhow::ensure!(args.loops >= 1, "--loops must be at least 1");
    anyhow::ensure!(
        (1..=1000).contains(&args.lease_max),
        "--lease-max must be 1 to 1000"
    );
    anyhow::ensure!(
        (0..=MAX_WAIT_MS).contains(&args.wait_ms),
        "--wait-ms must be 0 to {MAX_WAIT_MS}"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.batch),
        "--batch must be 1 to 10000"
    );
    anyhow::ensure!(
        args.batch_concurrency >= 1 && args.clients >= 1,
        "concurrency must be at least 1"
    );
    anyhow::ensure!(
        args.rates.iter().flatten().all(|r| *r >= 1),
        "--rates must be at least 1 each"
    );
    let shared = args.shared_redis()?;
    if shared.is_none() && local::find_on_path("redis-server").is_none() {
        anyhow::bail!(local::NO_REDIS_SERVER);
    }
    let mut stack = Stack::default();
    let res = tokio::select! {
        r = phases::bench(&args, &mut stack) => r,
        sig = crate::shutdown::signal() => Err(anyhow::anyhow!("interrupted by {sig}; stopped the benchmark")),
    };
    stack.shutdown().await;
    let report = res?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report::print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// What the bench started.
#[derive(Default)]
struct Stack {
    plane: local::LocalPlane,
    dir: Option<PathBuf>,
    agents_stop: Vec<CancellationToken>,
}

impl Stack {
    async fn shutdown(&mut self) {
        for a in self.agents_stop.drain(..) {
            a.cancel();
        }
        self.plane.shutdown("bench").await;
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
