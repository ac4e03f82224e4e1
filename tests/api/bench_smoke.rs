//! `muster bench --quick --json` through the real binary, so the bench never rots: it
//! must exit 0 and report positive rates for every phase.

use crate::support::muster_bin;
use crate::support::redis_cluster::{TestCluster, TestSentinels, cli};
use serde_json::Value;
use std::process::{Command, Stdio};

fn positive(v: &Value, path: &str) -> f64 {
    let x = v
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{path} missing in the bench JSON"));
    assert!(x > 0.0, "{path} = {x}, expected a positive figure");
    x
}

#[test]
fn bench_quick_json_reports_every_phase() {
    if Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        panic!("redis-server is needed (scripts/test.sh installs it)");
    }
    let out = Command::new(muster_bin())
        .args(["bench", "--quick", "--json"])
        .env("RUST_LOG", "warn")
        .env_remove("MUSTER_REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run muster bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "muster bench --quick --json exited {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status.code()
    );
    let r: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("bench output is not JSON ({e}): {stdout}"));
    for phase in [
        "submit_batch",
        "submit_single",
        "process_only",
        "end_to_end",
    ] {
        positive(&r, &format!("/{phase}/per_sec"));
        positive(&r, &format!("/{phase}/tasks"));
    }
    let lat = r["latency"].as_array().expect("latency phases");
    assert!(!lat.is_empty(), "no latency phase: {r}");
    for l in lat {
        positive(l, "/achieved_per_sec");
        positive(l, "/samples");
        positive(l, "/p50_ms");
    }
    positive(&r, "/cost_end_to_end/redis_commands_per_task");
    positive(&r, "/redis_memory_bytes_per_pending_task");
    assert!(
        r["idle"]["process_cpu_percent"].as_f64().is_some(),
        "idle phase missing: {}",
        r["idle"]
    );
    // 503s on a busy machine are retried by the bench as a client would: counted, not
    // a failure (a request that keeps failing makes the bench exit non-zero).
    assert!(
        r["checks"]["http_retries_after_503"].as_u64().is_some(),
        "{}",
        r["checks"]
    );
}

/// `muster bench` with `args` (a short run), its JSON.
fn bench_json(args: &[&str]) -> Value {
    let out = Command::new(muster_bin())
        .args([
            "bench",
            "--json",
            "-n",
            "1000",
            "--single-n",
            "200",
            "--rates",
            "200",
        ])
        .args([
            "--latency-secs",
            "1",
            "--idle-agents",
            "0",
            "--census-n",
            "300",
        ])
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("MUSTER_REDIS_URL")
        .env_remove("MUSTER_REDIS_CLUSTER")
        .env_remove("MUSTER_REDIS_SENTINEL")
        .stdin(Stdio::null())
        .output()
        .expect("run muster bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "muster bench {args:?} exited {:?}\nstdout: {stdout}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("bench output is not JSON ({e}): {stdout}"))
}

/// Keys on a node (DBSIZE).
fn dbsize(port: u16) -> u64 {
    cli(port, &["dbsize"]).trim().parse().expect("DBSIZE")
}

#[test]
fn bench_on_a_cluster_sums_every_primary_and_removes_its_namespace() {
    let cluster = TestCluster::start(3, 0);
    let seeds: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let r = bench_json(&["--redis-cluster", &seeds.join(",")]);
    assert_eq!(r["setup"]["redis_primaries"], 3, "{}", r["setup"]);
    positive(&r, "/end_to_end/per_sec");
    positive(&r, "/process_only/per_sec");
    let commands = positive(&r, "/cost_end_to_end/redis_commands_per_task");
    // A task's lifecycle takes several commands whichever primary ran them; one
    // primary's INFO alone would show about a third of that.
    assert!(
        commands >= 2.0,
        "{commands} commands per task over 3 primaries"
    );
    // MONITOR on every primary and INFO summed over them see the same commands.
    let census = positive(&r, "/census/top_level_per_task")
        + positive(&r, "/census/inside_scripts_per_task");
    assert!(
        commands > census * 0.5 && commands < census * 2.0,
        "INFO says {commands} commands per task, MONITOR {census}"
    );
    for n in &cluster.nodes {
        assert_eq!(dbsize(n.port), 0, "the bench left keys on port {}", n.port);
    }
}

#[test]
fn bench_through_sentinels_uses_the_primary_they_name() {
    let s = TestSentinels::start();
    let urls: Vec<String> = s.sentinels.iter().map(|n| n.url()).collect();
    let r = bench_json(&[
        "--redis-sentinel",
        &urls.join(","),
        "--sentinel-master",
        "mymaster",
    ]);
    assert_eq!(r["setup"]["redis_primaries"], 1, "{}", r["setup"]);
    positive(&r, "/end_to_end/per_sec");
    positive(&r, "/cost_end_to_end/redis_commands_per_task");
    assert_eq!(
        dbsize(s.data[0].port),
        0,
        "the bench left keys on the primary"
    );
}

#[test]
fn bench_refuses_two_redis_targets_in_one_line() {
    let out = Command::new(muster_bin())
        .args([
            "bench",
            "--redis-url",
            "redis://127.0.0.1:1",
            "--redis-cluster",
            "redis://127.0.0.1:2",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run muster bench");
    assert_eq!(out.status.code(), Some(2), "clap's usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be used with"), "{err}");
}
