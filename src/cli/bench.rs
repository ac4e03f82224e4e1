//! `muster bench`: end-to-end benchmark on a private Redis.
//!
//! One process holds everything: a private `redis-server` (persistence off, for
//! throughput) or `--redis-url` with a fresh key namespace, the control plane
//! ([`Application`] on `127.0.0.1:0`) and K *bench agents*: lean in-process HTTP clients
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

use crate::cli::local::{self, PrivateRedis};
use crate::config::Config;
use crate::startup::Application;
use anyhow::Context as _;
use comfy_table::{CellAlignment, Table};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Flags of `muster bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Tasks per measurement (default 50,000; 2,000 with --quick).
    #[arg(short = 'n', long)]
    pub n: Option<u64>,
    /// Use this Redis instead of a private one (a fresh key namespace is used and
    /// removed afterwards; other clients' commands then count in the Redis figures).
    #[arg(long)]
    pub redis_url: Option<String>,
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
        (0..=60_000).contains(&args.wait_ms),
        "--wait-ms must be 0 to 60000"
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
    if args.redis_url.is_none() && local::find_on_path("redis-server").is_none() {
        anyhow::bail!(local::NO_REDIS_SERVER);
    }
    let mut stack = Stack::default();
    let res = tokio::select! {
        r = bench(&args, &mut stack) => r,
        sig = local::stop_signal() => Err(anyhow::anyhow!("interrupted by {sig}; stopped the benchmark")),
    };
    stack.shutdown().await;
    let report = res?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// What the bench started.
#[derive(Default)]
struct Stack {
    redis: Option<PrivateRedis>,
    dir: Option<PathBuf>,
    cleanup_ns: Option<(String, String)>,
    server_stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    agents_stop: Vec<CancellationToken>,
}

impl Stack {
    async fn shutdown(&mut self) {
        for a in self.agents_stop.drain(..) {
            a.cancel();
        }
        self.server_stop.cancel();
        if let Some(mut h) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(15), &mut h)
                .await
                .is_err()
        {
            h.abort();
        }
        if let Some((url, ns)) = self.cleanup_ns.take()
            && let Err(e) = delete_namespace(&url, &ns).await
        {
            tracing::warn!(error = %e, namespace = %ns, "could not remove the bench's keys");
        }
        if let Some(r) = self.redis.take() {
            r.stop().await;
        }
        if let Some(d) = self.dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

async fn delete_namespace(url: &str, ns: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{ns}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await?;
        if !keys.is_empty() {
            let _: i64 = redis::cmd("UNLINK").arg(&keys).query_async(&mut c).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

// ---------------------------------------------------------------------------------
// Measurements of this process and of Redis.

/// Clock ticks per second of /proc/self/stat.
fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) of this process so far.
fn proc_cpu_secs(tck: f64) -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is the first.
    let Some(rest) = s.rsplit_once(')').map(|x| x.1) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / tck
}

/// A line of /proc/self/status in kB (`VmRSS`, `VmHWM`).
fn proc_status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A snapshot of Redis counters.
#[derive(Debug, Clone, Default)]
struct RedisSnap {
    calls: HashMap<String, u64>,
    usec: HashMap<String, u64>,
    cpu_secs: f64,
    used_memory: u64,
}

/// A snapshot of this process and Redis at one instant.
#[derive(Debug, Clone)]
struct Snap {
    at: Instant,
    cpu: f64,
    redis: RedisSnap,
}

struct Probe {
    conn: redis::aio::MultiplexedConnection,
    tck: f64,
}

impl Probe {
    async fn info(&mut self, section: &str) -> anyhow::Result<String> {
        Ok(redis::cmd("INFO")
            .arg(section)
            .query_async::<String>(&mut self.conn)
            .await?)
    }

    async fn redis(&mut self) -> anyhow::Result<RedisSnap> {
        let mut s = RedisSnap::default();
        for line in self.info("commandstats").await?.lines() {
            // cmdstat_evalsha:calls=1,usec=2,...
            if let Some((name, rest)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            {
                let calls = rest
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let usec = rest
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("usec="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                s.calls.insert(name.to_string(), calls);
                s.usec.insert(name.to_string(), usec);
            }
        }
        let field = |text: &str, key: &str| -> f64 {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(key).and_then(|v| v.strip_prefix(':')))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let cpu = self.info("cpu").await?;
        s.cpu_secs = field(&cpu, "used_cpu_sys") + field(&cpu, "used_cpu_user");
        let mem = self.info("memory").await?;
        s.used_memory = field(&mem, "used_memory") as u64;
        Ok(s)
    }

    async fn snap(&mut self) -> anyhow::Result<Snap> {
        let redis = self.redis().await?;
        Ok(Snap {
            at: Instant::now(),
            cpu: proc_cpu_secs(self.tck),
            redis,
        })
    }
}

/// Differences between two snapshots, per task where it says so.
#[derive(Debug, Clone, Serialize)]
struct Cost {
    /// Tasks the phase handled.
    tasks: u64,
    /// Seconds between the snapshots.
    secs: f64,
    /// Redis commands (INFO excluded) per task; EVALSHA counts as one command.
    redis_commands_per_task: f64,
    /// Of which script calls (EVALSHA/EVAL/FCALL) per task.
    redis_scripts_per_task: f64,
    /// Redis commands by name, per task (INFO excluded).
    redis_commands_by_name: std::collections::BTreeMap<String, f64>,
    /// Redis time per task by command (`INFO commandstats` usec), µs; a script's time
    /// includes the commands it ran, which are also listed under their own names.
    redis_usec_per_task_by_name: std::collections::BTreeMap<String, f64>,
    /// Redis CPU (user + sys) per task, µs.
    redis_cpu_us_per_task: f64,
    /// Redis CPU, share of one core.
    redis_cpu_percent: f64,
    /// This process's CPU (server + bench agents + load generator) per task, µs.
    process_cpu_us_per_task: f64,
    /// This process's CPU, share of one core (200% = both of 2 cores).
    process_cpu_percent: f64,
}

fn cost(a: &Snap, b: &Snap, tasks: u64) -> Cost {
    let t = tasks.max(1) as f64;
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let mut by_name = std::collections::BTreeMap::new();
    let mut total = 0u64;
    let mut scripts = 0u64;
    let mut usec_by_name = std::collections::BTreeMap::new();
    for (name, us) in &b.redis.usec {
        let d = us.saturating_sub(a.redis.usec.get(name).copied().unwrap_or(0));
        if d > 0 && name != "info" {
            usec_by_name.insert(name.clone(), round(d as f64 / t, 2));
        }
    }
    for (name, calls) in &b.redis.calls {
        if name == "info" {
            continue;
        }
        let d = calls.saturating_sub(a.redis.calls.get(name).copied().unwrap_or(0));
        if d == 0 {
            continue;
        }
        total += d;
        if matches!(
            name.as_str(),
            "evalsha" | "eval" | "fcall" | "evalsha_ro" | "eval_ro"
        ) {
            scripts += d;
        }
        by_name.insert(name.clone(), round(d as f64 / t, 3));
    }
    let rcpu = (b.redis.cpu_secs - a.redis.cpu_secs).max(0.0);
    let pcpu = (b.cpu - a.cpu).max(0.0);
    Cost {
        tasks,
        secs: round(secs, 3),
        redis_commands_per_task: round(total as f64 / t, 2),
        redis_scripts_per_task: round(scripts as f64 / t, 2),
        redis_commands_by_name: by_name,
        redis_usec_per_task_by_name: usec_by_name,
        redis_cpu_us_per_task: round(rcpu * 1e6 / t, 2),
        redis_cpu_percent: round(rcpu * 100.0 / secs, 1),
        process_cpu_us_per_task: round(pcpu * 1e6 / t, 2),
        process_cpu_percent: round(pcpu * 100.0 / secs, 1),
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}

// ---------------------------------------------------------------------------------
// HTTP: the admin client and the bench agents.

#[derive(Deserialize)]
struct Registered {
    id: String,
    token: String,
}

#[derive(Deserialize)]
struct LeaseReplyLean {
    leases: Vec<LeaseLean>,
}

#[derive(Deserialize)]
struct LeaseLean {
    task: TaskLean,
    lease_token: String,
}

#[derive(Deserialize)]
struct TaskLean {
    id: String,
    #[serde(default)]
    payload: Value,
}

#[derive(Serialize)]
struct ReportOut<'a> {
    task_id: &'a str,
    lease_token: &'a str,
    outcome: &'static str,
    result: Option<()>,
}

#[derive(Serialize)]
struct ReportsOut<'a> {
    reports: Vec<ReportOut<'a>>,
}

#[derive(Deserialize)]
struct ReportsReply {
    results: Vec<ReportStatus>,
}

#[derive(Deserialize)]
struct ReportStatus {
    status: u16,
}

/// Counters shared by the bench agents of one phase.
struct Counters {
    /// Reference instant of the latency payloads (`ts_ns` is ns since it).
    base: Instant,
    started: Instant,
    leased: AtomicU64,
    done: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    first_lease: Mutex<Option<Instant>>,
    last_done: Mutex<Option<Instant>>,
    record_latency: AtomicBool,
    /// (sequence number, start - submit in ns).
    latency: Mutex<Vec<(u64, u64)>>,
}

impl Counters {
    fn new(base: Instant) -> Arc<Counters> {
        Arc::new(Counters {
            base,
            started: Instant::now(),
            leased: AtomicU64::new(0),
            done: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_lease: Mutex::new(None),
            last_done: Mutex::new(None),
            record_latency: AtomicBool::new(false),
            latency: Mutex::new(Vec::new()),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    admin: String,
    /// Requests answered 503/429 and retried.
    retries: Arc<AtomicU64>,
}

impl Api {
    /// POSTs JSON and parses the answer. A 503 or 429 (Redis slower than the server's
    /// timeout, typically on a busy machine or in a debug build) is retried after a short
    /// pause, as a client would, and counted in `http_retries`.
    async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let r = self
                .http
                .post(format!("{}{path}", self.base))
                .bearer_auth(token)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await?;
            let status = r.status();
            if status.is_success() {
                return Ok(r.json::<T>().await?);
            }
            if (status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS)
                && attempt < 20
            {
                self.retries.fetch_add(1, Ordering::Relaxed);
                let wait = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map_or(Duration::from_millis(100), |s| {
                        Duration::from_secs(s).min(Duration::from_millis(500))
                    });
                tokio::time::sleep(wait).await;
                continue;
            }
            let text = r.text().await.unwrap_or_default();
            anyhow::bail!(
                "POST {path}: {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
    }

    async fn queue_counts(&self, queue: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}/v1/queues/{queue}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await?
            .error_for_status()?;
        let v: Value = r.json().await?;
        Ok(v.get("counts").cloned().unwrap_or(Value::Null))
    }
}

/// A group of bench agents serving one queue.
struct Agents {
    stop: CancellationToken,
    loops: tokio::task::JoinSet<()>,
    nodes: Vec<Registered>,
}

impl Agents {
    /// Registers `k` nodes on `queue` and starts `loops` lease loops on each.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        api: &Api,
        queue: &str,
        k: usize,
        loops: usize,
        max: i64,
        wait_ms: i64,
        c: &Arc<Counters>,
        stack: &mut Stack,
    ) -> anyhow::Result<Agents> {
        let stop = CancellationToken::new();
        stack.agents_stop.push(stop.clone());
        let capacity = (max * loops as i64).clamp(1, 10_000);
        let regs = (0..k).map(|i| {
            let body = json!({"name": format!("bench-{queue}-{i}"), "queues": [queue], "capacity": capacity});
            let api = api.clone();
            async move { api.post_json::<Registered>("/v1/nodes", &api.admin, serde_json::to_vec(&body)?).await }
        });
        let nodes = futures::future::try_join_all(regs)
            .await
            .context("cannot register the bench agents")?;
        let mut set = tokio::task::JoinSet::new();
        let lease_body = serde_json::to_vec(&json!({"max": max, "wait_ms": wait_ms}))?;
        for n in &nodes {
            for _ in 0..loops {
                set.spawn(lease_loop(
                    api.clone(),
                    n.id.clone(),
                    n.token.clone(),
                    lease_body.clone(),
                    c.clone(),
                    stop.clone(),
                ));
            }
        }
        Ok(Agents {
            stop,
            loops: set,
            nodes,
        })
    }

    /// Stops the loops and deregisters the nodes.
    async fn stop(mut self, api: &Api) {
        self.stop.cancel();
        while self.loops.join_next().await.is_some() {}
        let dels = self.nodes.iter().map(|n| {
            api.http
                .delete(format!("{}/v1/nodes/{}", api.base, n.id))
                .bearer_auth(&n.token)
                .send()
        });
        let _ = futures::future::join_all(dels).await;
    }
}

/// One lease loop of a bench agent: lease, "run" (nothing), report all in one call.
async fn lease_loop(
    api: Api,
    id: String,
    token: String,
    body: Vec<u8>,
    c: Arc<Counters>,
    stop: CancellationToken,
) {
    let lease_path = format!("/v1/nodes/{id}/lease");
    let report_path = format!("/v1/nodes/{id}/reports");
    loop {
        let reply = tokio::select! {
            _ = stop.cancelled() => return,
            r = api.post_json::<LeaseReplyLean>(&lease_path, &token, body.clone()) => r,
        };
        let reply = match reply {
            Ok(r) => r,
            Err(e) => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "bench agent: lease failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        if reply.leases.is_empty() {
            continue;
        }
        let now = Instant::now();
        lock(&c.first_lease).get_or_insert(now);
        c.leased
            .fetch_add(reply.leases.len() as u64, Ordering::Relaxed);
        if c.record_latency.load(Ordering::Relaxed) {
            let since = now.duration_since(c.base).as_nanos() as u64;
            let mut lat = lock(&c.latency);
            for l in &reply.leases {
                let seq = l.task.payload.get("i").and_then(Value::as_u64);
                let ts = l.task.payload.get("ts_ns").and_then(Value::as_u64);
                if let (Some(seq), Some(ts)) = (seq, ts) {
                    lat.push((seq, since.saturating_sub(ts)));
                }
            }
        }
        let reports = ReportsOut {
            reports: reply
                .leases
                .iter()
                .map(|l| ReportOut {
                    task_id: &l.task.id,
                    lease_token: &l.lease_token,
                    outcome: "succeeded",
                    result: None,
                })
                .collect(),
        };
        let Ok(bytes) = serde_json::to_vec(&reports) else {
            continue;
        };
        // Reports must not be lost: retry a few times, even while stopping.
        for attempt in 0..5 {
            match api
                .post_json::<ReportsReply>(&report_path, &token, bytes.clone())
                .await
            {
                Ok(r) => {
                    let ok = r.results.iter().filter(|s| s.status == 200).count() as u64;
                    let bad = r.results.len() as u64 - ok;
                    *lock(&c.last_done) = Some(Instant::now());
                    c.done.fetch_add(ok, Ordering::Relaxed);
                    c.rejected.fetch_add(bad, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, attempt, "bench agent: reports failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Load generators.

fn task_json(queue: &str, i: u64) -> Value {
    json!({"kind": "noop", "queue": queue, "payload": {"i": i, "kind": "noop", "pad": PAD}})
}

fn payload_bytes() -> usize {
    serde_json::to_vec(&json!({"i": 12345, "kind": "noop", "pad": PAD})).map_or(0, |v| v.len())
}

fn bar(len: u64, msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{msg:<34} [{bar:30}] {pos}/{len} {per_sec:>14} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    pb
}

/// Submits `n` tasks to `queue` in batches, `concurrency` requests in flight; returns
/// the time from the first request to the last answer.
async fn submit_batches(
    api: &Api,
    queue: &str,
    n: u64,
    batch: usize,
    concurrency: usize,
    pb: &ProgressBar,
) -> anyhow::Result<Duration> {
    let starts: Vec<u64> = (0..n).step_by(batch).collect();
    let t0 = Instant::now();
    let mut s = futures::stream::iter(starts)
        .map(|from| {
            let api = api.clone();
            let queue = queue.to_string();
            async move {
                let to = (from + batch as u64).min(n);
                let tasks: Vec<Value> = (from..to).map(|i| task_json(&queue, i)).collect();
                let body = serde_json::to_vec(&json!({ "tasks": tasks }))?;
                let r: Value = api.post_json("/v1/tasks/batch", &api.admin, body).await?;
                let got = r.get("ids").and_then(Value::as_array).map_or(0, Vec::len) as u64;
                anyhow::ensure!(
                    got == to - from,
                    "batch answered {got} ids for {} tasks",
                    to - from
                );
                Ok::<u64, anyhow::Error>(got)
            }
        })
        .buffer_unordered(concurrency);
    while let Some(r) = s.next().await {
        pb.inc(r?);
    }
    Ok(t0.elapsed())
}

/// Submits `n` tasks one per request from `clients` concurrent clients.
async fn submit_singles(
    api: &Api,
    queue: &str,
    n: u64,
    clients: usize,
    pb: &ProgressBar,
) -> anyhow::Result<Duration> {
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let workers = (0..clients).map(|_| {
        let api = api.clone();
        let queue = queue.to_string();
        let next = next.clone();
        let pb = pb.clone();
        async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let body = serde_json::to_vec(&task_json(&queue, i))?;
                let _: Value = api.post_json("/v1/tasks", &api.admin, body).await?;
                pb.inc(1);
            }
        }
    });
    futures::future::try_join_all(workers).await?;
    Ok(t0.elapsed())
}

/// Waits until the agents have reported `target` tasks accepted; the instant of the last one.
async fn wait_done(c: &Counters, target: u64, pb: &ProgressBar) -> anyhow::Result<Instant> {
    let mut last = c.done.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        let d = c.done.load(Ordering::Relaxed);
        pb.set_position(d.min(target));
        if d >= target {
            return Ok(lock(&c.last_done).unwrap_or_else(Instant::now));
        }
        if d != last {
            last = d;
            last_change = Instant::now();
        } else if last_change.elapsed() > STALL {
            anyhow::bail!(
                "stalled: {d} of {target} tasks done, nothing for {}s (leased {}, rejected reports {}, HTTP errors {})",
                STALL.as_secs(),
                c.leased.load(Ordering::Relaxed),
                c.rejected.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// The report.

#[derive(Debug, Clone, Serialize)]
struct Rate {
    tasks: u64,
    secs: f64,
    per_sec: f64,
}

fn rate(tasks: u64, d: Duration) -> Rate {
    let secs = d.as_secs_f64().max(1e-9);
    Rate {
        tasks,
        secs: round(secs, 3),
        per_sec: round(tasks as f64 / secs, 0),
    }
}

#[derive(Debug, Clone, Serialize)]
struct Latency {
    offered_per_sec: u64,
    achieved_per_sec: f64,
    samples: usize,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Target {
    name: String,
    target: String,
    measured: String,
    met: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    muster_version: &'static str,
    date_utc: String,
    machine: Value,
    setup: Value,
    submit_batch: Rate,
    submit_single: Rate,
    process_only: Rate,
    process_only_incl_agent_start: Rate,
    end_to_end: Rate,
    latency: Vec<Latency>,
    cost_submit_batch: Cost,
    cost_process_only: Cost,
    cost_end_to_end: Cost,
    redis_memory_bytes_per_pending_task: f64,
    payload_bytes: usize,
    redis_memory_bytes_per_pending_task_beyond_payload: f64,
    idle: Value,
    census: Value,
    calibration: Value,
    server_rss_kb: u64,
    server_peak_rss_kb: u64,
    targets: Vec<Target>,
    checks: Value,
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|x| x.1.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({"cores": cores, "cpu": cpu})
}

fn date_utc() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// The run.

async fn bench(args: &BenchArgs, stack: &mut Stack) -> anyhow::Result<Report> {
    let n = args
        .n
        .unwrap_or(if args.quick { 2_000 } else { 50_000 })
        .max(1);
    let single_n = args.single_n.unwrap_or((n / 5).clamp(1, 10_000));
    let lat_secs = args
        .latency_secs
        .unwrap_or(if args.quick { 2.0 } else { 10.0 });
    let rates = args.rates.clone().unwrap_or_else(|| {
        if args.quick {
            vec![200]
        } else {
            vec![200, 1000]
        }
    });
    let idle_secs = args.idle_secs.unwrap_or(if args.quick { 1.0 } else { 5.0 });
    let say = |s: String| {
        eprintln!("{s}");
    };

    // 1. The stack.
    let token = local::random_hex_token();
    let (redis_url, namespace, redis_desc) = match &args.redis_url {
        Some(url) => {
            let ns = format!("muster-bench-{}", &local::random_hex_token()[..12]);
            stack.cleanup_ns = Some((url.clone(), ns.clone()));
            (
                url.clone(),
                ns,
                format!(
                    "{url} (namespace removed afterwards; other clients count in the Redis figures)"
                ),
            )
        }
        None => {
            let dir = std::env::temp_dir()
                .join(format!("muster-bench-{}", &local::random_hex_token()[..12]));
            stack.dir = Some(dir.clone());
            // Persistence off (no RDB snapshots, no AOF): throughput, not durability.
            let r = PrivateRedis::start(&dir, &["--save", "", "--appendonly", "no"]).await?;
            let url = r.url();
            stack.redis = Some(r);
            (
                url,
                "muster".to_string(),
                "private redis-server, persistence off (--save '' --appendonly no)".to_string(),
            )
        }
    };
    let mut probe = Probe {
        conn: redis::Client::open(redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?,
        tck: clk_tck(),
    };
    let redis_version = probe
        .info("server")
        .await
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("redis_version:")
                    .map(|v| v.trim().to_string())
            })
        })
        .unwrap_or_default();
    let mut cfg = Config::new("127.0.0.1:0", redis_url.clone());
    cfg.namespace = namespace.clone();
    cfg.admin_token = Some(token.clone());
    let dispatchers = cfg.dispatchers;
    let app = Application::build(cfg).await?;
    let base = format!("http://{}", app.local_addr());
    stack.server = Some(tokio::spawn(app.run(stack.server_stop.clone())));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(120))
        .build()?;
    let api = Api {
        http,
        base: base.clone(),
        admin: token.clone(),
        retries: Arc::new(AtomicU64::new(0)),
    };
    let t_base = Instant::now();
    say(format!(
        "muster bench: N={n}, {} in-process no-op bench agents x {} lease loops (max {}, wait_ms {}); \
         the agents run in this process, so the figures measure muster, not process spawning",
        args.agents, args.loops, args.lease_max, args.wait_ms
    ));
    say(format!(
        "redis: {redis_desc}, version {redis_version}; server: in-process at {base}"
    ));

    // 1b. Calibration: one hop to Redis (PING) and one HTTP round trip (GET /healthz),
    // sequential; on a busy machine these show how much scheduling alone costs.
    let calibration = {
        let mut ping = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let t = Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut probe.conn).await?;
            ping.push(t.elapsed().as_nanos() as u64);
        }
        let mut hz = Vec::with_capacity(2000);
        for _ in 0..2000 {
            let t = Instant::now();
            api.http
                .get(format!("{base}/healthz"))
                .send()
                .await?
                .bytes()
                .await?;
            hz.push(t.elapsed().as_nanos() as u64);
        }
        ping.sort_unstable();
        hz.sort_unstable();
        let la = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        json!({
            "redis_ping_p50_ms": round(percentile(&ping, 0.5), 3),
            "redis_ping_p99_ms": round(percentile(&ping, 0.99), 3),
            "http_healthz_p50_ms": round(percentile(&hz, 0.5), 3),
            "http_healthz_p99_ms": round(percentile(&hz, 0.99), 3),
            "loadavg_at_start": la.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        })
    };

    // 2. Batch submit, no agents: rate, commands per submitted task, memory per pending task.
    let pb = bar(n, "submit: POST /v1/tasks/batch");
    let s0 = probe.snap().await?;
    let d = submit_batches(
        &api,
        "bench-batch",
        n,
        args.batch,
        args.batch_concurrency,
        &pb,
    )
    .await?;
    let s1 = probe.snap().await?;
    pb.finish();
    let submit_batch = rate(n, d);
    let cost_submit_batch = cost(&s0, &s1, n);
    let mem_per_task = round(
        (s1.redis.used_memory as f64 - s0.redis.used_memory as f64) / n as f64,
        1,
    );
    let pbytes = payload_bytes();

    // 3. Single submit, no agents.
    let pb = bar(
        single_n,
        &format!("submit: POST /v1/tasks x{}", args.clients),
    );
    let d = submit_singles(&api, "bench-single", single_n, args.clients, &pb).await?;
    pb.finish();
    let submit_single = rate(single_n, d);

    // 4. Process only: N pre-submitted, then the agents start.
    let pb = bar(n, "process: pre-submitting");
    submit_batches(
        &api,
        "bench-process",
        n,
        args.batch,
        args.batch_concurrency,
        &pb,
    )
    .await?;
    pb.finish_and_clear();
    let pb = bar(n, "process: pre-submitted, draining");
    let c = Counters::new(t_base);
    let s0 = probe.snap().await?;
    let agents = Agents::start(
        &api,
        "bench-process",
        args.agents,
        args.loops,
        args.lease_max,
        args.wait_ms,
        &c,
        stack,
    )
    .await?;
    let last = wait_done(&c, n, &pb).await?;
    let s1 = probe.snap().await?;
    pb.finish();
    agents.stop(&api).await;
    let first = lock(&c.first_lease).unwrap_or(c.started);
    let process_only = rate(n, last.duration_since(first));
    let process_only_incl = rate(n, last.duration_since(c.started));
    let cost_process_only = cost(&s0, &s1, n);
    let process_counts = api.queue_counts("bench-process").await?;

    // 5. End to end: agents idle and long-polling, then N submitted in batches.
    let c = Counters::new(t_base);
    let agents = Agents::start(
        &api,
        "bench-e2e",
        args.agents,
        args.loops,
        args.lease_max,
        args.wait_ms,
        &c,
        stack,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pb = bar(n, "end-to-end: submit -> succeeded");
    let s0 = probe.snap().await?;
    let t0 = Instant::now();
    let sub_api = api.clone();
    let sub_pb = ProgressBar::hidden();
    let (batch, conc) = (args.batch, args.batch_concurrency);
    let submitter = tokio::spawn(async move {
        submit_batches(&sub_api, "bench-e2e", n, batch, conc, &sub_pb).await
    });
    let last = wait_done(&c, n, &pb).await?;
    let s1 = probe.snap().await?;
    submitter.await.context("the submitter panicked")??;
    pb.finish();
    agents.stop(&api).await;
    let end_to_end = rate(n, last.duration_since(t0));
    let cost_end_to_end = cost(&s0, &s1, n);
    let e2e_counts = api.queue_counts("bench-e2e").await?;

    // 5b. Command census: the same path under MONITOR (untimed).
    let census_n = args
        .census_n
        .unwrap_or(n.min(if args.quick { 1_000 } else { 5_000 }));
    let census = if census_n > 0 && local::find_on_path("redis-cli").is_some() {
        let pb = bar(census_n, "census: end-to-end under MONITOR");
        let r = census(&api, &redis_url, census_n, args, stack, t_base, &pb).await;
        pb.finish();
        match r {
            Ok(v) => v,
            Err(e) => json!({"error": e.to_string()}),
        }
    } else {
        json!({"skipped": "no redis-cli on PATH or --census-n 0"})
    };

    // 6. Latency at fixed offered rates.
    let c = Counters::new(t_base);
    let agents = Agents::start(
        &api,
        "bench-lat",
        args.agents,
        args.loops,
        args.lease_max,
        args.wait_ms,
        &c,
        stack,
    )
    .await?;
    // Warm-up: a few tasks through the whole path.
    let mut done_before = 0u64;
    {
        let pb = ProgressBar::hidden();
        submit_singles(&api, "bench-lat", 200, 4, &pb).await?;
        done_before += 200;
        wait_done(&c, done_before, &pb).await?;
    }
    let mut latency = Vec::new();
    for &r in &rates {
        let total = ((r as f64 * lat_secs).round() as u64).max(LAT_SKIP + 1);
        let pb = bar(total, &format!("latency: {r}/s for {lat_secs}s"));
        lock(&c.latency).clear();
        c.record_latency.store(true, Ordering::Relaxed);
        let t0 = tokio::time::Instant::now();
        let mut reqs = tokio::task::JoinSet::new();
        for i in 0..total {
            tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / r as f64)).await;
            let api = api.clone();
            let base_t = c.base;
            reqs.spawn(async move {
                let ts = base_t.elapsed().as_nanos() as u64;
                let body = json!({"kind": "noop", "queue": "bench-lat", "payload": {"i": i, "ts_ns": ts, "kind": "noop", "pad": PAD}});
                let bytes = serde_json::to_vec(&body)?;
                let _: Value = api.post_json("/v1/tasks", &api.admin, bytes).await?;
                Ok::<(), anyhow::Error>(())
            });
            while let Some(res) = reqs.try_join_next() {
                res.context("a submit panicked")??;
            }
            pb.set_position(c.done.load(Ordering::Relaxed).saturating_sub(done_before));
        }
        let offered_secs = t0.elapsed().as_secs_f64();
        while let Some(res) = reqs.join_next().await {
            res.context("a submit panicked")??;
        }
        done_before += total;
        wait_done(&c, done_before, &ProgressBar::hidden()).await?;
        c.record_latency.store(false, Ordering::Relaxed);
        pb.set_position(total);
        pb.finish();
        let mut v: Vec<u64> = lock(&c.latency)
            .iter()
            .filter(|(i, _)| *i >= LAT_SKIP)
            .map(|x| x.1)
            .collect();
        v.sort_unstable();
        latency.push(Latency {
            offered_per_sec: r,
            achieved_per_sec: round(total as f64 / offered_secs.max(1e-9), 1),
            samples: v.len(),
            p50_ms: round(percentile(&v, 0.50), 3),
            p99_ms: round(percentile(&v, 0.99), 3),
            p999_ms: round(percentile(&v, 0.999), 3),
            max_ms: round(v.last().copied().unwrap_or(0) as f64 / 1e6, 3),
        });
    }
    agents.stop(&api).await;

    // 7. Idle: many agents long-polling, nothing to do.
    let idle = if args.idle_agents > 0 {
        let c = Counters::new(t_base);
        let pb = ProgressBar::new_spinner().with_message(format!(
            "idle: {} agents long-polling for {idle_secs}s",
            args.idle_agents
        ));
        pb.set_draw_target(ProgressDrawTarget::stderr());
        pb.enable_steady_tick(Duration::from_millis(100));
        let agents = Agents::start(
            &api,
            "bench-idle",
            args.idle_agents,
            1,
            1,
            IDLE_WAIT_MS,
            &c,
            stack,
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let s0 = probe.snap().await?;
        tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
        let s1 = probe.snap().await?;
        agents.stop(&api).await;
        pb.finish_and_clear();
        let k = cost(&s0, &s1, 1);
        let calls: f64 = k.redis_commands_by_name.values().sum();
        json!({
            "agents": args.idle_agents,
            "wait_ms": IDLE_WAIT_MS,
            "secs": k.secs,
            "process_cpu_percent": k.process_cpu_percent,
            "redis_cpu_percent": k.redis_cpu_percent,
            "redis_commands_per_sec": round(calls / k.secs.max(1e-9), 1),
            "note": "process CPU includes the 100 in-process agents' HTTP clients",
        })
    } else {
        Value::Null
    };

    let lat200 = latency.iter().find(|l| l.offered_per_sec == 200);
    let mut targets = vec![
        Target {
            name: "end-to-end no-op throughput".into(),
            target: ">= 55,000 tasks/s (2x BullMQ 27,400/s)".into(),
            measured: format!("{:.0}/s", end_to_end.per_sec),
            met: end_to_end.per_sec >= 55_000.0,
        },
        Target {
            name: "batch submit".into(),
            target: "> 135,000 tasks/s (apalis push_bulk)".into(),
            measured: format!("{:.0}/s", submit_batch.per_sec),
            met: submit_batch.per_sec > 135_000.0,
        },
    ];
    if let Some(l) = lat200 {
        targets.push(Target {
            name: "submit->start p99 at 200/s".into(),
            target: "<= 0.74 ms (Sidekiq)".into(),
            measured: format!("{:.3} ms", l.p99_ms),
            met: l.p99_ms <= 0.74,
        });
    }
    let inside = cost_end_to_end.redis_commands_per_task;
    match census.get("top_level_per_task").and_then(Value::as_f64) {
        Some(top) => targets.push(Target {
            name: "Redis commands per task (lifecycle, batched path)".into(),
            target: "<= 10".into(),
            measured: format!("{top:.2} sent by muster (round trips incl. scripts as 1); {inside:.1} counting the commands run inside scripts"),
            met: top <= 10.0,
        }),
        None => targets.push(Target {
            name: "Redis commands per task (lifecycle, batched path)".into(),
            target: "<= 10".into(),
            measured: format!("{inside:.1} counting the commands run inside scripts (no census)"),
            met: inside <= 10.0,
        }),
    }
    let beyond = round(mem_per_task - pbytes as f64, 1);
    targets.push(Target {
        name: "Redis memory per pending task beyond payload".into(),
        target: "<= 400 B".into(),
        measured: format!("{beyond:.0} B ({mem_per_task:.0} B - {pbytes} B payload)"),
        met: beyond <= 400.0,
    });
    if let Some(p) = idle.get("process_cpu_percent").and_then(Value::as_f64) {
        targets.push(Target {
            name: format!("idle server, {} long-polling agents", args.idle_agents),
            target: "< 1% CPU".into(),
            measured: format!("{p:.1}% (incl. the in-process agents)"),
            met: p < 1.0,
        });
    }

    let checks = json!({
        "http_retries_after_503": api.retries.load(Ordering::Relaxed),
        "process_queue_counts": process_counts,
        "end_to_end_queue_counts": e2e_counts,
    });
    Ok(Report {
        muster_version: env!("CARGO_PKG_VERSION"),
        date_utc: date_utc(),
        machine: machine(),
        setup: json!({
            "n": n,
            "single_n": single_n,
            "agents": args.agents,
            "loops_per_agent": args.loops,
            "lease_max": args.lease_max,
            "wait_ms": args.wait_ms,
            "batch": args.batch,
            "batch_concurrency": args.batch_concurrency,
            "single_clients": args.clients,
            "latency_secs": lat_secs,
            "dispatchers": dispatchers,
            "redis": redis_desc,
            "redis_version": redis_version,
            "agents_note": "in-process no-op bench agents (HTTP lease + batched reports): measures muster, not process spawning",
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        }),
        submit_batch,
        submit_single,
        process_only,
        process_only_incl_agent_start: process_only_incl,
        end_to_end,
        latency,
        cost_submit_batch,
        cost_process_only,
        cost_end_to_end,
        redis_memory_bytes_per_pending_task: mem_per_task,
        payload_bytes: pbytes,
        redis_memory_bytes_per_pending_task_beyond_payload: beyond,
        idle,
        server_rss_kb: proc_status_kb("VmRSS:"),
        server_peak_rss_kb: proc_status_kb("VmHWM:"),
        census,
        calibration,
        targets,
        checks,
    })
}

/// Runs `n` tasks end to end (fresh agents, batch submit) while `redis-cli MONITOR`
/// records every command; counts the commands muster sent (top level) and those its
/// scripts ran (`[0 lua]` lines), per task.
async fn census(
    api: &Api,
    redis_url: &str,
    n: u64,
    args: &BenchArgs,
    stack: &mut Stack,
    t_base: Instant,
    pb: &ProgressBar,
) -> anyhow::Result<Value> {
    use tokio::io::AsyncBufReadExt as _;
    let mut child = tokio::process::Command::new("redis-cli")
        .args(["-u", redis_url, "monitor"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start redis-cli monitor")?;
    let stdout = child.stdout.take().context("no stdout from redis-cli")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    // The first line is OK once MONITOR is on.
    tokio::time::timeout(Duration::from_secs(5), lines.next_line())
        .await
        .context("redis-cli monitor did not answer")??;
    let counting = tokio::spawn(async move {
        let mut top: std::collections::BTreeMap<String, u64> = Default::default();
        let mut inner: std::collections::BTreeMap<String, u64> = Default::default();
        while let Ok(Some(l)) = lines.next_line().await {
            // 1700000000.123456 [0 127.0.0.1:5555] "evalsha" "…"   or   [0 lua] "HSET" …
            let Some((client, rest)) = l.split_once("] ") else {
                continue;
            };
            let cmd = rest.split('"').nth(1).unwrap_or("").to_ascii_lowercase();
            if cmd == "info" || cmd == "monitor" {
                continue;
            }
            let map = if client.ends_with(" lua") {
                &mut inner
            } else {
                &mut top
            };
            *map.entry(cmd).or_default() += 1;
        }
        (top, inner)
    });
    let c = Counters::new(t_base);
    let agents = Agents::start(
        api,
        "bench-census",
        args.agents,
        args.loops,
        args.lease_max,
        args.wait_ms,
        &c,
        stack,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    submit_batches(
        api,
        "bench-census",
        n,
        args.batch,
        args.batch_concurrency,
        &ProgressBar::hidden(),
    )
    .await?;
    wait_done(&c, n, pb).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let (top, inner) = counting.await.context("the census reader panicked")?;
    agents.stop(api).await;
    let per = |m: &std::collections::BTreeMap<String, u64>| -> (f64, Value) {
        let total: u64 = m.values().sum();
        let by: serde_json::Map<String, Value> = m
            .iter()
            .map(|(k, v)| (k.clone(), json!(round(*v as f64 / n as f64, 3))))
            .collect();
        (round(total as f64 / n as f64, 2), Value::Object(by))
    };
    let (t, tb) = per(&top);
    let (i, ib) = per(&inner);
    Ok(json!({
        "tasks": n,
        "top_level_per_task": t,
        "top_level_by_name": tb,
        "inside_scripts_per_task": i,
        "inside_scripts_by_name": ib,
        "note": "redis-cli MONITOR over an untimed end-to-end run; top level = commands muster sent (EVALSHA counts 1), inside = commands its Lua scripts ran; includes the background loops (reconciler, timers, dispatcher) during the run",
    }))
}

fn num(v: f64) -> String {
    let s = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

fn print_report(r: &Report) {
    let s = &r.setup;
    println!();
    println!(
        "muster bench {} ({} build), {} on {} cores ({}), {}",
        r.muster_version,
        s["build"].as_str().unwrap_or(""),
        r.date_utc,
        r.machine["cores"],
        r.machine["cpu"].as_str().unwrap_or(""),
        s["redis"].as_str().unwrap_or("")
    );
    println!(
        "N = {}; {} in-process no-op bench agents x {} lease loops (max {}, long-poll {} ms), reports batched per lease",
        s["n"], s["agents"], s["loops_per_agent"], s["lease_max"], s["wait_ms"]
    );
    let mut t = Table::new();
    t.set_header(vec![
        "measurement",
        "tasks",
        "seconds",
        "tasks/s",
        "Redis cmds/task",
        "Redis CPU µs/task",
        "muster CPU µs/task",
    ]);
    let row = |t: &mut Table, name: String, rt: &Rate, c: Option<&Cost>| {
        t.add_row(vec![
            name,
            num(rt.tasks as f64),
            format!("{:.2}", rt.secs),
            num(rt.per_sec),
            c.map_or("".into(), |c| format!("{:.2}", c.redis_commands_per_task)),
            c.map_or("".into(), |c| format!("{:.1}", c.redis_cpu_us_per_task)),
            c.map_or("".into(), |c| format!("{:.1}", c.process_cpu_us_per_task)),
        ]);
    };
    row(
        &mut t,
        format!(
            "submit, POST /v1/tasks/batch ({} per call, {} in flight)",
            s["batch"], s["batch_concurrency"]
        ),
        &r.submit_batch,
        Some(&r.cost_submit_batch),
    );
    row(
        &mut t,
        format!("submit, POST /v1/tasks ({} clients)", s["single_clients"]),
        &r.submit_single,
        None,
    );
    row(
        &mut t,
        "process only (pre-submitted; first lease -> last report)".into(),
        &r.process_only,
        Some(&r.cost_process_only),
    );
    row(
        &mut t,
        "process only, incl. agent start-up".into(),
        &r.process_only_incl_agent_start,
        None,
    );
    row(
        &mut t,
        "end-to-end (first submit -> last succeeded)".into(),
        &r.end_to_end,
        Some(&r.cost_end_to_end),
    );
    for i in 3..7 {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    if let Some(c) = t.column_mut(1) {
        c.set_cell_alignment(CellAlignment::Right);
    }
    println!("{t}");

    let mut t = Table::new();
    t.set_header(vec![
        "submit -> start latency",
        "achieved/s",
        "samples",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
    ]);
    for l in &r.latency {
        t.add_row(vec![
            format!("{}/s offered, POST /v1/tasks", l.offered_per_sec),
            format!("{:.1}", l.achieved_per_sec),
            l.samples.to_string(),
            format!("{:.3}", l.p50_ms),
            format!("{:.3}", l.p99_ms),
            format!("{:.3}", l.p999_ms),
            format!("{:.3}", l.max_ms),
        ]);
    }
    println!("{t}");

    let mut t = Table::new();
    t.set_header(vec!["resource", "value"]);
    t.add_row(vec![
        "Redis memory per pending task".to_string(),
        format!(
            "{:.0} B ({:.0} B beyond the {} B payload)",
            r.redis_memory_bytes_per_pending_task,
            r.redis_memory_bytes_per_pending_task_beyond_payload,
            r.payload_bytes
        ),
    ]);
    let top = |c: &Cost| {
        let mut v: Vec<_> = c.redis_commands_by_name.iter().collect();
        v.sort_by(|a, b| b.1.total_cmp(a.1));
        v.iter()
            .take(6)
            .map(|(k, x)| format!("{k} {x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    t.add_row(vec![
        "Redis commands/task, end-to-end".to_string(),
        format!(
            "{:.2} ({})",
            r.cost_end_to_end.redis_commands_per_task,
            top(&r.cost_end_to_end)
        ),
    ]);
    t.add_row(vec![
        "Redis commands/task, batch submit".to_string(),
        format!(
            "{:.2} ({})",
            r.cost_submit_batch.redis_commands_per_task,
            top(&r.cost_submit_batch)
        ),
    ]);
    t.add_row(vec![
        "Redis commands/task, process only".to_string(),
        format!(
            "{:.2} ({})",
            r.cost_process_only.redis_commands_per_task,
            top(&r.cost_process_only)
        ),
    ]);
    t.add_row(vec![
        "CPU during end-to-end".to_string(),
        format!(
            "Redis {:.0}% of a core, muster process {:.0}% (server + agents + load generator)",
            r.cost_end_to_end.redis_cpu_percent, r.cost_end_to_end.process_cpu_percent
        ),
    ]);
    t.add_row(vec![
        "calibration: Redis PING / GET /healthz, sequential".to_string(),
        format!(
            "p50 {} / {} ms, p99 {} / {} ms (load average at start {})",
            r.calibration["redis_ping_p50_ms"],
            r.calibration["http_healthz_p50_ms"],
            r.calibration["redis_ping_p99_ms"],
            r.calibration["http_healthz_p99_ms"],
            r.calibration["loadavg_at_start"].as_str().unwrap_or("")
        ),
    ]);
    if let Some(n) = r.checks["http_retries_after_503"]
        .as_u64()
        .filter(|n| *n > 0)
    {
        t.add_row(vec![
            "requests answered 503 and retried".to_string(),
            format!("{n} (Redis slower than the server's 1 s timeout)"),
        ]);
    }
    t.add_row(vec![
        "muster process RSS (now / peak)".to_string(),
        format!(
            "{} MiB / {} MiB",
            r.server_rss_kb / 1024,
            r.server_peak_rss_kb / 1024
        ),
    ]);
    if let Some(top) = r.census.get("top_level_per_task") {
        let list = |v: &Value| {
            let mut x: Vec<(String, f64)> = v
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
                        .collect()
                })
                .unwrap_or_default();
            x.sort_by(|a, b| b.1.total_cmp(&a.1));
            x.iter()
                .take(8)
                .map(|(k, v)| format!("{k} {v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        t.add_row(vec![
            format!("command census ({} tasks under MONITOR)", r.census["tasks"]),
            format!(
                "{top} commands/task sent by muster ({}); {} run inside scripts ({})",
                list(&r.census["top_level_by_name"]),
                r.census["inside_scripts_per_task"],
                list(&r.census["inside_scripts_by_name"])
            ),
        ]);
    }
    if !r.idle.is_null() {
        t.add_row(vec![
            format!("idle: {} agents long-polling ({} ms)", r.idle["agents"], r.idle["wait_ms"]),
            format!(
                "muster process {}% CPU (incl. the agents' clients), Redis {}% CPU, {} Redis cmds/s",
                r.idle["process_cpu_percent"], r.idle["redis_cpu_percent"], r.idle["redis_commands_per_sec"]
            ),
        ]);
    }
    println!("{t}");

    let mut t = Table::new();
    t.set_header(vec!["target (issue #5)", "goal", "measured", "met"]);
    for x in &r.targets {
        t.add_row(vec![
            x.name.clone(),
            x.target.clone(),
            x.measured.clone(),
            if x.met { "yes".into() } else { "NO".into() },
        ]);
    }
    println!("{t}");
}
