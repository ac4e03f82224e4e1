//! Task routes: submit (single, batch), read, list, wait, cancel, retry, delete, and
//! the lease operations of the agent protocol (extend, complete, fail).

use super::auth::{Authorized, Caller, NeedLeaseHolder, NeedSubmit, Principal, Role};
use super::error::{ApiError, ApiResult};
use super::openapi::parts::{
    BadRequest, Conflict, Guarded, Invalid, InvalidOrReused, JsonBody, NotFound, UnknownDependency,
};
use super::quota;
use super::{AppState, Json, MAX_BATCH, MAX_PAYLOAD, MAX_WAIT_MS};
use crate::domain::spec::IDEMPOTENCY_TTL_MS;
use crate::domain::{
    BatchCreated, CompleteRequest, ExtendReply, ExtendRequest, FailRequest, NewTask, NewTaskBatch,
    OnDependencyFailure, Task, TaskPage, TaskSpec, TaskState, rfc3339_ms, validate,
};
use crate::service::hub::NodeStats;
use crate::service::submit::{self, Idempotency};
use crate::store::{Cancelled, PreparedTask, Reported, Submitted};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// Validates a submission into a task ready to store. `at` names it in errors.
///
/// # Errors
/// 422 naming the field and the rule, 413 for a payload over the limit.
pub fn prepare(t: NewTask, at: &str) -> ApiResult<PreparedTask> {
    Ok(TaskSpec::parse(t, at)?)
}

/// Prefixes of the idempotency keys muster derives for its own submissions
/// (`schedule:<name>:<tick ms>`, `batch-then:<batch id>`), refused from callers.
pub const RESERVED_IDEMPOTENCY_PREFIXES: [&str; 2] = ["schedule:", "batch-then:"];

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .ok()
                .filter(|s| {
                    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
                })
                .ok_or_else(|| {
                    ApiError::bad(
                        "bad_idempotency_key",
                        "Idempotency-Key must be 1 to 256 visible ASCII characters",
                    )
                })?;
            // muster's own submissions (a schedule's fire, a batch's `then` task) use
            // keys of these forms; a caller's key must not pre-empt them.
            if RESERVED_IDEMPOTENCY_PREFIXES
                .iter()
                .any(|p| s.starts_with(p))
            {
                return Err(ApiError::bad(
                    "bad_idempotency_key",
                    format!(
                        "Idempotency-Key may not start with {}: those are muster's own",
                        RESERVED_IDEMPOTENCY_PREFIXES.join(" or ")
                    ),
                ));
            }
            Ok(Some(s.to_string()))
        }
    }
}

/// Stores validated tasks through the one submit path ([`crate::service::submit`]).
pub(crate) async fn store_tasks(
    st: &AppState,
    tasks: &mut [PreparedTask],
    idem: Option<&str>,
) -> ApiResult<Submitted> {
    store_tasks_bound(st, tasks, idem, "").await
}

/// [`store_tasks`] with the idempotency key bound to a caller and body
/// ([`submit::binding`]): reused by another caller or with another body, 422
/// `idempotency_key_reused` and nothing stored.
async fn store_tasks_bound(
    st: &AppState,
    tasks: &mut [PreparedTask],
    idem: Option<&str>,
    binding: &str,
) -> ApiResult<Submitted> {
    let idem = idem.map(|key| Idempotency {
        key,
        ttl_ms: IDEMPOTENCY_TTL_MS,
        binding,
    });
    Ok(submit::submit(&st.store, &st.hub, tasks, idem).await?)
}

/// The binding of a submission's `Idempotency-Key`: the caller and the body as parsed
/// (canonical JSON: the same body sent with other spacing or key order binds the same).
fn idem_binding<T: serde::Serialize>(caller: &Caller, route: &str, body: &T) -> ApiResult<String> {
    let json = serde_json::to_vec(body).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(submit::binding(&caller.id, route, &json))
}

/// The record `submit.lua` just wrote, built without reading it back: the fields as
/// submitted, and the state and due time the script chose.
fn created(t: PreparedTask, now_ms: i64, (state, run_at): (TaskState, i64)) -> Task {
    Task {
        id: t.id,
        queue: t.queue,
        kind: t.kind,
        payload: serde_json::from_str(&t.payload).unwrap_or(serde_json::Value::Null),
        priority: t.priority,
        state,
        attempts: 0,
        max_attempts: t.max_attempts,
        timeout_ms: t.timeout_ms,
        max_run_ms: t.max_run_ms,
        requires: t.requires,
        node: None,
        result: None,
        error: None,
        progress: None,
        fence: 0,
        created_at: rfc3339_ms(now_ms),
        run_at: Some(rfc3339_ms(run_at)),
        started_at: None,
        finished_at: None,
        lease_expires_at: None,
        cancel_requested: false,
        on_dependency_failure: (!t.depends_on.is_empty())
            .then(|| t.on_dependency_failure.unwrap_or(OnDependencyFailure::Fail)),
        depends_on: t.depends_on,
        unique_key: t.unique_key,
        concurrency_key: t.concurrency.as_ref().map(|c| c.0.clone()),
        concurrency_limit: t.concurrency.as_ref().map(|c| c.1),
        batch: t.batch,
        origin: t.origin,
        result_schema: t.result_schema.and_then(|r| serde_json::from_str(&r).ok()),
    }
}

#[utoipa::path(
    post,
    path = "/v1/tasks",
    tag = "tasks",
    summary = "Submit a task",
    request_body = NewTask, params(("Idempotency-Key" = Option<String>, Header, description = "A repeat by the same caller with the same body returns the first answer and creates nothing; another caller or another body gets 422 idempotency_key_reused (kept 24 h). Keys starting with schedule: or batch-then: are muster's own (400)", pattern = r"^[!-~]{1,256}$")),
    responses(
        (status = 201, body = Task, description = "The task"),
        (status = 200, body = Task, description = "A live task of the queue holds the unique_key: that task; nothing created"),
        JsonBody,
        InvalidOrReused,
        UnknownDependency,
        Guarded
    )
)]
/// `POST /v1/tasks`: submit one task.
///
/// # Errors
/// 422 invalid task, 413 payload too large, 503 Redis down.
pub async fn tasks_create(
    State(st): State<AppState>,
    who: Authorized<NeedSubmit>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<NewTask>,
) -> ApiResult<(StatusCode, Json<Task>)> {
    who.require(Role::Submit)?;
    let idem = idempotency_key(&headers)?;
    let binding = match idem {
        Some(_) => idem_binding(&caller, "task", &body)?,
        None => String::new(),
    };
    let mut task = prepare(body, "")?;
    caller.allow(&task.queue)?;
    quota::claim_queues(&st, &caller, &[task.queue.as_str()]).await?;
    let one = std::slice::from_mut(&mut task);
    match store_tasks_bound(&st, one, idem.as_deref(), &binding).await? {
        Submitted::Created { existing, .. } if !existing.is_empty() => {
            // A live task holds the unique key: that one, and nothing created.
            Ok((StatusCode::OK, Json(st.store.task(&existing[0].1).await?)))
        }
        Submitted::Created { now_ms, chosen, .. } => match chosen.first().copied().flatten() {
            Some(chosen) => Ok((StatusCode::CREATED, Json(created(task, now_ms, chosen)))),
            // (A script that did not say: read what it wrote.)
            None => Ok((StatusCode::CREATED, Json(st.store.task(&task.id).await?))),
        },
        Submitted::Duplicate { ids } => {
            let id = ids
                .first()
                .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("empty idempotency record")))?;
            Ok((StatusCode::CREATED, Json(st.store.task(id).await?)))
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/tasks/batch",
    tag = "tasks",
    summary = "Submit up to 10,000 tasks, all or nothing",
    request_body = NewTaskBatch, params(("Idempotency-Key" = Option<String>, Header, description = "A repeat by the same caller with the same body returns the first answer and creates nothing; another caller or another body gets 422 idempotency_key_reused (kept 24 h). Keys starting with schedule: or batch-then: are muster's own (400)", pattern = r"^[!-~]{1,256}$")),
    responses(
        (status = 201, body = BatchCreated, description = "Ids in request order"),
        JsonBody,
        InvalidOrReused,
        UnknownDependency,
        Guarded
    )
)]
/// `POST /v1/tasks/batch`: up to 10,000 tasks, all validated first, stored all or nothing.
///
/// # Errors
/// 422 naming the first invalid task, 503 Redis down.
pub async fn tasks_batch(
    State(st): State<AppState>,
    who: Authorized<NeedSubmit>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<NewTaskBatch>,
) -> ApiResult<(StatusCode, Json<BatchCreated>)> {
    who.require(Role::Submit)?;
    let idem = idempotency_key(&headers)?;
    let binding = match idem {
        Some(_) => idem_binding(&caller, "batch", &body)?,
        None => String::new(),
    };
    if body.tasks.is_empty() {
        return Err(ApiError::invalid(
            "empty_batch",
            "tasks must hold at least one task",
        ));
    }
    if body.tasks.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "batch_too_long",
            format!(
                "a batch holds at most {MAX_BATCH} tasks, got {}; split it",
                body.tasks.len()
            ),
        ));
    }
    let mut tasks = body
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| prepare(t, &format!("tasks[{i}].")))
        .collect::<ApiResult<Vec<_>>>()?;
    for t in &tasks {
        caller.allow(&t.queue)?;
    }
    let queues: Vec<&str> = tasks.iter().map(|t| t.queue.as_str()).collect();
    quota::claim_queues(&st, &caller, &queues).await?;
    let ids = match store_tasks_bound(&st, &mut tasks, idem.as_deref(), &binding).await? {
        Submitted::Created { existing, .. } => {
            let mut ids: Vec<String> = tasks.into_iter().map(|t| t.id).collect();
            for (i, id) in existing {
                if let Some(slot) = ids.get_mut(i) {
                    *slot = id;
                }
            }
            ids
        }
        Submitted::Duplicate { ids } => ids,
    };
    Ok((StatusCode::CREATED, Json(BatchCreated { ids })))
}

#[utoipa::path(
    get,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    summary = "Read a task",
    responses(
        (status = 200, body = Task, description = "The task"),
        NotFound,
        Guarded
    )
)]
/// `GET /v1/tasks/{id}`.
///
/// # Errors
/// 404.
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn tasks_get(
    State(st): State<AppState>,
    who: Principal,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    who.require(Role::Read)?;
    allow_task(&caller, &id)?;
    Ok(Json(st.store.task(&id).await?))
}

/// Allows a task id when the caller reaches its queue (the queue is part of the id); a
/// malformed id is left to the store's 404.
///
/// # Errors
/// 403 for a task of a queue the caller's token is not limited to.
pub(crate) fn allow_task(caller: &Caller, id: &str) -> ApiResult<()> {
    match validate::task_queue(id) {
        Some(q) => caller.allow(q),
        None => Ok(()),
    }
}

/// Query of `GET /v1/tasks`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this queue.
    #[param(pattern = r"^(?!\.{1,2}$)[A-Za-z0-9._:-]{1,128}$")]
    queue: Option<String>,
    /// Only this state.
    #[param(value_type = Option<TaskState>)]
    state: Option<String>,
    /// Only this kind.
    #[param(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1F\x7F-\x9F\u00AD\u061C\u180E\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    kind: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,9}:[0-9]{1,9}:[0-9]{1,12}$")]
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/tasks",
    tag = "tasks",
    summary = "List tasks",
    params(ListQuery),
    responses(
        (status = 200, body = TaskPage, description = "A page of tasks"),
        BadRequest,
        Guarded
    )
)]
/// `GET /v1/tasks?queue=&state=&kind=&limit=&cursor=`.
///
/// # Errors
/// 400 for a bad filter or cursor.
pub async fn tasks_list(
    State(st): State<AppState>,
    who: Principal,
    caller: Caller,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<TaskPage>> {
    who.require(Role::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad("bad_query", e.body_text()))?;
    if let Some(queue) = &q.queue {
        validate::queue_name(queue).map_err(|e| ApiError::bad("bad_query", e))?;
        caller.allow(queue)?;
    } else if caller.scoped() {
        return Err(ApiError::Forbidden(
            "this token is limited to some queues: name one with queue=".into(),
        ));
    }
    let state = match &q.state {
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            ApiError::bad("bad_query", format!("state must be one of blocked, scheduled, pending, assigned, running, retrying, succeeded, failed, cancelled; got {s:?}"))
        })?),
        None => None,
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("bad_query", "limit must be 1 to 1000"));
    }
    if let Some(k) = &q.kind {
        validate::kind(k).map_err(|e| ApiError::bad("bad_query", e))?;
    }
    let page = st
        .store
        .page(
            q.queue.as_deref(),
            state,
            q.kind.as_deref(),
            limit,
            q.cursor.as_deref(),
        )
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Protocol(_) => {
                ApiError::bad("bad_cursor", "cursor is not one this server handed out")
            }
            other => other.into(),
        })?;
    Ok(Json(page))
}

/// Query of `GET /v1/tasks/{id}/wait`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Longest wait, 0 to 60000 ms (default 30000).
    #[param(minimum = 0, maximum = 60_000)]
    timeout_ms: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/tasks/{id}/wait",
    tag = "tasks",
    summary = "Wait until a task is finished (or the timeout)",
    params(WaitQuery),
    responses(
        (status = 200, body = Task, description = "The task, finished or as it stands at the timeout"),
        BadRequest,
        NotFound,
        Guarded
    )
)]
/// `GET /v1/tasks/{id}/wait?timeout_ms=`: the task once terminal, or as it stands at the timeout.
///
/// # Errors
/// 404, 400 for a bad timeout.
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn tasks_wait(
    State(st): State<AppState>,
    who: Principal,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Task>> {
    who.require(Role::Read)?;
    allow_task(&caller, &id)?;
    let Query(q) = q.map_err(|e| ApiError::bad("bad_query", e.body_text()))?;
    let timeout = q.timeout_ms.unwrap_or(30_000);
    if !(0..=MAX_WAIT_MS).contains(&timeout) {
        return Err(ApiError::bad(
            "bad_query",
            format!("timeout_ms must be 0 to {MAX_WAIT_MS}"),
        ));
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(timeout as u64).min(st.config.max_wait);
    let notify = st.hub.task(&id);
    let res = async {
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let task = st.store.task(&id).await?;
            if task.state.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(Json(task));
            }
            // Re-read at least every second: a lost wake-up costs little.
            let nap = deadline.min(tokio::time::Instant::now() + Duration::from_secs(1));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(nap) => {}
            }
        }
    }
    .await;
    st.hub.release_task(&id, notify);
    res
}

#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/cancel",
    tag = "tasks",
    summary = "Cancel a task",
    responses(
        (status = 200, body = Task, description = "The task (cancelled, or cancel_requested while its node stops it)"),
        NotFound,
        Conflict,
        Guarded
    )
)]
/// `POST /v1/tasks/{id}/cancel`.
///
/// # Errors
/// 404; 409 when already succeeded or failed.
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn tasks_cancel(
    State(st): State<AppState>,
    who: Principal,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    who.require(Role::Submit)?;
    allow_task(&caller, &id)?;
    match st.store.cancel(&id).await? {
        Cancelled::Done => st.hub.wake_task(&id),
        Cancelled::Requested => {}
    }
    Ok(Json(st.store.task(&id).await?))
}

#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/retry",
    tag = "tasks",
    summary = "Send a failed or cancelled task back to pending",
    responses(
        (status = 200, body = Task, description = "The task, pending"),
        NotFound,
        Conflict,
        Guarded
    )
)]
/// `POST /v1/tasks/{id}/retry`: a failed or cancelled task goes back to pending.
///
/// # Errors
/// 404; 409 for other states.
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn tasks_retry(
    State(st): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Task>> {
    who.require_admin()?;
    st.store.retry(&id).await?;
    if let Some(q) = validate::task_queue(&id) {
        st.hub.mark_dirty(q);
    }
    Ok(Json(st.store.task(&id).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/tasks/{id}",
    tag = "tasks",
    summary = "Delete a finished task",
    responses(
        (status = 204, description = "Deleted"),
        NotFound,
        Conflict,
        Guarded
    )
)]
/// `DELETE /v1/tasks/{id}`: finished tasks only.
///
/// # Errors
/// 404; 409 when not finished.
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn tasks_delete(
    State(st): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    who.require_admin()?;
    st.store.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) fn progress_json(p: &Option<serde_json::Value>) -> ApiResult<Option<String>> {
    match p {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => {
            let s = serde_json::to_string(v)
                .map_err(|e| ApiError::invalid("invalid_body", e.to_string()))?;
            if s.len() > 64 * 1024 {
                return Err(ApiError::TooLarge("progress is limited to 64 KiB".into()));
            }
            Ok(Some(s))
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/extend",
    tag = "agent protocol",
    summary = "Renew a lease (and report progress)",
    request_body = ExtendRequest,
    responses(
        (status = 200, body = ExtendReply, description = "New deadline"),
        JsonBody,
        NotFound,
        Conflict,
        Invalid,
        Guarded
    )
)]
/// `POST /v1/tasks/{id}/extend`: renew the lease (node token or admin).
///
/// # Errors
/// 404; 409 when the token is not the current lease.
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn tasks_extend(
    State(st): State<AppState>,
    who: Authorized<NeedLeaseHolder>,
    Path(id): Path<String>,
    Json(body): Json<ExtendRequest>,
) -> ApiResult<Json<ExtendReply>> {
    who.require_lease_holder()?;
    let progress = progress_json(&body.progress)?;
    let e = st
        .store
        .extend(
            &id,
            who.lease_node(),
            &body.lease_token,
            progress.as_deref(),
        )
        .await?;
    Ok(Json(ExtendReply {
        lease_expires_at: rfc3339_ms(e.expires_ms),
        cancel_requested: e.cancel_requested,
    }))
}

/// Records what a report did: wakes waiters and counts node statistics.
pub(crate) fn after_report(st: &AppState, id: &str, r: &Reported) {
    if r.state.is_terminal() {
        st.hub.wake_task(id);
    }
    if let (Some(node), Some(run_ms)) = (&r.node, r.run_ms) {
        if r.state == TaskState::Succeeded
            && let Some(q) = validate::task_queue(id)
        {
            crate::metrics::METRICS
                .run
                .with_label_values(&[q])
                .observe(run_ms as f64 / 1000.0);
        }
        let delta = if r.state == TaskState::Succeeded {
            NodeStats {
                succeeded: 1,
                run_ms,
                runs: 1,
                ..Default::default()
            }
        } else {
            NodeStats {
                failed: 1,
                ..Default::default()
            }
        };
        st.hub.add_stats(node, delta);
    }
    if let Some(q) = validate::task_queue(id) {
        // A slot freed (or a retry is due later): the dispatcher may have work.
        st.hub.mark_dirty(q);
    }
}

pub(crate) fn result_json(r: &Option<serde_json::Value>) -> ApiResult<String> {
    let s = serde_json::to_string(r.as_ref().unwrap_or(&serde_json::Value::Null))
        .map_err(|e| ApiError::invalid("invalid_body", e.to_string()))?;
    if s.len() > MAX_PAYLOAD {
        return Err(ApiError::TooLarge(format!(
            "result is {} bytes, the limit is {MAX_PAYLOAD}",
            s.len()
        )));
    }
    Ok(s)
}

pub(crate) fn error_text(e: &Option<String>) -> String {
    let mut s = e.clone().unwrap_or_else(|| "failed".into());
    if s.len() > 16 * 1024 {
        let mut cut = 16 * 1024;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/complete",
    tag = "agent protocol",
    summary = "Complete the current lease with a result",
    request_body = CompleteRequest,
    responses(
        (status = 200, body = Task, description = "The task"),
        JsonBody,
        NotFound,
        Conflict,
        Invalid,
        Guarded
    )
)]
/// `POST /v1/tasks/{id}/complete`: accept the result of the current lease.
///
/// # Errors
/// 404; 409 when the token is stale or another node's.
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn tasks_complete(
    State(st): State<AppState>,
    who: Authorized<NeedLeaseHolder>,
    Path(id): Path<String>,
    Json(body): Json<CompleteRequest>,
) -> ApiResult<Json<Task>> {
    who.require_lease_holder()?;
    let result = result_json(&body.result)?;
    let r = st
        .store
        .complete(&id, who.lease_node(), &body.lease_token, &result)
        .await?;
    after_report(&st, &id, &r);
    Ok(Json(st.store.task(&id).await?))
}

#[utoipa::path(
    post,
    path = "/v1/tasks/{id}/fail",
    tag = "agent protocol",
    summary = "Fail the current attempt",
    request_body = FailRequest,
    responses(
        (status = 200, body = Task, description = "The task"),
        JsonBody,
        NotFound,
        Conflict,
        Invalid,
        Guarded
    )
)]
/// `POST /v1/tasks/{id}/fail`: the current attempt failed.
///
/// # Errors
/// 404; 409 when the token is stale or another node's.
#[tracing::instrument(skip_all, fields(task_id = %id))]
pub async fn tasks_fail(
    State(st): State<AppState>,
    who: Authorized<NeedLeaseHolder>,
    Path(id): Path<String>,
    Json(body): Json<FailRequest>,
) -> ApiResult<Json<Task>> {
    who.require_lease_holder()?;
    let r = st
        .store
        .fail(
            &id,
            who.lease_node(),
            &body.lease_token,
            &error_text(&body.error),
            body.retryable.unwrap_or(true),
        )
        .await?;
    after_report(&st, &id, &r);
    Ok(Json(st.store.task(&id).await?))
}

/// JSON for `{"status": ...}`-style answers.
pub fn status(s: &str) -> serde_json::Value {
    json!({ "status": s })
}
