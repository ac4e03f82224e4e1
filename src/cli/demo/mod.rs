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

mod answer;
mod corpus;
mod fan_in;
mod progress;
mod stack;

use crate::cli::client::Explain as _;
use crate::cli::local;
use crate::client::Client;
use crate::domain::limits::MAX_BATCH;
use crate::domain::{Backoff, NewTask, NewTaskBatch};
use answer::{Outcome, group};
use anyhow::Context as _;
use corpus::{direct_count, generate_corpus, read_chunk};
use serde_json::json;
use stack::{Stack, WorkDir};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
        sig = crate::shutdown::signal() => Err(anyhow::anyhow!("interrupted by {sig}; stopped the demo")),
    };
    stack.shutdown().await;
    drop(work);
    res
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
    let (corpus_path, chunks) = make_corpus(args, work, &say).await?;
    let corpus_bytes: u64 = chunks.iter().map(|c| c.1).sum();

    // 2. The private stack.
    let s = stack.start(args, work).await?;
    say.line(format!(
        "stack: {}, control plane on {}, {} agent processes (muster agent --builtin --capacity {})",
        s.redis_desc, s.server_url, args.agents, args.capacity
    ));
    let api = s.api;

    // 3. Submit.
    let run_started = Instant::now();
    let ids = submit(args, &api, &corpus_path, &chunks, &say).await?;
    let total = ids.len() as u64;

    // 4. Run, with progress, and kill an agent on the way.
    let killed = progress::track_progress(args, &api, stack, total, &say).await?;
    let duration = run_started.elapsed();

    // 5. Fan in, while the same corpus is counted directly (no muster) to check it.
    let p = corpus_path.clone();
    let direct_job = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        direct_count(&p).map(|r| (r, t.elapsed().as_secs_f64()))
    });
    let fanned = fan_in::fan_in(&api, &ids).await;
    let direct_res = direct_job.await.context("the direct count panicked")?;
    let (merged, merged_total, retries, succeeded, not_succeeded) = fanned?;
    let ((direct, direct_total, threads), direct_secs) = direct_res?;
    let merged_sorted: BTreeMap<String, u64> = merged.into_iter().collect();
    let all_succeeded = succeeded == total && not_succeeded == 0;
    let verified = all_succeeded && merged_total == direct_total && merged_sorted == direct;
    let distinct = merged_sorted.len();
    answer::print(
        args,
        &Outcome {
            words: merged_sorted,
            total_words: merged_total,
            tasks: total,
            succeeded,
            retries,
            killed,
            duration,
            corpus_bytes,
            corpus_path,
            direct_total,
            direct_secs,
            threads,
            verified,
            started,
        },
    )?;
    if !all_succeeded {
        anyhow::bail!("{} of {total} tasks did not succeed", total - succeeded);
    }
    if !verified {
        anyhow::bail!(
            "wrong answer: the merged count ({merged_total} words, {distinct} distinct) differs from the direct count ({direct_total} words, {} distinct)",
            direct.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Generates the corpus; returns its path and its chunks as (offset, len).
async fn make_corpus(
    args: &DemoArgs,
    work: &WorkDir,
    say: &Say,
) -> anyhow::Result<(PathBuf, Vec<(u64, u64)>)> {
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
    Ok((corpus_path, chunks))
}

/// Submits one task per chunk (one `fail_once` among them unless `--no-chaos`) in
/// batches; returns their ids.
async fn submit(
    args: &DemoArgs,
    api: &Client,
    corpus_path: &Path,
    chunks: &[(u64, u64)],
    say: &Say,
) -> anyhow::Result<Vec<String>> {
    let chaos = !args.no_chaos;
    let fail_once_at = if chaos { Some(chunks.len() / 2) } else { None };
    let mut tasks = Vec::with_capacity(chunks.len());
    for (i, &(offset, len)) in chunks.iter().enumerate() {
        let (kind, payload) = if Some(i) == fail_once_at {
            // fail_once counts `text` on its successful attempt.
            let text = read_chunk(corpus_path, offset, len)?;
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
    let mut ids = Vec::with_capacity(tasks.len());
    for part in tasks.chunks(MAX_BATCH) {
        let created = api
            .tasks_create_batch(&NewTaskBatch {
                tasks: part.to_vec(),
            })
            .await
            .explain()
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
    Ok(ids)
}
