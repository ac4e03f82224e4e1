//! The Rust SDK (`muster::worker`) against a real control plane and Redis: handlers,
//! retries, non-retryable failures, cancellation, renewals past the lease TTL, a bad
//! token; and the batched renewal route `POST /v1/nodes/{id}/extend` it relies on.

use crate::helpers::{ADMIN_TOKEN, TestApp, eventually, spawn_app};
use muster::domain::TaskState;
use muster::worker::{Context, Error, Worker, WorkerBuilder};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

fn builder(app: &TestApp) -> WorkerBuilder {
    Worker::builder()
        .server(&app.url)
        .token(ADMIN_TOKEN)
        .queue("math")
        .concurrency(8)
        .name("sdk-test")
        .grace(Duration::from_secs(2))
}

/// A running worker, stopped (and drained) by `stop`.
struct Running {
    stop: CancellationToken,
    join: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Running {
    fn start(b: WorkerBuilder) -> Self {
        let w = b.build().expect("worker builds");
        let stop = CancellationToken::new();
        let join = tokio::spawn(w.run_until(stop.clone()));
        Running { stop, join }
    }

    async fn stop(self) {
        self.stop.cancel();
        let r = tokio::time::timeout(Duration::from_secs(20), self.join)
            .await
            .expect("worker stops")
            .expect("worker task");
        assert!(r.is_ok(), "{r:?}");
    }
}

async fn submit(app: &TestApp, kind: &str, payload: Value, extra: Value) -> String {
    let mut body = json!({"queue": "math", "kind": kind, "payload": payload});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    app.api.submit(body).await.id
}

#[tokio::test]
async fn handlers_run_in_process_and_their_results_are_stored() {
    let app = spawn_app().await;
    let w = Running::start(
        builder(&app)
            .handler("add", |p: Value, ctx: Context| async move {
                assert!(!ctx.task_id().is_empty());
                assert!(ctx.fence() > 0);
                Ok::<_, Error>(json!({"sum": p["a"].as_i64().unwrap_or(0) + p["b"].as_i64().unwrap_or(0), "attempt": ctx.attempt()}))
            })
            .handler("nap", |_p: Value, _ctx: Context| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, std::io::Error>("rested")
            }),
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(submit(&app, "add", json!({"a": i, "b": 10}), json!({})).await);
    }
    let nap = submit(&app, "nap", json!({}), json!({})).await;
    for (i, id) in ids.iter().enumerate() {
        let t = app.api.wait_terminal(id, Duration::from_secs(20)).await;
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
        assert_eq!(t.result, Some(json!({"sum": i as i64 + 10, "attempt": 1})));
    }
    let t = app.api.wait_terminal(&nap, Duration::from_secs(20)).await;
    assert_eq!(t.result, Some(json!("rested")));
    w.stop().await;
}

#[tokio::test]
async fn a_retryable_error_is_retried_and_then_succeeds() {
    let app = spawn_app().await;
    let w = Running::start(
        builder(&app).handler("flaky", |_p: Value, ctx: Context| async move {
            if ctx.attempt() == 1 {
                return Err(anyhow::anyhow!("first attempt fails"));
            }
            Ok(json!({"attempt": ctx.attempt()}))
        }),
    );
    let id = submit(
        &app,
        "flaky",
        json!({}),
        json!({"max_attempts": 3, "backoff": {"initial_ms": 100, "max_ms": 200}}),
    )
    .await;
    let t = app.api.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    assert_eq!(t.attempts, 2);
    assert_eq!(t.result, Some(json!({"attempt": 2})));
    w.stop().await;
}

#[tokio::test]
async fn a_non_retryable_error_fails_the_task_at_once() {
    let app = spawn_app().await;
    let w = Running::start(builder(&app).handler(
        "doomed",
        |_p: Value, _ctx: Context| async move {
            Err::<Value, _>(Error::non_retryable("bad input, never retry"))
        },
    ));
    let id = submit(&app, "doomed", json!({}), json!({"max_attempts": 5})).await;
    let t = app.api.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(t.state, TaskState::Failed, "{t:?}");
    assert_eq!(t.attempts, 1);
    assert_eq!(t.error.as_deref(), Some("bad input, never retry"));
    w.stop().await;
}

#[tokio::test]
async fn a_cancel_reaches_the_running_handler() {
    let app = spawn_app().await;
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let saw = saw_cancel.clone();
    let w = Running::start(
        builder(&app).handler("forever", move |_p: Value, ctx: Context| {
            let saw = saw.clone();
            async move {
                ctx.cancellation().cancelled().await;
                saw.store(ctx.cancelled(), Ordering::SeqCst);
                Err::<Value, _>(Error::non_retryable("stopped"))
            }
        }),
    );
    let id = submit(&app, "forever", json!({}), json!({})).await;
    eventually(Duration::from_secs(20), "the task runs", || async {
        (app.api.task(&id).await.state == TaskState::Running).then_some(())
    })
    .await;
    app.api
        .post(&format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await
        .expect(200);
    eventually(
        Duration::from_secs(10),
        "the handler sees the cancel",
        || async { saw_cancel.load(Ordering::SeqCst).then_some(()) },
    )
    .await;
    let t = app.api.wait_terminal(&id, Duration::from_secs(10)).await;
    assert_eq!(t.state, TaskState::Cancelled, "{t:?}");
    w.stop().await;
}

#[tokio::test]
async fn a_task_longer_than_its_lease_ttl_keeps_running_and_reports_progress() {
    let app = spawn_app().await;
    let w = Running::start(
        builder(&app).handler("long", |_p: Value, ctx: Context| async move {
            for i in 0..10 {
                ctx.progress(json!({"step": i}));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok::<_, Error>(json!("done"))
        }),
    );
    // 2 s of work under a 600 ms lease, and no second attempt to hide a lost lease.
    let id = submit(
        &app,
        "long",
        json!({}),
        json!({"timeout_ms": 600, "max_attempts": 1}),
    )
    .await;
    let progress = eventually(Duration::from_secs(20), "progress is stored", || async {
        app.api.task(&id).await.progress
    })
    .await;
    assert!(progress.get("step").is_some(), "{progress}");
    let t = app.api.wait_terminal(&id, Duration::from_secs(20)).await;
    assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    assert_eq!(t.attempts, 1);
    assert_eq!(t.result, Some(json!("done")));
    w.stop().await;
}

#[tokio::test]
async fn a_bad_token_makes_run_return_an_error_quickly() {
    let app = spawn_app().await;
    let w = builder(&app)
        .token("not-a-token")
        .handler(
            "add",
            |p: Value, _ctx: Context| async move { Ok::<_, Error>(p) },
        )
        .build()
        .expect("builds");
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        w.run_until(CancellationToken::new()),
    )
    .await
    .expect("run returns instead of retrying");
    let e = r.expect_err("a bad token is an error");
    assert!(matches!(e, Error::Run(_)), "{e:?}");
    assert!(e.to_string().contains("401"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Registers a node on `math` and leases up to `n` tasks: (node id, node token, leases).
async fn node_with_leases(app: &TestApp, name: &str, n: usize) -> (String, String, Vec<Value>) {
    let reg = app
        .api
        .post(
            "/v1/nodes",
            &json!({"name": name, "queues": ["math"], "capacity": n}),
        )
        .await
        .expect(201);
    let id = reg.body["id"].as_str().expect("id").to_string();
    let token = reg.body["token"].as_str().expect("token").to_string();
    let node = app.client(Some(&token));
    let mut leases = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while leases.len() < n && Instant::now() < deadline {
        let r = node
            .post(
                &format!("/v1/nodes/{id}/lease"),
                &json!({"max": n - leases.len(), "wait_ms": 1000}),
            )
            .await
            .expect(200);
        leases.extend(r.body["leases"].as_array().cloned().unwrap_or_default());
    }
    assert_eq!(leases.len(), n, "leased");
    (id, token, leases)
}

#[tokio::test]
async fn node_extend_renews_many_leases_and_answers_conflict_per_item() {
    let app = spawn_app().await;
    for i in 0..3 {
        submit(&app, "k", json!({"i": i}), json!({"timeout_ms": 5000})).await;
    }
    let (id, token, leases) = node_with_leases(&app, "renewer", 3).await;
    let node = app.client(Some(&token));
    let item = |l: &Value, token: Option<&str>| {
        json!({
            "task_id": l["task"]["id"],
            "lease_token": token.map(Value::from).unwrap_or_else(|| l["lease_token"].clone()),
        })
    };
    // A stale token in the middle: conflict there, the others are renewed.
    let mut body = vec![
        item(&leases[0], None),
        item(&leases[1], Some("1.0123abcd")),
        item(&leases[2], None),
    ];
    body[0]["progress"] = json!({"pct": 40});
    let r = node
        .post(&format!("/v1/nodes/{id}/extend"), &json!({"leases": body}))
        .await
        .expect(200);
    let results = r.body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    for (i, res) in results.iter().enumerate() {
        assert_eq!(res["task_id"], leases[i]["task"]["id"], "request order");
    }
    assert_eq!(results[0]["status"], "extended");
    assert!(results[0]["lease_expires_at"].is_string());
    assert_eq!(results[0]["cancel_requested"], false);
    assert_eq!(results[1]["status"], "conflict");
    assert!(results[1]["code"].is_string());
    assert!(results[1].get("lease_expires_at").is_none());
    assert_eq!(results[2]["status"], "extended");
    let t0 = leases[0]["task"]["id"].as_str().expect("id");
    assert_eq!(app.api.task(t0).await.progress, Some(json!({"pct": 40})));

    // An unknown task: not_found.
    let r = node
        .post(
            &format!("/v1/nodes/{id}/extend"),
            &json!({"leases": [{"task_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV.math", "lease_token": "1.ab"}]}),
        )
        .await
        .expect(200);
    assert_eq!(r.body["results"][0]["status"], "not_found");

    // A cancel shows in the renewal's answer.
    app.api
        .post(&format!("/v1/tasks/{t0}/cancel"), &json!({}))
        .await
        .expect(200);
    let r = node
        .post(
            &format!("/v1/nodes/{id}/extend"),
            &json!({"leases": [item(&leases[0], None)]}),
        )
        .await
        .expect(200);
    assert_eq!(r.body["results"][0]["cancel_requested"], true, "{}", r.text);
}

#[tokio::test]
async fn node_extend_is_for_the_nodes_own_token_and_checks_its_size() {
    let app = spawn_app().await;
    submit(&app, "k", json!({}), json!({"timeout_ms": 5000})).await;
    let (a, _a_token, leases) = node_with_leases(&app, "a", 1).await;
    let reg = app
        .api
        .post(
            "/v1/nodes",
            &json!({"name": "b", "queues": ["other"], "capacity": 1}),
        )
        .await
        .expect(201);
    let b_token = reg.body["token"].as_str().expect("token").to_string();
    let one = json!({"leases": [{"task_id": leases[0]["task"]["id"], "lease_token": leases[0]["lease_token"]}]});
    // Another node's token: 403, and the lease is untouched.
    app.client(Some(&b_token))
        .post(&format!("/v1/nodes/{a}/extend"), &one)
        .await
        .expect(403);
    // Admin may renew on behalf of the node.
    let r = app
        .api
        .post(&format!("/v1/nodes/{a}/extend"), &one)
        .await
        .expect(200);
    assert_eq!(r.body["results"][0]["status"], "extended");
    // Empty and too long batches: 422.
    app.api
        .post(&format!("/v1/nodes/{a}/extend"), &json!({"leases": []}))
        .await
        .expect(422);
    let many: Vec<Value> = (0..1001)
        .map(|_| json!({"task_id": leases[0]["task"]["id"], "lease_token": leases[0]["lease_token"]}))
        .collect();
    app.api
        .post(&format!("/v1/nodes/{a}/extend"), &json!({"leases": many}))
        .await
        .expect(422);
}

/// `prefetch(3)` at concurrency 2: the node registers capacity 5 and holds five
/// leases, but never more than two handlers run at once; a prefetched task cancelled
/// while it waits ends cancelled without its handler ever starting; the rest run as
/// slots free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_tasks_wait_for_a_slot_and_a_cancel_reaches_them_before_they_start() {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    let app = spawn_app().await;
    let started: Arc<Mutex<Vec<String>>> = Arc::default();
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let gate = Arc::new(AtomicBool::new(false));
    let (s, n, m, g) = (started.clone(), now.clone(), most.clone(), gate.clone());
    let w = Running::start(builder(&app).concurrency(2).prefetch(3).handler(
        "hold",
        move |_p: Value, ctx: Context| {
            let (s, n, m, g) = (s.clone(), n.clone(), m.clone(), g.clone());
            async move {
                s.lock().expect("lock").push(ctx.task_id().to_string());
                let at_once = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(at_once, Ordering::SeqCst);
                while !g.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                n.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, Error>(Value::Null)
            }
        },
    ));
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(submit(&app, "hold", json!({}), json!({})).await);
    }
    eventually(Duration::from_secs(20), "five leases held", || async {
        (app.api.queue_counts("math").await.running == 5).then_some(())
    })
    .await;
    let nodes = app.api.nodes().await;
    let node = nodes
        .iter()
        .find(|n| n.name == "sdk-test")
        .expect("the worker's node");
    assert_eq!(node.capacity, 5, "concurrency + prefetch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        started.lock().expect("lock").len(),
        2,
        "two handlers run, three wait"
    );

    // A prefetched (leased, not started) task, cancelled.
    let mut waiting = None;
    for id in &ids {
        if app.api.task(id).await.state == TaskState::Running
            && !started.lock().expect("lock").contains(id)
        {
            waiting = Some(id.clone());
            break;
        }
    }
    let waiting = waiting.expect("a prefetched task");
    app.api
        .post(&format!("/v1/tasks/{waiting}/cancel"), &json!({}))
        .await
        .expect(200);
    let t = app
        .api
        .wait_terminal(&waiting, Duration::from_secs(15))
        .await;
    assert_eq!(t.state, TaskState::Cancelled, "{t:?}");

    gate.store(true, Ordering::SeqCst);
    for id in ids.iter().filter(|i| **i != waiting) {
        let t = app.api.wait_terminal(id, Duration::from_secs(20)).await;
        assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
    }
    assert!(
        !started.lock().expect("lock").contains(&waiting),
        "the cancelled prefetched task's handler ran"
    );
    assert_eq!(started.lock().expect("lock").len(), 5);
    assert_eq!(most.load(Ordering::SeqCst), 2, "handlers at once");
    w.stop().await;
}

#[test]
fn a_prefetch_past_a_nodes_capacity_is_refused() {
    let e = Worker::builder()
        .server("http://127.0.0.1:1")
        .concurrency(9_000)
        .prefetch(1_001)
        .handler("k", |_p: Value, _c: Context| async {
            Ok::<_, Error>(Value::Null)
        })
        .build()
        .expect_err("too many");
    assert!(e.to_string().contains("prefetch"), "{e}");
}
