//! The bench run: the stack, calibration, then each phase on its own queue (see the
//! module docs of `muster bench`), and the report.

use super::agents::{Agents, Api, lock};
use super::load::{bar, payload_bytes, submit_batches, submit_singles, wait_done};
use super::probe::{Probe, clk_tck, cost, proc_status_kb, round};
use super::report::{
    Measured, Report, beyond_payload, date_utc, machine, percentile, rate, targets,
};
use super::{BenchArgs, Stack, runs};
use crate::cli::local;
use crate::config::Config;
use anyhow::Context as _;
use indicatif::ProgressBar;
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The stack [`start`] set up.
struct Setup {
    api: Api,
    probe: Probe,
    /// Each primary holding the keyspace (one unless on a Cluster).
    primaries: Vec<redis::Client>,
    redis_desc: String,
    redis_version: String,
    dispatchers: usize,
    base: String,
}

/// Starts Redis (unless one is given) and the control plane in-process.
async fn start(args: &BenchArgs, stack: &mut Stack) -> anyhow::Result<Setup> {
    let token = local::random_hex_token();
    let dir =
        std::env::temp_dir().join(format!("muster-bench-{}", &local::random_hex_token()[..12]));
    let (mut cfg, primaries) = match args.shared_redis()? {
        None => {
            stack.dir = Some(dir.clone());
            // Persistence off (no RDB snapshots, no AOF): throughput, not durability.
            let (url, namespace) = stack
                .plane
                .redis(
                    None,
                    "muster-bench",
                    &dir,
                    &["--save", "", "--appendonly", "no"],
                )
                .await?;
            let primaries = vec![redis::Client::open(url.as_str())?];
            let mut cfg = Config::new("127.0.0.1:0", url);
            cfg.namespace = namespace;
            (cfg, primaries)
        }
        Some(target) => {
            let primaries =
                crate::store::Store::connect_to(&target, "muster-bench", Duration::from_secs(5))
                    .await
                    .with_context(|| {
                        format!("cannot connect to {}; check it runs", target.describe())
                    })?
                    .primaries()
                    .await
                    .context("cannot list the Redis primaries")?;
            let mut cfg = Config::new("127.0.0.1:0", crate::config::DEFAULT_REDIS_URL);
            cfg.namespace = stack
                .plane
                .fresh_namespace(primaries.clone(), "muster-bench");
            cfg.redis_target = Some(target);
            (cfg, primaries)
        }
    };
    let redis_desc = match &cfg.redis_target {
        Some(t) if primaries.len() > 1 => format!(
            "{} ({} primaries, their figures summed; namespace removed afterwards; other clients count in the Redis figures)",
            t.describe(),
            primaries.len()
        ),
        Some(t) => format!(
            "{} (namespace removed afterwards; other clients count in the Redis figures)",
            t.describe()
        ),
        None => "private redis-server, persistence off (--save '' --appendonly no)".to_string(),
    };
    let mut conns = Vec::with_capacity(primaries.len());
    for p in &primaries {
        conns.push(p.get_multiplexed_async_connection().await?);
    }
    let mut probe = Probe {
        conns,
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
    cfg.admin_token = Some(token.clone());
    let dispatchers = cfg.dispatchers;
    let base = stack.plane.serve(cfg).await?;
    let api = Api::new(&base, &token)?;
    Ok(Setup {
        api,
        probe,
        primaries,
        redis_desc,
        redis_version,
        dispatchers,
        base,
    })
}

/// One hop to Redis (PING) and one HTTP round trip (GET /healthz), sequential; on a
/// busy machine these show how much scheduling alone costs.
async fn calibrate(probe: &mut Probe, api: &Api) -> anyhow::Result<Value> {
    let mut ping = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut probe.conns[0]).await?;
        ping.push(t.elapsed().as_nanos() as u64);
    }
    let mut hz = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        api.client
            .request(Method::GET, &["healthz"])
            .send()
            .await
            .map_err(crate::cli::client::explain)?;
        hz.push(t.elapsed().as_nanos() as u64);
    }
    ping.sort_unstable();
    hz.sort_unstable();
    let la = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    Ok(json!({
        "redis_ping_p50_ms": round(percentile(&ping, 0.5), 3),
        "redis_ping_p99_ms": round(percentile(&ping, 0.99), 3),
        "http_healthz_p50_ms": round(percentile(&hz, 0.5), 3),
        "http_healthz_p99_ms": round(percentile(&hz, 0.99), 3),
        "loadavg_at_start": la.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    }))
}

/// Runs every phase and builds the report.
pub(super) async fn bench(args: &BenchArgs, stack: &mut Stack) -> anyhow::Result<Report> {
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

    // 1. The stack, and a calibration.
    let Setup {
        api,
        mut probe,
        primaries,
        redis_desc,
        redis_version,
        dispatchers,
        base,
    } = start(args, stack).await?;
    let t_base = Instant::now();
    say(format!(
        "muster bench: N={n}, {} in-process no-op bench agents x {} lease loops (max {}, wait_ms {}); \
         the agents run in this process, so the figures measure muster, not process spawning",
        args.agents, args.loops, args.lease_max, args.wait_ms
    ));
    say(format!(
        "redis: {redis_desc}, version {redis_version}; server: in-process at {base}"
    ));
    let calibration = calibrate(&mut probe, &api).await?;

    // 2. Batch submit, no agents: rate, commands per submitted task, memory per pending task.
    let pb = bar(n, "submit: POST /v1/tasks/batch");
    let (d, cost_submit_batch, mem_per_task) =
        fill(&api, &mut probe, "bench-batch", n, args, &pb).await?;
    pb.finish();
    let submit_batch = rate(n, d);
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
    let s0 = probe.snap().await?;
    let (c, last) = drain(&api, "bench-process", n, args, stack, t_base, &pb).await?;
    let s1 = probe.snap().await?;
    pb.finish();
    let first = lock(&c.first_lease).unwrap_or(c.started);
    let process_only = rate(n, last.duration_since(first));
    let process_only_incl = rate(n, last.duration_since(c.started));
    let cost_process_only = cost(&s0, &s1, n);
    let process_counts = api.queue_counts("bench-process").await?;
    let process_claims = claim_ms(&c);

    // 5. End to end: agents idle and long-polling, then N submitted in batches.
    let (c, agents) = Agents::start_phase(&api, "bench-e2e", args, t_base, stack).await?;
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
        let r = runs::census(&api, &primaries, census_n, args, stack, t_base, &pb).await;
        pb.finish();
        match r {
            Ok(v) => v,
            Err(e) => json!({"error": e.to_string()}),
        }
    } else {
        json!({"skipped": "no redis-cli on PATH or --census-n 0"})
    };

    // 6. Latency at fixed offered rates.
    let latency = runs::latency(&api, args, stack, t_base, &rates, lat_secs).await?;

    // 7. Idle: many agents long-polling, nothing to do.
    let idle = runs::idle(&api, &mut probe, args, stack, t_base, idle_secs).await?;

    // 8. Backlog: the process phase again, from a queue holding --backlog tasks.
    let backlog = if args.backlog > 0 {
        let empty = json!({
            "tasks": n,
            "per_sec": process_only.per_sec,
            "redis_memory_bytes_per_task": mem_per_task,
            "claim_p50_ms": process_claims.0,
            "claim_p99_ms": process_claims.1,
        });
        runs::backlog(&api, &mut probe, n, args, stack, t_base, empty).await?
    } else {
        json!({"skipped": "--backlog 0"})
    };

    let targets = targets(&Measured {
        latency: &latency,
        cost_end_to_end: &cost_end_to_end,
        mem_per_task,
        pbytes,
        idle: &idle,
        idle_agents: args.idle_agents,
        backlog: &backlog,
    });
    let beyond = beyond_payload(mem_per_task, pbytes);
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
            "redis_primaries": primaries.len(),
            "redis_version": redis_version,
            "agents_note": "in-process no-op bench agents (HTTP long-poll lease, then batched reports that lease the next batch with lease_max, as muster agent and the SDKs do): measures muster, not process spawning",
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
        backlog,
        server_rss_kb: proc_status_kb("VmRSS:"),
        server_peak_rss_kb: proc_status_kb("VmHWM:"),
        census,
        calibration,
        targets,
        checks,
    })
}

/// p50 and p99 (ms) of the phase's claims (lease calls that brought tasks).
pub(super) fn claim_ms(c: &super::agents::Counters) -> (f64, f64) {
    let mut v = lock(&c.claims).clone();
    v.sort_unstable();
    (
        round(super::report::percentile(&v, 0.50), 3),
        round(super::report::percentile(&v, 0.99), 3),
    )
}

/// Submits `n` tasks to `queue` in batches; the time, the cost per task and the Redis
/// memory each one took (tasks pending, no agents).
pub(super) async fn fill(
    api: &Api,
    probe: &mut Probe,
    queue: &str,
    n: u64,
    args: &BenchArgs,
    pb: &ProgressBar,
) -> anyhow::Result<(Duration, super::probe::Cost, f64)> {
    let s0 = probe.snap().await?;
    let d = submit_batches(api, queue, n, args.batch, args.batch_concurrency, pb).await?;
    let s1 = probe.snap().await?;
    let mem = round(
        (s1.redis.used_memory as f64 - s0.redis.used_memory as f64) / n as f64,
        1,
    );
    Ok((d, cost(&s0, &s1, n), mem))
}

/// Starts the phase's agents on `queue`, waits until they finished `n` tasks, stops
/// them; their counters and the instant of the last report.
pub(super) async fn drain(
    api: &Api,
    queue: &str,
    n: u64,
    args: &BenchArgs,
    stack: &mut Stack,
    t_base: Instant,
    pb: &ProgressBar,
) -> anyhow::Result<(std::sync::Arc<super::agents::Counters>, Instant)> {
    let (c, agents) = Agents::start_phase(api, queue, args, t_base, stack).await?;
    let last = wait_done(&c, n, pb).await?;
    agents.stop(api).await;
    Ok((c, last))
}
