//! Sharded queues (`PUT /v1/queues/{name}` `{"shards": N}`): one queue over several hash
//! tags. On one server the shards are several tags on one server; on the Cluster each
//! shard's tag is on its own primary. Either way it is one queue to its clients.

use crate::support::*;
use muster::domain::{QueueInfo, Task, TaskState, validate};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};

async fn put_queue(api: &Http, name: &str, body: Value) -> Resp {
    api.send(
        api.req(reqwest::Method::PUT, &format!("/v1/queues/{name}"))
            .json(&body),
    )
    .await
}

async fn queue(api: &Http, name: &str) -> QueueInfo {
    api.get(&format!("/v1/queues/{name}"))
        .await
        .expect(200)
        .json()
}

fn shard_of(id: &str) -> u32 {
    validate::split_shard(validate::task_shard(id).expect("a task id")).1
}

/// Leases one task at a time on a capacity-1 node and completes it, `n` times; the
/// tasks in the order they were leased.
async fn run_one_by_one(node: &ManualNode, n: usize) -> Vec<Task> {
    let mut order = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while order.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} leased",
            order.len()
        );
        for l in node.lease(1, 2000).await {
            node.api
                .post(
                    &format!("/v1/tasks/{}/complete", l.task.id),
                    &json!({ "lease_token": l.lease_token, "result": null }),
                )
                .await
                .expect(200);
            order.push(l.task);
        }
    }
    order
}

/// Within one shard, tasks (all submitted before the first lease) start by priority,
/// highest first, and in submission order inside one priority.
fn assert_priority_order_per_shard(order: &[Task], submitted: &[String]) {
    let rank: HashMap<&str, usize> = submitted
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut last: HashMap<u32, (i64, usize)> = HashMap::new();
    for t in order {
        let s = shard_of(&t.id);
        let here = (t.priority, rank[t.id.as_str()]);
        if let Some(&(p, r)) = last.get(&s) {
            assert!(
                here.0 < p || (here.0 == p && here.1 > r),
                "shard {s}: {} (priority {}, #{}) started after priority {p} #{r}",
                t.id,
                here.0,
                here.1
            );
        }
        last.insert(s, here);
    }
}

#[tokio::test]
async fn a_sharded_queue_spreads_its_tasks_over_its_shards_and_reads_as_one_queue() {
    let app = spawn_app().await;
    let api = &app.api;
    let q = "sharded";

    // Bad values: 422 problem+json, nothing changed (the queue is not even created).
    for bad in [
        json!({ "shards": 0 }),
        json!({ "shards": 17 }),
        json!({ "shards": "3" }),
        json!({ "shards": 2.5 }),
        json!({ "shards": 3, "max_running": 2 }),
    ] {
        let r = put_queue(api, q, bad.clone()).await;
        assert!(
            r.status == 422 || r.status == 400,
            "{bad}: {} {}",
            r.status,
            r.text
        );
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{bad}"
        );
    }
    assert_eq!(api.get(&format!("/v1/queues/{q}")).await.status, 404);

    let info: QueueInfo = put_queue(api, q, json!({ "shards": 3, "max_running": 7 }))
        .await
        .expect(200)
        .json();
    assert_eq!((info.shards, info.max_running), (3, Some(7)));
    // Each shard holds its whole part of max_running (3 + 2 + 2) and the count.
    let mut r = e2e_conn();
    let parts: Vec<i64> = (0..3)
        .map(|k| {
            let conf = format!("{}:{{{}}}:conf", app.ns, validate::shard_name(q, k));
            let (m, n): (i64, i64) = redis::cmd("HMGET")
                .arg(&conf)
                .arg("max_running")
                .arg("shards")
                .query::<(i64, i64)>(&mut r)
                .expect("a shard's conf");
            assert_eq!(n, 3);
            m
        })
        .collect();
    assert_eq!(parts, [3, 2, 2]);

    // Fewer shards: 409, and still 3; a bad max_running for 3 shards: 422, unchanged.
    let r = put_queue(api, q, json!({ "shards": 2 })).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("shards_shrink"), "{}", r.text);
    let r = put_queue(api, q, json!({ "max_running": 1 })).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let info = queue(api, q).await;
    assert_eq!((info.shards, info.max_running), (3, Some(7)));
    let info: QueueInfo = put_queue(api, q, json!({ "max_running": 0 }))
        .await
        .expect(200)
        .json();
    assert_eq!(info.max_running, None);

    // 90 tasks of mixed priorities: spread evenly (round-robin), each found by id.
    let tasks: Vec<Value> = (0..90)
        .map(|i| json!({ "kind": "echo", "queue": q, "payload": { "i": i }, "priority": (i * 7) % 4 }))
        .collect();
    let ids = api.submit_batch(tasks).await;
    let mut per_shard = [0usize; 3];
    for id in &ids {
        per_shard[shard_of(id) as usize] += 1;
        let t = api.task(id).await;
        assert_eq!((t.queue.as_str(), t.state), (q, TaskState::Pending));
    }
    assert_eq!(per_shard, [30, 30, 30], "round-robin placement");
    // A concurrency key keeps all its tasks on one shard (one semaphore).
    let keyed: Vec<Value> = (0..12)
        .map(|i| json!({ "kind": "echo", "queue": q, "payload": { "k": i }, "concurrency_key": "acct-1", "concurrency_limit": 2 }))
        .collect();
    let keyed_ids = api.submit_batch(keyed).await;
    let s0 = shard_of(&keyed_ids[0]);
    assert!(
        keyed_ids.iter().all(|id| shard_of(id) == s0),
        "{keyed_ids:?}"
    );
    // A repeat with the same Idempotency-Key answers the same ids (it looks where the
    // first placed them).
    let body = json!({ "tasks": [{ "kind": "echo", "queue": q }, { "kind": "echo", "queue": q }] });
    let first: muster::domain::BatchCreated = api
        .send(
            api.req(reqwest::Method::POST, "/v1/tasks/batch")
                .header("Idempotency-Key", "shard-idem-1")
                .json(&body),
        )
        .await
        .expect(201)
        .json();
    let again: muster::domain::BatchCreated = api
        .send(
            api.req(reqwest::Method::POST, "/v1/tasks/batch")
                .header("Idempotency-Key", "shard-idem-1")
                .json(&body),
        )
        .await
        .expect(201)
        .json();
    assert_eq!(first.ids, again.ids);
    let all: Vec<String> = ids
        .iter()
        .chain(&keyed_ids)
        .chain(&first.ids)
        .cloned()
        .collect();

    // One queue: counts summed over the shards, listed once, listed tasks all of it.
    let info = queue(api, q).await;
    assert_eq!(info.counts.pending, all.len() as i64);
    let list: muster::api::queues::QueuePage = api.get("/v1/queues").await.expect(200).json();
    assert_eq!(
        list.items.iter().filter(|i| i.name.starts_with(q)).count(),
        1
    );
    assert_eq!(api.all_tasks(q, Some("pending")).await.len(), all.len());

    // A capacity-1 node: every task exactly once, in priority order within its shard.
    let node = register_node(api, "one", &[q], 1).await;
    let order = run_one_by_one(&node, all.len()).await;
    let mut seen: Vec<&str> = order.iter().map(|t| t.id.as_str()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), all.len(), "a task ran twice");
    assert_priority_order_per_shard(
        &order
            .iter()
            .filter(|t| ids.contains(&t.id))
            .cloned()
            .collect::<Vec<_>>(),
        &ids,
    );
    // The shards took turns: the first 9 leases came from all three.
    let mut first9: Vec<u32> = order[..9].iter().map(|t| shard_of(&t.id)).collect();
    first9.sort_unstable();
    first9.dedup();
    assert_eq!(first9, [0, 1, 2], "the dispatcher visits every shard");
    let info = queue(api, q).await;
    assert_eq!(info.counts.succeeded, all.len() as i64);
    assert_eq!(info.counts.pending, 0);
    let stats: HashMap<String, i64> = app.store.queue_stats(q).await.expect("stats");
    assert_eq!(stats.get("succeeded").copied(), Some(all.len() as i64));

    // Pause holds on every shard.
    put_queue(api, q, json!({ "paused": true }))
        .await
        .expect(200);
    let more = api
        .submit_batch(
            (0..6)
                .map(|_| json!({ "kind": "echo", "queue": q }))
                .collect(),
        )
        .await;
    assert!(
        node.lease(6, 800).await.is_empty(),
        "a paused shard dispatched"
    );
    put_queue(api, q, json!({ "paused": false }))
        .await
        .expect(200);
    let order = run_one_by_one(&node, more.len()).await;
    assert_eq!(order.len(), more.len());
    assert_doctor_clean(&app.store).await;
}

/// On a 3+3 Cluster: a queue with `shards: 3` whose tags sit on three different
/// primaries, thousands of tasks through two agents, every task done exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_queue_under_load_on_the_cluster_uses_three_primaries_and_runs_each_task_once() {
    const N: usize = 3000;
    let cluster = TestCluster::start(3, 3);
    let ns = unique_ns();
    // A queue whose three tags fall on three different primaries (CLUSTER KEYSLOT and
    // the slot map, through `primary_of`).
    let q = (0..200)
        .map(|i| format!("hot{i}"))
        .find(|q| {
            let mut p: Vec<usize> = (0..3)
                .map(|k| {
                    cluster.primary_of(&format!("{ns}:{{{}}}:pending", validate::shard_name(q, k)))
                })
                .collect();
            p.sort_unstable();
            p.dedup();
            p.len() == 3
        })
        .expect("a queue name over three primaries");
    let app = spawn_app_target(cluster.target(), &ns, 0).await;
    let api = &app.api;
    let info: QueueInfo = put_queue(api, &q, json!({ "shards": 3 }))
        .await
        .expect(200)
        .json();
    assert_eq!(info.shards, 3);

    let task = |i: usize| json!({ "kind": "echo", "queue": q, "payload": { "i": i }, "priority": i % 3, "timeout_ms": 20000 });
    let mut ids = Vec::new();
    for chunk in (0..N).collect::<Vec<_>>().chunks(500) {
        ids.extend(
            api.submit_batch(chunk.iter().map(|&i| task(i)).collect())
                .await,
        );
    }
    let mut per_shard = [0usize; 3];
    for id in &ids {
        per_shard[shard_of(id) as usize] += 1;
    }
    assert!(
        per_shard.iter().all(|n| *n == N / 3),
        "placement {per_shard:?}"
    );
    assert_eq!(queue(api, &q).await.counts.pending, N as i64);

    // First a capacity-1 node takes 45 tasks one by one: priority order per shard.
    let node = register_node(api, "one", &[&q], 1).await;
    let order = run_one_by_one(&node, 45).await;
    assert_priority_order_per_shard(&order, &ids);
    drop(node);

    let mut agents = vec![
        spawn_agent_process(
            &[&app.url],
            &[
                "--builtin",
                "--capacity",
                "64",
                "--name",
                "s1",
                "--queue",
                &q,
            ],
        ),
        spawn_agent_process(
            &[&app.url],
            &[
                "--builtin",
                "--capacity",
                "64",
                "--name",
                "s2",
                "--queue",
                &q,
            ],
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let c = api.queue_counts(&q).await;
        if c.succeeded == N as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{N} tasks not done after 180 s: {c:?}\n{}",
            agents.iter().map(Proc::log).collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = api.all_tasks(&q, Some("succeeded")).await;
    assert_eq!(done.len(), N);
    let by_id: HashMap<&str, &Task> = done.iter().map(|t| (t.id.as_str(), t)).collect();
    for (i, id) in ids.iter().enumerate() {
        let t = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("task {i} not succeeded"));
        assert_eq!((t.attempts, t.fence), (1, 1), "task {i} ran twice: {t:?}");
        assert_eq!(t.queue, q);
    }
    // Every shard's primary did a third of the work: its own `stats` say so.
    for k in 0..3 {
        let shard = validate::shard_name(&q, k);
        let p = cluster.primary_of(&format!("{ns}:{{{shard}}}:stats"));
        let port = cluster.nodes[p].port;
        let ok: i64 = cli(
            port,
            &["hget", &format!("{ns}:{{{shard}}}:stats"), "succeeded"],
        )
        .trim()
        .parse()
        .unwrap_or(-1);
        assert_eq!(ok, (N / 3) as i64, "shard {k} on primary {p}");
    }
    let info = queue(api, &q).await;
    assert_eq!(info.counts.succeeded, N as i64);
    assert_eq!(
        info.counts.running + info.counts.pending + info.counts.assigned,
        0
    );
    for a in &mut agents {
        a.kill9();
    }
    assert_doctor_clean(&app.store).await;
}
