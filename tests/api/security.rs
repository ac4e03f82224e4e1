//! Security tests of the HTTP API (RELIABILITY.md S1–S3, S5, S7, S9): the auth table
//! driven by `openapi/openapi.json`, node isolation, size limits with a keyspace audit,
//! secrets hygiene, the per-token rate limit and the header-read timeout.

use crate::support::{
    RedisGuard, SecApp, dump_namespace, raw_chunked_post, raw_request, shared_redis, spawn_sec_app,
};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

// ----- calling the API as someone -----

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Anonymous,
    Admin,
    Read,
    Submit,
    Agent,
    NodeA,
    NodeB,
}

struct Tokens {
    node_a: String,
    node_b: String,
}

fn token_of(app: &SecApp, t: &Tokens, who: Who) -> Option<String> {
    match who {
        Who::Anonymous => None,
        Who::Admin => Some(app.admin.clone()),
        Who::Read => Some(app.read.clone()),
        Who::Submit => Some(app.submit.clone()),
        Who::Agent => Some(app.agent.clone()),
        Who::NodeA => Some(t.node_a.clone()),
        Who::NodeB => Some(t.node_b.clone()),
    }
}

/// One answer: status, headers, body (not read for event streams).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Calls `method path` with a raw `Authorization` header value (or none).
async fn call_raw(
    app: &SecApp,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = app
        .http
        .request(m, app.url(path))
        .timeout(Duration::from_secs(20));
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    if let Some(b) = body {
        rb = rb.json(b);
    }
    let r = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let is_stream = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    // An event stream never ends: drop it after the head.
    let body = if is_stream {
        String::new()
    } else {
        r.text().await.unwrap_or_default()
    };
    Answer {
        status,
        headers,
        body,
    }
}

async fn call(
    app: &SecApp,
    t: &Tokens,
    who: Who,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Answer {
    let auth = token_of(app, t, who).map(|k| format!("Bearer {k}"));
    call_raw(app, method, path, auth.as_deref(), body).await
}

fn is_problem(a: &Answer) -> bool {
    a.header("content-type")
        .starts_with("application/problem+json")
        && serde_json::from_str::<Value>(&a.body)
            .is_ok_and(|v| v["status"].as_u64() == Some(u64::from(a.status)))
}

/// Every (METHOD, path template) of the committed spec.
fn spec_operations() -> BTreeSet<(String, String)> {
    let spec: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("spec"),
    )
    .expect("spec json");
    let mut ops = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                ops.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

/// One row of the auth table: a route with concrete path and body, and the calls to
/// make in order with the exact status each must get.
struct Row {
    method: &'static str,
    template: &'static str,
    path: String,
    body: Option<Value>,
    checks: Vec<(Who, u16)>,
}

fn row(
    method: &'static str,
    template: &'static str,
    path: String,
    body: Option<Value>,
    checks: &[(Who, u16)],
) -> Row {
    Row {
        method,
        template,
        path,
        body,
        checks: checks.to_vec(),
    }
}

const PUBLIC: [&str; 2] = ["/healthz", "/readyz"];

// ----- S1/S2: the auth table -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_table_covers_every_route_in_the_spec() {
    use Who::*;
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let (q, idle) = ("sec-auth-q", "sec-auth-idle");
    let (node_a, tok_a) = app.register_node("a", &[q]).await;
    let (_node_b, tok_b) = app.register_node("b", &["sec-auth-b"]).await;
    let (node_c, _) = app.register_node("c", &["sec-auth-c"]).await;
    let (node_d, _) = app.register_node("d", &["sec-auth-d"]).await;
    let t = Tokens {
        node_a: tok_a.clone(),
        node_b: tok_b.clone(),
    };

    // Two tasks leased to A (extend + complete, fail); three idle ones (read, cancel+retry, delete).
    let t1 = app.submit_task(q, json!({"n": 1})).await;
    let t5 = app.submit_task(q, json!({"n": 5})).await;
    let leases: HashMap<String, String> = app
        .lease_n(&node_a, &tok_a, 2, Duration::from_secs(10))
        .await
        .into_iter()
        .collect();
    assert_eq!(leases.len(), 2, "node A leases both tasks");
    let (l1, l5) = (leases[&t1].clone(), leases[&t5].clone());
    let t2 = app.submit_task(idle, json!({"n": 2})).await;
    let t3 = app.submit_task(idle, json!({"n": 3})).await;
    let t4 = app.submit_task(idle, json!({"n": 4})).await;
    let r = call(
        &app,
        &t,
        Admin,
        "POST",
        &format!("/v1/tasks/{t4}/cancel"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "cancel t4 in setup");
    let missing_task = format!("01ARZ3NDEKTSV4RRFFQ69G5FAV.{idle}");

    // Locks held in setup, for the extend and release rows (branch `sched`).
    let mut lock_tokens = Vec::new();
    for name in ["sec-lock-b", "sec-lock-c"] {
        let r = call(
            &app,
            &t,
            Admin,
            "POST",
            &format!("/v1/locks/{name}"),
            Some(&json!({"ttl_ms": 60_000})),
        )
        .await;
        assert_eq!(r.status, 201, "lock {name} in setup: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).expect("lock json");
        lock_tokens.push(v["token"].as_str().expect("token").to_string());
    }
    let (lock_b, lock_c) = (lock_tokens[0].clone(), lock_tokens[1].clone());
    let new_task = json!({"kind": "k", "queue": idle});
    let r = call(
        &app,
        &t,
        Admin,
        "POST",
        "/v1/batches",
        Some(&json!({"tasks": [], "open": true})),
    )
    .await;
    assert_eq!(r.status, 201, "open batch in setup");
    let batch = serde_json::from_str::<Value>(&r.body).expect("batch JSON")["id"]
        .as_str()
        .expect("batch id")
        .to_string();
    let rows = vec![
        row(
            "GET",
            "/healthz",
            "/healthz".into(),
            None,
            &[(Anonymous, 200), (Admin, 200), (NodeA, 200)],
        ),
        row(
            "GET",
            "/readyz",
            "/readyz".into(),
            None,
            &[(Anonymous, 200), (Read, 200)],
        ),
        row(
            "GET",
            "/metrics",
            "/metrics".into(),
            None,
            &[(Agent, 403), (NodeA, 403), (Read, 200), (Admin, 200)],
        ),
        row(
            "GET",
            "/v1/events",
            format!("/v1/events?queue={idle}"),
            None,
            &[(Agent, 403), (NodeA, 403), (Read, 200)],
        ),
        row(
            "GET",
            "/v1/nodes",
            "/v1/nodes".into(),
            None,
            &[(Agent, 403), (NodeA, 403), (Read, 200)],
        ),
        row(
            "POST",
            "/v1/nodes",
            "/v1/nodes".into(),
            Some(json!({"name": "e", "queues": ["sec-auth-e"]})),
            &[
                (Read, 403),
                (Submit, 403),
                (NodeA, 403),
                (Agent, 201),
                (Admin, 201),
            ],
        ),
        row(
            "GET",
            "/v1/nodes/{id}",
            format!("/v1/nodes/{node_a}"),
            None,
            &[(Agent, 403), (NodeB, 403), (Read, 200), (NodeA, 200)],
        ),
        row(
            "DELETE",
            "/v1/nodes/{id}",
            format!("/v1/nodes/{node_c}"),
            None,
            &[
                (Read, 403),
                (Submit, 403),
                (Agent, 403),
                (NodeA, 403),
                (Admin, 204),
                (Admin, 404),
            ],
        ),
        row(
            "POST",
            "/v1/nodes/{id}/drain",
            format!("/v1/nodes/{node_d}/drain"),
            None,
            &[
                (Read, 403),
                (Submit, 403),
                (Agent, 403),
                (NodeA, 403),
                (Admin, 200),
            ],
        ),
        row(
            "POST",
            "/v1/nodes/{id}/heartbeat",
            format!("/v1/nodes/{node_a}/heartbeat"),
            None,
            &[
                (Read, 403),
                (Submit, 403),
                (Agent, 403),
                (NodeB, 403),
                (NodeA, 200),
                (Admin, 200),
            ],
        ),
        row(
            "POST",
            "/v1/nodes/{id}/lease",
            format!("/v1/nodes/{node_a}/lease"),
            Some(json!({"max": 1, "wait_ms": 0})),
            &[
                (Read, 403),
                (Submit, 403),
                (Agent, 403),
                (NodeB, 403),
                (NodeA, 200),
            ],
        ),
        row(
            "POST",
            "/v1/nodes/{id}/reports",
            format!("/v1/nodes/{node_a}/reports"),
            Some(json!({"reports": []})),
            &[
                (Read, 403),
                (Submit, 403),
                (Agent, 403),
                (NodeB, 403),
                (NodeA, 200),
            ],
        ),
        row(
            "POST",
            "/v1/nodes/{id}/extend",
            format!("/v1/nodes/{node_a}/extend"),
            Some(json!({"leases": [{"task_id": missing_task, "lease_token": "1.ab"}]})),
            &[
                (Read, 403),
                (Submit, 403),
                (Agent, 403),
                (NodeB, 403),
                (NodeA, 200),
                (Admin, 200),
            ],
        ),
        row(
            "GET",
            "/v1/queues",
            "/v1/queues".into(),
            None,
            &[(Agent, 403), (NodeA, 403), (Read, 200)],
        ),
        row(
            "GET",
            "/v1/queues/{name}",
            format!("/v1/queues/{idle}"),
            None,
            &[(Agent, 403), (NodeA, 403), (Read, 200)],
        ),
        row(
            "PUT",
            "/v1/queues/{name}",
            "/v1/queues/sec-auth-put".into(),
            Some(json!({"weight": 2})),
            &[
                (Read, 403),
                (Submit, 403),
                (Agent, 403),
                (NodeA, 403),
                (Admin, 200),
            ],
        ),
        row(
            "POST",
            "/v1/queues/{name}/pause",
            format!("/v1/queues/{idle}/pause"),
            None,
            &[
                (Read, 403),
                (Submit, 403),
                (Agent, 403),
                (NodeA, 403),
                (Admin, 200),
            ],
        ),
        row(
            "POST",
            "/v1/queues/{name}/resume",
            format!("/v1/queues/{idle}/resume"),
            None,
            &[
                (Read, 403),
                (Submit, 403),
                (Agent, 403),
                (NodeA, 403),
                (Admin, 200),
            ],
        ),
        row(
            "GET",
            "/v1/tasks",
            format!("/v1/tasks?queue={idle}"),
            None,
            &[(Agent, 403), (NodeA, 403), (Read, 200)],
        ),
        row(
            "POST",
            "/v1/tasks",
            "/v1/tasks".into(),
            Some(new_task.clone()),
            &[
                (Read, 403),
                (Agent, 403),
                (NodeA, 403),
                (Submit, 201),
                (Admin, 201),
            ],
        ),
        row(
            "POST",
            "/v1/tasks/batch",
            "/v1/tasks/batch".into(),
            Some(json!({"tasks": [new_task.clone(), new_task.clone()]})),
            &[(Read, 403), (Agent, 403), (NodeA, 403), (Submit, 201)],
        ),
        row(
            "POST",
            "/v1/batches",
            "/v1/batches".into(),
            Some(json!({"tasks": [new_task.clone()]})),
            &[(Read, 403), (Agent, 403), (NodeA, 403), (Submit, 201)],
        ),
        row(
            "GET",
            "/v1/batches/{id}",
            format!("/v1/batches/{batch}"),
            None,
            &[(Agent, 403), (NodeA, 403), (Read, 200)],
        ),
        row(
            "GET",
            "/v1/batches/{id}/results",
            format!("/v1/batches/{batch}/results"),
            None,
            &[(Agent, 403), (NodeA, 403), (Read, 200)],
        ),
        row(
            "POST",
            "/v1/batches/{id}/tasks",
            format!("/v1/batches/{batch}/tasks"),
            Some(json!({"tasks": [new_task.clone()]})),
            &[(Read, 403), (Agent, 403), (NodeA, 403), (Submit, 201)],
        ),
        row(
            "GET",
            "/v1/tasks/{id}",
            format!("/v1/tasks/{t2}"),
            None,
            &[(Agent, 403), (NodeA, 403), (Read, 200)],
        ),
        row(
            "GET",
            "/v1/tasks/{id}/wait",
            format!("/v1/tasks/{t2}/wait?timeout_ms=0"),
            None,
            &[(Agent, 403), (NodeA, 403), (Read, 200)],
        ),
        row(
            "POST",
            "/v1/tasks/{id}/cancel",
            format!("/v1/tasks/{t3}/cancel"),
            None,
            &[(Read, 403), (Agent, 403), (NodeA, 403), (Submit, 200)],
        ),
        row(
            "POST",
            "/v1/tasks/{id}/retry",
            format!("/v1/tasks/{t3}/retry"),
            None,
            // Retried once (cancelled → pending), then 409: pending is not retryable.
            &[
                (Read, 403),
                (Submit, 403),
                (Agent, 403),
                (NodeA, 403),
                (Admin, 200),
                (Admin, 409),
            ],
        ),
        row(
            "DELETE",
            "/v1/tasks/{id}",
            format!("/v1/tasks/{t4}"),
            None,
            &[
                (Read, 403),
                (Submit, 403),
                (Agent, 403),
                (NodeA, 403),
                (Admin, 204),
                (Admin, 404),
            ],
        ),
        row(
            "POST",
            "/v1/tasks/{id}/extend",
            format!("/v1/tasks/{t1}/extend"),
            Some(json!({"lease_token": l1})),
            // Another node: 409 lease_conflict by design (S2); the holder: 200.
            // Role tokens (read/submit/agent): see `role_tokens_cannot_use_lease_routes` (bug).
            &[(NodeB, 409), (NodeA, 200)],
        ),
        row(
            "POST",
            "/v1/tasks/{id}/complete",
            format!("/v1/tasks/{t1}/complete"),
            Some(json!({"lease_token": l1, "result": {"ok": true}})),
            // A repeat of the accepted completion with the same lease answers the same (200).
            &[(NodeB, 409), (NodeA, 200), (NodeA, 200), (NodeB, 409)],
        ),
        row(
            "POST",
            "/v1/tasks/{id}/fail",
            format!("/v1/tasks/{t5}/fail"),
            Some(json!({"lease_token": l5, "error": "boom", "retryable": false})),
            &[(NodeB, 409), (NodeA, 200)],
        ),
        // Schedules and locks (branch `sched`): in order, create before read and delete.
        row(
            "POST",
            "/v1/schedules",
            "/v1/schedules".into(),
            Some(json!({"name": "sec-sched", "cron": "0 0 0 1 1 *", "task": new_task.clone()})),
            &[
                (Read, 403),
                (Agent, 403),
                (NodeA, 403),
                (Submit, 201),
                (Admin, 409),
            ],
        ),
        row(
            "GET",
            "/v1/schedules",
            "/v1/schedules".into(),
            None,
            &[(Agent, 403), (NodeA, 403), (Read, 200)],
        ),
        row(
            "GET",
            "/v1/schedules/{name}",
            "/v1/schedules/sec-sched".into(),
            None,
            &[(Agent, 403), (NodeA, 403), (Read, 200)],
        ),
        row(
            "POST",
            "/v1/schedules/{name}/pause",
            "/v1/schedules/sec-sched/pause".into(),
            None,
            &[(Read, 403), (Agent, 403), (NodeA, 403), (Submit, 200)],
        ),
        row(
            "POST",
            "/v1/schedules/{name}/resume",
            "/v1/schedules/sec-sched/resume".into(),
            None,
            &[(Read, 403), (Agent, 403), (NodeA, 403), (Submit, 200)],
        ),
        row(
            "DELETE",
            "/v1/schedules/{name}",
            "/v1/schedules/sec-sched".into(),
            None,
            &[
                (Read, 403),
                (Agent, 403),
                (NodeA, 403),
                (Submit, 204),
                (Admin, 404),
            ],
        ),
        row(
            "POST",
            "/v1/locks/{name}",
            "/v1/locks/sec-lock-a".into(),
            Some(json!({"ttl_ms": 60_000})),
            &[(Read, 403), (Agent, 201), (NodeA, 409), (Submit, 409)],
        ),
        row(
            "POST",
            "/v1/locks/{name}/extend",
            "/v1/locks/sec-lock-b/extend".into(),
            Some(json!({"token": lock_b, "ttl_ms": 60_000})),
            &[(Read, 403), (NodeA, 200), (Agent, 200), (Submit, 200)],
        ),
        row(
            "DELETE",
            "/v1/locks/{name}",
            "/v1/locks/sec-lock-c".into(),
            Some(json!({"token": lock_c})),
            &[(Read, 403), (NodeA, 204), (Admin, 409)],
        ),
    ];

    // The table covers exactly the spec.
    let spec = spec_operations();
    let table: BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.method.to_string(), r.template.to_string()))
        .collect();
    assert_eq!(rows.len(), table.len(), "one row per operation");
    assert_eq!(
        table,
        spec,
        "the auth table and openapi/openapi.json disagree: missing rows {:?}, rows not in the spec {:?}",
        spec.difference(&table).collect::<Vec<_>>(),
        table.difference(&spec).collect::<Vec<_>>()
    );

    // (a)–(c): no, malformed and wrong credentials → 401 with WWW-Authenticate: Bearer.
    let fake_node = format!("{node_a}.{}", "0".repeat(64));
    let bad_auth: Vec<Option<String>> = vec![
        None,
        Some("Basic x".into()),
        Some(format!("Basic {}", app.admin)),
        Some("Bearer ".into()),
        Some("Bearer".into()),
        Some(format!("Token {}", app.admin)),
        Some(format!("Bearer{}", app.admin)),
        Some("Bearer wrong-token-0123456789abcdef".into()),
        Some(format!("Bearer {}x", app.admin)),
        Some(format!("Bearer {fake_node}")),
    ];
    let mut checked = 0;
    for r in &rows {
        let public = PUBLIC.contains(&r.template);
        for auth in &bad_auth {
            let a = call_raw(&app, r.method, &r.path, auth.as_deref(), r.body.as_ref()).await;
            checked += 1;
            if public {
                assert_eq!(
                    a.status, 200,
                    "{} {} with {auth:?} is public",
                    r.method, r.path
                );
                continue;
            }
            assert_eq!(
                a.status, 401,
                "{} {} with Authorization {auth:?}: {}",
                r.method, r.path, a.body
            );
            assert!(
                a.header("www-authenticate").starts_with("Bearer"),
                "{} {} 401 without 'WWW-Authenticate: Bearer': {:?}",
                r.method,
                r.path,
                a.headers
            );
            assert!(
                is_problem(&a),
                "{} {} 401 is not problem+json: {}",
                r.method,
                r.path,
                a.body
            );
        }
        // No cookie auth.
        if !public {
            let m = reqwest::Method::from_bytes(r.method.as_bytes()).expect("method");
            let mut rb = app.http.request(m, app.url(&r.path)).header(
                "Cookie",
                format!("token={}; session={}", app.admin, app.admin),
            );
            if let Some(b) = &r.body {
                rb = rb.json(b);
            }
            let s = rb.send().await.expect("send").status().as_u16();
            assert_eq!(s, 401, "{} {} accepted a cookie", r.method, r.path);
        }
    }

    // (d)–(e): each row's calls in order, exact statuses.
    for r in &rows {
        for &(who, want) in &r.checks {
            let a = call(&app, &t, who, r.method, &r.path, r.body.as_ref()).await;
            assert_eq!(
                a.status, want,
                "{} {} as {who:?}: {}",
                r.method, r.path, a.body
            );
            checked += 1;
            if want >= 400 {
                assert!(
                    is_problem(&a),
                    "{} {} as {who:?}: not problem+json: {}",
                    r.method,
                    r.path,
                    a.body
                );
            }
            if want == 409
                && ["/extend", "/complete", "/fail"]
                    .iter()
                    .any(|e| r.template.ends_with(e))
            {
                assert!(a.body.contains("lease_conflict"), "{}", a.body);
            }
        }
    }
    // Every non-public row refuses some weaker principal with 403, or is a lease route.
    for r in &rows {
        let has_403 = r.checks.iter().any(|c| c.1 == 403);
        let has_2xx = r.checks.iter().any(|c| (200..300).contains(&c.1));
        assert!(has_2xx, "{} {} has no allowed call", r.method, r.template);
        assert!(
            has_403 || PUBLIC.contains(&r.template) || r.template.starts_with("/v1/tasks/{id}/"),
            "{} {} has no 403 row",
            r.method,
            r.template
        );
    }

    // Domain 4xx with the right role.
    let a = call(
        &app,
        &t,
        Admin,
        "GET",
        &format!("/v1/tasks/{missing_task}"),
        None,
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.body);
    let a = call(&app, &t, Admin, "DELETE", &format!("/v1/tasks/{t2}"), None).await;
    assert_eq!(a.status, 409, "deleting a pending task: {}", a.body);
    let a = call(&app, &t, Admin, "GET", "/v1/queues/sec-auth-unknown", None).await;
    assert_eq!(a.status, 404, "{}", a.body);

    // Nothing answers outside the spec: unknown paths are 404 problem+json, with or without a token.
    for p in [
        "/v1/nope",
        "/v1/tasks/x/nope",
        "/admin",
        "/v2/tasks",
        "/v1/nodes/x/y/z",
        "/debug/pprof",
    ] {
        for who in [Anonymous, Admin] {
            let a = call(&app, &t, who, "GET", p, None).await;
            assert_eq!(a.status, 404, "GET {p} as {who:?}: {}", a.body);
            assert!(is_problem(&a), "GET {p}: not problem+json: {}", a.body);
        }
    }
    // A known path with an unknown method: 405 problem+json.
    let a = call(&app, &t, Admin, "PATCH", "/v1/tasks", None).await;
    assert_eq!(a.status, 405, "{}", a.body);
    assert!(is_problem(&a), "{}", a.body);
    // The state the calls left: t1 succeeded, t5 failed, t3 pending again.
    assert_eq!(app.task(&t1).await["state"], "succeeded");
    assert_eq!(app.task(&t5).await["state"], "failed");
    assert_eq!(app.task(&t3).await["state"], "pending");
    eprintln!(
        "auth table: {} operations, {checked} calls checked",
        rows.len()
    );
}

/// S2 (BFLA): the lease routes accept a node token (its own leases) or admin. A read,
/// submit or agent role token must get 403, whatever lease token it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_tokens_cannot_use_lease_routes() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let q = "sec-bfla";
    let (node, tok) = app.register_node("a", &[q]).await;
    let id = app.submit_task(q, json!({})).await;
    let leases = app.lease_n(&node, &tok, 1, Duration::from_secs(10)).await;
    let lease = leases.first().expect("a lease").1.clone();
    let t = Tokens {
        node_a: tok.clone(),
        node_b: String::new(),
    };
    let before = app.task(&id).await;
    let mut wrong = Vec::new();
    for who in [Who::Read, Who::Submit, Who::Agent] {
        for (route, body) in [
            (
                "extend",
                json!({"lease_token": lease, "progress": {"pwned": true}}),
            ),
            (
                "fail",
                json!({"lease_token": lease, "error": "pwned", "retryable": false}),
            ),
            ("complete", json!({"lease_token": lease, "result": "pwned"})),
        ] {
            let a = call(
                &app,
                &t,
                who,
                "POST",
                &format!("/v1/tasks/{id}/{route}"),
                Some(&body),
            )
            .await;
            if a.status != 403 {
                wrong.push(format!(
                    "{who:?} {route} → {} {}",
                    a.status,
                    a.body.chars().take(120).collect::<String>()
                ));
            }
        }
    }
    let after = app.task(&id).await;
    assert!(
        wrong.is_empty(),
        "role tokens used lease routes: {wrong:#?}"
    );
    assert_eq!(before["state"], after["state"]);
    assert_eq!(after["progress"], before["progress"]);
}

/// Found by schemathesis (scripts/fuzz.sh, ST201): a JSON array is accepted where the
/// spec says the body is an object, because serde lets a derived struct deserialize from
/// a sequence of its fields in order. `PUT /v1/queues/0` with `[null, null]` answers 200
/// and creates queue `0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_must_be_objects() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let mut wrong = Vec::new();
    for (method, path, body) in [
        ("PUT", "/v1/queues/sec-array", json!([null, null])),
        ("PUT", "/v1/queues/sec-array2", json!([5, true, false])),
        ("POST", "/v1/tasks", json!(["k", "sec-array3"])),
        (
            "POST",
            "/v1/nodes",
            json!(["array-node", ["sec-array4"], [], 1]),
        ),
        ("POST", "/v1/tasks/batch", json!([[["k", "sec-array5"]]])),
    ] {
        let a = call_raw(
            &app,
            method,
            path,
            Some(&format!("Bearer {}", app.admin)),
            Some(&body),
        )
        .await;
        if a.status != 422 && a.status != 400 {
            wrong.push(format!(
                "{method} {path} {body} → {} {}",
                a.status,
                a.body.chars().take(100).collect::<String>()
            ));
        }
    }
    let r = call_raw(
        &app,
        "GET",
        "/v1/queues",
        Some(&format!("Bearer {}", app.admin)),
        None,
    )
    .await;
    assert!(
        wrong.is_empty(),
        "array bodies accepted: {wrong:#?}\nqueues now: {}",
        r.body
    );
}

/// Found by schemathesis (ST202): the spec declares the lease body optional and nullable
/// (`Option<LeaseRequest>`), and an empty body means the defaults, but a JSON `null` body
/// is refused with 422. And (ST201) a body of only whitespace is malformed, not empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_accepts_a_null_body() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let (node, token) = app.register_node("n", &["sec-null"]).await;
    let empty = call_raw(
        &app,
        "POST",
        &format!("/v1/nodes/{node}/lease"),
        Some(&format!("Bearer {token}")),
        None,
    )
    .await;
    assert_eq!(empty.status, 200, "empty body: {}", empty.body);
    let null = call_raw(
        &app,
        "POST",
        &format!("/v1/nodes/{node}/lease"),
        Some(&format!("Bearer {token}")),
        Some(&Value::Null),
    )
    .await;
    assert_eq!(null.status, 200, "null body: {}", null.body);
    // ST201: a body of whitespace is not empty, and it is not JSON either.
    let ws = app
        .http
        .post(app.url(&format!("/v1/nodes/{node}/lease")))
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .body("\n")
        .send()
        .await
        .expect("lease");
    assert_eq!(
        ws.status().as_u16(),
        400,
        "whitespace body: {:?}",
        ws.text().await
    );
}

// ----- S2: node isolation -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_tokens_are_confined_to_their_node() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let q = "sec-iso";
    let (a, tok_a) = app.register_node("a", &[q]).await;
    let (b, tok_b) = app.register_node("b", &["sec-iso-b"]).await;
    let t = Tokens {
        node_a: tok_a.clone(),
        node_b: tok_b.clone(),
    };
    let id = app.submit_task(q, json!({"x": 1})).await;
    let leases = app.lease_n(&a, &tok_a, 1, Duration::from_secs(10)).await;
    assert_eq!(leases.len(), 1, "A leases the task");
    let (leased, lease) = leases[0].clone();
    assert_eq!(leased, id);

    // B on A's node routes: 403.
    for (method, path, body) in [
        ("POST", format!("/v1/nodes/{a}/heartbeat"), None),
        (
            "POST",
            format!("/v1/nodes/{a}/lease"),
            Some(json!({"max": 1})),
        ),
        (
            "POST",
            format!("/v1/nodes/{a}/reports"),
            Some(
                json!({"reports": [{"task_id": id, "lease_token": lease, "outcome": "succeeded"}]}),
            ),
        ),
        ("POST", format!("/v1/nodes/{a}/drain"), None),
        ("DELETE", format!("/v1/nodes/{a}"), None),
        ("GET", format!("/v1/nodes/{a}"), None),
    ] {
        let r = call(&app, &t, Who::NodeB, method, &path, body.as_ref()).await;
        assert_eq!(r.status, 403, "B: {method} {path}: {}", r.body);
        assert!(is_problem(&r), "{}", r.body);
    }
    // B's token on admin and submit routes: 403.
    for (method, path, body) in [
        (
            "POST",
            "/v1/tasks".to_string(),
            Some(json!({"kind": "k", "queue": q})),
        ),
        ("POST", format!("/v1/tasks/{id}/cancel"), None),
        ("POST", format!("/v1/tasks/{id}/retry"), None),
        (
            "PUT",
            format!("/v1/queues/{q}"),
            Some(json!({"paused": true})),
        ),
        ("GET", "/v1/tasks".to_string(), None),
        (
            "POST",
            "/v1/nodes".to_string(),
            Some(json!({"name": "evil"})),
        ),
    ] {
        let r = call(&app, &t, Who::NodeB, method, &path, body.as_ref()).await;
        assert_eq!(r.status, 403, "B: {method} {path}: {}", r.body);
    }

    // B with A's lease token on the task routes: 409 lease_conflict, task unchanged.
    let before = app.task(&id).await;
    for (route, body) in [
        (
            "extend",
            json!({"lease_token": lease, "progress": {"b": true}}),
        ),
        (
            "complete",
            json!({"lease_token": lease, "result": "from B"}),
        ),
        (
            "fail",
            json!({"lease_token": lease, "error": "from B", "retryable": false}),
        ),
    ] {
        let r = call(
            &app,
            &t,
            Who::NodeB,
            "POST",
            &format!("/v1/tasks/{id}/{route}"),
            Some(&body),
        )
        .await;
        assert_eq!(r.status, 409, "B {route}: {}", r.body);
        let p: Value = serde_json::from_str(&r.body).expect("problem");
        assert_eq!(p["code"], "lease_conflict", "B {route}: {}", r.body);
    }
    // B reporting A's task through its own reports route: per-item 409.
    let r = call(
        &app,
        &t,
        Who::NodeB,
        "POST",
        &format!("/v1/nodes/{b}/reports"),
        Some(&json!({"reports": [{"task_id": id, "lease_token": lease, "outcome": "succeeded", "result": "B"}]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("json");
    assert_eq!(v["results"][0]["status"], 409, "{}", r.body);
    assert_eq!(v["results"][0]["code"], "lease_conflict", "{}", r.body);

    let after = app.task(&id).await;
    for f in [
        "state",
        "node",
        "fence",
        "attempts",
        "progress",
        "result",
        "error",
        "lease_expires_at",
    ] {
        assert_eq!(before[f], after[f], "field {f} changed after B's attempts");
    }
    assert_eq!(after["state"], "running");
    assert_eq!(after["node"].as_str(), Some(a.as_str()));

    // A still completes it.
    let r = call(
        &app,
        &t,
        Who::NodeA,
        "POST",
        &format!("/v1/tasks/{id}/complete"),
        Some(&json!({"lease_token": lease, "result": "A"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = app.task(&id).await;
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["result"], "A");
}

// ----- S3: size limits -----

/// What a rejected request must leave unchanged.
#[derive(Debug, PartialEq)]
struct Snapshot {
    dbsize: i64,
    keys: Vec<(String, String)>,
}

fn snapshot(conn: &mut redis::Connection, ns: &str) -> (Snapshot, i64) {
    let dbsize: i64 = redis::cmd("DBSIZE").query(conn).expect("dbsize");
    let info: String = redis::cmd("INFO").arg("memory").query(conn).expect("info");
    let used = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("used_memory");
    (
        Snapshot {
            dbsize,
            keys: dump_namespace(conn, ns),
        },
        used,
    )
}

/// A task body whose payload serializes to exactly `n` bytes (a JSON string).
fn task_with_payload_len(queue: &str, n: usize) -> Vec<u8> {
    assert!(n >= 2);
    let payload = "a".repeat(n - 2);
    let body = json!({"kind": "big", "queue": queue, "payload": payload});
    assert_eq!(
        serde_json::to_string(&body["payload"]).expect("json").len(),
        n
    );
    serde_json::to_vec(&body).expect("json")
}

async fn post_bytes(app: &SecApp, path: &str, body: Vec<u8>) -> Answer {
    let r = app
        .http
        .post(app.url(path))
        .bearer_auth(&app.admin)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Answer {
        status,
        headers,
        body: r.text().await.unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_reject_and_store_nothing() {
    // A private redis: DBSIZE is this test's alone.
    let redis = RedisGuard::start();
    let app = spawn_sec_app(&redis.url(), |_| {}).await;
    let mut conn = app.redis();
    let q = "sec-size";
    const L: usize = 1024 * 1024;
    // Let startup writes settle.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // L+1 with Content-Length: 413, nothing stored.
    let (before, mem0) = snapshot(&mut conn, &app.ns);
    let a = post_bytes(&app, "/v1/tasks", task_with_payload_len(q, L + 1)).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(is_problem(&a), "{}", a.body);
    assert!(!a.body.contains("\"id\""), "no task id issued: {}", a.body);
    // L+1 chunked: 413, nothing stored.
    let c = raw_chunked_post(
        app.addr,
        "/v1/tasks",
        &app.admin,
        &task_with_payload_len(q, L + 1),
        64 * 1024,
    )
    .await
    .expect("chunked");
    assert_eq!(
        c.status,
        413,
        "chunked L+1: {}",
        String::from_utf8_lossy(&c.body)
    );
    assert!(
        c.header("content-type")
            .unwrap_or("")
            .starts_with("application/problem+json")
    );
    // A batch of 10,001: 422, nothing stored.
    let tasks: Vec<Value> = (0..10_001)
        .map(|i| json!({"kind": "k", "queue": q, "payload": i}))
        .collect();
    let a = post_bytes(
        &app,
        "/v1/tasks/batch",
        serde_json::to_vec(&json!({"tasks": tasks})).expect("json"),
    )
    .await;
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(
        is_problem(&a) && a.body.contains("batch_too_long"),
        "{}",
        a.body
    );
    // A batch whose last task is one byte over: 413, none of the others stored.
    let mut tasks: Vec<Value> = (0..3)
        .map(|i| json!({"kind": "k", "queue": q, "payload": i}))
        .collect();
    tasks.push(serde_json::from_slice(&task_with_payload_len(q, L + 1)).expect("json"));
    let a = post_bytes(
        &app,
        "/v1/tasks/batch",
        serde_json::to_vec(&json!({"tasks": tasks})).expect("json"),
    )
    .await;
    assert_eq!(a.status, 413, "{}", a.body);
    // JSON nesting depth 1,000: 400, never 5xx.
    let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
    for (path, body) in [
        (
            "/v1/tasks",
            format!(r#"{{"kind":"k","queue":"{q}","payload":{deep}}}"#),
        ),
        (
            "/v1/tasks/batch",
            format!(r#"{{"tasks":[{{"kind":"k","queue":"{q}","payload":{deep}}}]}}"#),
        ),
        (
            "/v1/tasks",
            format!(
                r#"{{"kind":"k","queue":"{q}","payload":{}{}}}"#,
                "{\"a\":".repeat(1000),
                "}".repeat(1000)
            ),
        ),
    ] {
        let a = post_bytes(&app, path, body.into_bytes()).await;
        assert_eq!(a.status, 400, "depth bomb on {path}: {}", a.body);
        assert!(is_problem(&a), "{}", a.body);
    }
    // A 65 KiB header: 431.
    let big = "a".repeat(65 * 1024);
    let req =
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let r = raw_request(app.addr, req.as_bytes(), Duration::from_secs(5))
        .await
        .expect("an answer to a 65 KiB header");
    assert_eq!(r.status, 431, "65 KiB header");
    let req = format!(
        "GET /v1/queues HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nX-Big: {big}\r\nConnection: close\r\n\r\n",
        app.admin
    );
    let r = raw_request(app.addr, req.as_bytes(), Duration::from_secs(5))
        .await
        .expect("answer");
    assert_eq!(r.status, 431, "65 KiB header on an authenticated route");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let (after, mem1) = snapshot(&mut conn, &app.ns);
    assert_eq!(before, after, "rejected requests changed the keyspace");
    assert!(
        mem1 - mem0 < 1024 * 1024,
        "used_memory grew by {} bytes",
        mem1 - mem0
    );

    // Exactly L with Content-Length, and again chunked: 201, stored.
    let a = post_bytes(&app, "/v1/tasks", task_with_payload_len(q, L)).await;
    assert_eq!(a.status, 201, "{}", &a.body[..a.body.len().min(300)]);
    let id1 = serde_json::from_str::<Value>(&a.body).expect("task")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let c = raw_chunked_post(
        app.addr,
        "/v1/tasks",
        &app.admin,
        &task_with_payload_len(q, L),
        64 * 1024,
    )
    .await
    .expect("chunked");
    assert_eq!(c.status, 201, "chunked L");
    let id2 = serde_json::from_slice::<Value>(&c.body).expect("task")["id"]
        .as_str()
        .expect("id")
        .to_string();
    for id in [id1, id2] {
        assert_eq!(
            app.task(&id).await["payload"].as_str().map(str::len),
            Some(L - 2)
        );
    }
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut conn).expect("dbsize");
    assert!(dbsize > before.dbsize, "the accepted tasks are stored");
}

// ----- S7: secrets hygiene -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_clear_in_redis_or_answers() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let q = "sec-secrets";
    let canary = format!("canary-{}-{}", app.ns, std::process::id());
    let (node, token) = app.register_node("secret-node", &[q]).await;
    let secret_part = token
        .split_once('.')
        .expect("node token is <id>.<secret>")
        .1
        .to_string();
    let id = app.submit_task(q, json!({"secret": canary})).await;
    // Touch the token paths: heartbeat, lease, complete.
    let r = app
        .http
        .post(app.url(&format!("/v1/nodes/{node}/heartbeat")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("hb");
    assert_eq!(r.status(), 200);
    let leases = app.lease_n(&node, &token, 1, Duration::from_secs(10)).await;
    assert_eq!(leases.first().map(|l| l.0.as_str()), Some(id.as_str()));
    let r = app
        .http
        .post(app.url(&format!("/v1/tasks/{id}/complete")))
        .bearer_auth(&token)
        .json(&json!({"lease_token": leases[0].1, "result": {"ok": true}}))
        .send()
        .await
        .expect("complete");
    assert_eq!(r.status(), 200);
    // An error body about a task carrying the canary must not echo it.
    let r = app
        .http
        .post(app.url("/v1/tasks"))
        .bearer_auth(&app.submit)
        .json(&json!({"kind": "k", "queue": q, "priority": 99, "payload": {"secret": canary}}))
        .send()
        .await
        .expect("bad submit");
    assert_eq!(r.status(), 422);
    let body = r.text().await.expect("body");
    assert!(
        !body.contains(&canary),
        "error body echoes the canary: {body}"
    );

    let dump = dump_namespace(&mut app.redis(), &app.ns);
    assert!(!dump.is_empty());
    let all: String = dump.iter().map(|(k, v)| format!("{k} => {v}\n")).collect();
    // The dump is real: the payload canary and the token's SHA-256 are in it.
    assert!(all.contains(&canary), "the dump misses the task payload");
    let sha = muster::store::token_sha(&token);
    assert!(all.contains(&sha), "the node token's SHA-256 is not stored");
    for (what, secret) in [
        ("node token", token.as_str()),
        ("node token secret", secret_part.as_str()),
        ("admin token", app.admin.as_str()),
        ("read token", app.read.as_str()),
        ("submit token", app.submit.as_str()),
        ("agent token", app.agent.as_str()),
    ] {
        for (k, v) in &dump {
            assert!(
                !k.contains(secret) && !v.contains(secret),
                "the {what} is stored in clear under {k}"
            );
        }
    }
    // The canary only sits in the task hash, not in events, indexes or stats.
    for (k, v) in &dump {
        if v.contains(&canary) {
            assert!(
                k.contains(&format!(":t:{id}")),
                "the payload canary leaked into {k}"
            );
        }
    }
    // List and read answers carry no token.
    for path in [
        "/v1/nodes".to_string(),
        format!("/v1/nodes/{node}"),
        "/v1/queues".to_string(),
        "/metrics".to_string(),
    ] {
        let r = app
            .http
            .get(app.url(&path))
            .bearer_auth(&app.admin)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{path}");
        let body = r.text().await.expect("body");
        assert!(!body.contains(&secret_part), "{path} shows the node token");
        assert!(!body.contains(&sha), "{path} shows the node token's hash");
        assert!(!body.contains(&app.admin), "{path} shows the admin token");
        assert!(!body.contains(&canary), "{path} shows the payload canary");
    }
}

// ----- S5: rate limit -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_stops_a_flooding_token_and_spares_others() {
    // Five submit tokens: a flood slower than the 1 s the gate is about (a busy 2-core
    // machine) is redone with a fresh bucket, at most four times.
    let flooders: Vec<String> = (0..5)
        .map(|i| format!("flood-{i}-{}-0123456789abcdef", std::process::id()))
        .collect();
    let extra = flooders.clone();
    let app = spawn_sec_app(&shared_redis().url(), move |c| {
        c.rate_limit = Some((50.0, 100.0));
        c.tokens.extend(
            extra
                .into_iter()
                .map(|t| (muster::api::auth::Role::Submit, t)),
        );
    })
    .await;
    // Baseline latency of the polite token's route (admin token: its own bucket).
    let mut base = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let r = app
            .http
            .get(app.url("/v1/queues"))
            .bearer_auth(&app.admin)
            .send()
            .await
            .expect("baseline");
        assert_eq!(r.status(), 200);
        base.push(t0.elapsed());
    }
    base.sort();

    let polite = {
        let http = app.http.clone();
        let url = app.url("/v1/queues");
        let token = app.read.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            let mut lat = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            for _ in 0..40 {
                tick.tick().await;
                let t0 = Instant::now();
                let r = http
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("polite");
                lat.push(t0.elapsed());
                statuses.push((
                    r.status().as_u16(),
                    r.headers().get("retry-after").is_some(),
                ));
            }
            (statuses, lat)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 1,000 requests as fast as this machine allows: 10 connections, each with 100
    // pipelined HTTP/1.1 requests written at once (a reqwest loop on 2 busy cores takes
    // longer than the second the gate is about). The limiter sits in front of every
    // route and counts every request with a token; the flood uses the cheapest route,
    // so the pace is set by the limiter and not by Redis.
    let mut attempt = 0;
    let (flood, elapsed) = loop {
        let t0 = Instant::now();
        let floods: Vec<_> = (0..10)
            .map(|_| {
                tokio::spawn(pipelined(
                    app.addr,
                    "/healthz",
                    flooders[attempt].clone(),
                    100,
                ))
            })
            .collect();
        let mut flood: Vec<(u16, Option<String>)> = Vec::new();
        for f in floods {
            flood.extend(f.await.expect("flood task"));
        }
        let elapsed = t0.elapsed();
        let ok = flood.iter().filter(|(s, _)| *s == 200).count();
        // Whatever the pace, the bucket never lets more through than burst + rate × time.
        let allowed = 100.0 + 50.0 * elapsed.as_secs_f64() + 2.0;
        assert!(
            (ok as f64) <= allowed,
            "{ok} passed in {elapsed:?}, the bucket allows {allowed:.0}"
        );
        attempt += 1;
        if elapsed <= Duration::from_millis(950) || attempt == flooders.len() {
            break (flood, elapsed);
        }
        eprintln!(
            "rate limit: flood {attempt} took {elapsed:?}, too slow for the gate; again with a fresh token"
        );
    };
    let (statuses, lat) = polite.await.expect("polite task");
    let limited = flood.iter().filter(|(s, _)| *s == 429).count();
    let ok = flood.iter().filter(|(s, _)| *s == 200).count();
    let polite_429 = statuses.iter().filter(|(s, _)| *s == 429).count();
    let mut lat = lat;
    lat.sort();
    eprintln!(
        "rate limit: flood of 1000 in {elapsed:?}: {limited} × 429, {ok} × 200; polite: {} requests, {polite_429} × 429, \
         p99 {:?} (baseline p99 {:?}, report only)",
        statuses.len(),
        lat[lat.len() - 1],
        base[base.len() - 1]
    );
    assert_eq!(flood.len(), 1000, "every flood request answered");
    assert_eq!(
        ok + limited,
        1000,
        "only 200 or 429: {:?}",
        flood
            .iter()
            .filter(|(s, _)| *s != 200 && *s != 429)
            .take(3)
            .collect::<Vec<_>>()
    );
    assert!(
        elapsed <= Duration::from_secs(1),
        "this machine could not send 1,000 requests within 1 s ({elapsed:?})"
    );
    assert!(
        limited >= 850,
        "only {limited} × 429 for 1000 requests in {elapsed:?}"
    );
    for (s, ra) in &flood {
        if *s == 429 {
            let secs: u64 = ra
                .as_deref()
                .and_then(|v| v.parse().ok())
                .expect("429 with a numeric Retry-After");
            assert!((1..=2).contains(&secs), "Retry-After {secs}");
        }
    }
    assert_eq!(polite_429, 0, "the polite token was limited: {statuses:?}");
    assert!(statuses.iter().all(|(s, _)| *s == 200), "{statuses:?}");
}

/// Sends `n` pipelined `GET path` requests on one connection; returns each answer's
/// status and Retry-After.
async fn pipelined(
    addr: std::net::SocketAddr,
    path: &'static str,
    token: String,
    n: usize,
) -> Vec<(u16, Option<String>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let one =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n");
    s.write_all(one.repeat(n).as_bytes()).await.expect("write");
    let mut raw: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while out.len() < n {
        // Parse every complete answer in `raw`.
        while let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|v| v.parse().ok())
                .expect("status line");
            let header = |name: &str| {
                head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| v.trim().to_string())
                })
            };
            let len: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .expect("content-length");
            if raw.len() < end + 4 + len {
                break;
            }
            out.push((status, header("retry-after")));
            raw.drain(..end + 4 + len);
        }
        if out.len() >= n {
            break;
        }
        let k = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf))
            .await
            .expect("flood answers in time")
            .expect("read");
        assert!(
            k > 0,
            "the server closed a pipelined connection after {} answers",
            out.len()
        );
        raw.extend_from_slice(&buf[..k]);
    }
    out
}

// ----- S9: slowloris -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let addr = app.addr;
    let start = Instant::now();
    // One client sends a request line and stops; ten trickle a header byte per second.
    let mut slow = Vec::new();
    for i in 0..11 {
        slow.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let t0 = Instant::now();
            s.write_all(b"GET /healthz HTTP/1.1\r\n")
                .await
                .expect("write");
            let mut buf = [0u8; 1024];
            let mut got = Vec::new();
            let header = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut k = 0;
            loop {
                let read = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await;
                match read {
                    Ok(Ok(0)) | Ok(Err(_)) => return (t0.elapsed(), got),
                    Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                    Err(_) => {
                        if t0.elapsed() > Duration::from_secs(20) {
                            return (t0.elapsed(), got);
                        }
                        if i > 0 && k < header.len() {
                            // A write error means the server closed: the next read says so.
                            let _ = s.write_all(&header[k..=k]).await;
                            k += 1;
                        }
                    }
                }
            }
        }));
    }
    // Meanwhile a normal request answers at once, several times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let t0 = Instant::now();
        let r = app
            .http
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("normal request");
        assert_eq!(r.status(), 200);
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "a normal request took {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for h in slow {
        let (closed_after, got) = h.await.expect("slow client");
        let text = String::from_utf8_lossy(&got);
        assert!(
            closed_after >= Duration::from_millis(9_500) && closed_after <= Duration::from_secs(12),
            "a slow client was closed after {closed_after:?} (answer {text:?})"
        );
        assert!(
            !text.contains("200 OK"),
            "a slow client got an answer: {text}"
        );
    }
    eprintln!(
        "slowloris: 11 slow clients closed; test took {:?}",
        start.elapsed()
    );
}

/// Issue 16 item 6: the limiter keyed on the raw header, so `Bearer`/`bearer` and extra
/// spaces gave one token many buckets, and every junk token got a fresh one.
#[tokio::test]
async fn the_rate_limit_keys_on_the_caller_not_on_the_header_spelling() {
    let app = spawn_sec_app(&shared_redis().url(), |c| {
        c.rate_limit = Some((1.0, 5.0));
    })
    .await;
    let spellings = ["Bearer ", "bearer ", "Bearer   ", "BEARER ", "  Bearer "];
    let mut ok = 0;
    for i in 0..40 {
        let header = format!("{}{}", spellings[i % spellings.len()], app.read);
        let r = app
            .http
            .get(app.url("/v1/queues"))
            .header("authorization", header)
            .send()
            .await
            .expect("send");
        match r.status().as_u16() {
            200 => ok += 1,
            429 => assert!(r.headers().contains_key("retry-after")),
            s => panic!("unexpected {s}"),
        }
    }
    // A burst of 5 and 1/s refill: a handful, never one bucket per spelling.
    assert!(ok <= 8, "{ok} of 40 requests of one token were admitted");

    // Junk tokens share one bucket: after its burst they are limited, not 401 forever.
    let mut limited = 0;
    for i in 0..20 {
        let r = app
            .http
            .get(app.url("/v1/queues"))
            .bearer_auth(format!("junk-{i}"))
            .send()
            .await
            .expect("send");
        match r.status().as_u16() {
            401 => {}
            429 => limited += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert!(
        limited >= 10,
        "only {limited} of 20 junk-token requests were limited"
    );
    // The admin has its own bucket.
    let r = app
        .http
        .get(app.url("/v1/queues"))
        .bearer_auth(&app.admin)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
}

/// Issue 16 item 9: with `--no-auth` every caller is admin, so a page of another site
/// (a cross-site form, or DNS rebinding to 127.0.0.1) could pause a queue.
#[tokio::test]
async fn no_auth_serves_only_loopback_hosts_and_origins() {
    let app = spawn_sec_app(&shared_redis().url(), |c| {
        c.no_auth = true;
        c.admin_token = None;
    })
    .await;
    let pause = |host: Option<&'static str>, origin: Option<&'static str>| {
        let mut r = app.http.post(app.url("/v1/queues/noauth/pause"));
        if let Some(h) = host {
            r = r.header("host", h);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let r = app
        .http
        .put(app.url("/v1/queues/noauth"))
        .json(&json!({"weight": 1}))
        .send()
        .await
        .expect("put");
    assert!(r.status().is_success(), "{}", r.status());
    let refused = [
        (Some("rebind.evil.example"), None),
        (None, Some("http://evil.example")),
        (
            Some("rebind.evil.example:8080"),
            Some("http://rebind.evil.example:8080"),
        ),
        (None, Some("null")),
    ];
    for (host, origin) in refused {
        let r = pause(host, origin).await.expect("send");
        assert_eq!(r.status(), 403, "host {host:?} origin {origin:?}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let q: Value = app
        .http
        .get(app.url("/v1/queues/noauth"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(q["paused"], false, "a refused request changed nothing: {q}");
    for (host, origin) in [
        (None, None),
        (Some("localhost:8080"), Some("http://localhost:8080")),
        (Some("[::1]:8080"), Some("http://127.0.0.1:9000")),
    ] {
        let r = pause(host, origin).await.expect("send");
        assert!(
            r.status().is_success(),
            "host {host:?} origin {origin:?}: {}",
            r.status()
        );
    }
}

/// Issue 16 item 1: a `read` token's 20 MB body of nested arrays was read and parsed
/// into a `serde_json::Value` on an async worker before the role check (seconds of CPU
/// and hundreds of MiB per request; `/healthz` froze). Now the role is checked from the
/// head and the body is never parsed, and big bodies parse on the blocking pool.
#[tokio::test]
async fn a_low_privilege_token_is_refused_before_its_body_is_parsed() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let mut body = String::from(r#"{"kind":"k","payload":["#);
    body.push_str(&"[[[]]],".repeat(3_000_000));
    body.push_str("1]}");
    let body = std::sync::Arc::new(body);
    let big = |token: String| {
        let (http, url, body) = (app.http.clone(), app.url("/v1/tasks"), body.clone());
        tokio::spawn(async move {
            let t0 = Instant::now();
            let r = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            (r.map(|r| r.status().as_u16()), t0.elapsed())
        })
    };
    let floods = [big(app.read.clone()), big(app.read.clone())];
    // /healthz stays quick while both are in flight.
    let mut lat = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let r = app
            .http
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(r.status(), 200);
        lat.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lat.sort();
    for f in floods {
        let (status, took) = f.await.expect("task");
        // The server may answer and close before the upload ends: a reset is refusal too.
        if let Ok(s) = status {
            assert_eq!(s, 403, "a read token may not submit");
        }
        assert!(took < Duration::from_secs(2), "the refusal took {took:?}");
    }
    assert!(
        lat[lat.len() - 1] < Duration::from_millis(500),
        "/healthz max {:?} while two big bodies were refused",
        lat[lat.len() - 1]
    );
    // A read token is refused before validation too (403, not 400 or 422).
    let r = app
        .http
        .post(app.url("/v1/tasks"))
        .bearer_auth(&app.read)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);
    // The admin's big body of the same shape is parsed (off the async workers) and
    // judged on its merits: a 20 MB payload is over the 1 MiB limit.
    let r = app
        .http
        .post(app.url("/v1/tasks"))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413);
}

/// Issue 16 item 4: only `allkeys-*` was refused, only at start-up, and an OOM from
/// Redis answered 500. A `volatile-*` policy evicts held locks and idempotency keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicting_policies_are_refused_and_redis_oom_answers_503() {
    let redis = RedisGuard::start_with(&["--maxmemory-policy", "volatile-lru"]);
    let mut cfg = muster::config::Config::new("127.0.0.1:0", redis.url());
    cfg.admin_token = Some("admin-evict-0123456789abcdef".into());
    cfg.namespace = format!("evict{}", std::process::id());
    let err = match muster::startup::Application::build(cfg).await {
        Ok(_) => panic!("a volatile-lru redis was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("volatile-lru") && err.contains("noeviction"),
        "{err}"
    );

    // Accepted with noeviction; a policy switched at run time makes /readyz not ready.
    let redis = RedisGuard::start();
    let app = spawn_sec_app(&redis.url(), |_| {}).await;
    let mut conn = app.redis();
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    config_set(&mut conn, "maxmemory-policy", "allkeys-lru");
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.expect("problem");
    assert_eq!(body["code"], "unfit_redis", "{body}");

    // Over maxmemory with noeviction, Redis refuses writes: 503 + Retry-After, not 500.
    config_set(&mut conn, "maxmemory-policy", "noeviction");
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200, "ready again once the policy is safe");
    config_set(&mut conn, "maxmemory", "1");
    let r = app
        .http
        .post(app.url("/v1/tasks"))
        .bearer_auth(&app.admin)
        .json(&json!({"kind": "k", "queue": "oom", "payload": "x".repeat(10_000)}))
        .send()
        .await
        .expect("submit");
    let status = r.status();
    let retry_after = r.headers().contains_key("retry-after");
    let text = r.text().await.unwrap_or_default();
    assert_eq!(status, 503, "{text}");
    assert!(retry_after, "503 without Retry-After");
    assert!(
        !text.contains("unfit_redis"),
        "refused for the policy, not by redis: {text}"
    );
    config_set(&mut conn, "maxmemory", "0");
}

/// Issue 16 item 4: the policy was only checked at start-up (and by whoever called
/// `/readyz`); a `CONFIG SET maxmemory-policy allkeys-lru` at run time let writes go on
/// into a Redis that may evict them. The reconciler now rechecks it periodically: within
/// a bounded time every write answers 503 `unfit_redis` (nobody calls `/readyz` here),
/// reads still work, and writes come back once the policy is safe again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_policy_set_at_run_time_stops_writes_within_seconds() {
    let redis = RedisGuard::start();
    let app = spawn_sec_app(&redis.url(), |_| {}).await;
    let mut conn = app.redis();
    let submit = |queue: &'static str| {
        app.http
            .post(app.url("/v1/tasks"))
            .bearer_auth(&app.admin)
            .json(&json!({"kind": "k", "queue": queue}))
            .send()
    };
    assert_eq!(submit("before").await.expect("submit").status(), 201);
    config_set(&mut conn, "maxmemory-policy", "allkeys-lru");
    let set_at = Instant::now();
    let mut refused = None;
    while set_at.elapsed() < Duration::from_secs(8) {
        let r = submit("during").await.expect("submit");
        if r.status() == 503 {
            let retry_after = r.headers().contains_key("retry-after");
            let body: Value = r.json().await.expect("problem");
            refused = Some((retry_after, body));
            break;
        }
        assert_eq!(r.status(), 201);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = set_at.elapsed();
    let (retry_after, body) = refused.expect("writes still accepted 8 s after allkeys-lru");
    assert!(took <= Duration::from_secs(5), "noticed after {took:?}");
    assert!(retry_after, "503 without Retry-After");
    assert_eq!(body["code"], "unfit_redis", "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("allkeys-lru"),
        "{body}"
    );
    // Other writes too (a queue setting), while reads go on.
    let put = app
        .http
        .put(app.url("/v1/queues/during"))
        .bearer_auth(&app.admin)
        .json(&json!({"paused": true}))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 503);
    let list = app
        .http
        .get(app.url("/v1/tasks?queue=before"))
        .bearer_auth(&app.read)
        .send()
        .await
        .expect("list");
    assert_eq!(list.status(), 200);
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    // Back to noeviction: writes are accepted again without a restart.
    config_set(&mut conn, "maxmemory-policy", "noeviction");
    let fixed_at = Instant::now();
    loop {
        let r = submit("after").await.expect("submit");
        if r.status() == 201 {
            break;
        }
        assert!(
            fixed_at.elapsed() < Duration::from_secs(8),
            "writes still refused 8 s after noeviction: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 16 item 5: `--exec` handlers inherited the agent's environment, MUSTER_TOKEN
/// included, and could return it in a result any read token can see.
#[tokio::test]
async fn exec_handlers_get_a_minimal_environment() {
    let app = crate::helpers::spawn_app().await;
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_muster"))
        .args(["agent", "--server", &app.url, "--capacity", "1", "--env", "HANDLER_SETTING"])
        .args(["--exec", "env | sort | sed 's/\"//g' | awk 'BEGIN{printf \"[\"} {printf \"%s\\\"%s\\\"\", (NR>1?\",\":\"\"), $0} END{print \"]\"}'"])
        .env("MUSTER_TOKEN", crate::helpers::ADMIN_TOKEN)
        .env("AGENT_ONLY_SECRET", "do-not-leak")
        .env("HANDLER_SETTING", "passed-on")
        .env_remove("MUSTER_SERVER")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn agent");
    let t = app.api.submit(json!({"kind": "env"})).await;
    let done = app.api.wait_terminal(&t.id, Duration::from_secs(30)).await;
    let _ = agent.kill();
    let _ = agent.wait();
    let vars: Vec<String> = serde_json::from_value(done.result.clone().unwrap_or_default())
        .unwrap_or_else(|e| panic!("result {:?}: {e}", done.result));
    let names: Vec<&str> = vars.iter().filter_map(|v| v.split('=').next()).collect();
    assert!(names.contains(&"PATH"), "{names:?}");
    assert!(names.contains(&"MUSTER_TASK_ID"), "{names:?}");
    assert!(
        vars.contains(&"HANDLER_SETTING=passed-on".to_string()),
        "{vars:?}"
    );
    for leaked in ["MUSTER_TOKEN", "AGENT_ONLY_SECRET", "MUSTER_ADMIN_TOKEN"] {
        assert!(
            !names.contains(&leaked),
            "{leaked} reached the handler: {vars:?}"
        );
    }
    assert!(
        !vars.iter().any(|v| v.contains(crate::helpers::ADMIN_TOKEN)),
        "the token's value reached the handler"
    );
}

/// Issue 16 item 8: no body-read timeout, so a client sending one byte a second kept a
/// request (and its worker) open for as long as it liked.
#[tokio::test]
async fn a_trickled_body_is_cut_off_after_the_body_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let mut s = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        app.submit
    );
    s.write_all(head.as_bytes()).await.expect("head");
    let t0 = Instant::now();
    let trickle = async {
        for _ in 0..60 {
            if s.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut buf = [0u8; 1024];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
            {
                return String::from_utf8_lossy(&buf[..n]).to_string();
            }
        }
        String::new()
    };
    let answer = trickle.await;
    let took = t0.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "answer after {took:?}: {answer:?}"
    );
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(took < Duration::from_secs(45), "cut off after {took:?}");
}

/// `CONFIG SET name value` on a test's own redis-server.
fn config_set(conn: &mut redis::Connection, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query(conn)
        .unwrap_or_else(|e| panic!("CONFIG SET {name} {value}: {e}"));
}

/// Issue 16 item 10: a path whose percent-escapes are not UTF-8 got axum's text/plain
/// 400; every answer of the API is problem+json.
#[tokio::test]
async fn a_path_that_is_not_utf8_answers_problem_json() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let auth = format!("Bearer {}", app.admin);
    for (method, path) in [
        ("GET", "/v1/tasks/%ff"),
        ("DELETE", "/v1/tasks/%ff%fe"),
        ("GET", "/v1/queues/%C3"),
        ("POST", "/v1/nodes/%e2%82/heartbeat"),
    ] {
        let a = call_raw(&app, method, path, Some(&auth), None).await;
        assert_eq!(a.status, 400, "{method} {path}: {}", a.body);
        assert!(is_problem(&a), "{method} {path}: {}", a.body);
        assert!(a.body.contains("bad_path"), "{}", a.body);
    }
}

/// Issue 16 item 10: the admin token had no minimum length (role tokens had 16).
#[tokio::test]
async fn a_short_admin_token_is_refused_at_start_up() {
    let mut cfg = muster::config::Config::new("127.0.0.1:0", shared_redis().url());
    cfg.admin_token = Some("short-admin".into());
    let err = match muster::startup::Application::build(cfg).await {
        Ok(_) => panic!("a control plane started with an 11-character admin token"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("at least 16 characters"), "{err}");
}

/// Issue 16 item 11: `/docs` (Swagger UI) had no CSP and could be framed.
#[tokio::test]
async fn the_api_docs_forbid_framing_and_foreign_scripts() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    for path in ["/docs/", "/docs/swagger-initializer.js"] {
        let a = call_raw(&app, "GET", path, None, None).await;
        assert_eq!(a.status, 200, "{path}");
        let csp = a.header("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp:?}");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp:?}");
        assert_eq!(a.header("x-frame-options"), "DENY", "{path}");
        assert_eq!(a.header("x-content-type-options"), "nosniff", "{path}");
    }
}

/// Issue 16 item 11: the scheduler logged its leader lease's fencing token at info.
#[tokio::test]
async fn the_scheduler_leader_token_is_not_logged() {
    let url = shared_redis().url();
    let ns = crate::support::unique_ns();
    let serve = crate::support::Serve::start(&url, &ns).await;
    let store = crate::support::store_on(&url, &ns).await;
    // Nobody leads without a schedule.
    serve
        .api()
        .post(
            "/v1/schedules",
            &json!({"name": "nightly", "cron": "0 0 3 * * *", "task": {"kind": "k"}}),
        )
        .await
        .expect(201);
    let deadline = Instant::now() + Duration::from_secs(10);
    let token = loop {
        if let Some(t) = store.scheduler_leader().await.expect("leader key") {
            break t;
        }
        assert!(Instant::now() < deadline, "no scheduler leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let proc = serve.proc.as_ref().expect("running");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proc.log().contains("this replica leads") {
        assert!(Instant::now() < deadline, "no leader line:\n{}", proc.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !proc.log().contains(&token),
        "the leader token is in the log"
    );
}

/// Issue 16 item 11: an `--http` handler followed redirects, re-sending the payload and
/// the `X-Muster-*` headers to wherever a 3xx pointed. Now a 3xx fails the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_handler_does_not_follow_redirects() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let followed = std::sync::Arc::new(AtomicUsize::new(0));
    let hits = followed.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer = if head.starts_with("POST /elsewhere") {
                    hits.fetch_add(1, Ordering::SeqCst);
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}".to_string()
                } else {
                    format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://{addr}/elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    )
                };
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    let app = crate::support::spawn_app().await;
    let queue = "redirects";
    let _agent = crate::support::spawn_agent_process(
        &[app.url.as_str()],
        &["--queue", queue, "--http", &format!("http://{addr}/hook")],
    );
    let task = app
        .api
        .submit(json!({"kind": "k", "queue": queue, "payload": {"secret": "s"}, "max_attempts": 1}))
        .await;
    let done = app
        .api
        .wait_terminal(&task.id, Duration::from_secs(30))
        .await;
    assert_eq!(
        serde_json::to_value(done.state).expect("state"),
        json!("failed")
    );
    assert_eq!(
        followed.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

/// Issue 16 item 3: `GET /v1/queues` answered every queue at once (10,001 queues: 1.15 s,
/// 2.6 MB). Now it answers pages of at most 1000, by name, with a cursor.
#[tokio::test]
async fn queues_are_listed_a_page_at_a_time() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let admin = format!("Bearer {}", app.admin);
    for i in 0..25 {
        let a = call_raw(
            &app,
            "PUT",
            &format!("/v1/queues/page-{i:02}"),
            Some(&admin),
            Some(&json!({"weight": 2})),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let read = format!("Bearer {}", app.read);
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/queues?limit=10&cursor={c}"),
            None => "/v1/queues?limit=10".to_string(),
        };
        let a = call_raw(&app, "GET", &path, Some(&read), None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let v: Value = serde_json::from_str(&a.body).expect("json");
        let items = v["items"].as_array().expect("items");
        assert!(items.len() <= 10);
        names.extend(
            items
                .iter()
                .map(|q| q["name"].as_str().expect("name").to_string()),
        );
        pages += 1;
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let want: Vec<String> = (0..25).map(|i| format!("page-{i:02}")).collect();
    assert_eq!((names, pages), (want, 3));
    // Without parameters: the first page, here every queue, in the same shape.
    let a = call_raw(&app, "GET", "/v1/queues", Some(&read), None).await;
    let v: Value = serde_json::from_str(&a.body).expect("json");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(25));
    assert_eq!(v["next_cursor"], Value::Null);
    for bad in [
        "/v1/queues?limit=0",
        "/v1/queues?limit=1001",
        "/v1/queues?cursor=a%20b",
        "/v1/queues?page=2",
    ] {
        let a = call_raw(&app, "GET", bad, Some(&read), None).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.body);
        assert!(is_problem(&a), "{bad}: {}", a.body);
    }
}

/// Issue 16 item 3: nodes were never cleaned up (every agent that went away without
/// deregistering stayed for ever). Now a node without a heartbeat for the dead-node
/// time (24 h by default) that holds no lease is removed; one running a task stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_nodes_are_removed_unless_they_hold_a_lease() {
    let app = spawn_sec_app(&shared_redis().url(), |c| {
        c.heartbeat_interval = Duration::from_millis(200);
        c.dead_node_after = Duration::from_secs(2);
    })
    .await;
    let (gone, gone_token) = app.register_node("gone", &["dead-nodes"]).await;
    let (busy, busy_token) = app.register_node("busy", &["dead-nodes"]).await;
    app.submit_task("dead-nodes", json!({})).await;
    // Whichever node the task was assigned to, `busy` leases it: `gone` goes offline
    // first and its inbox returns to pending.
    let leased = app
        .lease_n(&busy, &busy_token, 1, Duration::from_secs(10))
        .await;
    assert_eq!(leased.len(), 1, "busy leased the task");
    let admin = format!("Bearer {}", app.admin);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = call_raw(
            &app,
            "GET",
            &format!("/v1/nodes/{gone}"),
            Some(&admin),
            None,
        )
        .await;
        if a.status == 404 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead node is still there: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a = call_raw(
        &app,
        "POST",
        &format!("/v1/nodes/{gone}/heartbeat"),
        Some(&format!("Bearer {gone_token}")),
        None,
    )
    .await;
    assert_eq!(a.status, 401, "a removed node's token: {}", a.body);
    let a = call_raw(
        &app,
        "GET",
        &format!("/v1/nodes/{busy}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "a node holding a lease stays: {}", a.body);
}

/// Issue 16 item 10: `muster serve --tokens-file` read a file any local user could read.
#[test]
fn serve_refuses_a_tokens_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokens");
    std::fs::write(&path, "read:a-read-token-of-some-length\n").expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = std::process::Command::new(crate::support::muster_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--redis-url"])
        .arg(shared_redis().url())
        .arg("--tokens-file")
        .arg(&path)
        .env_remove("MUSTER_ADMIN_TOKEN")
        .output()
        .expect("muster serve runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "served with a world-readable tokens file"
    );
    assert!(err.contains("chmod 600"), "{err}");
}

// ----- issue 16 item 10: Idempotency-Key bound to the caller and the body -----

/// Sends `body` (raw JSON text) to `path` with `token` and `Idempotency-Key: key`.
async fn post_idem(app: &SecApp, token: &str, path: &str, key: &str, body: &str) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(path))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    let is_problem = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/problem+json"));
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        assert!(is_problem, "{status} without problem+json: {v}");
    }
    (status, v)
}

/// Issue 16 item 10: an `Idempotency-Key` was bound to neither caller nor body: anyone
/// repeating it with any body got the first caller's task back (and learned its id and
/// payload). Now the same caller with the same body gets the original task; another
/// body or another token gets 422 `idempotency_key_reused`, and nothing is stored.
#[tokio::test]
async fn an_idempotency_key_is_bound_to_its_caller_and_its_body() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let mut conn = app.redis();
    let first = r#"{"kind": "k", "queue": "idem", "payload": {"a": 1, "b": [1, 2]}}"#;
    let (s, t1) = post_idem(&app, &app.submit, "/v1/tasks", "order-1", first).await;
    assert_eq!(s, 201, "{t1}");
    // The same body, other spacing and key order: the same submission.
    let same = r#"{"payload":{"b":[1,2],"a":1},"queue":"idem","kind":"k"}"#;
    let (s, t2) = post_idem(&app, &app.submit, "/v1/tasks", "order-1", same).await;
    assert_eq!(s, 201, "{t2}");
    assert_eq!(t2["id"], t1["id"], "a repeat returns the original task");
    let before = crate::support::ns_keys(&mut conn, &app.ns);
    let pending = |conn: &mut redis::Connection| -> i64 {
        redis::cmd("ZCARD")
            .arg(format!("{}:{{idem}}:pending", app.ns))
            .query(conn)
            .expect("zcard")
    };
    assert_eq!(pending(&mut conn), 1);
    let other_body = r#"{"kind": "k", "queue": "idem", "payload": {"a": 2, "b": [1, 2]}}"#;
    let cases = [
        (&app.submit, "/v1/tasks", other_body, "another body"),
        (&app.admin, "/v1/tasks", first, "another caller (admin)"),
        (
            &app.submit,
            "/v1/tasks/batch",
            r#"{"tasks": [{"kind": "k", "queue": "idem", "payload": {"a": 1, "b": [1, 2]}}]}"#,
            "another route",
        ),
    ];
    for (token, path, body, what) in cases {
        let (s, p) = post_idem(&app, token, path, "order-1", body).await;
        assert_eq!(s, 422, "{what}: {p}");
        assert_eq!(p["code"], "idempotency_key_reused", "{what}: {p}");
        assert_eq!(
            p["type"], "https://muster.dev/problems/idempotency_key_reused",
            "{what}"
        );
        assert!(
            !p.to_string().contains(t1["id"].as_str().unwrap_or("?")),
            "{what}: the first caller's task id leaked: {p}"
        );
    }
    assert_eq!(pending(&mut conn), 1, "a refused reuse stored a task");
    assert_eq!(
        crate::support::ns_keys(&mut conn, &app.ns),
        before,
        "a refused reuse wrote keys"
    );
    // The original caller still gets its task; batches are bound the same way.
    let (s, t3) = post_idem(&app, &app.submit, "/v1/tasks", "order-1", first).await;
    assert_eq!((s, &t3["id"]), (201, &t1["id"]));
    let batch = r#"{"tasks": [{"kind": "k", "queue": "idem"}, {"kind": "k", "queue": "idem2"}]}"#;
    let (s, b1) = post_idem(&app, &app.submit, "/v1/tasks/batch", "batch-1", batch).await;
    assert_eq!(s, 201, "{b1}");
    let (s, b2) = post_idem(&app, &app.submit, "/v1/tasks/batch", "batch-1", batch).await;
    assert_eq!((s, &b2["ids"]), (201, &b1["ids"]));
    let other = r#"{"tasks": [{"kind": "k", "queue": "idem"}]}"#;
    let (s, p) = post_idem(&app, &app.submit, "/v1/tasks/batch", "batch-1", other).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    let (s, p) = post_idem(&app, &app.admin, "/v1/tasks/batch", "batch-1", batch).await;
    assert_eq!(
        (s, p["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert_eq!(pending(&mut conn), 2);
}

// ----- issue 16 item 7: queue-scoped tokens -----

/// Tokens limited to `images.*` (submit, read, agent) on a server that also has
/// unlimited ones.
struct Scoped {
    app: SecApp,
    submit: String,
    read: String,
    agent: String,
}

async fn spawn_scoped_app() -> Scoped {
    use muster::api::auth::{QueueScope, Role};
    let tag = format!("{}-{}", std::process::id(), rand::random::<u32>());
    let (submit, read, agent) = (
        format!("scoped-submit-{tag}-0123456789"),
        format!("scoped-read-{tag}-0123456789"),
        format!("scoped-agent-{tag}-0123456789"),
    );
    let extra = [
        (Role::Submit, submit.clone()),
        (Role::Read, read.clone()),
        (Role::Agent, agent.clone()),
    ];
    let app = spawn_sec_app(&shared_redis().url(), move |c| {
        for (role, t) in extra {
            c.token_queues
                .push((t.clone(), QueueScope::parse("images.*").expect("scope")));
            c.tokens.push((role, t));
        }
    })
    .await;
    Scoped {
        app,
        submit,
        read,
        agent,
    }
}

async fn send_as(
    app: &SecApp,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let auth = format!("Bearer {token}");
    let a = call_raw(app, method, path, Some(&auth), body.as_ref()).await;
    if a.status >= 400 {
        assert!(is_problem(&a), "{method} {path}: {} {}", a.status, a.body);
    }
    a
}

/// Issue 16 item 7: every token reached every queue. A token of the tokens file with
/// `queues=images.*` now submits to, reads, lists, cancels and registers nodes on
/// `images.*` queues only: anything else is 403 problem+json and changes nothing.
#[tokio::test]
async fn a_queue_scoped_token_reaches_only_its_queues() {
    let s = spawn_scoped_app().await;
    let app = &s.app;
    let payroll = app.submit_task("payroll", json!({"salary": 1})).await;
    let mut conn = app.redis();
    let before = crate::support::ns_keys(&mut conn, &app.ns);

    // Submitting: its own queues yes, others no (a batch with one other queue: none).
    let ok = send_as(
        app,
        &s.submit,
        "POST",
        "/v1/tasks",
        Some(json!({"kind": "k", "queue": "images.small"})),
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let mine: Value = serde_json::from_str(&ok.body).expect("task");
    let mine = mine["id"].as_str().expect("id").to_string();
    let refused: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            "/v1/tasks".into(),
            Some(json!({"kind": "k", "queue": "payroll"})),
        ),
        ("POST", "/v1/tasks".into(), Some(json!({"kind": "k"}))),
        (
            "POST",
            "/v1/tasks/batch".into(),
            Some(
                json!({"tasks": [{"kind": "k", "queue": "images.a"}, {"kind": "k", "queue": "payroll"}]}),
            ),
        ),
        (
            "POST",
            "/v1/batches".into(),
            Some(
                json!({"tasks": [{"kind": "k", "queue": "images.a"}], "then": {"kind": "k", "queue": "payroll"}}),
            ),
        ),
        ("POST", format!("/v1/tasks/{payroll}/cancel"), None),
        ("GET", format!("/v1/tasks/{payroll}"), None),
        (
            "GET",
            format!("/v1/tasks/{payroll}/wait?timeout_ms=0"),
            None,
        ),
        ("GET", "/v1/tasks?queue=payroll".into(), None),
        ("GET", "/v1/tasks".into(), None),
        ("GET", "/v1/queues/payroll".into(), None),
        ("GET", "/v1/events?queue=payroll".into(), None),
        ("GET", "/v1/events".into(), None),
    ];
    for (method, path, body) in &refused {
        for token in [&s.submit, &s.read] {
            if *method == "POST" && *token == s.read {
                continue;
            }
            let a = send_as(app, token, method, path, body.clone()).await;
            assert_eq!(a.status, 403, "{method} {path}: {}", a.body);
        }
    }
    assert_eq!(
        app.task(&payroll).await["state"],
        "pending",
        "cancel went through"
    );
    let mut after = crate::support::ns_keys(&mut conn, &app.ns);
    after.retain(|k| !k.contains("{images.small}"));
    assert_eq!(after, before, "a refused call wrote keys outside images.*");

    // Reading its own queues works; listings show only them.
    for token in [&s.submit, &s.read] {
        let a = send_as(app, token, "GET", &format!("/v1/tasks/{mine}"), None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let a = send_as(app, token, "GET", "/v1/tasks?queue=images.small", None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let a = send_as(app, token, "GET", "/v1/queues", None).await;
        let page: Value = serde_json::from_str(&a.body).expect("page");
        let names: Vec<&str> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|q| q["name"].as_str())
            .collect();
        assert_eq!(names, vec!["images.small"], "{}", a.body);
    }
    // The unscoped read token still sees everything.
    let a = send_as(app, &app.read, "GET", &format!("/v1/tasks/{payroll}"), None).await;
    assert_eq!(a.status, 200);
    // /metrics: its queues' series only; the unscoped token sees payroll's too.
    let scoped = send_as(app, &s.read, "GET", "/metrics", None).await;
    assert_eq!(scoped.status, 200, "{}", scoped.body);
    assert!(
        scoped.body.contains("queue=\"images.small\""),
        "{}",
        scoped.body
    );
    assert!(
        !scoped.body.contains("payroll"),
        "a scoped token saw payroll in /metrics"
    );
    let all = send_as(app, &app.read, "GET", "/metrics", None).await;
    assert!(all.body.contains("queue=\"payroll\""), "{}", all.body);

    // Nodes: a scoped agent token registers on its queues only.
    let reg = |queues: Value, kind: &str| json!({"name": "n", "queues": queues, "capacity": 1, "kind": kind});
    let a = send_as(
        app,
        &s.agent,
        "POST",
        "/v1/nodes",
        Some(reg(json!(["payroll"]), "machine")),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = send_as(
        app,
        &s.agent,
        "POST",
        "/v1/nodes",
        Some(reg(json!(["images.small", "payroll"]), "machine")),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = send_as(
        app,
        &s.agent,
        "POST",
        "/v1/nodes",
        Some(reg(json!(["images.small"]), "machine")),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let node: Value = serde_json::from_str(&a.body).expect("node");
    // Its node leases what its queues hold, never the payroll task.
    let leases = app
        .lease_n(
            node["id"].as_str().expect("id"),
            node["token"].as_str().expect("token"),
            2,
            Duration::from_secs(3),
        )
        .await;
    let leased: Vec<&str> = leases.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(leased, vec![mine.as_str()]);
    assert_eq!(app.task(&payroll).await["state"], "pending");

    // Schedules submit as their creator: a scoped token schedules its queues only, and
    // sees, reads, pauses and deletes only the schedules of its queues.
    let sched = |name: &str, queue: &str| json!({"name": name, "cron": "0 0 3 * * *", "task": {"kind": "k", "queue": queue}});
    let a = send_as(
        app,
        &s.submit,
        "POST",
        "/v1/schedules",
        Some(sched("steal", "payroll")),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = send_as(
        app,
        &s.submit,
        "POST",
        "/v1/schedules",
        Some(sched("thumbs", "images.small")),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let a = send_as(
        app,
        &app.admin,
        "POST",
        "/v1/schedules",
        Some(sched("salaries", "payroll")),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    for (method, path) in [
        ("GET", "/v1/schedules/salaries"),
        ("POST", "/v1/schedules/salaries/pause"),
        ("DELETE", "/v1/schedules/salaries"),
    ] {
        let a = send_as(app, &s.submit, method, path, None).await;
        assert_eq!(a.status, 403, "{method} {path}: {}", a.body);
    }
    let a = send_as(app, &s.read, "GET", "/v1/schedules", None).await;
    let list: Value = serde_json::from_str(&a.body).expect("list");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|x| x["name"].as_str())
        .collect();
    assert_eq!(names, vec!["thumbs"]);
    let a = send_as(app, &app.admin, "GET", "/v1/schedules/salaries", None).await;
    let salaries: Value = serde_json::from_str(&a.body).expect("schedule");
    assert_eq!(salaries["paused"], false, "a refused pause went through");
}

/// Issue 16 item 7: an agent token registered a `human` node on `payroll` (not
/// human-only), pulled its task past the dispatcher and read the payload. A human node
/// now serves human-only queues only (an admin may still do otherwise).
#[tokio::test]
async fn a_human_node_registers_only_on_human_only_queues() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let payroll = app.submit_task("payroll", json!({"salary": 1})).await;
    let r = app
        .http
        .put(app.url("/v1/queues/labels"))
        .bearer_auth(&app.admin)
        .json(&json!({"human_only": true}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), 200);
    let human =
        |queues: Value| json!({"name": "Ada", "kind": "human", "queues": queues, "capacity": 1});
    for queues in [
        json!(["payroll"]),
        json!(["labels", "payroll"]),
        json!(["fresh-queue"]),
    ] {
        let a = send_as(
            &app,
            &app.agent,
            "POST",
            "/v1/nodes",
            Some(human(queues.clone())),
        )
        .await;
        assert_eq!(a.status, 403, "{queues}: {}", a.body);
    }
    let a = send_as(
        &app,
        &app.agent,
        "POST",
        "/v1/nodes",
        Some(human(json!(["labels"]))),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let a = send_as(
        &app,
        &app.admin,
        "POST",
        "/v1/nodes",
        Some(human(json!(["payroll"]))),
    )
    .await;
    assert_eq!(a.status, 201, "admin may: {}", a.body);
    assert_eq!(app.task(&payroll).await["state"], "pending");
}

// ----- issue 16 item 3: empty queues pruned -----

/// A reconciler over `app`'s namespace that prunes empty queues at once.
async fn pruner(
    app: &SecApp,
) -> (
    muster::store::Store,
    muster::workers::reconciler::Reconciler,
) {
    crate::support::pruner_on(&app.redis_url, &app.ns).await
}

/// Issue 16 item 3: one batch of 10,000 tasks on `spam-00000…` left 10,001 entries in
/// `<ns>:queues` for ever, after the tasks were cancelled and deleted too, and every
/// background loop kept visiting them. Empty, idle queues are now pruned from the set
/// (and their leftover keys deleted), while queues with tasks, settings, a node or a
/// schedule stay. (3,000 queues here: the app's own timers visit every one of them
/// four times a second until they are pruned, on a shared 2-core machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_spam_queues_are_pruned_and_real_queues_stay() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let (store, reconciler) = pruner(&app).await;
    const SPAM: usize = 3_000;
    let tasks: Vec<Value> = (0..SPAM)
        .map(|i| json!({"kind": "spam", "queue": format!("spam-{i:05}")}))
        .collect();
    let r = app
        .http
        .post(app.url("/v1/tasks/batch"))
        .bearer_auth(&app.submit)
        .json(&json!({ "tasks": tasks }))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status(), 201);
    let ids: Vec<String> = r.json::<Value>().await.expect("ids")["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_string())
        .collect();
    // The queues that are real: tasks waiting, a finished task kept, a setting, a node,
    // a schedule.
    let waiting = app.submit_task("real-work", json!(1)).await;
    let done = app.submit_task("real-done", json!(1)).await;
    store.cancel(&done).await.expect("cancel");
    let put = app
        .http
        .put(app.url("/v1/queues/real-paused"))
        .bearer_auth(&app.admin)
        .json(&json!({"paused": true}))
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 200);
    app.register_node("n", &["real-node"]).await;
    let sched = app
        .http
        .post(app.url("/v1/schedules"))
        .bearer_auth(&app.admin)
        .json(&json!({"name": "nightly", "cron": "0 0 3 * * *", "task": {"kind": "k", "queue": "real-cron"}}))
        .send()
        .await
        .expect("schedule");
    assert_eq!(sched.status(), 201);
    // The schedule's queue was used and is empty now: kept for the schedule.
    let fired = app.submit_task("real-cron", json!(1)).await;
    store.cancel(&fired).await.expect("cancel");
    store.delete(&fired).await.expect("delete");
    let mut before = store.queues().await.expect("queues");
    before.retain(|q| !q.starts_with("spam-"));
    // Nothing is pruned while the spam queues hold their tasks.
    assert!(reconciler.prune_empty_queues().await.is_empty());
    assert_eq!(
        store.queues().await.expect("queues").len(),
        SPAM + before.len()
    );

    // Cancelled and deleted (except one, which keeps its queue).
    crate::support::cancel_and_delete(&store, &ids[1..], 500).await;
    let pruned = reconciler.prune_empty_queues().await;
    assert_eq!(pruned.len(), SPAM - 1, "every emptied spam queue is pruned");
    let mut want = before.clone();
    want.push("spam-00000".into());
    want.sort();
    assert_eq!(store.queues().await.expect("queues"), want);
    for q in [
        "real-work",
        "real-done",
        "real-paused",
        "real-node",
        "real-cron",
    ] {
        assert!(want.iter().any(|w| w == q), "{q} missing from {want:?}");
    }
    // Their leftovers (event streams, counters, sequences) are gone too.
    let mut conn = app.redis();
    let left: Vec<String> = crate::support::ns_keys(&mut conn, &app.ns)
        .into_iter()
        .filter(|k| k.contains("{spam-") && !k.contains("{spam-00000}"))
        .collect();
    assert!(
        left.is_empty(),
        "{} keys left, e.g. {:?}",
        left.len(),
        &left[..left.len().min(5)]
    );
    // A real queue is intact; a pruned one comes back with its next task.
    assert_eq!(app.task(&waiting).await["state"], "pending");
    let again = app.submit_task("spam-00042", json!(1)).await;
    assert!(
        store
            .queues()
            .await
            .expect("queues")
            .contains(&"spam-00042".to_string())
    );
    assert_eq!(app.task(&again).await["state"], "pending");
    crate::support::assert_doctor_clean(&store).await;
}

/// Pruning a queue races submits to it: the pruner removes the queue from the set and
/// then checks it is still empty, while a submit adds the queue to the set before its
/// script. A submit whose tasks land after the pruner's check finds the queue new and
/// adds it again, so a queue holding tasks is never missing from the set. Each trial
/// runs pruning passes back to back on an emptied queue while one task is submitted to
/// it, then stops the passes and looks (a pass skips a queue with tasks, so it cannot
/// repair what the race broke).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submit_racing_the_pruner_never_leaves_its_queue_out_of_the_set() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let (store, reconciler) = pruner(&app).await;
    let reconciler = std::sync::Arc::new(reconciler);
    // How long a pass takes here (a loaded machine is slower): the submits land from at
    // once to two passes in, so that some meet a pass half-way.
    let mut pass_time = Duration::ZERO;
    for _ in 0..5 {
        let t0 = Instant::now();
        reconciler.prune_empty_queues().await;
        pass_time += t0.elapsed();
    }
    let pass_time = pass_time / 5;
    let mut lost = Vec::new();
    let mut pruned_total = 0;
    for trial in 0..300 {
        let q = format!("race-{trial:03}");
        let id = app.submit_task(&q, json!(trial)).await;
        store.cancel(&id).await.expect("cancel");
        store.delete(&id).await.expect("delete");
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let passes = {
            let (r, stop) = (reconciler.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += r.prune_empty_queues().await.len();
                }
                n
            })
        };
        tokio::time::sleep(pass_time * (trial % 20) / 10).await;
        let t = muster::api::tasks::prepare(
            serde_json::from_value(json!({"kind": "k", "queue": q})).expect("task"),
            "",
        )
        .expect("valid");
        let racing = t.id.clone();
        store.submit(&[t], None, 0).await.expect("submit");
        stop.store(true, Ordering::Relaxed);
        pruned_total += passes.await.expect("passes");
        if !store.queues().await.expect("queues").contains(&q) {
            lost.push(q);
        }
        // Emptied and pruned again, so that each pass looks at one queue (a fast pass).
        store.cancel(&racing).await.expect("cancel");
        store.delete(&racing).await.expect("delete");
        reconciler.prune_empty_queues().await;
    }
    assert!(
        pruned_total >= 30,
        "the passes pruned only {pruned_total} times: no race"
    );
    assert!(
        lost.is_empty(),
        "{} queues hold a task but left the set: {lost:?}",
        lost.len()
    );
    crate::support::assert_doctor_clean(&store).await;
}

/// A caller's `Idempotency-Key` of the form muster derives for a schedule's fire
/// (`schedule:<name>:<tick ms>`, predictable) or a batch's `then` task could pre-empt
/// that submission: the fire would answer the caller's task and never run its own.
/// Those prefixes are refused (400) and nothing is stored.
#[tokio::test]
async fn idempotency_keys_of_musters_own_form_are_refused() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let mut conn = app.redis();
    let before = crate::support::ns_keys(&mut conn, &app.ns);
    for key in [
        "schedule:nightly:1700000000000",
        "batch-then:01JD8XK2ZQ8M3V6T1XW0Q2E7AB",
    ] {
        let (s, p) = post_idem(
            &app,
            &app.submit,
            "/v1/tasks",
            key,
            r#"{"kind": "k", "queue": "cron"}"#,
        )
        .await;
        assert_eq!(
            (s, p["code"].as_str()),
            (400, Some("bad_idempotency_key")),
            "{key}: {p}"
        );
    }
    assert_eq!(crate::support::ns_keys(&mut conn, &app.ns), before);
    let (s, _) = post_idem(
        &app,
        &app.submit,
        "/v1/tasks",
        "my-schedule:1",
        r#"{"kind": "k", "queue": "cron"}"#,
    )
    .await;
    assert_eq!(s, 201);
}

/// Issue 16 item 3: a timer round ran two scripts per queue of the set, one after the
/// other (10,000 junk queues: 20,000 script calls a second, and a `delay_ms=100` task
/// pending after 1.5 s). It now reads what is due in pipelines and runs scripts only in
/// queues with work: over 2,000 quiet queues and one due task, one script call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_round_runs_scripts_only_where_something_is_due() {
    let redis = RedisGuard::start();
    let store = crate::support::store_on(&redis.url(), "timers").await;
    store.prepare().await.expect("prepare");
    let task = |queue: String, delay_ms: i64| {
        muster::api::tasks::prepare(
            serde_json::from_value(json!({"kind": "k", "queue": queue, "delay_ms": delay_ms}))
                .expect("task"),
            "",
        )
        .expect("valid")
    };
    let quiet: Vec<_> = (0..2_000)
        .map(|i| task(format!("quiet-{i:04}"), 86_400_000))
        .collect();
    store.submit(&quiet, None, 0).await.expect("quiet tasks");
    let due = task("due".into(), 1);
    let due_id = due.id.clone();
    store.submit(&[due], None, 0).await.expect("due task");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let timers = muster::workers::timers::Timers::new(
        store.clone(),
        muster::service::hub::Hub::new(),
        std::sync::Arc::new(muster::service::directory::Directory::new(
            Duration::from_millis(100),
        )),
        Duration::from_millis(250),
        Duration::from_millis(500),
    );
    let mut conn = redis::Client::open(redis.url().as_str())
        .expect("url")
        .get_connection()
        .expect("conn");
    let scripts_run =
        |conn: &mut redis::Connection| crate::support::command_calls(conn, &["evalsha", "eval"]);
    let before = scripts_run(&mut conn);
    let round = timers.tick_once().await.expect("round");
    let ran = scripts_run(&mut conn) - before;
    assert_eq!(round.promoted, 1, "{round:?}");
    assert_eq!(ran, 1, "a round over 2,001 queues ran {ran} scripts");
    assert_eq!(
        store.task(&due_id).await.expect("task").state,
        muster::domain::TaskState::Pending
    );
}
