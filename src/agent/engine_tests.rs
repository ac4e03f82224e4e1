//! Tests of the agent engine against a small in-process mock of the control plane's
//! agent routes (the real server is tested end to end elsewhere).

use super::*;
use crate::domain::{
    ExtendBatch, ExtendBatchReply, ExtendReply, HeartbeatReply, Lease, LeaseReply, LeaseRequest,
    Node, NodeKind, NodeRegistered, NodeStatus, RegisterNode, RenewalResult, RenewalStatus, Report,
    ReportBatch, ReportBatchReply, ReportOutcome, ReportResult, TaskState,
};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::time::Instant;

#[derive(Default)]
struct Mock {
    queue: Vec<Lease>,
    reports: Vec<Report>,
    report_calls: usize,
    cancel: Vec<String>,
    /// Task ids whose extend answers 409.
    lost: Vec<String>,
    registered: usize,
    deregistered: Vec<String>,
    max_asked: i64,
    leased: Vec<String>,
    /// Node ids the heartbeat answers 404 for.
    forgotten: Vec<String>,
    /// Node id of every lease call.
    lease_nodes: Vec<String>,
    /// Tasks leased with reports (`lease_max`), and the most one call asked for.
    leased_with_reports: usize,
    lease_max_asked: i64,
    /// Refuse `lease_max` as a server older than it does (422 invalid_body).
    refuse_lease_max: bool,
}

type Shared = Arc<(Mutex<Mock>, tokio::sync::Notify)>;

fn lease(id: &str, kind: &str, payload: Value, timeout_ms: i64, attempts: i64) -> Lease {
    tests::lease(id, kind, payload, timeout_ms, attempts, 1)
}

fn problem(status: StatusCode, code: &str) -> Response {
    let body = json!({"type": "about:blank", "title": code, "status": status.as_u16(), "detail": code, "code": code});
    (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

async fn register(State(m): State<Shared>, Json(body): Json<RegisterNode>) -> Response {
    let n = {
        let mut g = lock(&m.0);
        g.registered += 1;
        g.registered
    };
    let id = format!("node{n}");
    let reg = NodeRegistered {
        id: id.clone(),
        token: format!("tok-{id}"),
        heartbeat_interval_ms: 50,
        node: Node {
            id,
            name: body.name,
            kind: NodeKind::Machine,
            status: NodeStatus::Active,
            queues: body.queues,
            tags: body.tags,
            capacity: body.capacity.unwrap_or(1),
            running: 0,
            succeeded: 0,
            failed: 0,
            mean_run_ms: None,
            registered_at: "2026-01-01T00:00:00.000Z".into(),
            last_seen_at: "2026-01-01T00:00:00.000Z".into(),
        },
    };
    (StatusCode::CREATED, Json(reg)).into_response()
}

async fn heartbeat(State(m): State<Shared>, Path(id): Path<String>) -> Response {
    let mut g = lock(&m.0);
    if g.forgotten.contains(&id) {
        return problem(StatusCode::NOT_FOUND, "node_not_found");
    }
    let cancel = std::mem::take(&mut g.cancel);
    Json(HeartbeatReply {
        status: NodeStatus::Active,
        cancel,
    })
    .into_response()
}

async fn lease_route(
    State(m): State<Shared>,
    Path(id): Path<String>,
    Json(req): Json<LeaseRequest>,
) -> Json<LeaseReply> {
    let max = req.max.unwrap_or(1);
    lock(&m.0).lease_nodes.push(id);
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(req.wait_ms.unwrap_or(0) as u64);
    loop {
        let notified = m.1.notified();
        {
            let mut g = lock(&m.0);
            g.max_asked = g.max_asked.max(max);
            if !g.queue.is_empty() {
                let n = (max as usize).min(g.queue.len());
                let leases: Vec<Lease> = g.queue.drain(..n).collect();
                g.leased.extend(leases.iter().map(|l| l.task.id.clone()));
                return Json(LeaseReply { leases });
            }
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Json(LeaseReply { leases: vec![] });
        }
    }
}

async fn extend(State(m): State<Shared>, Path(id): Path<String>) -> Response {
    let g = lock(&m.0);
    if g.lost.contains(&id) {
        return problem(StatusCode::CONFLICT, "lease_lost");
    }
    Json(ExtendReply {
        lease_expires_at: "2026-01-01T00:00:30.000Z".into(),
        cancel_requested: false,
    })
    .into_response()
}

async fn extend_many(
    State(m): State<Shared>,
    Json(batch): Json<ExtendBatch>,
) -> Json<ExtendBatchReply> {
    let g = lock(&m.0);
    let results = batch
        .leases
        .iter()
        .map(|l| {
            let lost = g.lost.contains(&l.task_id);
            RenewalResult {
                task_id: l.task_id.clone(),
                status: if lost {
                    RenewalStatus::Conflict
                } else {
                    RenewalStatus::Extended
                },
                code: lost.then(|| "lease_lost".to_string()),
                lease_expires_at: (!lost).then(|| "2026-01-01T00:00:30.000Z".to_string()),
                cancel_requested: false,
            }
        })
        .collect();
    Json(ExtendBatchReply { results })
}

async fn reports(State(m): State<Shared>, Json(batch): Json<ReportBatch>) -> Response {
    let mut g = lock(&m.0);
    if g.refuse_lease_max && batch.lease_max.is_some() {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
    }
    g.report_calls += 1;

    let results = batch
        .reports
        .iter()
        .map(|r| ReportResult {
            task_id: r.task_id.clone(),
            status: 200,
            code: None,
            state: Some(TaskState::Succeeded),
        })
        .collect();
    g.reports.extend(batch.reports);
    let max = batch.lease_max.unwrap_or(0);
    g.lease_max_asked = g.lease_max_asked.max(max);
    let n = (max as usize).min(g.queue.len());
    let leases: Vec<Lease> = g.queue.drain(..n).collect();
    g.leased.extend(leases.iter().map(|l| l.task.id.clone()));
    g.leased_with_reports += leases.len();
    Json(ReportBatchReply { results, leases }).into_response()
}

async fn deregister(State(m): State<Shared>, Path(id): Path<String>) -> StatusCode {
    lock(&m.0).deregistered.push(id);
    StatusCode::NO_CONTENT
}

async fn start_mock() -> (String, Shared) {
    let shared: Shared = Arc::new((Mutex::new(Mock::default()), tokio::sync::Notify::new()));
    let app = Router::new()
        .route("/v1/nodes", post(register))
        .route("/v1/nodes/{id}/heartbeat", post(heartbeat))
        .route("/v1/nodes/{id}/lease", post(lease_route))
        .route("/v1/nodes/{id}/reports", post(reports))
        .route("/v1/nodes/{id}/extend", post(extend_many))
        .route("/v1/nodes/{id}", delete(deregister))
        .route("/v1/tasks/{id}/extend", post(extend))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), shared)
}

fn push(m: &Shared, leases: Vec<Lease>) {
    lock(&m.0).queue.extend(leases);
    m.1.notify_waiters();
}

async fn wait_for(m: &Shared, what: &str, f: impl Fn(&Mock) -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f(&lock(&m.0)) {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report_of<'a>(m: &'a Mock, id: &str) -> Option<&'a Report> {
    m.reports.iter().find(|r| r.task_id == id)
}

fn config(server: String, capacity: u32, grace: Duration) -> AgentConfig {
    // A dead URL first: the client must fail over to the mock.
    let mut c = tests::config(vec!["http://127.0.0.1:9".into(), server]);
    c.capacity = capacity;
    c.name = "test-agent".into();
    c.grace = grace;
    c
}

/// Starts an agent of `capacity` against a fresh mock and waits for its registration.
async fn start_agent(
    capacity: u32,
    grace: Duration,
) -> (
    Shared,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (url, m) = start_mock().await;
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run(config(url, capacity, grace), shutdown.clone()));
    wait_for(&m, "registration", |g| g.registered == 1).await;
    (m, shutdown, agent)
}

#[tokio::test]
async fn runs_reports_cancels_and_drops_lost_leases() {
    let (m, shutdown, agent) = start_agent(3, Duration::from_secs(5)).await;

    push(
        &m,
        vec![
            lease("t1", "echo", json!({"x": 1}), 5000, 1),
            lease("t2", "sleep", json!({"ms": 20000}), 30000, 1),
            lease("t3", "sleep", json!({"ms": 20000}), 300, 1),
            lease("t4", "fail_once", json!({"text": "a"}), 5000, 1),
        ],
    );
    {
        let mut g = lock(&m.0);
        g.lost.push("t3".into());
        g.cancel.push("t2".into());
    }
    wait_for(&m, "reports of t1, t2, t4", |g| {
        ["t1", "t2", "t4"]
            .iter()
            .all(|id| report_of(g, id).is_some())
    })
    .await;
    // The lost lease also frees its slot, then nothing more is reported for it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    {
        let g = lock(&m.0);
        let t1 = report_of(&g, "t1").expect("t1");
        assert_eq!(t1.outcome, ReportOutcome::Succeeded);
        assert_eq!(t1.result, Some(json!({"x": 1})));
        assert_eq!(t1.lease_token, "1.t1");
        let t2 = report_of(&g, "t2").expect("t2");
        assert_eq!(t2.outcome, ReportOutcome::Failed);
        assert_eq!(t2.error.as_deref(), Some("cancelled"));
        assert_eq!(t2.retryable, Some(false));
        let t4 = report_of(&g, "t4").expect("t4");
        assert_eq!(t4.outcome, ReportOutcome::Failed);
        assert_eq!(t4.retryable, Some(true));
        assert!(
            report_of(&g, "t3").is_none(),
            "a lost lease must not be reported"
        );
        assert!(
            g.max_asked <= 3,
            "asked for {} with capacity 3",
            g.max_asked
        );
    }

    shutdown.cancel();
    let r = tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("agent stops")
        .expect("join");
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(lock(&m.0).deregistered, vec!["node1".to_string()]);
}

#[tokio::test]
async fn full_node_does_not_lease_and_shutdown_kills_after_grace() {
    let (url, m) = start_mock().await;
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run(
        config(url, 1, Duration::from_millis(200)),
        shutdown.clone(),
    ));
    push(
        &m,
        vec![lease("long", "sleep", json!({"ms": 20000}), 30000, 1)],
    );
    wait_for(&m, "the lease", |g| g.leased.len() == 1).await;
    push(&m, vec![lease("queued", "echo", json!(1), 5000, 1)]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lock(&m.0).leased.len(), 1, "a full node must not lease");

    let t = Instant::now();
    shutdown.cancel();
    let r = tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("agent stops")
        .expect("join");
    assert!(r.is_ok(), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let g = lock(&m.0);
    let rep = report_of(&g, "long").expect("killed task reported");
    assert_eq!(rep.error.as_deref(), Some("agent shutting down"));
    assert_eq!(rep.retryable, Some(true));
    assert_eq!(g.leased, vec!["long".to_string()]);
    assert_eq!(g.deregistered.len(), 1);
}

#[tokio::test]
async fn many_outcomes_are_coalesced_into_few_report_calls() {
    let (m, shutdown, agent) = start_agent(64, Duration::from_secs(5)).await;
    let leases = (0..200)
        .map(|i| lease(&format!("n{i}"), "noop", Value::Null, 5000, 1))
        .collect();
    push(&m, leases);
    wait_for(&m, "200 reports", |g| g.reports.len() == 200).await;
    let calls = lock(&m.0).report_calls;
    assert!(calls < 200, "{calls} report calls for 200 outcomes");
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("agent stops");
}

#[tokio::test]
async fn a_forgotten_node_registers_again() {
    let (m, shutdown, agent) = start_agent(1, Duration::from_secs(5)).await;
    lock(&m.0).forgotten.push("node1".into());
    wait_for(&m, "re-registration", |g| g.registered == 2).await;
    push(&m, vec![lease("after", "echo", json!("hi"), 5000, 1)]);
    wait_for(&m, "the report", |g| report_of(g, "after").is_some()).await;
    assert_eq!(
        lock(&m.0).lease_nodes.last().map(String::as_str),
        Some("node2")
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("agent stops");
    assert_eq!(lock(&m.0).deregistered, vec!["node2".to_string()]);
}

/// A handler that counts how many of its runs overlap (each takes a millisecond).
#[derive(Default)]
struct Overlap {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl Handler for Overlap {
    fn run<'a>(
        &'a self,
        _lease: &'a Lease,
        _ctx: TaskContext,
    ) -> futures::future::BoxFuture<'a, Result<Value, ExecError>> {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            let n = self.now.fetch_add(1, SeqCst) + 1;
            self.most.fetch_max(n, SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.now.fetch_sub(1, SeqCst);
            Ok(Value::Null)
        })
    }
}

/// Runs an agent of `capacity` slots with an [`Overlap`] handler on `n` tasks and
/// waits for their reports; `refuse` makes the mock refuse `lease_max`.
async fn run_overlapping(capacity: u32, n: usize, refuse: bool) -> (Shared, Arc<Overlap>) {
    let (url, m) = start_mock().await;
    lock(&m.0).refuse_lease_max = refuse;
    let handler = Arc::new(Overlap::default());
    let mut c = config(url, capacity, Duration::from_secs(5));
    c.executor = Executor::Handler(handler.clone());
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run(c, shutdown.clone()));
    let leases = (0..n)
        .map(|i| lease(&format!("b{i}"), "any", Value::Null, 5000, 1))
        .collect();
    push(&m, leases);
    wait_for(&m, "every report", |g| g.reports.len() == n).await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("agent stops");
    {
        let g = lock(&m.0);
        let mut ids: Vec<&str> = g.reports.iter().map(|r| r.task_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "each task reported once");
        // A lease granted beyond the free slots would be given back as a failure.
        assert!(
            g.reports
                .iter()
                .all(|r| r.outcome == ReportOutcome::Succeeded),
            "every task ran: none was given back"
        );
    }
    let most = handler.most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        most <= capacity as usize,
        "{most} handlers at once with {capacity} slots"
    );
    (m, handler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_agent_takes_its_next_tasks_with_its_reports_and_never_runs_more_than_its_capacity()
{
    let (m, _) = run_overlapping(8, 400, false).await;
    let g = lock(&m.0);
    assert!(
        g.leased_with_reports > 200,
        "most tasks came with the answers to reports: {} of 400 ({} lease calls)",
        g.leased_with_reports,
        g.lease_nodes.len()
    );
    assert!(
        g.lease_max_asked <= 8,
        "asked {} with 8 slots",
        g.lease_max_asked
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_server_that_refuses_lease_max_the_long_poll_alone_leases_and_no_report_is_lost()
{
    let (m, _) = run_overlapping(4, 50, true).await;
    let g = lock(&m.0);
    assert_eq!(g.leased_with_reports, 0);
    assert_eq!(g.leased.len(), 50, "all through the long-poll");
}
