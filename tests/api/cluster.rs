//! Several `muster serve` processes on one Redis: the scripts, not the processes, keep
//! every task assigned once.

use crate::support::*;
use muster::domain::{Task, TaskState};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_processes_on_one_redis_run_5000_tasks_each_assigned_exactly_once() {
    const N: usize = 5000;
    let redis = e2e_redis();
    let ns = unique_ns();
    let mut s1 = spawn_serve_process(&redis.url(), &ns).await;
    let mut s2 = spawn_serve_process(&redis.url(), &ns).await;
    let api1 = Http::new(&s1.url, Some(ADMIN_TOKEN));
    let api2 = Http::new(&s2.url, Some(ADMIN_TOKEN));
    let tail = EventTail::start(&redis.url(), &ns, "default");

    let mut agents = vec![
        spawn_agent_process(
            &[&s1.url],
            &["--builtin", "--capacity", "16", "--name", "a1"],
        ),
        spawn_agent_process(
            &[&s2.url],
            &["--builtin", "--capacity", "16", "--name", "a2"],
        ),
        spawn_agent_process(
            &[&s2.url, &s1.url],
            &["--builtin", "--capacity", "16", "--name", "a3"],
        ),
    ];
    eventually(Duration::from_secs(30), "3 nodes registered", || async {
        (api1.nodes().await.len() == 3).then_some(())
    })
    .await;

    let task = |i: usize| json!({ "kind": "echo", "payload": { "i": i }, "priority": i % 10, "timeout_ms": 10000 });
    let half1: Vec<Value> = (0..N / 2).map(task).collect();
    let half2: Vec<Value> = (N / 2..N).map(task).collect();
    let (ids1, ids2) = tokio::join!(api1.submit_batch(half1), api2.submit_batch(half2));
    let ids: Vec<String> = ids1.into_iter().chain(ids2).collect();
    assert_eq!(ids.len(), N);

    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        for s in [&mut s1, &mut s2] {
            assert!(
                s.proc.running(),
                "{} exited under the test (killed from outside?)\n{}",
                s.proc.name,
                s.proc.log()
            );
        }
        if api2.queue_counts("default").await.succeeded == N as i64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "5000 tasks not succeeded after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = api1.all_tasks("default", Some("succeeded")).await;
    assert_eq!(done.len(), N);
    let by_id: HashMap<&str, &Task> = done.iter().map(|t| (t.id.as_str(), t)).collect();
    for (i, id) in ids.iter().enumerate() {
        let t = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("task {i} not succeeded"));
        assert_eq!(t.state, TaskState::Succeeded);
        assert_eq!(t.attempts, 1, "task {i} ran more than once: {t:?}");
        assert_eq!(t.fence, 1, "task {i} was leased more than once: {t:?}");
        assert_eq!(t.result, Some(json!({ "i": i })));
    }
    let nodes = api1.nodes().await;
    let total: i64 = nodes.iter().map(|n| n.succeeded).sum();
    assert!(
        total <= N as i64,
        "node stats count more completions than tasks: {nodes:?}"
    );

    for a in &mut agents {
        a.kill9();
    }
    // Let in-flight writes settle, then read the whole stream as it grew.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events: Vec<(String, String, String)> = tail
        .finish()
        .into_iter()
        .map(|e| (e.typ, e.task, e.node))
        .collect();
    let mut count: HashMap<(&str, &str), usize> = HashMap::new();
    for (typ, task, _) in &events {
        *count.entry((typ.as_str(), task.as_str())).or_default() += 1;
    }
    for id in &ids {
        let n = |typ: &str| count.get(&(typ, id.as_str())).copied().unwrap_or(0);
        // The stream was read from its very start: every submission is there.
        assert_eq!(n("task.submitted"), 1, "submission events of {id}");
        assert_eq!(
            n("task.assigned"),
            1,
            "{id} was assigned {} times",
            n("task.assigned")
        );
        assert_eq!(
            n("task.running"),
            1,
            "{id} was leased {} times",
            n("task.running")
        );
        assert_eq!(
            n("task.succeeded"),
            1,
            "{id} was completed {} times",
            n("task.succeeded")
        );
    }
    let assigned = events.iter().filter(|e| e.0 == "task.assigned").count();
    assert_eq!(assigned, N, "assignment events");

    // What is left in the capped stream agrees.
    let mut c = redis.conn();
    let mut left: HashMap<String, usize> = HashMap::new();
    for (typ, task, _) in stream_events(&mut c, &ns, "default") {
        if typ == "task.assigned" {
            *left.entry(task).or_default() += 1;
        }
    }
    assert!(
        left.values().all(|n| *n == 1),
        "a task assigned twice in XRANGE"
    );

    s1.proc.kill9();
    s2.proc.kill9();
    assert_doctor_cli_clean(&redis.url(), &ns);
}
