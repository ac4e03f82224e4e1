//! Token quotas (issue 16, docs/security.md): a token of the tokens file with
//! `max_queues=`, `max_schedules=`, `max_locks=` or `max_streams=` holds at most that
//! much of the deployment at once; past it, 429 `quota_exceeded` (or
//! `too_many_streams`) problem+json and nothing is stored. And once junk queues are
//! empty and pruned, the idle background load is back to an empty deployment's.

use crate::support::{RedisGuard, SecApp, shared_redis, spawn_sec_app};
use muster::api::auth::{Role, TokenQuotas};
use serde_json::{Value, json};
use std::time::Duration;

/// An app with one more token of `role` carrying `quotas`; returns the app and it.
async fn app_with_quota(redis_url: &str, role: Role, quotas: TokenQuotas) -> (SecApp, String) {
    let token = format!("quota-{}-{}-0123456789", role.name(), rand::random::<u64>());
    let t = token.clone();
    let app = spawn_sec_app(redis_url, move |c| {
        c.token_quotas.push((t.clone(), quotas));
        c.tokens.push((role, t));
    })
    .await;
    (app, token)
}

/// Sends `body` to `path` as `token`; the status and the JSON answer (problem+json
/// checked for every error).
async fn call(
    app: &SecApp,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app
        .http
        .request(method.parse().expect("method"), app.url(path))
        .bearer_auth(token)
        .timeout(Duration::from_secs(60));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("send");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await.expect("body");
    if status >= 400 {
        assert!(
            ctype.starts_with("application/problem+json"),
            "{method} {path}: {status} {ctype} {text}"
        );
    }
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn queue_names(conn: &mut redis::Connection, ns: &str) -> Vec<String> {
    let mut v: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{ns}:queues"))
        .query(conn)
        .expect("smembers");
    v.sort();
    v
}

/// Issue 16 item 3: one submit token brought 10,000 junk queues into being, for ever.
/// With `max_queues=100` the same batch is refused whole (429 `quota_exceeded`, no
/// queue, no task); the token creates its 100 queues, and no 101st, by any route
/// (single and batch submits, batches, schedules, node registrations of an agent
/// token); queues that exist already cost nothing; once its queues are empty and
/// pruned it may create new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_queues_are_refused_past_the_tokens_queue_quota() {
    let quotas = TokenQuotas {
        queues: Some(100),
        ..TokenQuotas::default()
    };
    let (app, token) = app_with_quota(&shared_redis().url(), Role::Submit, quotas).await;
    let mut conn = app.redis();
    let shared = app.submit_task("shared", json!(1)).await;
    let before = queue_names(&mut conn, &app.ns);

    // The attack: 10,000 queues in one batch.
    let junk: Vec<Value> = (0..10_000)
        .map(|i| json!({"kind": "spam", "queue": format!("spam-{i:05}")}))
        .collect();
    let (s, p) = call(
        &app,
        &token,
        "POST",
        "/v1/tasks/batch",
        Some(json!({"tasks": junk})),
    )
    .await;
    assert_eq!(s, 429, "{p}");
    assert_eq!(p["code"], "quota_exceeded", "{p}");
    assert!(
        p["detail"].as_str().unwrap_or("").contains("100 queues"),
        "{p}"
    );
    assert_eq!(
        queue_names(&mut conn, &app.ns),
        before,
        "a refused batch made queues"
    );
    let tasks: usize = crate::support::ns_keys(&mut conn, &app.ns)
        .iter()
        .filter(|k| k.contains("{spam-"))
        .count();
    assert_eq!(tasks, 0, "a refused batch stored keys");

    // 100 queues, in batches of 25 and single submits.
    let mut ids: Vec<String> = Vec::new();
    for chunk in 0..3 {
        let tasks: Vec<Value> = (chunk * 25..chunk * 25 + 25)
            .map(|i| json!({"kind": "k", "queue": format!("mine-{i:03}")}))
            .collect();
        let (s, p) = call(
            &app,
            &token,
            "POST",
            "/v1/tasks/batch",
            Some(json!({"tasks": tasks})),
        )
        .await;
        assert_eq!(s, 201, "{p}");
        ids.extend(
            p["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_str().expect("id").to_string()),
        );
    }
    for i in 75..100 {
        let (s, p) = call(
            &app,
            &token,
            "POST",
            "/v1/tasks",
            Some(json!({"kind": "k", "queue": format!("mine-{i:03}")})),
        )
        .await;
        assert_eq!(s, 201, "{p}");
        ids.push(p["id"].as_str().expect("id").to_string());
    }
    // The 101st, by every route that can bring a queue into being.
    let refused = [
        ("/v1/tasks", json!({"kind": "k", "queue": "mine-100"})),
        (
            "/v1/tasks/batch",
            json!({"tasks": [{"kind": "k", "queue": "mine-000"}, {"kind": "k", "queue": "mine-100"}]}),
        ),
        (
            "/v1/batches",
            json!({"tasks": [{"kind": "k", "queue": "mine-100"}]}),
        ),
        (
            "/v1/batches",
            json!({"tasks": [{"kind": "k", "queue": "mine-000"}], "then": {"kind": "k", "queue": "mine-100"}}),
        ),
        (
            "/v1/schedules",
            json!({"name": "s-100", "cron": "0 0 3 * * *", "task": {"kind": "k", "queue": "mine-100"}}),
        ),
    ];
    for (path, body) in &refused {
        let (s, p) = call(&app, &token, "POST", path, Some(body.clone())).await;
        assert_eq!(s, 429, "{path}: {p}");
        assert_eq!(p["code"], "quota_exceeded", "{path}: {p}");
    }
    // Queues that exist cost nothing: its own and another's.
    for q in ["mine-042", "shared"] {
        let (s, p) = call(
            &app,
            &token,
            "POST",
            "/v1/tasks",
            Some(json!({"kind": "k", "queue": q})),
        )
        .await;
        assert_eq!(s, 201, "{q}: {p}");
        if q != "shared" {
            ids.push(p["id"].as_str().expect("id").to_string());
        }
    }
    let names = queue_names(&mut conn, &app.ns);
    assert_eq!(names.len(), before.len() + 100, "{names:?}");
    assert!(!names.contains(&"mine-100".to_string()));

    // Emptied and pruned, its queues no longer count.
    let (store, reconciler) = crate::support::pruner_on(&app.redis_url, &app.ns).await;
    assert_eq!(ids.len(), 101, "the token's tasks");
    crate::support::cancel_and_delete(&store, &ids, 50).await;
    let pruned = reconciler.prune_empty_queues().await;
    assert_eq!(pruned.len(), 100, "{pruned:?}");
    let (s, p) = call(
        &app,
        &token,
        "POST",
        "/v1/tasks",
        Some(json!({"kind": "k", "queue": "mine-100"})),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    assert_eq!(
        app.task(&shared).await["state"],
        "pending",
        "the shared queue's task"
    );

    // An agent token's node registrations count the same way.
    let (agent_app, agent) = app_with_quota(
        &shared_redis().url(),
        Role::Agent,
        TokenQuotas {
            queues: Some(2),
            ..TokenQuotas::default()
        },
    )
    .await;
    let reg = |queues: Value| json!({"name": "n", "queues": queues, "capacity": 1});
    let (s, p) = call(
        &agent_app,
        &agent,
        "POST",
        "/v1/nodes",
        Some(reg(json!(["a1", "a2", "a3"]))),
    )
    .await;
    assert_problem(s, &p, 429, "quota_exceeded");
    let (s, p) = call(
        &agent_app,
        &agent,
        "POST",
        "/v1/nodes",
        Some(reg(json!(["a1", "a2"]))),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let (s, p) = call(
        &agent_app,
        &agent,
        "POST",
        "/v1/nodes",
        Some(reg(json!(["a1", "a3"]))),
    )
    .await;
    assert_eq!(s, 429, "{p}");
}

/// `max_schedules=2`: two schedules, a third refused until one is deleted; a name
/// already taken (409) uses up nothing.
#[tokio::test]
async fn a_token_holds_at_most_its_schedule_quota() {
    let quotas = TokenQuotas {
        schedules: Some(2),
        ..TokenQuotas::default()
    };
    let (app, token) = app_with_quota(&shared_redis().url(), Role::Submit, quotas).await;
    let sched = |name: &str| json!({"name": name, "cron": "0 0 3 * * *", "task": {"kind": "k"}});
    for name in ["one", "two"] {
        let (s, p) = call(&app, &token, "POST", "/v1/schedules", Some(sched(name))).await;
        assert_eq!(s, 201, "{name}: {p}");
    }
    let (s, p) = call(&app, &token, "POST", "/v1/schedules", Some(sched("one"))).await;
    assert_problem(s, &p, 409, "schedule_exists");
    let (s, p) = call(&app, &token, "POST", "/v1/schedules", Some(sched("three"))).await;
    assert_problem(s, &p, 429, "quota_exceeded");
    let (s, _) = call(&app, &token, "GET", "/v1/schedules/three", None).await;
    assert_eq!(s, 404, "a refused schedule was stored");
    // Another token's schedules are not counted against it.
    let (s, p) = call(
        &app,
        &app.submit,
        "POST",
        "/v1/schedules",
        Some(sched("theirs")),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    // Deleted (here by the admin), one no longer counts.
    let (s, _) = call(&app, &app.admin, "DELETE", "/v1/schedules/one", None).await;
    assert_eq!(s, 204);
    let (s, p) = call(&app, &token, "POST", "/v1/schedules", Some(sched("three"))).await;
    assert_eq!(s, 201, "{p}");
    let (s, p) = call(&app, &token, "POST", "/v1/schedules", Some(sched("four"))).await;
    assert_eq!(s, 429, "{p}");
}

/// Issue 16 item 3: lock names were unlimited. `max_locks=2` on an agent token: two
/// held at once by the token and the nodes it registered, a third refused until one
/// is released or expires; losing a race for a held lock uses up nothing.
#[tokio::test]
async fn a_token_and_its_nodes_hold_at_most_its_lock_quota() {
    let quotas = TokenQuotas {
        locks: Some(2),
        ..TokenQuotas::default()
    };
    let (app, agent) = app_with_quota(&shared_redis().url(), Role::Agent, quotas).await;
    let (s, node) = call(
        &app,
        &agent,
        "POST",
        "/v1/nodes",
        Some(json!({"name": "locker", "queues": ["locks-q"], "capacity": 1})),
    )
    .await;
    assert_eq!(s, 201, "{node}");
    let node_token = node["token"].as_str().expect("token").to_string();
    let take = |ttl: i64| Some(json!({"ttl_ms": ttl}));

    let (s, a) = call(&app, &agent, "POST", "/v1/locks/l-a", take(60_000)).await;
    assert_eq!(s, 201, "{a}");
    let (s, b) = call(&app, &node_token, "POST", "/v1/locks/l-b", take(300)).await;
    assert_eq!(s, 201, "{b}");
    let (s, p) = call(&app, &node_token, "POST", "/v1/locks/l-c", take(60_000)).await;
    assert_problem(s, &p, 429, "quota_exceeded");
    // Nobody took it: the admin (no quotas) can, and lets it go.
    let (s, held) = call(&app, &app.admin, "POST", "/v1/locks/l-c", take(60_000)).await;
    assert_eq!(s, 201, "a refused lock was taken: {held}");
    let (s, _) = call(
        &app,
        &app.admin,
        "DELETE",
        "/v1/locks/l-c",
        Some(json!({"token": held["token"]})),
    )
    .await;
    assert_eq!(s, 204);
    // Extending a held lock is no new claim.
    let (s, p) = call(
        &app,
        &agent,
        "POST",
        "/v1/locks/l-a/extend",
        Some(json!({"token": a["token"], "ttl_ms": 60_000})),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    // Expired, l-b no longer counts.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (s, c) = call(&app, &agent, "POST", "/v1/locks/l-c", take(60_000)).await;
    assert_eq!(s, 201, "{c}");
    // Released, l-a no longer counts.
    let (s, p) = call(
        &app,
        &agent,
        "DELETE",
        "/v1/locks/l-a",
        Some(json!({"token": a["token"]})),
    )
    .await;
    assert_eq!(s, 204, "{p}");
    // A lock someone else holds: 409, and the place it would have taken is free again.
    let (s, p) = call(&app, &app.admin, "POST", "/v1/locks/theirs", take(60_000)).await;
    assert_eq!(s, 201, "{p}");
    let (s, p) = call(&app, &agent, "POST", "/v1/locks/theirs", take(60_000)).await;
    assert_eq!((s, p["code"].as_str()), (409, Some("lock_held")), "{p}");
    let (s, p) = call(&app, &agent, "POST", "/v1/locks/l-d", take(60_000)).await;
    assert_eq!(s, 201, "{p}");
    let (s, p) = call(&app, &agent, "POST", "/v1/locks/l-e", take(60_000)).await;
    assert_eq!(s, 429, "{p}");
}

/// `max_streams=2`: a token holds two event streams, and its nodes' lease long-polls
/// count against the same quota; past it, 429 `too_many_streams`; a closed stream frees
/// its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_and_its_nodes_hold_at_most_its_stream_quota() {
    let quotas = TokenQuotas {
        streams: Some(2),
        ..TokenQuotas::default()
    };
    let (app, read) = app_with_quota(&shared_redis().url(), Role::Read, quotas).await;
    let open = |token: String| {
        let http = app.http.clone();
        let url = app.url("/v1/events");
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("events")
        }
    };
    let s1 = open(read.clone()).await;
    let s2 = open(read.clone()).await;
    assert_eq!((s1.status().as_u16(), s2.status().as_u16()), (200, 200));
    let s3 = open(read.clone()).await;
    assert_eq!(s3.status(), 429);
    let p: Value = s3.json().await.expect("problem");
    assert_eq!(p["code"], "too_many_streams", "{p}");
    // Other tokens are not held to its quota.
    let other = open(app.read.clone()).await;
    assert_eq!(other.status(), 200);
    drop(s1);
    let mut freed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = open(read.clone()).await;
        if s.status() == 200 {
            freed = true;
            break;
        }
    }
    assert!(freed, "a closed stream kept its place");
    drop((s2, other));

    // Nodes of an agent token with max_streams=1 share one long-poll.
    let (app, agent) = app_with_quota(
        &shared_redis().url(),
        Role::Agent,
        TokenQuotas {
            streams: Some(1),
            ..TokenQuotas::default()
        },
    )
    .await;
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        let (s, n) = call(
            &app,
            &agent,
            "POST",
            "/v1/nodes",
            Some(json!({"name": name, "queues": ["streams-q"], "capacity": 1})),
        )
        .await;
        assert_eq!(s, 201, "{n}");
        nodes.push((
            n["id"].as_str().expect("id").to_string(),
            n["token"].as_str().expect("token").to_string(),
        ));
    }
    let poll = |(id, token): (String, String), wait_ms: i64| {
        let http = app.http.clone();
        let url = app.url(&format!("/v1/nodes/{id}/lease"));
        async move {
            http.post(url)
                .bearer_auth(token)
                .json(&json!({"max": 1, "wait_ms": wait_ms}))
                .send()
                .await
                .expect("lease")
                .status()
                .as_u16()
        }
    };
    let long = tokio::spawn(poll(nodes[0].clone(), 3_000));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        poll(nodes[1].clone(), 0).await,
        429,
        "the second node's poll"
    );
    assert_eq!(long.await.expect("join"), 200);
    assert_eq!(
        poll(nodes[1].clone(), 0).await,
        200,
        "after the first ended"
    );
}

fn commands_processed(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(conn).expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_commands_processed")
}

fn command_calls(conn: &mut redis::Connection) -> std::collections::BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("info");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// Idle Redis commands a second over `secs`, and the commands that made them.
async fn idle_rate(conn: &mut redis::Connection, secs: u64) -> (f64, String) {
    let a = commands_processed(conn);
    let calls = command_calls(conn);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let b = commands_processed(conn);
    let mut by: Vec<(u64, String)> = command_calls(conn)
        .into_iter()
        .map(|(k, v)| (v - calls.get(&k).copied().unwrap_or(0), k))
        .filter(|(n, _)| *n > 0)
        .collect();
    by.sort_unstable_by(|x, y| y.cmp(x));
    let shown = by
        .iter()
        .map(|(n, k)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    ((b - a) as f64 / secs as f64, shown)
}

/// Issue 16 item 3: after 10,000 junk queues, idle background load went from 11 to
/// ~110,000 Redis commands a second for ever. Now, once they are empty (and pruned),
/// an idle deployment costs within 2× of an empty one's (on a Redis of its own, so
/// nothing else is counted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_load_after_ten_thousand_emptied_queues_is_back_to_an_empty_deployments() {
    let redis = RedisGuard::start();
    let app = spawn_sec_app(&redis.url(), |_| {}).await;
    let mut conn = app.redis();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (empty, empty_by) = idle_rate(&mut conn, 4).await;

    let junk: Vec<Value> = (0..10_000)
        .map(|i| json!({"kind": "spam", "queue": format!("junk-{i:05}")}))
        .collect();
    let (s, p) = call(
        &app,
        &app.admin,
        "POST",
        "/v1/tasks/batch",
        Some(json!({"tasks": junk})),
    )
    .await;
    assert_eq!(s, 201, "{p}");
    let ids: Vec<String> = p["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_string())
        .collect();
    let (store, reconciler) = crate::support::pruner_on(&app.redis_url, &app.ns).await;
    crate::support::cancel_and_delete(&store, &ids, 1_000).await;
    let pruned = reconciler.prune_empty_queues().await;
    assert_eq!(pruned.len(), 10_000, "every emptied queue is pruned");
    // What was set going before the prune (a dispatch of every queue the submission
    // woke, a timer round over the old set) ends; then the load must be back.
    let mut windows = Vec::new();
    for _ in 0..8 {
        let (after, after_by) = idle_rate(&mut conn, 3).await;
        if after <= 2.0 * empty.max(1.0) {
            return;
        }
        windows.push(format!("{after:.1} ({after_by})"));
    }
    panic!(
        "idle Redis commands/s after 10,000 emptied queues, 3 s windows: {}; empty: {empty:.1} ({empty_by})",
        windows.join("; ")
    );
}

/// The answer was `status` with problem+json `code`.
fn assert_problem(s: u16, p: &Value, status: u16, code: &str) {
    assert_eq!((s, p["code"].as_str()), (status, Some(code)), "{p}");
}
