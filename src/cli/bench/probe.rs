//! Measurements of this process (CPU, RSS from /proc) and of Redis (`INFO`
//! commandstats, cpu, memory), and the cost of a phase between two snapshots.

use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// Clock ticks per second of /proc/self/stat.
pub(super) fn clk_tck() -> f64 {
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
pub(super) fn proc_status_kb(key: &str) -> u64 {
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
pub(super) struct RedisSnap {
    calls: HashMap<String, u64>,
    usec: HashMap<String, u64>,
    cpu_secs: f64,
    pub(super) used_memory: u64,
}

/// A snapshot of this process and Redis at one instant.
#[derive(Debug, Clone)]
pub(super) struct Snap {
    at: Instant,
    cpu: f64,
    pub(super) redis: RedisSnap,
}

/// Reads `INFO` of each primary holding the keyspace (one unless on a Cluster); the
/// figures of a snapshot are their sums.
pub(super) struct Probe {
    pub(super) conns: Vec<redis::aio::MultiplexedConnection>,
    pub(super) tck: f64,
}

impl Probe {
    /// One `INFO` section of the first primary.
    pub(super) async fn info(&mut self, section: &str) -> anyhow::Result<String> {
        Ok(redis::cmd("INFO")
            .arg(section)
            .query_async::<String>(&mut self.conns[0])
            .await?)
    }

    async fn redis(&mut self) -> anyhow::Result<RedisSnap> {
        let mut s = RedisSnap::default();
        for c in &mut self.conns {
            let mut sections = Vec::with_capacity(3);
            for section in ["commandstats", "cpu", "memory"] {
                sections.push(
                    redis::cmd("INFO")
                        .arg(section)
                        .query_async::<String>(c)
                        .await?,
                );
            }
            add_server(&mut s, &sections[0], &sections[1], &sections[2]);
        }
        Ok(s)
    }

    pub(super) async fn snap(&mut self) -> anyhow::Result<Snap> {
        let redis = self.redis().await?;
        Ok(Snap {
            at: Instant::now(),
            cpu: proc_cpu_secs(self.tck),
            redis,
        })
    }
}

/// Adds one server's `INFO commandstats`, `cpu` and `memory` to `s`.
fn add_server(s: &mut RedisSnap, stats: &str, cpu: &str, mem: &str) {
    for line in stats.lines() {
        // cmdstat_evalsha:calls=1,usec=2,...
        if let Some((name, rest)) = line
            .trim()
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        {
            let num = |key: &str| -> u64 {
                rest.split(',')
                    .find_map(|kv| kv.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            *s.calls.entry(name.to_string()).or_default() += num("calls=");
            *s.usec.entry(name.to_string()).or_default() += num("usec=");
        }
    }
    let field = |text: &str, key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key).and_then(|v| v.strip_prefix(':')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    s.cpu_secs += field(cpu, "used_cpu_sys") + field(cpu, "used_cpu_user");
    s.used_memory += field(mem, "used_memory") as u64;
}

/// Differences between two snapshots, per task where it says so.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Cost {
    /// Tasks the phase handled.
    pub(super) tasks: u64,
    /// Seconds between the snapshots.
    pub(super) secs: f64,
    /// Redis commands (INFO excluded) per task; EVALSHA counts as one command.
    pub(super) redis_commands_per_task: f64,
    /// Of which script calls (EVALSHA/EVAL/FCALL) per task.
    pub(super) redis_scripts_per_task: f64,
    /// Redis commands by name, per task (INFO excluded).
    pub(super) redis_commands_by_name: std::collections::BTreeMap<String, f64>,
    /// Redis time per task by command (`INFO commandstats` usec), µs; a script's time
    /// includes the commands it ran, which are also listed under their own names.
    pub(super) redis_usec_per_task_by_name: std::collections::BTreeMap<String, f64>,
    /// Redis CPU (user + sys) per task, µs.
    pub(super) redis_cpu_us_per_task: f64,
    /// Redis CPU, share of one core.
    pub(super) redis_cpu_percent: f64,
    /// This process's CPU (server + bench agents + load generator) per task, µs.
    pub(super) process_cpu_us_per_task: f64,
    /// This process's CPU, share of one core (200% = both of 2 cores).
    pub(super) process_cpu_percent: f64,
}

pub(super) fn cost(a: &Snap, b: &Snap, tasks: u64) -> Cost {
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

pub(super) fn round(v: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (v * p).round() / p
}
