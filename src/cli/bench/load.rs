//! The bench's load generators: batch submits, single submits from many clients, and
//! the wait for the agents to report a number of tasks done.

use super::agents::{Api, Counters, lock};
use super::{PAD, STALL};
use futures::StreamExt as _;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn task_json(queue: &str, i: u64) -> Value {
    json!({"kind": "noop", "queue": queue, "payload": {"i": i, "kind": "noop", "pad": PAD}})
}

/// The body of `POST /v1/tasks/batch` for tasks `from..to`: the bytes
/// `serde_json::to_vec(&json!({"tasks": [task_json(queue, i), …]}))` gives, written
/// directly. The load generator runs in the bench's process, so building a JSON tree
/// per task would count as muster's CPU and slow the server it shares the cores with.
fn batch_body(queue: &str, from: u64, to: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let q = serde_json::to_string(queue)?;
    let pad = serde_json::to_string(PAD)?;
    let mut b = Vec::with_capacity(((to - from) as usize) * (64 + q.len() + pad.len()) + 16);
    b.extend_from_slice(br#"{"tasks":["#);
    for i in from..to {
        if i > from {
            b.push(b',');
        }
        write!(
            b,
            r#"{{"kind":"noop","payload":{{"i":{i},"kind":"noop","pad":{pad}}},"queue":{q}}}"#
        )?;
    }
    b.extend_from_slice(b"]}");
    Ok(b)
}

pub(super) fn payload_bytes() -> usize {
    serde_json::to_vec(&json!({"i": 12345, "kind": "noop", "pad": PAD})).map_or(0, |v| v.len())
}

pub(super) fn bar(len: u64, msg: &str) -> ProgressBar {
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
pub(super) async fn submit_batches(
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
                let body = batch_body(&queue, from, to)?;
                let r: Value = api.post_admin(&["v1", "tasks", "batch"], body).await?;
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
pub(super) async fn submit_singles(
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
                let _: Value = api.post_admin(&["v1", "tasks"], body).await?;
                pb.inc(1);
            }
        }
    });
    futures::future::try_join_all(workers).await?;
    Ok(t0.elapsed())
}

/// Waits until the agents have reported `target` tasks accepted; the instant of the last one.
pub(super) async fn wait_done(
    c: &Counters,
    target: u64,
    pb: &ProgressBar,
) -> anyhow::Result<Instant> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_batch_body_is_the_json_tree_serialised() {
        let tasks: Vec<Value> = (7..10).map(|i| task_json("bench-batch", i)).collect();
        let tree = serde_json::to_vec(&json!({ "tasks": tasks })).expect("json");
        assert_eq!(
            String::from_utf8(batch_body("bench-batch", 7, 10).expect("body")).expect("utf-8"),
            String::from_utf8(tree).expect("utf-8")
        );
    }
}
