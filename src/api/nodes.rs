//! Node routes and the agent protocol: register, list, heartbeat, drain, deregister,
//! lease (long-poll), batched lease renewals and batched reports.

use super::auth::{Authorized, Caller, NeedAgent, NeedPathNode, Principal, Role};
use super::error::{ApiError, ApiResult};
use super::openapi::parts::{BadRequest, Guarded, Invalid, JsonBody, NotFound};
use super::tasks::{after_report, error_text, progress_json, result_json};
use super::{AppState, Json, MAX_BATCH, MAX_WAIT_MS};
use crate::domain::{
    ExtendBatch, ExtendBatchReply, HeartbeatReply, Lease, LeaseReply, LeaseRequest,
    MAX_EXTEND_BATCH, Node, NodeKind, NodeList, NodeRegistered, NodeStatus, RegisterNode,
    RenewalResult, RenewalStatus, ReportBatch, ReportBatchReply, ReportOutcome, ReportResult,
    rfc3339_ms, validate,
};
use crate::store::dispatch::Pull;
use crate::store::reports::{Outcome, Report};
use crate::store::{NodeRecord, StoreError, token_sha};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use std::time::Duration;

async fn node_or_404(st: &AppState, id: &str) -> ApiResult<NodeRecord> {
    st.directory.get(&st.store, id).await?.ok_or_else(|| {
        ApiError::NotFound(format!("no node {id}; register again with POST /v1/nodes"))
    })
}

#[utoipa::path(
    post,
    path = "/v1/nodes",
    tag = "nodes",
    summary = "Register a node; the answer carries its token",
    request_body = RegisterNode,
    responses(
        (status = 201, body = NodeRegistered, description = "The node and its token"),
        JsonBody,
        Invalid,
        Guarded
    )
)]
/// `POST /v1/nodes`: register a node; the answer carries its token, shown once.
///
/// # Errors
/// 422 invalid fields.
pub async fn nodes_register(
    State(st): State<AppState>,
    who: Authorized<NeedAgent>,
    caller: Caller,
    Json(body): Json<RegisterNode>,
) -> ApiResult<(StatusCode, Json<NodeRegistered>)> {
    who.require(Role::Agent)?;
    let bad = |m: String| ApiError::invalid("invalid_node", m);
    validate::text("name", &body.name, 256).map_err(bad)?;
    let queues = if body.queues.is_empty() {
        vec!["default".to_string()]
    } else {
        body.queues
    };
    if queues.len() > 64 {
        return Err(bad("at most 64 queues".into()));
    }
    for q in &queues {
        validate::queue_name(q).map_err(|e| bad(format!("queues: {e}")))?;
    }
    if body.tags.len() > 64 {
        return Err(bad("at most 64 tags".into()));
    }
    for t in &body.tags {
        validate::tag(t).map_err(|e| bad(format!("tags: {e}")))?;
    }
    let capacity = body.capacity.unwrap_or(1);
    if !(1..=10_000).contains(&capacity) {
        return Err(bad("capacity must be 1 to 10000".into()));
    }
    let kind = body.kind.unwrap_or_default();
    for q in &queues {
        caller.allow(q)?;
    }
    let names: Vec<&str> = queues.iter().map(String::as_str).collect();
    super::quota::claim_queues(&st, &caller, &names).await?;
    // A person (`human` node) pulls pending tasks itself, past the dispatcher: only
    // from human-only queues, unless an admin says otherwise (issue 16 item 7).
    if kind == NodeKind::Human && !who.0.eq(&Principal::Admin) {
        for q in &queues {
            if !st.store.queue_conf(q).await?.2 {
                return Err(ApiError::Forbidden(format!(
                    "a human node may only serve human-only queues; {q:?} is not \
                     (an admin sets it with PUT /v1/queues/{q} {{\"human_only\": true}})"
                )));
            }
        }
    }
    let mut queues_dedup = queues;
    queues_dedup.sort();
    queues_dedup.dedup();
    let id = ulid::Ulid::generate().to_string();
    let token = format!("{id}.{}", hex::encode(rand::random::<[u8; 32]>()));
    let mut node = Node {
        id: id.clone(),
        name: body.name,
        kind,
        status: NodeStatus::Active,
        queues: queues_dedup,
        tags: body.tags,
        capacity,
        running: 0,
        succeeded: 0,
        failed: 0,
        mean_run_ms: None,
        registered_at: String::new(),
        last_seen_at: String::new(),
    };
    // The registering token's quotas hold for the node's streams and locks.
    let owner = caller.id.strip_prefix("token:").unwrap_or("");
    let now = st
        .store
        .register_node(&node, &token_sha(&token), owner)
        .await?;
    node.registered_at = rfc3339_ms(now);
    node.last_seen_at = rfc3339_ms(now);
    st.directory.invalidate();
    for q in &node.queues {
        st.hub.mark_dirty(q);
    }
    tracing::info!(node_id = %id, name = %node.name, "node registered");
    Ok((
        StatusCode::CREATED,
        Json(NodeRegistered {
            id,
            token,
            heartbeat_interval_ms: st.config.heartbeat_interval.as_millis() as u64,
            node,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "nodes",
    summary = "List nodes",
    responses(
        (status = 200, body = NodeList, description = "Nodes"),
        Guarded
    )
)]
/// `GET /v1/nodes`.
///
/// # Errors
/// 503 Redis down.
pub async fn nodes_list(
    State(st): State<AppState>,
    who: Principal,
    caller: Caller,
) -> ApiResult<Json<NodeList>> {
    who.require(Role::Read)?;
    // A token limited to some queues sees the nodes serving one of them.
    let items = st
        .store
        .nodes()
        .await?
        .into_iter()
        .map(|r| r.node)
        .filter(|n| !caller.scoped() || n.queues.iter().any(|q| caller.reaches(q)))
        .collect();
    Ok(Json(NodeList { items }))
}

#[utoipa::path(
    get,
    path = "/v1/nodes/{id}",
    tag = "nodes",
    summary = "Read a node",
    responses(
        (status = 200, body = Node, description = "The node"),
        NotFound,
        Guarded
    )
)]
/// `GET /v1/nodes/{id}` (admin or the node itself).
///
/// # Errors
/// 404.
#[tracing::instrument(skip_all, fields(node_id = %id))]
pub async fn nodes_get(
    State(st): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Node>> {
    if who.require_node(&id).is_err() {
        who.require(Role::Read)?;
    }
    let n = st
        .store
        .node(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no node {id}")))?;
    Ok(Json(n.node))
}

#[utoipa::path(
    delete,
    path = "/v1/nodes/{id}",
    tag = "nodes",
    summary = "Deregister a node; its inbox goes back to pending",
    responses(
        (status = 204, description = "Deregistered"),
        NotFound,
        Guarded
    )
)]
/// `DELETE /v1/nodes/{id}`: the node leaves; its inbox goes back to pending.
///
/// # Errors
/// 404.
#[tracing::instrument(skip_all, fields(node_id = %id))]
pub async fn nodes_delete(
    State(st): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    who.require_node(&id)?;
    let rec = node_or_404(&st, &id).await?;
    let n = st.store.delete_node(&rec.node).await?;
    st.directory.invalidate();
    for q in &rec.node.queues {
        st.hub.mark_dirty(q);
    }
    st.hub.wake_node(&id);
    tracing::info!(node_id = %id, requeued = n, "node deregistered");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{id}/drain",
    tag = "nodes",
    summary = "Drain a node: no new work, inbox back to pending",
    responses(
        (status = 200, body = Node, description = "The node, draining"),
        NotFound,
        Guarded
    )
)]
/// `POST /v1/nodes/{id}/drain`: no new work; its inbox goes back to pending.
///
/// # Errors
/// 404.
#[tracing::instrument(skip_all, fields(node_id = %id))]
pub async fn nodes_drain(
    State(st): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Node>> {
    who.require_node(&id)?;
    let rec = node_or_404(&st, &id).await?;
    st.store.set_node_status(&id, NodeStatus::Draining).await?;
    st.store.requeue_node(&rec.node).await?;
    st.directory.invalidate();
    for q in &rec.node.queues {
        st.hub.mark_dirty(q);
    }
    st.hub.wake_node(&id);
    let n = st
        .store
        .node(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no node {id}")))?;
    Ok(Json(n.node))
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{id}/heartbeat",
    tag = "agent protocol",
    summary = "Heartbeat; answers the running tasks to stop",
    responses(
        (status = 200, body = HeartbeatReply, description = "Status and cancellations"),
        NotFound,
        Guarded
    )
)]
/// `POST /v1/nodes/{id}/heartbeat` → status and the running tasks to stop.
///
/// # Errors
/// 404 (register again).
#[tracing::instrument(skip_all, fields(node_id = %id))]
pub async fn nodes_heartbeat(
    State(st): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<HeartbeatReply>> {
    who.require_node(&id)?;
    let rec = node_or_404(&st, &id).await?;
    let (status, _) = st
        .store
        .heartbeat(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no node {id}; register again")))?;
    if status != rec.node.status {
        st.directory.invalidate();
    }
    let cancel = st.store.node_cancels(&rec.node).await?;
    Ok(Json(HeartbeatReply { status, cancel }))
}

/// A lease as the API answers it, its wait (due → started) observed in the metrics.
fn as_lease(l: crate::store::Leased) -> Lease {
    let due = l
        .task
        .run_at
        .as_deref()
        .and_then(crate::domain::parse_rfc3339_ms);
    let started = l
        .task
        .started_at
        .as_deref()
        .and_then(crate::domain::parse_rfc3339_ms);
    if let (Some(d), Some(s)) = (due, started) {
        crate::metrics::METRICS
            .wait
            .with_label_values(&[l.task.queue.as_str()])
            .observe((s - d).max(0) as f64 / 1000.0);
    }
    Lease {
        fence: l.task.fence,
        lease_expires_at: rfc3339_ms(l.expires_ms),
        lease_token: l.token,
        task: l.task,
    }
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{id}/lease",
    tag = "agent protocol",
    summary = "Lease tasks, long-polling up to wait_ms",
    request_body(content = Option<LeaseRequest>, description = "Empty means max 1, wait_ms 0"),
    responses(
        (status = 200, body = LeaseReply, description = "Granted leases, possibly none"),
        BadRequest,
        NotFound,
        Invalid,
        Guarded
    )
)]
/// `POST /v1/nodes/{id}/lease` → up to `max` leases, long-polling up to `wait_ms`.
///
/// # Errors
/// 404, 422 bad limits.
#[tracing::instrument(skip_all, fields(node_id = %id))]
pub async fn nodes_lease(
    State(st): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Json<LeaseReply>> {
    who.require_node(&id)?;
    // An empty body means the defaults (whitespace is not empty: it is not JSON).
    let req: LeaseRequest = if body.is_empty() {
        LeaseRequest::default()
    } else {
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad("malformed_json", format!("malformed JSON: {e}")))?;
        match v {
            serde_json::Value::Null => LeaseRequest::default(),
            v @ serde_json::Value::Object(_) => serde_json::from_value(v)
                .map_err(|e| ApiError::invalid("invalid_body", e.to_string()))?,
            _ => {
                return Err(ApiError::invalid(
                    "invalid_body",
                    "the body must be a JSON object or null",
                ));
            }
        }
    };
    let max = req.max.unwrap_or(1);
    if !(1..=1000).contains(&max) {
        return Err(ApiError::invalid("invalid_lease", "max must be 1 to 1000"));
    }
    let wait_ms = req.wait_ms.unwrap_or(0);
    if !(0..=MAX_WAIT_MS).contains(&wait_ms) {
        return Err(ApiError::invalid(
            "invalid_lease",
            format!("wait_ms must be 0 to {MAX_WAIT_MS}"),
        ));
    }
    let rec = node_or_404(&st, &id).await?;
    // A lease call is also a sign of life.
    if st.store.heartbeat(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!("no node {id}; register again")));
    }
    let human = rec.node.kind == NodeKind::Human;
    let max = if human { 1 } else { max as usize };
    let tags = rec.node.tags.join(",");
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(wait_ms as u64).min(st.config.max_wait);
    let notify = st.hub.node(&id);
    let res: ApiResult<Vec<Lease>> = async {
        let mut out = Vec::new();
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            lease_ready(&st, &id, &rec, max, human.into(), &tags, &mut out).await?;
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
            // Woken by the dispatcher (or the `assigned` hint of another replica); the
            // jittered re-check only bounds what a lost hint costs.
            let nap = deadline.min(tokio::time::Instant::now() + crate::service::hub::recheck());
            if human || rec.node.status == NodeStatus::Draining {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(nap) => {}
                }
                continue;
            }
            // Offered to this process's dispatcher, which may lease tasks to this
            // long-poll directly (one script instead of inbox + lease).
            let (offer, mut handed) = st.hub.offer(&id, max);
            let got = tokio::select! {
                r = &mut handed => r.ok(),
                _ = notified => None,
                _ = tokio::time::sleep_until(nap) => None,
            };
            let got = match got {
                Some(l) => Some(l),
                None => loop {
                    if offer.withdraw() {
                        break None;
                    }
                    // The dispatcher holds the offer for the one script it is running:
                    // its leases come now, or the offer is put back.
                    match tokio::time::timeout(Duration::from_millis(5), &mut handed).await {
                        Ok(r) => break r.ok(),
                        Err(_) => continue,
                    }
                },
            };
            drop(offer);
            if let Some(leases) = got
                && !leases.is_empty()
            {
                // Answered at once: another look would be a script for nothing.
                out.extend(leases.into_iter().map(as_lease));
                return Ok(out);
            }
        }
    }
    .await;
    st.hub.release_node(&id, notify);
    if res.as_ref().is_ok_and(|out| out.len() >= max) {
        // Came back full: the inbox may hold more, for another long-poll of this node
        // (the dispatcher woke only one).
        st.hub.wake_node_one(&id);
    }
    Ok(Json(LeaseReply { leases: res? }))
}

/// Leases what node `id` can have at once, up to `max` in `out` (nothing for a draining
/// node): direct leases whose long-poll had left before they came, then its inbox,
/// queue by queue; with `pull` also the queue's pending tasks, under its limits.
async fn lease_ready(
    st: &AppState,
    id: &str,
    rec: &NodeRecord,
    max: usize,
    pull: Pull,
    tags: &str,
    out: &mut Vec<Lease>,
) -> ApiResult<()> {
    if rec.node.status == NodeStatus::Draining {
        return Ok(());
    }
    let handed = st.hub.take_handed(id, max - out.len());
    out.extend(handed.into_iter().map(as_lease));
    for q in &rec.node.queues {
        if out.len() >= max {
            break;
        }
        let (queue, node, tags, n) = (q.clone(), id.to_string(), tags.to_string(), max - out.len());
        let (hub, holder) = (st.hub.clone(), id.to_string());
        // Leases granted after this call answered 503 (Redis slower than the timeout)
        // reach the node through its next lease or report call.
        let leased = st
            .store
            .lease_in_time(
                "leasing tasks",
                move |s| async move { s.lease(&queue, &node, n, pull, &tags).await },
                move |late| hub.hand_back(&holder, late),
            )
            .await?;
        out.extend(leased.into_iter().map(as_lease));
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{id}/reports",
    tag = "agent protocol",
    summary = "Report many completions and failures",
    request_body = ReportBatch,
    responses(
        (status = 200, body = ReportBatchReply, description = "One result per report"),
        JsonBody,
        NotFound,
        Invalid,
        Guarded
    )
)]
/// `POST /v1/nodes/{id}/reports`: many completions and failures in one call; each item
/// answers what the single route would have.
///
/// # Errors
/// 404 node, 422 too many reports.
#[tracing::instrument(skip_all, fields(node_id = %id))]
pub async fn nodes_reports(
    State(st): State<AppState>,
    who: Authorized<NeedPathNode>,
    Path(id): Path<String>,
    Json(body): Json<ReportBatch>,
) -> ApiResult<Json<ReportBatchReply>> {
    who.require_node(&id)?;
    if body.reports.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "batch_too_long",
            format!("at most {MAX_BATCH} reports per call"),
        ));
    }
    if body.reports.iter().any(|r| r.task_id.is_empty()) {
        return Err(ApiError::invalid(
            "invalid_task_id",
            "every report names its task_id (an empty one names no task)",
        ));
    }
    let lease_max = body.lease_max.unwrap_or(0);
    if !(0..=1000).contains(&lease_max) {
        return Err(ApiError::invalid(
            "invalid_lease",
            "lease_max must be 0 to 1000",
        ));
    }
    let rec = node_or_404(&st, &id).await?;
    // Admin callers report on behalf of this node: the lease must be the node's.
    let node = Some(id.as_str());
    // Results too large are refused per item, before any write; the rest go to Redis
    // in one script call per queue (report_many.lua).
    let mut texts: Vec<ApiResult<String>> = Vec::with_capacity(body.reports.len());
    for r in &body.reports {
        texts.push(match r.outcome {
            ReportOutcome::Succeeded => result_json(&r.result),
            ReportOutcome::Failed => Ok(error_text(&r.error)),
        });
    }
    let mut idx = Vec::with_capacity(body.reports.len());
    let mut batch = Vec::with_capacity(body.reports.len());
    for (i, (r, t)) in body.reports.iter().zip(&texts).enumerate() {
        if let Ok(t) = t {
            idx.push(i);
            batch.push(Report {
                id: &r.task_id,
                token: &r.lease_token,
                outcome: match r.outcome {
                    ReportOutcome::Succeeded => Outcome::Succeeded(t),
                    ReportOutcome::Failed => Outcome::Failed {
                        error: t,
                        retryable: r.retryable.unwrap_or(true),
                    },
                },
            });
        }
    }
    // A node that asks for its next tasks fills the slots its reports free itself: the
    // dispatcher leaves it alone until its leases are granted.
    let pulling =
        (lease_max > 0 && rec.node.status != NodeStatus::Draining).then(|| st.hub.pulling(&id));
    let (stored, echoes) = st.store.report_many_echoed(node, &batch).await?;
    for msg in echoes {
        // Acted on here (after_report below): the reconciler skips the echo.
        st.hub.expect_echo(msg);
    }
    let mut stored = stored.into_iter();
    let mut idx = idx.into_iter().peekable();
    let mut results = Vec::with_capacity(body.reports.len());
    for (i, (r, t)) in body.reports.into_iter().zip(texts).enumerate() {
        let res = match t {
            Err(e) => Err(e),
            Ok(_) if idx.peek() == Some(&i) => {
                idx.next();
                stored
                    .next()
                    .unwrap_or_else(|| Err(StoreError::Protocol("no reply".into())))
                    .map_err(ApiError::from)
            }
            Ok(_) => Err(ApiError::from(StoreError::Protocol("no reply".into()))),
        };
        results.push(match res {
            Ok(rep) => {
                after_report(&st, &r.task_id, &rep);
                ReportResult {
                    task_id: r.task_id,
                    status: 200,
                    code: None,
                    state: Some(rep.state),
                }
            }
            Err(e) => {
                let p = e.problem();
                ReportResult {
                    task_id: r.task_id,
                    status: p.status,
                    code: Some(p.code),
                    state: None,
                }
            }
        });
    }
    // The slots these reports freed, filled in the same call: the node pulls its next
    // tasks itself (a busy worker need not wait for the dispatcher's next pass).
    let mut leases = Vec::new();
    if lease_max > 0 {
        let human = rec.node.kind == NodeKind::Human;
        let max = if human {
            1
        } else {
            (lease_max as usize).min(rec.node.capacity as usize)
        };
        let tags = rec.node.tags.join(",");
        let pull = if human { Pull::Person } else { Pull::Machine };
        lease_ready(&st, &id, &rec, max, pull, &tags, &mut leases).await?;
        if pulling.is_some() && leases.len() < max {
            // Slots left free (or tasks that came meanwhile): the dispatcher's turn.
            drop(pulling);
            for q in &rec.node.queues {
                st.hub.mark_dirty(q);
            }
        }
    }
    Ok(Json(ReportBatchReply { results, leases }))
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{id}/extend",
    tag = "agent protocol",
    summary = "Renew many leases of a node (and report progress)",
    request_body = ExtendBatch,
    responses(
        (status = 200, body = ExtendBatchReply, description = "One result per lease, in request order"),
        JsonBody,
        NotFound,
        Invalid,
        Guarded
    )
)]
/// `POST /v1/nodes/{id}/extend`: the batched form of `POST /v1/tasks/{id}/extend`, so
/// that an agent renews all its leases in one call per round. A lease that is not the
/// node's current one answers `conflict` (or `not_found`) on its own; the others are
/// renewed.
///
/// # Errors
/// 404 node, 422 empty or more than 1,000 leases (or progress that is not storable),
/// 413 progress over 64 KiB.
#[tracing::instrument(skip_all, fields(node_id = %id))]
pub async fn nodes_extend(
    State(st): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
    Json(body): Json<ExtendBatch>,
) -> ApiResult<Json<ExtendBatchReply>> {
    who.require_node(&id)?;
    if body.leases.is_empty() || body.leases.len() > MAX_EXTEND_BATCH {
        return Err(ApiError::invalid(
            "batch_too_long",
            format!("1 to {MAX_EXTEND_BATCH} leases per call"),
        ));
    }
    if body.leases.iter().any(|l| l.task_id.is_empty()) {
        return Err(ApiError::invalid(
            "invalid_task_id",
            "every lease names its task_id (an empty one names no task)",
        ));
    }
    node_or_404(&st, &id).await?;
    let progress = body
        .leases
        .iter()
        .map(|l| progress_json(&l.progress))
        .collect::<ApiResult<Vec<_>>>()?;
    let items: Vec<(&str, &str, Option<&str>)> = body
        .leases
        .iter()
        .zip(&progress)
        .map(|(l, p)| (l.task_id.as_str(), l.lease_token.as_str(), p.as_deref()))
        .collect();
    // Admin callers renew on behalf of this node: the lease must be the node's.
    let stored = st.store.extend_many(Some(id.as_str()), &items).await;
    let mut results = Vec::with_capacity(stored.len());
    for (l, r) in body.leases.iter().zip(stored) {
        results.push(match r {
            Ok(e) => RenewalResult {
                task_id: l.task_id.clone(),
                status: RenewalStatus::Extended,
                code: None,
                lease_expires_at: Some(rfc3339_ms(e.expires_ms)),
                cancel_requested: e.cancel_requested,
            },
            Err(e) => {
                let status = match &e {
                    StoreError::NotFound { .. } => RenewalStatus::NotFound,
                    StoreError::LeaseConflict { .. } => RenewalStatus::Conflict,
                    // Redis trouble fails the whole call (5xx, retried by the agent).
                    _ => return Err(e.into()),
                };
                RenewalResult {
                    task_id: l.task_id.clone(),
                    status,
                    code: Some(ApiError::from(e).problem().code),
                    lease_expires_at: None,
                    cancel_requested: false,
                }
            }
        });
    }
    Ok(Json(ExtendBatchReply { results }))
}
