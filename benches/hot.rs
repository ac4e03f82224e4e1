//! Micro-benchmarks of muster's hot paths (criterion): the task record read from a
//! Redis hash, task JSON both ways, a lease reply, submit preparation (validation into
//! the script's arguments) and the dispatcher's node selection.
//!
//! `cargo bench --bench hot`; `cargo test` only compiles them.

use criterion::{Criterion, criterion_group, criterion_main};
use muster::domain::{Lease, LeaseReply, NewTask, Task};
use muster::store::task_from_hash;
use muster::workers::dispatcher::{NodeView, select_nodes};
use std::collections::HashMap;
use std::hint::black_box;

/// A running task's hash, field by field as lease.lua's HGETALL returns it.
fn task_hash() -> HashMap<String, String> {
    let id = "01JD8XK2ZQ8M3V6T1XW0Q2E7AB.bench";
    [
        ("id", id),
        ("kind", "noop"),
        (
            "payload",
            r#"{"i":12345,"kind":"noop","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
        ),
        ("priority", "0"),
        ("state", "running"),
        ("attempts", "1"),
        ("max_attempts", "3"),
        ("timeout_ms", "30000"),
        ("backoff_initial", "1000"),
        ("backoff_max", "300000"),
        ("requires", ""),
        ("retention_ms", "86400000"),
        ("fence", "1"),
        ("created_at", "1795764276546"),
        ("run_at", "1795764276546"),
        ("seq", "42"),
        ("max_run_ms", ""),
        ("node", "01JD8XJ9Q1Y3G2C4B5D6E7F8G9"),
        ("nonce", "9f2c4e1a0b3d5f7e9a1c3e5f0000"),
        ("started_at", "1795764276909"),
        ("lease_expires", "1795764306909"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A task id of the queue `bench` (schema 2 keeps it out of the hash).
const ID: &str = "01KB4X7J1ZQ3V9RXM2N8P5T6WA.bench";

fn bench_task_record(c: &mut Criterion) {
    let h = task_hash();
    c.bench_function("task_from_hash", |b| {
        b.iter(|| task_from_hash(black_box("bench"), black_box(ID), black_box(&h)))
    });
    let task: Task = task_from_hash("bench", ID, &h).expect("a task");
    c.bench_function("task_json_serialize", |b| {
        b.iter(|| serde_json::to_vec(black_box(&task)).expect("json"))
    });
    let bytes = serde_json::to_vec(&task).expect("json");
    c.bench_function("task_json_deserialize", |b| {
        b.iter(|| serde_json::from_slice::<Task>(black_box(&bytes)).expect("task"))
    });
    let reply = LeaseReply {
        leases: (0..500)
            .map(|_| Lease {
                fence: 1,
                lease_expires_at: "2026-11-27T06:24:36.909Z".into(),
                lease_token: "1.9f2c4e1a0b3d5f7e9a1c3e5f0000".into(),
                task: task.clone(),
            })
            .collect(),
    };
    c.bench_function("lease_reply_500_serialize", |b| {
        b.iter(|| serde_json::to_vec(black_box(&reply)).expect("json"))
    });
}

fn bench_submit(c: &mut Criterion) {
    let body = br#"{"kind":"noop","queue":"bench","payload":{"i":12345,"kind":"noop","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
    c.bench_function("submit_parse_and_prepare", |b| {
        b.iter(|| {
            let t: NewTask = serde_json::from_slice(black_box(body)).expect("task");
            muster::api::tasks::prepare(t, "").expect("valid")
        })
    });
}

fn bench_node_selection(c: &mut Criterion) {
    let one = vec!["bench".to_string()];
    let two = vec!["bench".to_string(), "other".to_string()];
    let tags = vec!["gpu".to_string(), "linux".to_string()];
    let ids: Vec<String> = (0..100)
        .map(|i| format!("01JD8XJ9Q1Y3G2C4B5D6E7F{i:03}"))
        .collect();
    let views: Vec<NodeView<'_>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| NodeView {
            id,
            queues: if i % 2 == 0 { &one } else { &two },
            capacity: 16,
            mean_run_ms: (i % 7) as f64,
            tags: &tags,
        })
        .collect();
    let loads: HashMap<String, HashMap<String, i64>> = ["bench", "other"]
        .iter()
        .map(|q| {
            (
                q.to_string(),
                ids.iter()
                    .enumerate()
                    .map(|(i, id)| (id.clone(), (i % 5) as i64))
                    .collect(),
            )
        })
        .collect();
    c.bench_function("select_nodes_100_no_loads", |b| {
        b.iter(|| select_nodes(black_box("bench"), views.iter().copied(), None))
    });
    c.bench_function("select_nodes_100_with_loads", |b| {
        b.iter(|| select_nodes(black_box("bench"), views.iter().copied(), Some(&loads)))
    });
}

criterion_group!(
    benches,
    bench_task_record,
    bench_submit,
    bench_node_selection
);
criterion_main!(benches);
