//! `muster demo`: word frequencies over a generated corpus, split into chunk tasks.
//!
//! What it shows, end to end on one machine:
//! 1. a deterministic text corpus (64 MiB by default) is generated and split on line
//!    boundaries into ~256 KiB chunks, one `wordcount` task each, over priorities 0..=9,
//!    submitted in one `POST /v1/tasks/batch`;
//! 2. a private stack runs them: a private redis-server, the control plane in-process,
//!    and real `muster agent --builtin` child processes;
//! 3. failure and recovery: one chunk is a `fail_once` task (fails its first attempt,
//!    succeeds on retry), and one agent process is killed with SIGKILL mid-run, so its
//!    leases expire and its tasks finish on the other agents;
//! 4. fan-in: every result is fetched and merged; the answer (top words, total) is
//!    checked against a single-process count of the same corpus, and the exit code says
//!    whether it matched.

use crate::agent::builtin::count_words;
use crate::cli::local::{self, ChildProc, PrivateRedis, Watchdog};
use crate::config::Config;
use crate::domain::{
    Backoff, BatchCreated, NewTask, NewTaskBatch, NodeList, QueueList, TaskPage, TaskState,
};
use crate::startup::Application;
use anyhow::Context as _;
use comfy_table::{CellAlignment, Table};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Flags of `muster demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Use this Redis instead of a private redis-server (a fresh key namespace is used
    /// and removed afterwards).
    #[arg(long, env = "MUSTER_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Corpus size in MiB.
    #[arg(long, default_value_t = 64)]
    pub size_mb: u64,
    /// Local agents.
    #[arg(long, default_value_t = 3)]
    pub agents: u32,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
    /// Tasks each agent runs at once.
    #[arg(long, default_value_t = 2)]
    pub capacity: u32,
    /// Chunk size in KiB (chunks end on line boundaries).
    #[arg(long, default_value_t = 256)]
    pub chunk_kib: u64,
    /// Seed of the corpus generator (the same seed gives the same corpus).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the corpus to this directory and keep it (default: a temp dir, removed).
    #[arg(long)]
    pub corpus_dir: Option<PathBuf>,
    /// Neither kill an agent nor inject the failing chunk.
    #[arg(long)]
    pub no_chaos: bool,
    /// Kill an agent once this share of the tasks is done (percent).
    #[arg(long, default_value_t = 30)]
    pub kill_at_percent: u64,
}

/// Queue the demo's tasks go to.
const QUEUE: &str = "demo";
/// Lease TTL of the chunk tasks: short, so that a killed agent's tasks come back fast.
const TASK_TIMEOUT_MS: i64 = 3_000;
/// Heartbeat interval of the in-process control plane.
const HEARTBEAT_MS: u64 = 1_000;
/// Reaper interval of the in-process control plane.
const REAPER_MS: u64 = 250;
/// How often progress is polled.
const POLL: Duration = Duration::from_millis(200);
/// The run fails when nothing finishes for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the demo and exits.
///
/// # Errors
/// redis-server missing, or a wrong answer.
pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.size_mb >= 1, "--size-mb must be at least 1");
    anyhow::ensure!(args.agents >= 1, "--agents must be at least 1");
    anyhow::ensure!(args.capacity >= 1, "--capacity must be at least 1");
    anyhow::ensure!(args.chunk_kib >= 4, "--chunk-kib must be at least 4");
    anyhow::ensure!(
        args.kill_at_percent <= 100,
        "--kill-at-percent must be 0 to 100"
    );
    if args.redis_url.is_none() && local::find_on_path("redis-server").is_none() {
        anyhow::bail!(local::NO_REDIS_SERVER);
    }
    let work = WorkDir::create()?;
    let mut stack = Stack::default();
    let res = tokio::select! {
        r = demo(&args, &work, &mut stack) => r,
        sig = local::stop_signal() => Err(anyhow::anyhow!("interrupted by {sig}; stopped the demo")),
    };
    stack.shutdown().await;
    drop(work);
    res
}

/// Everything the demo started; [`Stack::shutdown`] stops it in order.
#[derive(Default)]
struct Stack {
    redis: Option<PrivateRedis>,
    /// Redis URL and namespace to clean up (only with `--redis-url`).
    cleanup_ns: Option<(String, String)>,
    server_stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    agents: Vec<ChildProc>,
    agent_watchdog: Option<Watchdog>,
}

impl Stack {
    async fn shutdown(&mut self) {
        // Agents first (SIGTERM: they drain and deregister), in parallel.
        let agents = std::mem::take(&mut self.agents);
        let stops = agents.into_iter().map(|mut a| async move {
            a.terminate(Duration::from_secs(10)).await;
        });
        futures::future::join_all(stops).await;
        if let Some(mut w) = self.agent_watchdog.take() {
            w.stop().await;
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
            tracing::warn!(error = %e, namespace = %ns, "could not remove the demo's keys");
        }
        if let Some(r) = self.redis.take() {
            r.stop().await;
        }
    }
}

/// A temp directory removed on drop.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        let path =
            std::env::temp_dir().join(format!("muster-demo-{}", &local::random_hex_token()[..12]));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Prints to stdout unless `--json`.
struct Say {
    quiet: bool,
}

impl Say {
    fn line(&self, s: impl AsRef<str>) {
        if !self.quiet {
            println!("{}", s.as_ref());
            let _ = std::io::stdout().flush();
        }
    }
}

async fn demo(args: &DemoArgs, work: &WorkDir, stack: &mut Stack) -> anyhow::Result<ExitCode> {
    let say = Say { quiet: args.json };
    let started = Instant::now();

    // 1. The corpus.
    let corpus_dir = match &args.corpus_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            std::path::absolute(d)?
        }
        None => work.path.clone(),
    };
    let corpus_path = corpus_dir.join("corpus.txt");
    say.line(format!(
        "generating a {} MiB text corpus (seed {}) in {}",
        args.size_mb,
        args.seed,
        corpus_path.display()
    ));
    let t = Instant::now();
    let (size, seed, chunk) = (args.size_mb * 1024 * 1024, args.seed, args.chunk_kib * 1024);
    let p = corpus_path.clone();
    let chunks = tokio::task::spawn_blocking(move || generate_corpus(&p, size, seed, chunk))
        .await
        .context("the corpus generator panicked")??;
    let corpus_bytes: u64 = chunks.iter().map(|c| c.1).sum();
    say.line(format!(
        "  {} bytes in {:.1}s, split on line boundaries into {} chunks of ~{} KiB",
        group(corpus_bytes),
        t.elapsed().as_secs_f64(),
        chunks.len(),
        args.chunk_kib
    ));

    // 2. The private stack.
    let token = local::random_hex_token();
    let (redis_url, namespace) = match &args.redis_url {
        Some(url) => {
            let ns = format!("muster-demo-{}", &local::random_hex_token()[..12]);
            (url.clone(), ns)
        }
        None => {
            let r = PrivateRedis::start(&work.path.join("redis"), local::AOF_EVERYSEC).await?;
            let url = r.url();
            stack.redis = Some(r);
            (url, "muster".to_string())
        }
    };
    let mut cfg = Config::new("127.0.0.1:0", redis_url.clone());
    cfg.namespace = namespace.clone();
    cfg.admin_token = Some(token.clone());
    cfg.heartbeat_interval = Duration::from_millis(HEARTBEAT_MS);
    cfg.reaper_interval = Duration::from_millis(REAPER_MS);
    let app = Application::build(cfg).await?;
    if args.redis_url.is_some() {
        stack.cleanup_ns = Some((redis_url.clone(), namespace.clone()));
    }
    let server_url = format!("http://{}", app.local_addr());
    stack.server = Some(tokio::spawn(app.run(stack.server_stop.clone())));

    let exe = std::env::current_exe().context("cannot find the muster binary to start agents")?;
    for i in 1..=args.agents {
        let name = format!("demo-agent-{i}");
        let log = std::fs::File::create(work.path.join(format!("{name}.log")))?;
        let child = tokio::process::Command::new(&exe)
            .args([
                "agent",
                "--server",
                &server_url,
                "--token",
                &token,
                "--builtin",
                "--queue",
                QUEUE,
            ])
            .args([
                "--capacity",
                &args.capacity.to_string(),
                "--name",
                &name,
                "--grace-secs",
                "5",
            ])
            .env("RUST_LOG", "warn")
            .env_remove("MUSTER_SERVER")
            .env_remove("MUSTER_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} agent", exe.display()))?;
        let pid = child.id().unwrap_or(0);
        stack.agents.push(ChildProc { child, pid, name });
    }
    let pids: Vec<u32> = stack.agents.iter().map(|a| a.pid).collect();
    stack.agent_watchdog = Some(Watchdog::start(&pids));
    let api = Api::new(&server_url, &token)?;
    wait_for_agents(&api, stack, work).await?;
    let redis_desc = match &stack.redis {
        Some(r) => format!("private redis-server (pid {}, port {})", r.pid(), r.port()),
        None => format!("{redis_url} (namespace {namespace})"),
    };
    say.line(format!(
        "stack: {redis_desc}, control plane on {server_url}, {} agent processes (muster agent --builtin --capacity {})",
        args.agents, args.capacity
    ));

    // 3. Submit.
    let chaos = !args.no_chaos;
    let fail_once_at = if chaos { Some(chunks.len() / 2) } else { None };
    let mut tasks = Vec::with_capacity(chunks.len());
    for (i, &(offset, len)) in chunks.iter().enumerate() {
        let (kind, payload) = if Some(i) == fail_once_at {
            // fail_once counts `text` on its successful attempt.
            let text = read_chunk(&corpus_path, offset, len)?;
            ("fail_once", json!({ "text": text }))
        } else {
            (
                "wordcount",
                json!({ "path": corpus_path.to_string_lossy(), "offset": offset, "len": len }),
            )
        };
        tasks.push(NewTask {
            kind: kind.to_string(),
            queue: Some(QUEUE.to_string()),
            payload: Some(payload),
            priority: Some((i % 10) as i64),
            max_attempts: Some(5),
            backoff: Some(Backoff {
                initial_ms: 100,
                max_ms: 500,
            }),
            timeout_ms: Some(TASK_TIMEOUT_MS),
            ..NewTask::default()
        });
    }
    let total = tasks.len() as u64;
    let run_started = Instant::now();
    let mut ids = Vec::with_capacity(tasks.len());
    for part in tasks.chunks(10_000) {
        let created: BatchCreated = api
            .post(
                "/v1/tasks/batch",
                &NewTaskBatch {
                    tasks: part.to_vec(),
                },
            )
            .await
            .context("cannot submit the chunk tasks")?;
        ids.extend(created.ids);
    }
    anyhow::ensure!(
        ids.len() as u64 == total,
        "submitted {total} tasks but got {} ids",
        ids.len()
    );
    let mut msg =
        format!("submitted {total} wordcount tasks (priorities 0-9) with POST /v1/tasks/batch");
    if let Some(i) = fail_once_at {
        msg.push_str(&format!(
            "; chunk {i} is a fail_once task (its first attempt fails)"
        ));
    }
    say.line(msg);

    // 4. Run, with progress, and kill an agent on the way.
    let killed = track_progress(args, &api, stack, total, &say).await?;
    let duration = run_started.elapsed();

    // 5. Fan in, while the same corpus is counted directly (no muster) to check it.
    let p = corpus_path.clone();
    let direct_job = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        direct_count(&p).map(|r| (r, t.elapsed().as_secs_f64()))
    });
    let fanned = fan_in(&api, &ids).await;
    let direct_res = direct_job.await.context("the direct count panicked")?;
    let (merged, merged_total, retries, succeeded, not_succeeded) = fanned?;
    let ((direct, direct_total, threads), direct_secs) = direct_res?;
    let merged_sorted: BTreeMap<String, u64> = merged.into_iter().collect();
    let all_succeeded = succeeded == total && not_succeeded == 0;
    let verified = all_succeeded && merged_total == direct_total && merged_sorted == direct;

    let mut top: Vec<(&String, &u64)> = merged_sorted.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    top.truncate(10);
    let secs = duration.as_secs_f64().max(1e-9);
    let mb = corpus_bytes as f64 / (1024.0 * 1024.0);
    let killed_name = killed.as_ref().map(|k| k.0.clone());

    if args.json {
        let out = json!({
            "total_words": merged_total,
            "distinct_words": merged_sorted.len(),
            "top": top.iter().map(|(w, c)| json!([w, c])).collect::<Vec<_>>(),
            "tasks": total,
            "succeeded": succeeded,
            "nodes": args.agents,
            "retries": retries,
            "killed_agent": killed_name,
            "duration_ms": duration.as_millis() as u64,
            "tasks_per_sec": total as f64 / secs,
            "corpus_bytes": corpus_bytes,
            "corpus_mb": mb,
            "mb_per_sec": mb / secs,
            "direct_total_words": direct_total,
            "direct_count_ms": (direct_secs * 1000.0) as u64,
            "corpus": args.corpus_dir.as_ref().map(|_| corpus_path.to_string_lossy().into_owned()),
            "seed": args.seed,
            "verified": verified,
            "total_ms": started.elapsed().as_millis() as u64,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!();
        println!("The answer: the 10 most frequent words");
        let mut t = Table::new();
        t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
            .force_no_tty()
            .set_header(vec!["#", "word", "count", "share"]);
        for (i, (w, c)) in top.iter().enumerate() {
            t.add_row(vec![
                (i + 1).to_string(),
                (*w).clone(),
                group(**c),
                format!("{:.2}%", **c as f64 * 100.0 / merged_total.max(1) as f64),
            ]);
        }
        right_align(&mut t, &[0, 2, 3]);
        println!("{t}");
        println!(
            "total: {} words, {} distinct",
            group(merged_total),
            group(merged_sorted.len() as u64)
        );
        println!();
        let mut s = Table::new();
        s.load_style(comfy_table::presets::UTF8_FULL_CONDENSED)
            .force_no_tty()
            .set_header(vec!["", ""]);
        let killed_cell = match &killed {
            Some((name, at)) => format!("{name} (SIGKILL at {at}% done)"),
            None => "none".to_string(),
        };
        let rows: Vec<(&str, String)> = vec![
            ("tasks", format!("{total} ({succeeded} succeeded)")),
            (
                "nodes",
                format!(
                    "{} agent processes x capacity {}",
                    args.agents, args.capacity
                ),
            ),
            ("retries", retries.to_string()),
            ("agent killed", killed_cell),
            ("duration", format!("{secs:.2}s")),
            ("tasks/s", format!("{:.1}", total as f64 / secs)),
            ("corpus", format!("{mb:.1} MiB")),
            ("throughput", format!("{:.1} MiB/s", mb / secs)),
            (
                "direct check (no muster)",
                format!("{direct_secs:.2}s on {threads} threads"),
            ),
        ];
        for (k, v) in rows {
            s.add_row(vec![k.to_string(), v]);
        }
        println!("{s}");
        if verified {
            println!(
                "verified: the merged answer equals a single-process count of the same corpus ({} words)",
                group(direct_total)
            );
        }
    }
    if !all_succeeded {
        anyhow::bail!("{} of {total} tasks did not succeed", total - succeeded);
    }
    if !verified {
        anyhow::bail!(
            "wrong answer: the merged count ({merged_total} words, {} distinct) differs from the direct count ({direct_total} words, {} distinct)",
            merged_sorted.len(),
            direct.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn right_align(t: &mut Table, cols: &[usize]) {
    for (i, col) in t.column_iter_mut().enumerate() {
        if cols.contains(&i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// Waits until every agent process has registered its node.
async fn wait_for_agents(api: &Api, stack: &mut Stack, work: &WorkDir) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for a in &mut stack.agents {
            if let Some(status) = a.child.try_wait()? {
                let log = std::fs::read_to_string(work.path.join(format!("{}.log", a.name)))
                    .unwrap_or_default();
                let last = log
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no output");
                anyhow::bail!(
                    "agent {} exited at start ({status}): {}",
                    a.name,
                    last.trim()
                );
            }
        }
        let nodes: NodeList = api.get("/v1/nodes").await?;
        let up = stack
            .agents
            .iter()
            .filter(|a| nodes.items.iter().any(|n| n.name == a.name))
            .count();
        if up == stack.agents.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "only {up} of {} agents registered within 30s",
                stack.agents.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the queue until every task is terminal, drawing the progress bar, and kills
/// one agent once `--kill-at-percent` of the tasks are done. Returns the killed agent's
/// name and the percentage it was killed at.
async fn track_progress(
    args: &DemoArgs,
    api: &Api,
    stack: &mut Stack,
    total: u64,
    say: &Say,
) -> anyhow::Result<Option<(String, u64)>> {
    let pb = ProgressBar::new(total);
    if std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::stderr());
    } else {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} [{bar:24}] {pos}/{len} tasks {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(100));
    let mut killed: Option<(String, u64)> = None;
    let may_kill = !args.no_chaos && stack.agents.len() >= 2;
    let mut last_done = 0;
    let mut last_change = Instant::now();
    let run_started = Instant::now();
    let res = loop {
        let queues: QueueList = match api.get("/v1/queues").await {
            Ok(q) => q,
            Err(e) => break Err(e),
        };
        let counts = queues
            .items
            .iter()
            .find(|q| q.name == QUEUE)
            .map(|q| q.counts.clone());
        let (succeeded, failed) = counts
            .map(|c| (c.succeeded as u64, (c.failed + c.cancelled) as u64))
            .unwrap_or((0, 0));
        let done = succeeded + failed;
        pb.set_position(done.min(total));
        if let Ok(nodes) = api.get::<NodeList>("/v1/nodes").await {
            let mut parts = Vec::new();
            for a in &stack.agents {
                if let Some(n) = nodes.items.iter().find(|n| n.name == a.name) {
                    let dead = if killed.as_ref().is_some_and(|k| k.0 == a.name) {
                        " (killed)"
                    } else {
                        ""
                    };
                    parts.push(format!(
                        "{}:{}{dead}",
                        a.name.trim_start_matches("demo-"),
                        n.succeeded
                    ));
                }
            }
            let rate = done as f64 / run_started.elapsed().as_secs_f64().max(1e-3);
            pb.set_message(format!("{rate:.1}/s  {}", parts.join(" ")));
            if may_kill && killed.is_none() && done * 100 >= total * args.kill_at_percent {
                // Kill an agent that holds leases right now, so that recovery is real.
                let victim = stack
                    .agents
                    .iter()
                    .position(|a| {
                        nodes
                            .items
                            .iter()
                            .any(|n| n.name == a.name && n.running > 0)
                    })
                    .unwrap_or(0);
                let a = &mut stack.agents[victim];
                a.kill().await;
                let pct = done * 100 / total.max(1);
                let line = format!(
                    "killed {} (pid {}) with SIGKILL at {pct}% done: its leases expire within {:.1}s and its tasks run again elsewhere",
                    a.name,
                    a.pid,
                    (TASK_TIMEOUT_MS as f64 + REAPER_MS as f64) / 1000.0
                );
                if !say.quiet {
                    pb.suspend(|| say.line(&line));
                }
                killed = Some((a.name.clone(), pct));
            }
        }
        if done >= total {
            break Ok(());
        }
        if done != last_done {
            last_done = done;
            last_change = Instant::now();
        } else if last_change.elapsed() > STALL_TIMEOUT {
            break Err(anyhow::anyhow!(
                "no task finished for {}s ({done} of {total} done)",
                STALL_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    pb.finish_and_clear();
    res?;
    Ok(killed)
}

/// Tasks listed per page in the fan-in (a page of results is a few MB of JSON).
const FAN_IN_PAGE: usize = 100;

/// The merged results of the fan-in so far.
#[derive(Default)]
struct FanIn {
    wanted: HashSet<String>,
    seen: HashSet<String>,
    words: HashMap<String, u64>,
    total: u64,
    retries: u64,
    succeeded: u64,
}

impl FanIn {
    /// Decodes one page of `GET /v1/tasks` and merges its results; returns the next
    /// cursor. CPU work: run it off the async threads.
    fn absorb(&mut self, body: &[u8]) -> anyhow::Result<Option<String>> {
        let page: TaskPage =
            serde_json::from_slice(body).context("GET /v1/tasks: unexpected answer")?;
        for t in page.items {
            if !self.wanted.contains(&t.id) || !self.seen.insert(t.id.clone()) {
                continue;
            }
            self.retries += t.attempts.saturating_sub(1).max(0) as u64;
            if t.state != TaskState::Succeeded {
                continue;
            }
            let result = t.result.unwrap_or(Value::Null);
            let words = result
                .get("words")
                .and_then(Value::as_object)
                .with_context(|| format!("task {} has no word counts in its result", t.id))?;
            for (w, c) in words {
                let c = c
                    .as_u64()
                    .with_context(|| format!("task {}: count of {w} is not a number", t.id))?;
                *self.words.entry(w.clone()).or_insert(0) += c;
            }
            self.total += result
                .get("total")
                .and_then(Value::as_u64)
                .with_context(|| format!("task {} has no total in its result", t.id))?;
            self.succeeded += 1;
        }
        Ok(page.next_cursor.filter(|c| !c.is_empty()))
    }
}

/// Fetches every task of the demo queue and merges the word counts of the succeeded
/// ones. Returns (words, total, retries, succeeded, others).
async fn fan_in(
    api: &Api,
    ids: &[String],
) -> anyhow::Result<(HashMap<String, u64>, u64, u64, u64, u64)> {
    let mut acc = FanIn {
        wanted: ids.iter().cloned().collect(),
        ..FanIn::default()
    };
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/tasks?queue={QUEUE}&limit={FAN_IN_PAGE}");
        if let Some(c) = &cursor {
            path.push_str("&cursor=");
            path.push_str(&urlencode(c));
        }
        let body = api
            .get_bytes(&path)
            .await
            .context("cannot list the finished tasks")?;
        let (back, next) = tokio::task::spawn_blocking(move || {
            let next = acc.absorb(&body);
            (acc, next)
        })
        .await
        .context("the fan-in panicked")?;
        acc = back;
        match next? {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    anyhow::ensure!(
        acc.seen.len() == ids.len(),
        "listed {} of the {} submitted tasks",
        acc.seen.len(),
        ids.len()
    );
    let others = acc.seen.len() as u64 - acc.succeeded;
    Ok((acc.words, acc.total, acc.retries, acc.succeeded, others))
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Deletes every key under `ns` (best effort, standalone Redis).
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

/// A small JSON client with the admin token.
struct Api {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Api {
    fn new(base: &str, token: &str) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Api {
            base: base.trim_end_matches('/').to_string(),
            http,
            token: token.to_string(),
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        Self::decode(resp, "GET", path).await
    }

    async fn get_bytes(&self, path: &str) -> anyhow::Result<axum::body::Bytes> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.with_context(|| format!("GET {path}"))?;
        if !status.is_success() {
            anyhow::bail!(
                "GET {path}: {}",
                crate::cli::client::format_error_answer(status.as_u16(), &bytes)
            );
        }
        Ok(bytes)
    }

    async fn post<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {path}"))?;
        Self::decode(resp, "POST", path).await
    }

    async fn decode<T: serde::de::DeserializeOwned>(
        resp: reqwest::Response,
        method: &str,
        path: &str,
    ) -> anyhow::Result<T> {
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{method} {path}"))?;
        if !status.is_success() {
            anyhow::bail!(
                "{method} {path}: {}",
                crate::cli::client::format_error_answer(status.as_u16(), &bytes)
            );
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {path}: unexpected answer"))
    }
}

/// Digits grouped by thousands: 12,345,678.
fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Counts the words of the whole corpus in this process, without muster: the file is
/// cut on line boundaries into one piece per core, each counted with
/// [`count_words`] on its own thread, and the counts summed. Returns the counts, the
/// total and the number of threads.
fn direct_count(path: &Path) -> anyhow::Result<(BTreeMap<String, u64>, u64, usize)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16);
    let mut pieces = Vec::with_capacity(threads);
    let mut rest = text.as_str();
    for i in (1..=threads).rev() {
        let want = rest.len() / i;
        let cut = if i == 1 {
            rest.len()
        } else {
            rest.as_bytes()[want..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |p| want + p + 1)
        };
        let (piece, tail) = rest.split_at(cut);
        pieces.push(piece);
        rest = tail;
    }
    let counted: Vec<(BTreeMap<String, u64>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = pieces.iter().map(|p| s.spawn(|| count_words(p))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut words = BTreeMap::new();
    let mut total = 0;
    for (w, t) in counted {
        total += t;
        for (k, v) in w {
            *words.entry(k).or_insert(0) += v;
        }
    }
    Ok((words, total, threads))
}

fn read_chunk(path: &Path, offset: u64, len: u64) -> anyhow::Result<String> {
    use std::io::{Read as _, Seek as _};
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    String::from_utf8(buf).context("the corpus is not UTF-8")
}

// ---------------------------------------------------------------------------
// The corpus generator.

/// SplitMix64: a small, fast, seeded generator (the corpus must not change when the
/// `rand` crate does).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// The most common English words, ranked first so that the answer reads naturally.
const COMMON: &[&str] = &[
    "the", "of", "and", "to", "a", "in", "is", "it", "that", "was", "for", "on", "are", "with",
    "as", "i", "his", "they", "be", "at", "one", "have", "this", "from", "or", "had", "by", "word",
    "but", "what", "some", "we", "can", "out", "other", "were", "all", "there", "when", "up",
    "use", "your", "how", "said", "an", "each", "she", "which", "do", "their", "time", "if",
    "will", "way", "about", "many", "then", "them", "write", "would", "like", "so", "these", "her",
    "long", "make", "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go",
    "come", "did", "number", "sound", "no", "most", "people", "my", "over", "know", "water",
    "than", "call", "first", "who", "may", "down", "side", "been", "now", "find", "any", "new",
    "work", "part", "take", "get", "place", "made", "live", "where", "after", "back", "little",
    "only", "round", "man", "year", "came", "show", "every", "good", "me", "give", "our", "under",
    "name", "very", "through", "just", "form", "sentence", "great", "think", "say", "help", "low",
    "line", "differ", "turn", "cause", "much", "mean", "before", "move", "right", "boy", "old",
    "too", "same", "tell", "does", "set", "three", "want", "air", "well", "also", "play", "small",
    "end", "put", "home", "read", "hand", "port", "large", "spell", "add", "even", "land", "here",
    "must", "big", "high", "such", "follow", "act", "why", "ask", "men", "change", "went", "light",
    "kind", "off", "need", "house", "picture", "try", "us", "again", "animal", "point", "mother",
    "world", "near", "build", "self", "earth", "father", "head", "stand", "own", "page", "should",
    "country", "found", "answer", "school", "grow", "study", "still", "learn", "plant", "cover",
    "food", "sun", "four", "between", "state", "keep", "eye", "never", "last", "let", "thought",
    "city", "tree", "cross", "farm", "hard", "start", "might", "story", "saw", "far", "sea",
    "draw", "left", "late", "run", "while", "press", "close", "night", "real", "life", "few",
    "north", "queue", "task", "node", "redis", "lease", "retry",
];

/// Words in the vocabulary.
const VOCABULARY: usize = 4_000;
/// Zipf exponent.
const ZIPF_S: f64 = 1.07;
/// Slots of the sampling table (a word's share of slots is its probability).
const TABLE_BITS: u32 = 20;

/// The vocabulary: [`COMMON`] first, then made-up words from syllables.
fn vocabulary(rng: &mut SplitMix64) -> Vec<String> {
    const ONSETS: &[&str] = &[
        "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
        "br", "cr", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr", "ch",
    ];
    const NUCLEI: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "ou", "io", "y"];
    const CODAS: &[&str] = &["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ck"];
    let mut words: Vec<String> = COMMON.iter().map(|w| (*w).to_string()).collect();
    let mut seen: HashSet<String> = words.iter().cloned().collect();
    while words.len() < VOCABULARY {
        let syllables = 1 + rng.below(4);
        let mut w = String::new();
        for _ in 0..syllables {
            w.push_str(ONSETS[rng.below(ONSETS.len() as u64) as usize]);
            w.push_str(NUCLEI[rng.below(NUCLEI.len() as u64) as usize]);
            w.push_str(CODAS[rng.below(CODAS.len() as u64) as usize]);
        }
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

/// A table of word indexes in which word `r` fills a share of the slots proportional
/// to `1 / (r + 1)^s`: a uniform slot is a Zipf-distributed word.
fn zipf_table(n: usize) -> Vec<u16> {
    let weights: Vec<f64> = (0..n)
        .map(|r| 1.0 / ((r + 1) as f64).powf(ZIPF_S))
        .collect();
    let sum: f64 = weights.iter().sum();
    let slots = 1usize << TABLE_BITS;
    let mut table = Vec::with_capacity(slots);
    let mut cum = 0.0;
    for (r, w) in weights.iter().enumerate() {
        cum += w / sum;
        let end = if r + 1 == n {
            slots
        } else {
            ((cum * slots as f64).round() as usize).min(slots)
        };
        // Every word gets at least one slot.
        let end = end.max(table.len() + 1).min(slots);
        table.resize(end, r as u16);
    }
    table
}

/// Writes about `size` bytes of text to `path`: lines of words drawn from a Zipf
/// distribution, in sentences (capitalised, with commas and full stops). Returns the
/// chunks as (offset, len), each ending on a line boundary, of about `chunk` bytes.
fn generate_corpus(
    path: &Path,
    size: u64,
    seed: u64,
    chunk: u64,
) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut rng = SplitMix64(seed);
    let vocab = vocabulary(&mut rng);
    let table = zipf_table(vocab.len());
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut chunks = Vec::new();
    let (mut written, mut chunk_start) = (0u64, 0u64);
    let mut line = String::with_capacity(128);
    let mut sentence_left = 0u64;
    while written < size {
        line.clear();
        let width = 50 + rng.below(40) as usize;
        while line.len() < width {
            if !line.is_empty() {
                line.push(' ');
            }
            let word = &vocab[table[(rng.next_u64() >> (64 - TABLE_BITS)) as usize] as usize];
            if sentence_left == 0 {
                sentence_left = 4 + rng.below(14);
                let mut cs = word.chars();
                if let Some(first) = cs.next() {
                    line.extend(first.to_uppercase());
                    line.push_str(cs.as_str());
                }
            } else {
                line.push_str(word);
            }
            sentence_left -= 1;
            if sentence_left == 0 {
                line.push(match rng.below(10) {
                    0 => '?',
                    1 => '!',
                    _ => '.',
                });
            } else if rng.below(12) == 0 {
                line.push(',');
            }
        }
        line.push('\n');
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        if written - chunk_start >= chunk {
            chunks.push((chunk_start, written - chunk_start));
            chunk_start = written;
        }
    }
    if written > chunk_start {
        chunks.push((chunk_start, written - chunk_start));
    }
    out.flush()?;
    Ok(chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_deterministic_and_chunks_end_on_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = dir.path().join("a.txt");
        let b = dir.path().join("b.txt");
        let ca = generate_corpus(&a, 300_000, 7, 16 * 1024).expect("corpus");
        let cb = generate_corpus(&b, 300_000, 7, 16 * 1024).expect("corpus");
        assert_eq!(ca, cb);
        let text = std::fs::read(&a).expect("read");
        assert_eq!(text, std::fs::read(&b).expect("read"));
        assert!(text.len() >= 300_000);
        let mut next = 0;
        for &(off, len) in &ca {
            assert_eq!(off, next);
            assert_eq!(text[(off + len - 1) as usize], b'\n');
            next = off + len;
        }
        assert_eq!(next, text.len() as u64);
        // Zipf-like: "the" is the most frequent word, far ahead of the 100th.
        let (words, total) = count_words(std::str::from_utf8(&text).expect("utf-8"));
        let the = words["the"];
        assert!(words.values().all(|&c| c <= the));
        assert!(the * 10 > total, "the: {the} of {total}");
    }

    #[test]
    fn zipf_table_gives_every_word_a_slot() {
        let t = zipf_table(VOCABULARY);
        assert_eq!(t.len(), 1 << TABLE_BITS);
        let distinct: HashSet<u16> = t.iter().copied().collect();
        assert_eq!(distinct.len(), VOCABULARY);
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn direct_count_matches_count_words() {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = dir.path().join("c.txt");
        generate_corpus(&p, 200_000, 3, 8 * 1024).expect("corpus");
        let (words, total, _) = direct_count(&p).expect("count");
        let text = std::fs::read_to_string(&p).expect("read");
        assert_eq!((words, total), count_words(&text));
    }

    #[test]
    fn groups_digits() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(12_345_678), "12,345,678");
    }
}
