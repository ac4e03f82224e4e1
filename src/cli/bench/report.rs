//! The bench's report: its JSON shape, the targets of issue #5, and the tables
//! printed without `--json`.

use super::probe::{Cost, round};
use comfy_table::{CellAlignment, Table};
use serde::Serialize;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub(super) struct Rate {
    tasks: u64,
    secs: f64,
    pub(super) per_sec: f64,
}

pub(super) fn rate(tasks: u64, d: Duration) -> Rate {
    let secs = d.as_secs_f64().max(1e-9);
    Rate {
        tasks,
        secs: round(secs, 3),
        per_sec: round(tasks as f64 / secs, 0),
    }
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Latency {
    pub(super) offered_per_sec: u64,
    pub(super) achieved_per_sec: f64,
    pub(super) samples: usize,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) p999_ms: f64,
    pub(super) max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Target {
    pub(super) name: String,
    pub(super) target: String,
    pub(super) measured: String,
    pub(super) met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct Report {
    pub(super) muster_version: &'static str,
    pub(super) date_utc: String,
    pub(super) machine: Value,
    pub(super) setup: Value,
    pub(super) submit_batch: Rate,
    pub(super) submit_single: Rate,
    pub(super) process_only: Rate,
    pub(super) process_only_incl_agent_start: Rate,
    pub(super) end_to_end: Rate,
    pub(super) latency: Vec<Latency>,
    pub(super) cost_submit_batch: Cost,
    pub(super) cost_process_only: Cost,
    pub(super) cost_end_to_end: Cost,
    pub(super) redis_memory_bytes_per_pending_task: f64,
    pub(super) payload_bytes: usize,
    pub(super) redis_memory_bytes_per_pending_task_beyond_payload: f64,
    pub(super) idle: Value,
    pub(super) backlog: Value,
    pub(super) census: Value,
    pub(super) calibration: Value,
    pub(super) server_rss_kb: u64,
    pub(super) server_peak_rss_kb: u64,
    pub(super) targets: Vec<Target>,
    pub(super) checks: Value,
}

pub(super) fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

pub(super) fn machine() -> Value {
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

pub(super) fn date_utc() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The inputs of [`targets`].
pub(super) struct Measured<'a> {
    pub(super) latency: &'a [Latency],
    pub(super) cost_end_to_end: &'a Cost,
    pub(super) mem_per_task: f64,
    pub(super) pbytes: usize,
    pub(super) idle: &'a Value,
    pub(super) idle_agents: usize,
    pub(super) backlog: &'a Value,
}

/// The absolute targets of issue #13 (the lean hot path), each with what was measured
/// and whether it was met. Its targets relative to the peers (2x BullMQ's rate,
/// Sidekiq's latency, 1.5x Sidekiq's batch submit) are `scripts/bench-compare`'s: they
/// need the peers measured in the same run.
pub(super) fn targets(m: &Measured<'_>) -> Vec<Target> {
    let Measured {
        latency,
        cost_end_to_end,
        mem_per_task,
        pbytes,
        idle,
        idle_agents,
        backlog,
    } = *m;
    let c = cost_end_to_end;
    let mut targets = vec![
        Target {
            name: "Redis commands per task, whole lifecycle (inside scripts included)".into(),
            target: "<= 12".into(),
            measured: format!("{:.1}", c.redis_commands_per_task),
            met: c.redis_commands_per_task <= 12.0,
        },
        Target {
            name: "Redis CPU per task, whole lifecycle".into(),
            target: "<= 30 us".into(),
            measured: format!("{:.1} us", c.redis_cpu_us_per_task),
            met: c.redis_cpu_us_per_task <= 30.0,
        },
        Target {
            name: "muster CPU per task (server + bench agents + load generator)".into(),
            target: "<= 20 us".into(),
            measured: format!("{:.1} us", c.process_cpu_us_per_task),
            met: c.process_cpu_us_per_task <= 20.0,
        },
    ];
    if let Some(l) = latency.iter().find(|l| l.offered_per_sec == 1000) {
        targets.push(Target {
            name: "submit->start p99 at 1,000/s".into(),
            target: "<= 3 ms".into(),
            measured: format!("{:.3} ms", l.p99_ms),
            met: l.p99_ms <= 3.0,
        });
    }
    let beyond = beyond_payload(mem_per_task, pbytes);
    targets.push(Target {
        name: "Redis memory per pending task beyond payload".into(),
        target: "<= 400 B".into(),
        measured: format!("{beyond:.0} B ({mem_per_task:.0} B - {pbytes} B payload)"),
        met: beyond <= 400.0,
    });
    if let (Some(r), Some(p)) = (
        backlog["rate_ratio_empty_over_backlog"].as_f64(),
        backlog["claim_p99_ratio_backlog_over_empty"].as_f64(),
    ) {
        targets.push(Target {
            name: format!(
                "backlog of {}: claim rate and p99 vs an empty queue",
                backlog["tasks"]
            ),
            target: "within 1.2x".into(),
            measured: format!("rate {r:.2}x slower, p99 {p:.2}x"),
            met: r <= 1.2 && p <= 1.2,
        });
    }
    if let Some(p) = idle.get("process_cpu_percent").and_then(Value::as_f64) {
        targets.push(Target {
            name: format!("idle server, {} long-polling agents", idle_agents),
            target: "< 1% CPU".into(),
            measured: format!("{p:.1}% (incl. the in-process agents)"),
            met: p < 1.0,
        });
    }
    targets
}

/// Memory per pending task beyond its payload, B.
pub(super) fn beyond_payload(mem_per_task: f64, pbytes: usize) -> f64 {
    round(mem_per_task - pbytes as f64, 1)
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

pub(super) fn print_report(r: &Report) {
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
    if r.backlog.get("tasks").is_some() {
        let b = &r.backlog;
        t.add_row(vec![
            format!(
                "backlog: {} pending, {} drained",
                b["tasks"], b["drained"]["tasks"]
            ),
            format!(
                "{}/s (empty queue {}/s), claim p99 {} ms (empty {} ms), {} B/task (empty {} B)",
                b["drained"]["per_sec"],
                b["empty"]["per_sec"],
                b["claim_p99_ms"],
                b["empty"]["claim_p99_ms"],
                b["redis_memory_bytes_per_task"],
                b["empty"]["redis_memory_bytes_per_task"]
            ),
        ]);
    }
    println!("{t}");

    let mut t = Table::new();
    t.set_header(vec!["target (issue #13)", "goal", "measured", "met"]);
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
