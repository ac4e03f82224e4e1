//! `muster bench --quick --json` through the real binary, so the bench never rots: it
//! must exit 0 and report positive rates for every phase.

use crate::support::muster_bin;
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
