//! The bench's longer runs: the command census under `redis-cli MONITOR`, latency at
//! fixed offered rates, and the idle measurement.

use super::agents::{Agents, Api, Counters, lock};
use super::load::{bar, submit_batches, submit_singles, wait_done};
use super::probe::{Probe, cost, round};
use super::report::{Latency, percentile};
use super::{BenchArgs, IDLE_WAIT_MS, LAT_SKIP, PAD, Stack};
use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressDrawTarget};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Latency at each offered rate: single submits paced to the rate, the payload
/// carrying the submit time; the agents take start - submit when the lease arrives.
pub(super) async fn latency(
    api: &Api,
    args: &BenchArgs,
    stack: &mut Stack,
    t_base: Instant,
    rates: &[u64],
    lat_secs: f64,
) -> anyhow::Result<Vec<Latency>> {
    let (c, agents) = Agents::start_phase(api, "bench-lat", args, t_base, stack).await?;
    // Warm-up: a few tasks through the whole path.
    let mut done_before = 0u64;
    {
        let pb = ProgressBar::hidden();
        submit_singles(api, "bench-lat", 200, 4, &pb).await?;
        done_before += 200;
        wait_done(&c, done_before, &pb).await?;
    }
    let mut latency = Vec::new();
    for &r in rates {
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
                let _: Value = api.post_admin(&["v1", "tasks"], bytes).await?;
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
    agents.stop(api).await;
    Ok(latency)
}

/// Many agents long-polling, nothing to do: CPU of this process and of Redis.
pub(super) async fn idle(
    api: &Api,
    probe: &mut Probe,
    args: &BenchArgs,
    stack: &mut Stack,
    t_base: Instant,
    idle_secs: f64,
) -> anyhow::Result<Value> {
    Ok(if args.idle_agents > 0 {
        let c = Counters::new(t_base);
        let pb = ProgressBar::new_spinner().with_message(format!(
            "idle: {} agents long-polling for {idle_secs}s",
            args.idle_agents
        ));
        pb.set_draw_target(ProgressDrawTarget::stderr());
        pb.enable_steady_tick(Duration::from_millis(100));
        let agents = Agents::start(
            api,
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
        agents.stop(api).await;
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
    })
}

/// Runs `n` tasks end to end (fresh agents, batch submit) while `MONITOR` on each
/// primary records every command; counts the commands muster sent (top level) and
/// those its scripts ran (`[0 lua]` lines), per task.
pub(super) async fn census(
    api: &Api,
    primaries: &[redis::Client],
    n: u64,
    args: &BenchArgs,
    stack: &mut Stack,
    t_base: Instant,
    pb: &ProgressBar,
) -> anyhow::Result<Value> {
    use futures::StreamExt as _;
    type Counts = std::collections::BTreeMap<String, u64>;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::with_capacity(primaries.len());
    for p in primaries {
        let monitor = tokio::time::timeout(Duration::from_secs(5), p.get_async_monitor())
            .await
            .context("MONITOR did not answer")?
            .context("cannot start MONITOR")?;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut top = Counts::new();
            let mut inner = Counts::new();
            let mut lines = monitor.into_on_message::<String>();
            let mut count = |l: &str| {
                // 1700000000.123456 [0 127.0.0.1:5555] "evalsha" "…"   or   [0 lua] "HSET" …
                let Some((client, rest)) = l.split_once("] ") else {
                    return;
                };
                let cmd = rest.split('"').nth(1).unwrap_or("").to_ascii_lowercase();
                if cmd == "info" || cmd == "monitor" {
                    return;
                }
                let map = if client.ends_with(" lua") {
                    &mut inner
                } else {
                    &mut top
                };
                *map.entry(cmd).or_default() += 1;
            };
            loop {
                tokio::select! {
                    l = lines.next() => match l {
                        Some(l) => count(&l),
                        None => break,
                    },
                    () = stop.cancelled() => {
                        // What arrived before the stop is still counted.
                        while let Some(Some(l)) = futures::FutureExt::now_or_never(lines.next()) {
                            count(&l);
                        }
                        break;
                    }
                }
            }
            (top, inner)
        }));
    }
    let (c, agents) = Agents::start_phase(api, "bench-census", args, t_base, stack).await?;
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
    stop.cancel();
    let (mut top, mut inner) = (Counts::new(), Counts::new());
    for r in readers {
        let (t, i) = r.await.context("a census reader panicked")?;
        for (k, v) in t {
            *top.entry(k).or_default() += v;
        }
        for (k, v) in i {
            *inner.entry(k).or_default() += v;
        }
    }
    agents.stop(api).await;
    let per = |m: &Counts| -> (f64, Value) {
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
        "note": "MONITOR (on each primary) over an untimed end-to-end run; top level = commands muster sent (EVALSHA counts 1), inside = commands its Lua scripts ran; includes the background loops (reconciler, timers, dispatcher) during the run",
    }))
}

/// The process phase from a queue holding `--backlog` pending tasks: fills it, drains
/// `n`, and compares the claim rate, claim p99 and memory per task with `empty` (the
/// process phase's, from a queue of `n`).
pub(super) async fn backlog(
    api: &Api,
    probe: &mut Probe,
    n: u64,
    args: &BenchArgs,
    stack: &mut Stack,
    t_base: Instant,
    empty: Value,
) -> anyhow::Result<Value> {
    let total = args.backlog.max(n);
    let pb = bar(total, &format!("backlog: pre-submitting {total}"));
    let (_, _, mem) = super::phases::fill(api, probe, "bench-backlog", total, args, &pb).await?;
    pb.finish();
    let pb = bar(n, &format!("backlog: draining {n} of {total}"));
    let (c, last) = super::phases::drain(api, "bench-backlog", n, args, stack, t_base, &pb).await?;
    pb.finish();
    let first = lock(&c.first_lease).unwrap_or(c.started);
    let drained = super::report::rate(n, last.duration_since(first));
    let claims = super::phases::claim_ms(&c);
    let ratio = |a: f64, b: f64| if b > 0.0 { round(a / b, 3) } else { 0.0 };
    let empty_rate = empty["per_sec"].as_f64().unwrap_or(0.0);
    let empty_p99 = empty["claim_p99_ms"].as_f64().unwrap_or(0.0);
    Ok(json!({
        "tasks": total,
        "drained": drained,
        "redis_memory_bytes_per_task": mem,
        "claim_p50_ms": claims.0,
        "claim_p99_ms": claims.1,
        "rate_ratio_empty_over_backlog": ratio(empty_rate, drained.per_sec),
        "claim_p99_ratio_backlog_over_empty": ratio(claims.1, empty_p99),
        "empty": empty,
        "note": "claim = one lease call that brought tasks (HTTP round trip, lease.lua included)",
    }))
}
