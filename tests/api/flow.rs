//! End-to-end flows: a control plane (in-process unless a test needs a process), real
//! `muster agent` processes or nodes driven by hand over HTTP, and the invariant
//! checker at the end of every scenario.

use crate::support::*;
use muster::domain::{Node, Task, TaskState};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The nodes as the API lists them, by id.
async fn nodes_by_id(api: &Http) -> HashMap<String, Node> {
    api.nodes()
        .await
        .into_iter()
        .map(|n| (n.id.clone(), n))
        .collect()
}

/// Waits until `n` active nodes are registered; their ids.
async fn wait_nodes(api: &Http, n: usize) -> Vec<String> {
    eventually(
        Duration::from_secs(30),
        &format!("{n} active nodes"),
        || async {
            let nodes = api.nodes().await;
            let active: Vec<String> = nodes
                .iter()
                .filter(|x| x.status == muster::domain::NodeStatus::Active)
                .map(|x| x.id.clone())
                .collect();
            (active.len() >= n).then_some(active)
        },
    )
    .await
}

fn ms(s: &Option<String>) -> i64 {
    muster::domain::parse_rfc3339_ms(s.as_deref().expect("timestamp set")).expect("RFC 3339")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_tasks_over_every_priority_all_succeed_on_two_agents_with_their_payload_as_result()
 {
    let app = spawn_app().await;
    let mut a = spawn_agent_process(
        &[&app.url],
        &["--builtin", "--capacity", "8", "--name", "agent-a"],
    );
    let mut b = spawn_agent_process(
        &[&app.url],
        &["--builtin", "--capacity", "8", "--name", "agent-b"],
    );
    let ids = wait_nodes(&app.api, 2).await;
    assert_eq!(ids.len(), 2);

    let tasks: Vec<Value> = (0..1000)
        .map(|i| json!({ "kind": "echo", "payload": { "i": i }, "priority": i % 10, "timeout_ms": 3000 }))
        .collect();
    let submitted = app.api.submit_batch(tasks).await;
    assert_eq!(submitted.len(), 1000);

    eventually(Duration::from_secs(60), "1000 tasks succeeded", || async {
        (app.api.queue_counts("default").await.succeeded == 1000).then_some(())
    })
    .await;
    let done = app.api.all_tasks("default", Some("succeeded")).await;
    let by_id: HashMap<&str, &Task> = done.iter().map(|t| (t.id.as_str(), t)).collect();
    for (i, id) in submitted.iter().enumerate() {
        let t = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("task {i} ({id}) not succeeded"));
        assert_eq!(t.payload, json!({ "i": i }));
        assert_eq!(t.priority, (i % 10) as i64);
        assert_eq!(
            t.result.as_ref(),
            Some(&t.payload),
            "task {i}: result must equal the payload"
        );
        assert_eq!(t.state, TaskState::Succeeded);
        assert!(t.error.is_none(), "task {i}: {:?}", t.error);
    }
    assert!(
        app.api
            .all_tasks("default", Some("failed"))
            .await
            .is_empty()
    );

    // Node statistics are flushed about every second.
    let nodes = eventually(
        Duration::from_secs(10),
        "both agents' succeeded counts add up to 1000",
        || async {
            let nodes = nodes_by_id(&app.api).await;
            let total: i64 = ids.iter().map(|id| nodes[id].succeeded).sum();
            (total >= 1000).then_some(nodes)
        },
    )
    .await;
    for id in &ids {
        assert!(
            nodes[id].succeeded > 0,
            "node {id} did no work: {:?}",
            nodes[id]
        );
    }
    a.kill9();
    b.kill9();
    assert_doctor_clean(&app.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_backlog_every_priority_nine_task_starts_before_every_priority_zero_task() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("order");
    let low = app
        .api
        .submit_batch(
            (0..50)
                .map(|i| json!({ "kind": "record", "payload": { "i": i }, "priority": 0 }))
                .collect(),
        )
        .await;
    let high = app
        .api
        .submit_batch(
            (0..50)
                .map(|i| json!({ "kind": "record", "payload": { "i": i }, "priority": 9 }))
                .collect(),
        )
        .await;
    let cmd = format!("echo \"$MUSTER_TASK_ID\" >> '{}'", file.display());
    let mut agent = spawn_agent_process(&[&app.url], &["--capacity", "1", "--exec", &cmd]);

    let all: Vec<String> = low.iter().chain(high.iter()).cloned().collect();
    eventually(Duration::from_secs(60), "100 tasks succeeded", || async {
        (app.api.queue_counts("default").await.succeeded == 100).then_some(())
    })
    .await;
    let done = app.api.all_tasks("default", Some("succeeded")).await;
    agent.kill9();
    assert_eq!(
        done.iter().map(|t| t.id.clone()).collect::<HashSet<_>>(),
        all.iter().cloned().collect()
    );

    // Order in which the command ran (capacity 1: one at a time).
    let order: Vec<String> = std::fs::read_to_string(&file)
        .expect("order file")
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(order.len(), 100, "each task ran once: {order:?}");
    let high_set: HashSet<&String> = high.iter().collect();
    let first_low = order
        .iter()
        .position(|id| !high_set.contains(id))
        .expect("a low task");
    assert_eq!(
        first_low, 50,
        "a priority-0 task ran before a priority-9 one: {order:?}"
    );
    // FIFO within one priority.
    assert_eq!(&order[..50], &high[..]);
    assert_eq!(&order[50..], &low[..]);

    // The same from the records' own start times.
    let by_id: HashMap<&str, &Task> = done.iter().map(|t| (t.id.as_str(), t)).collect();
    let last_high_start = high
        .iter()
        .map(|id| ms(&by_id[id.as_str()].started_at))
        .max()
        .unwrap();
    let first_low_start = low
        .iter()
        .map(|id| ms(&by_id[id.as_str()].started_at))
        .min()
        .unwrap();
    assert!(
        last_high_start <= first_low_start,
        "{last_high_start} > {first_low_start}"
    );
    assert_doctor_clean(&app.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_is_retried_with_backoff_and_ends_failed_after_three_attempts() {
    let app = spawn_app().await;
    let mut agent = spawn_agent_process(
        &[&app.url],
        &["--capacity", "1", "--exec", "echo doomed >&2; exit 3"],
    );
    wait_nodes(&app.api, 1).await;
    let t = app
        .api
        .submit(json!({
            "kind": "doomed",
            "max_attempts": 3,
            "backoff": { "initial_ms": 100, "max_ms": 200 },
            "timeout_ms": 3000,
        }))
        .await;
    let t = app.api.wait_terminal(&t.id, Duration::from_secs(20)).await;
    agent.kill9();
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    assert_eq!(t.attempts, 3);
    assert_eq!(t.fence, 3);
    let err = t.error.clone().expect("an error");
    assert!(
        err.contains("exit status 3"),
        "error {err:?} should name the exit status"
    );
    assert!(err.contains("doomed"), "error {err:?} should carry stderr");

    // Two retries, each after a backoff: equal jitter makes the delays 50..100 ms then 100..200 ms.
    let mut c = e2e_conn();
    let events: Vec<_> = stream_events(&mut c, &app.ns, "default")
        .into_iter()
        .filter(|e| e.1 == t.id)
        .collect();
    let types: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        types.iter().filter(|x| **x == "task.running").count(),
        3,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|x| **x == "task.retrying").count(),
        2,
        "{types:?}"
    );
    assert_eq!(types.last(), Some(&"task.failed"), "{types:?}");
    let elapsed = ms(&t.finished_at) - muster::domain::parse_rfc3339_ms(&t.created_at).unwrap();
    assert!(
        elapsed >= 150,
        "two backoffs take at least 150 ms, took {elapsed} ms"
    );
    assert_doctor_clean(&app.store).await;
}

/// Kills the agent running a `sleep {ms}` task with lease TTL `timeout_ms` and starts
/// another one: the task must be retried there (attempt 2, fence 2) and succeed.
async fn kill_mid_task_then_retry(sleep_ms: u64, timeout_ms: u64) {
    let app = spawn_app().await;
    let mut first = spawn_agent_process(
        &[&app.url],
        &["--builtin", "--capacity", "1", "--name", "first"],
    );
    let first_id = wait_nodes(&app.api, 1).await.remove(0);
    let t = app
        .api
        .submit(json!({
            "kind": "sleep",
            "payload": { "ms": sleep_ms },
            "timeout_ms": timeout_ms,
            "max_attempts": 3,
            "backoff": { "initial_ms": 100, "max_ms": 200 },
        }))
        .await;
    let running = eventually(
        Duration::from_secs(10),
        "task running on the first agent",
        || async {
            let t = app.api.task(&t.id).await;
            (t.state == TaskState::Running).then_some(t)
        },
    )
    .await;
    assert_eq!(running.node.as_deref(), Some(first_id.as_str()));
    assert_eq!(running.fence, 1);
    first.kill9();
    let killed_at = Instant::now();
    let mut second = spawn_agent_process(
        &[&app.url],
        &["--builtin", "--capacity", "1", "--name", "second"],
    );

    // Re-claimed within lease TTL + a reaper interval (+ backoff, the second agent's
    // start and slack for a loaded machine).
    let retried = eventually(Duration::from_secs(10), "task running again", || async {
        let t = app.api.task(&t.id).await;
        (t.state == TaskState::Running && t.attempts == 2).then_some(t)
    })
    .await;
    let reclaim = killed_at.elapsed();
    assert!(
        reclaim < Duration::from_millis(timeout_ms + 4000),
        "re-claim took {reclaim:?}"
    );
    assert_ne!(retried.node.as_deref(), Some(first_id.as_str()));
    assert_eq!(retried.fence, 2);
    let done = app.api.wait_terminal(&t.id, Duration::from_secs(15)).await;
    second.kill9();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 2);
    assert_eq!(done.fence, 2);
    assert_eq!(done.result, Some(json!({ "slept_ms": sleep_ms })));
    assert_eq!(done.node, retried.node);
    let nodes = nodes_by_id(&app.api).await;
    eventually(
        Duration::from_secs(5),
        "the killed node offline",
        || async {
            let n = nodes_by_id(&app.api).await;
            (n[&first_id].status == muster::domain::NodeStatus::Offline).then_some(())
        },
    )
    .await;
    assert!(nodes.contains_key(&first_id));
    assert_doctor_clean(&app.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_agent_is_killed_mid_task_is_retried_on_another_agent_and_succeeds() {
    kill_mid_task_then_retry(1000, 1500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_longer_than_its_lease_ttl_whose_agent_is_killed_is_retried_and_succeeds() {
    // The scenario as specified: sleep 3000 with a 1500 ms lease TTL.
    kill_mid_task_then_retry(3000, 1500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_running_longer_than_its_lease_ttl_succeeds_while_its_agent_renews_the_lease() {
    let app = spawn_app().await;
    let mut agent = spawn_agent_process(&[&app.url], &["--builtin", "--capacity", "1"]);
    let t = app
        .api
        // Renewed every third of the TTL: a stall of over a second on a slow machine
        // would still end this attempt (max_attempts 1), so the TTL is 2 s, not 1.
        .submit(json!({ "kind": "sleep", "payload": { "ms": 5000 }, "timeout_ms": 2000, "max_attempts": 1 }))
        .await;
    let done = app.api.wait_terminal(&t.id, Duration::from_secs(20)).await;
    agent.kill9();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 1);
    assert_eq!(done.fence, 1);
    assert_eq!(done.result, Some(json!({ "slept_ms": 5000 })));
    assert_doctor_clean(&app.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_token_gets_409_on_complete_and_changes_nothing() {
    let app = spawn_app().await;
    let node = register_node(&app.api, "manual", &["default"], 1).await;
    let t = app
        .api
        .submit(json!({
            "kind": "manual",
            // Long enough that the second lease outlives the calls below on a slow
            // machine (nothing renews it), short enough to wait out the first.
            "timeout_ms": 2000,
            "max_attempts": 3,
            "backoff": { "initial_ms": 100, "max_ms": 100 },
        }))
        .await;
    let l1 = node.lease(1, 5000).await;
    assert_eq!(l1.len(), 1);
    let l1 = &l1[0];
    assert_eq!(l1.task.id, t.id);
    assert_eq!(l1.fence, 1);

    // No renewal: the lease expires, the task is retried and leased again.
    let l2 = eventually(Duration::from_secs(10), "a second lease", || async {
        let l = node.lease(1, 1000).await;
        l.into_iter().next()
    })
    .await;
    assert_eq!(l2.task.id, t.id);
    assert_eq!(l2.fence, 2);
    assert_ne!(l2.lease_token, l1.lease_token);
    let before = app.api.task(&t.id).await;
    assert_eq!(before.state, TaskState::Running);
    assert_eq!(before.attempts, 2);

    let path = format!("/v1/tasks/{}/complete", t.id);
    let stale = node
        .api
        .post(
            &path,
            &json!({ "lease_token": l1.lease_token, "result": { "from": 1 } }),
        )
        .await;
    assert_eq!(stale.problem(409), "lease_conflict");
    let fail = node
        .api
        .post(
            &format!("/v1/tasks/{}/fail", t.id),
            &json!({ "lease_token": l1.lease_token, "error": "x" }),
        )
        .await;
    assert_eq!(fail.problem(409), "lease_conflict");
    let ext = node
        .api
        .post(
            &format!("/v1/tasks/{}/extend", t.id),
            &json!({ "lease_token": l1.lease_token }),
        )
        .await;
    assert_eq!(ext.problem(409), "lease_conflict");
    let after = app.api.task(&t.id).await;
    assert_eq!(after.state, TaskState::Running);
    assert_eq!(after.result, None);
    assert_eq!(after.fence, 2);
    assert_eq!(after.attempts, 2);
    assert_eq!(
        after.lease_expires_at, before.lease_expires_at,
        "a stale token must not renew the lease"
    );

    let ok = node
        .api
        .post(
            &path,
            &json!({ "lease_token": l2.lease_token, "result": { "from": 2 } }),
        )
        .await
        .expect(200);
    let done: Task = ok.json();
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.result, Some(json!({ "from": 2 })));
    // The same accepted completion again: the same 200, the same result.
    let again: Task = node
        .api
        .post(
            &path,
            &json!({ "lease_token": l2.lease_token, "result": { "from": 2 } }),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(again.state, TaskState::Succeeded);
    assert_eq!(again.result, Some(json!({ "from": 2 })));
    assert_eq!(again.finished_at, done.finished_at);
    // And the stale token still changes nothing.
    let stale = node
        .api
        .post(
            &path,
            &json!({ "lease_token": l1.lease_token, "result": { "from": 1 } }),
        )
        .await;
    assert_eq!(stale.problem(409), "lease_conflict");
    let fin = app.api.task(&t.id).await;
    assert_eq!(fin.result, Some(json!({ "from": 2 })));
    assert_eq!(fin.state, TaskState::Succeeded);
    drop(node);
    assert_doctor_clean(&app.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_tokens_only_work_for_their_own_node_and_never_on_admin_routes() {
    let app = spawn_app().await;
    let a = register_node(&app.api, "node-a", &["qa"], 1).await;
    let b = register_node(&app.api, "node-b", &["qb"], 1).await;

    // A's token on B's agent routes.
    let r = a
        .api
        .post(&format!("/v1/nodes/{}/heartbeat", b.id), &json!({}))
        .await;
    assert_eq!(r.problem(403), "forbidden");
    let r = a
        .api
        .post(&format!("/v1/nodes/{}/lease", b.id), &json!({ "max": 1 }))
        .await;
    assert_eq!(r.problem(403), "forbidden");
    // Its own routes work.
    a.api
        .post(&format!("/v1/nodes/{}/heartbeat", a.id), &json!({}))
        .await
        .expect(200);
    // A node token on an admin route.
    let r = a
        .api
        .post("/v1/tasks", &json!({ "kind": "echo", "queue": "qa" }))
        .await;
    assert_eq!(r.problem(403), "forbidden");
    let r = a.api.get("/v1/nodes").await;
    assert_eq!(r.problem(403), "forbidden");
    // No token, or an unknown one.
    for http in [
        app.client(None),
        app.client(Some("nope")),
        app.client(Some(&format!("{}.bogus", a.id))),
    ] {
        let r = http.post("/v1/tasks", &json!({ "kind": "echo" })).await;
        assert_eq!(r.problem(401), "unauthorized");
        let www = r.header("www-authenticate").expect("WWW-Authenticate");
        assert!(www.starts_with("Bearer"), "{www}");
    }

    // B completes a task leased to A: 409, nothing written; A still completes.
    let t = app
        .api
        .submit(json!({ "kind": "echo", "queue": "qa", "timeout_ms": 3000 }))
        .await;
    let leases = a.lease(1, 5000).await;
    assert_eq!(leases.len(), 1);
    let lease = &leases[0];
    let before = app.api.task(&t.id).await;
    let path = format!("/v1/tasks/{}/complete", t.id);
    let r = b
        .api
        .post(
            &path,
            &json!({ "lease_token": lease.lease_token, "result": "stolen" }),
        )
        .await;
    assert_eq!(r.problem(409), "lease_conflict");
    let r = b
        .api
        .post(
            &format!("/v1/tasks/{}/fail", t.id),
            &json!({ "lease_token": lease.lease_token }),
        )
        .await;
    assert_eq!(r.problem(409), "lease_conflict");
    let r = b
        .api
        .post(
            &format!("/v1/tasks/{}/extend", t.id),
            &json!({ "lease_token": lease.lease_token }),
        )
        .await;
    assert_eq!(r.problem(409), "lease_conflict");
    // Through B's report route too.
    let r = b
        .api
        .post(
            &format!("/v1/nodes/{}/reports", b.id),
            &json!({ "reports": [ { "task_id": t.id, "lease_token": lease.lease_token, "outcome": "succeeded", "result": "stolen" } ] }),
        )
        .await
        .expect(200);
    assert_eq!(r.body["results"][0]["status"], json!(409), "{}", r.text);
    let after = app.api.task(&t.id).await;
    assert_eq!(after, before, "a refused completion must change nothing");
    let done: Task = a
        .api
        .post(
            &path,
            &json!({ "lease_token": lease.lease_token, "result": "mine" }),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.result, Some(json!("mine")));
    drop((a, b));
    assert_doctor_clean(&app.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_a_problem_with_a_code_and_store_nothing() {
    let app = spawn_app().await;
    let pending = app
        .api
        .submit(json!({ "kind": "echo", "queue": "idle" }))
        .await;
    let mut c = e2e_conn();
    let keys_before = ns_keys(&mut c, &app.ns);
    let events_before = stream_events(&mut c, &app.ns, "default").len()
        + stream_events(&mut c, &app.ns, "idle").len();

    let cases: Vec<(&str, u16, Resp)> = vec![
        (
            "no kind",
            422,
            app.api.post("/v1/tasks", &json!({ "payload": 1 })).await,
        ),
        (
            "empty kind",
            422,
            app.api.post("/v1/tasks", &json!({ "kind": "" })).await,
        ),
        (
            "bad queue",
            422,
            app.api
                .post("/v1/tasks", &json!({ "kind": "echo", "queue": "a b" }))
                .await,
        ),
        (
            "priority 10",
            422,
            app.api
                .post("/v1/tasks", &json!({ "kind": "echo", "priority": 10 }))
                .await,
        ),
        (
            "priority -1",
            422,
            app.api
                .post("/v1/tasks", &json!({ "kind": "echo", "priority": -1 }))
                .await,
        ),
        (
            "malformed JSON",
            400,
            app.api.post_raw("/v1/tasks", "{\"kind\": ").await,
        ),
        (
            "unknown field",
            422,
            app.api
                .post("/v1/tasks", &json!({ "kind": "echo", "bogus": 1 }))
                .await,
        ),
        (
            "batch of 10,001",
            422,
            app.api
                .post(
                    "/v1/tasks/batch",
                    &json!({ "tasks": vec![json!({ "kind": "noop" }); 10_001] }),
                )
                .await,
        ),
        (
            "batch with one bad task",
            422,
            app.api
                .post(
                    "/v1/tasks/batch",
                    &json!({ "tasks": [ { "kind": "noop" }, { "kind": "noop", "priority": 42 } ] }),
                )
                .await,
        ),
        (
            "unknown task",
            404,
            app.api.get("/v1/tasks/nonexistent").await,
        ),
        (
            "delete pending",
            409,
            app.api.delete(&format!("/v1/tasks/{}", pending.id)).await,
        ),
    ];
    for (what, status, r) in &cases {
        assert_eq!(r.status, *status, "{what}: {}", r.text);
        let code = r.problem(*status);
        eprintln!("{what}: {status} {code}");
    }

    assert_eq!(
        ns_keys(&mut c, &app.ns),
        keys_before,
        "a refused request stored something"
    );
    let events_after = stream_events(&mut c, &app.ns, "default").len()
        + stream_events(&mut c, &app.ns, "idle").len();
    assert_eq!(events_after, events_before);
    let still = app.api.task(&pending.id).await;
    assert_eq!(still.state, TaskState::Pending);
    assert_eq!(app.api.all_tasks("default", None).await.len(), 0);
    assert_eq!(app.api.all_tasks("idle", None).await.len(), 1);
    assert_doctor_clean(&app.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_post_with_an_idempotency_key_twice_gives_the_same_task_and_stores_one() {
    let app = spawn_app().await;
    let body = json!({ "kind": "echo", "queue": "idem", "payload": { "x": 1 } });
    let send = || async {
        app.api
            .send(
                app.api
                    .req(reqwest::Method::POST, "/v1/tasks")
                    .header("Idempotency-Key", "order-42")
                    .json(&body),
            )
            .await
    };
    let first: Task = send().await.expect(201).json();
    let second: Task = send().await.expect(201).json();
    assert_eq!(first.id, second.id);
    assert_eq!(second.payload, json!({ "x": 1 }));
    // Another key makes another task.
    let other: Task = app
        .api
        .send(
            app.api
                .req(reqwest::Method::POST, "/v1/tasks")
                .header("Idempotency-Key", "order-43")
                .json(&body),
        )
        .await
        .expect(201)
        .json();
    assert_ne!(other.id, first.id);
    let all = app.api.all_tasks("idem", None).await;
    assert_eq!(all.len(), 2, "{all:?}");

    // The batch route honours the key too.
    let tasks = json!({ "tasks": [ { "kind": "echo", "queue": "idem" }, { "kind": "echo", "queue": "idem" } ] });
    let b = || async {
        app.api
            .send(
                app.api
                    .req(reqwest::Method::POST, "/v1/tasks/batch")
                    .header("Idempotency-Key", "batch-1")
                    .json(&tasks),
            )
            .await
            .expect(201)
            .json::<muster::domain::BatchCreated>()
            .ids
    };
    let ids1 = b().await;
    let ids2 = b().await;
    assert_eq!(ids1, ids2);
    assert_eq!(app.api.all_tasks("idem", None).await.len(), 4);
    assert_doctor_clean(&app.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_pending_task_at_once_and_a_running_one_after_its_node_hears_of_it() {
    let app = spawn_app().await;
    // Pending (no node yet): cancelled at once.
    let p = app
        .api
        .submit(json!({ "kind": "sleep", "payload": { "ms": 5000 } }))
        .await;
    let c: Task = app
        .api
        .post(&format!("/v1/tasks/{}/cancel", p.id), &json!({}))
        .await
        .expect(200)
        .json();
    assert_eq!(c.state, TaskState::Cancelled);
    assert_eq!(app.api.task(&p.id).await.state, TaskState::Cancelled);

    // Running on a builtin agent: cancel requested, then cancelled via the heartbeat.
    let mut agent = spawn_agent_process(&[&app.url], &["--builtin", "--capacity", "1"]);
    let t = app
        .api
        .submit(json!({ "kind": "sleep", "payload": { "ms": 5000 }, "timeout_ms": 10000 }))
        .await;
    eventually(Duration::from_secs(15), "task running", || async {
        (app.api.task(&t.id).await.state == TaskState::Running).then_some(())
    })
    .await;
    let asked = Instant::now();
    let c: Task = app
        .api
        .post(&format!("/v1/tasks/{}/cancel", t.id), &json!({}))
        .await
        .expect(200)
        .json();
    assert!(c.cancel_requested, "{c:?}");
    assert_eq!(c.state, TaskState::Running);
    let done = app.api.wait_terminal(&t.id, Duration::from_secs(6)).await;
    let took = asked.elapsed();
    assert_eq!(done.state, TaskState::Cancelled, "{done:?}");
    assert!(
        took < Duration::from_millis(3500),
        "cancel took {took:?} (heartbeat 500 ms)"
    );
    // Cancelling a finished task again is harmless or refused, never a 5xx.
    let again = app
        .api
        .post(&format!("/v1/tasks/{}/cancel", t.id), &json!({}))
        .await;
    assert!(
        again.status == 200 || again.status == 409,
        "{} {}",
        again.status,
        again.text
    );
    agent.kill9();
    assert_doctor_clean(&app.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_as_soon_as_the_task_ends_and_the_task_as_it_stands_at_the_timeout() {
    let app = spawn_app().await;
    let mut agent = spawn_agent_process(
        &[&app.url],
        &["--builtin", "--capacity", "2", "--queue", "default"],
    );
    wait_nodes(&app.api, 1).await;
    let t = app
        .api
        .submit(json!({ "kind": "sleep", "payload": { "ms": 300 } }))
        .await;
    let asked = Instant::now();
    let r: Task = app
        .api
        .get(&format!("/v1/tasks/{}/wait?timeout_ms=5000", t.id))
        .await
        .expect(200)
        .json();
    let took = asked.elapsed();
    assert_eq!(r.state, TaskState::Succeeded, "{r:?}");
    assert!(
        took < Duration::from_millis(4000),
        "wait took {took:?} for a 300 ms task"
    );

    // A queue no node serves: the task stays pending and wait answers at the timeout.
    let idle = app
        .api
        .submit(json!({ "kind": "sleep", "queue": "nobody" }))
        .await;
    let asked = Instant::now();
    let r: Task = app
        .api
        .get(&format!("/v1/tasks/{}/wait?timeout_ms=1000", idle.id))
        .await
        .expect(200)
        .json();
    let took = asked.elapsed();
    assert_eq!(r.state, TaskState::Pending);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(4000),
        "wait took {took:?}"
    );
    let r = app
        .api
        .get("/v1/tasks/nonexistent/wait?timeout_ms=100")
        .await;
    r.problem(404);
    agent.kill9();
    assert_doctor_clean(&app.store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_submissions_get_503_with_retry_after_and_serving_resumes_after_a_restart()
 {
    let persist = [
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ];
    let redis = RedisGuard::start_with(&persist);
    let ns = unique_ns();
    let app = spawn_app_on(&redis.url(), &ns).await;
    let before = app
        .api
        .submit(json!({ "kind": "echo", "payload": 1 }))
        .await;

    let (dir, port) = redis.kill();
    let http = app.api.clone();
    for i in 0..4 {
        let asked = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            http.post("/v1/tasks", &json!({ "kind": "echo" })),
        )
        .await
        .unwrap_or_else(|_| panic!("request {i} hung while redis is down"));
        let took = asked.elapsed();
        assert_eq!(r.problem(503), "unavailable", "request {i}");
        assert!(r.header("retry-after").is_some(), "503 without Retry-After");
        assert!(
            took < Duration::from_millis(1500),
            "request {i} took {took:?}"
        );
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            http.get(&format!("/v1/tasks/{}", before.id)),
        )
        .await
        .expect("GET hung while redis is down");
        assert_eq!(r.problem(503), "unavailable");
    }

    let redis = RedisGuard::start_in(dir, port, &persist);
    let restarted = Instant::now();
    let after = eventually(
        Duration::from_secs(10),
        "a 201 after the restart",
        || async {
            let r = http
                .post("/v1/tasks", &json!({ "kind": "echo", "payload": 2 }))
                .await;
            assert_ne!(r.status, 500, "500 after the restart: {}", r.text);
            (r.status == 201).then(|| r.json::<Task>())
        },
    )
    .await;
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(5), "serving again took {took:?}");
    // The acknowledged submission survived (appendfsync always).
    assert_eq!(app.api.task(&before.id).await.state, TaskState::Pending);
    assert_eq!(app.api.task(&after.id).await.state, TaskState::Pending);
    assert_doctor_clean(&app.store).await;
    drop(app);
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_running_past_max_run_ms_is_killed_and_the_attempt_retried() {
    let app = spawn_app().await;
    let mut agent = spawn_agent_process(&[&app.url], &["--exec", "sleep 30", "--capacity", "1"]);
    let t = app
        .api
        .submit(json!({
            "kind": "slow", "timeout_ms": 1000, "max_run_ms": 300, "max_attempts": 2,
            "backoff": { "initial_ms": 100, "max_ms": 100 }
        }))
        .await;
    let done = app.api.wait_terminal(&t.id, Duration::from_secs(15)).await;
    agent.kill9();
    assert_eq!(done.state, TaskState::Failed, "{done:?}");
    assert_eq!(done.attempts, 2, "{done:?}");
    assert!(
        done.error.as_deref().unwrap_or("").contains("timed out"),
        "{done:?}"
    );
}

/// The direct hand-off (issue 13): a task submitted while a lease long-poll of its node
/// waits in the same process is leased by the dispatch itself and handed to that
/// long-poll: no inbox, no second script (`lease.lua`, the only `LPOP`, never runs for
/// it). The lease is a lease like any: it completes the task, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_long_poll_gets_its_leases_from_the_dispatch_directly() {
    let redis = RedisGuard::start();
    let app = spawn_app_on(&redis.url(), &unique_ns()).await;
    let mut conn = redis.conn();
    let node = register_node(&app.api, "direct", &["hand"], 8).await;
    let lpops = |conn: &mut redis::Connection| command_calls(conn, &["lpop"]);
    let poll = {
        let api = node.api.clone();
        let path = format!("/v1/nodes/{}/lease", node.id);
        tokio::spawn(async move {
            api.post(&path, &json!({"max": 5, "wait_ms": 10_000}))
                .await
                .expect(200)
                .json::<muster::domain::LeaseReply>()
                .leases
        })
    };
    // The long-poll has looked at its (empty) inbox once and waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = lpops(&mut conn);
    let tasks: Vec<Value> = (0..3)
        .map(|i| json!({"kind": "k", "queue": "hand", "payload": i}))
        .collect();
    app.api
        .post("/v1/tasks/batch", &json!({ "tasks": tasks }))
        .await
        .expect(201);
    let leases = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long-poll answered")
        .expect("poll task");
    assert_eq!(leases.len(), 3, "one dispatch leased all three");
    assert_eq!(
        lpops(&mut conn),
        before,
        "no lease.lua ran: nothing went through an inbox"
    );
    for l in &leases {
        assert_eq!(l.fence, 1);
        assert_eq!(l.task.state, TaskState::Running);
        app.api
            .post(
                &format!("/v1/tasks/{}/complete", l.task.id),
                &json!({"lease_token": l.lease_token, "result": {"ok": true}}),
            )
            .await
            .expect(200);
    }
    assert_doctor_clean(&app.store).await;
}

/// `POST /v1/nodes/{id}/reports` with `lease_max`: the reports' answer carries the next
/// tasks, in queue order, under the queue's `max_running`; a bad `lease_max` changes
/// nothing, a draining node gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_call_with_lease_max_brings_the_next_tasks_in_order_under_the_queues_limits() {
    let app = spawn_app().await;
    app.api
        .send(
            app.api
                .req(reqwest::Method::PUT, "/v1/queues/next")
                .json(&json!({ "max_running": 2 })),
        )
        .await
        .expect(200);
    let node = register_node(&app.api, "puller", &["next"], 5).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.api
                .submit(json!({ "kind": "k", "queue": "next", "payload": i }))
                .await
                .id,
        );
    }
    let path = format!("/v1/nodes/{}/reports", node.id);
    let report = |l: &muster::domain::Lease| json!({ "task_id": l.task.id, "lease_token": l.lease_token, "outcome": "succeeded", "result": l.task.payload });
    let mut leases = node.lease(5, 5000).await;
    assert_eq!(leases.len(), 2, "max_running 2");

    // A lease_max over 1,000 is refused before anything is written.
    let before = app.api.task(&leases[0].task.id).await;
    let r = app
        .api
        .post(
            &path,
            &json!({ "reports": [report(&leases[0])], "lease_max": 1001 }),
        )
        .await;
    assert_eq!(r.problem(422), "invalid_lease");
    assert_eq!(app.api.task(&leases[0].task.id).await, before);
    let r = app
        .api
        .post(
            &path,
            &json!({ "reports": [report(&leases[0])], "lease_max": -1 }),
        )
        .await;
    assert_eq!(r.problem(422), "invalid_lease");
    assert_eq!(app.api.task(&leases[0].task.id).await, before);

    // Each report of one frees one place under max_running, and its answer fills it.
    let mut started = Vec::new();
    let mut done = Vec::new();
    while !leases.is_empty() {
        let first = leases.remove(0);
        let r = node
            .api
            .post(
                &path,
                // An integral float is an integer (JSON Schema): 5.0 is taken as 5.
                &json!({ "reports": [report(&first)], "lease_max": 5.0 }),
            )
            .await
            .expect(200);
        assert_eq!(r.body["results"][0]["status"], json!(200), "{}", r.text);
        done.push(first.task.id.clone());
        let reply: muster::domain::ReportBatchReply = r.json();
        assert!(reply.leases.len() <= 1, "max_running 2: {}", r.text);
        for l in reply.leases {
            assert_eq!(l.task.state, TaskState::Running);
            assert_eq!(l.task.node.as_deref(), Some(node.id.as_str()));
            assert_eq!(l.fence, 1);
            started.push(l.task.id.clone());
            leases.push(l);
        }
        if leases.is_empty() {
            // The last answer had nothing left to lease: `leases` is left out.
            assert!(r.body.get("leases").is_none(), "{}", r.text);
        }
    }
    assert_eq!(started, ids[2..], "the rest, in submission order");
    assert_eq!(done.len(), 5);
    for id in &ids {
        assert_eq!(app.api.task(id).await.state, TaskState::Succeeded);
    }

    // A machine's report call never pulls from a human-only queue (the dispatcher
    // would not give it one either).
    app.api
        .send(
            app.api
                .req(reqwest::Method::PUT, "/v1/queues/people")
                .json(&json!({ "human_only": true })),
        )
        .await
        .expect(200);
    let both = register_node(&app.api, "both", &["people", "mixed"], 5).await;
    let person_task = app
        .api
        .submit(json!({ "kind": "k", "queue": "people" }))
        .await;
    app.api
        .submit(json!({ "kind": "k", "queue": "mixed" }))
        .await;
    let l = both.lease(5, 5000).await;
    assert_eq!(l.len(), 1, "the machine gets the next task only");
    app.api
        .submit(json!({ "kind": "k", "queue": "mixed" }))
        .await;
    let r = both
        .api
        .post(
            &format!("/v1/nodes/{}/reports", both.id),
            &json!({ "reports": [report(&l[0])], "lease_max": 5 }),
        )
        .await
        .expect(200);
    let reply: muster::domain::ReportBatchReply = r.json();
    assert_eq!(reply.leases.len(), 1, "{}", r.text);
    assert_eq!(reply.leases[0].task.queue, "mixed");
    assert_eq!(
        app.api.task(&person_task.id).await.state,
        TaskState::Pending
    );
    app.api
        .post(
            &format!("/v1/tasks/{}/complete", reply.leases[0].task.id),
            &json!({"lease_token": reply.leases[0].lease_token, "result": null}),
        )
        .await
        .expect(200);
    app.api
        .post(&format!("/v1/tasks/{}/cancel", person_task.id), &json!({}))
        .await
        .expect(200);
    drop(both);

    // A draining node reports, and gets nothing new.
    app.api
        .submit(json!({ "kind": "k", "queue": "next" }))
        .await;
    let l = node.lease(1, 5000).await;
    assert_eq!(l.len(), 1);
    app.api
        .submit(json!({ "kind": "k", "queue": "next" }))
        .await;
    app.api
        .post(&format!("/v1/nodes/{}/drain", node.id), &json!({}))
        .await
        .expect(200);
    let r = node
        .api
        .post(
            &path,
            &json!({ "reports": [report(&l[0])], "lease_max": 5 }),
        )
        .await
        .expect(200);
    assert_eq!(r.body["results"][0]["status"], json!(200), "{}", r.text);
    assert!(r.body.get("leases").is_none(), "draining: {}", r.text);
    drop(node);
    assert_doctor_clean(&app.store).await;
}
