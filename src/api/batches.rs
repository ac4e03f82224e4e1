//! Batch routes: fan-out (children in any queues) and fan-in (a `then` task submitted
//! exactly once when every child ended). See `crate::workers::coordinator` for the follow-up side.

use super::auth::{Authorized, Caller, NeedSubmit, Principal, Role};
use super::error::{ApiError, ApiResult};
use super::openapi::parts::{BadRequest, Guarded, Invalid, JsonBody, NotFound, UnknownDependency};
use super::quota;
use super::tasks::{prepare, store_tasks};
use super::{AppState, Json, MAX_BATCH};
use crate::domain::batches::{Batch, BatchResultPage, BatchTasks, BatchTasksAdded, NewBatch};
use crate::domain::{NewTask, Problem, validate};
use crate::service::submit::check_dependencies;
use crate::store::coord::BatchBegin;
use crate::store::{PreparedTask, Submitted};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

fn batch_id(id: &str) -> ApiResult<()> {
    if validate::is_ulid(id) {
        Ok(())
    } else {
        Err(ApiError::bad(
            "bad_batch_id",
            format!("{id:?} is not a batch id (a 26-character ULID)"),
        ))
    }
}

/// Validates children: each gets the batch id.
fn children(tasks: Vec<NewTask>, batch: &str) -> ApiResult<Vec<PreparedTask>> {
    if tasks.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "batch_too_long",
            format!(
                "at most {MAX_BATCH} tasks per call, got {}; add the rest with POST /v1/batches/{{id}}/tasks",
                tasks.len()
            ),
        ));
    }
    tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let mut p = prepare(t, &format!("tasks[{i}]."))?;
            p.batch = Some(batch.to_string());
            Ok(p)
        })
        .collect()
}

/// Stores one chunk of children (the batch already counts it in flight) and records
/// it; fires `then` when that completed the batch.
async fn add_chunk(
    st: &AppState,
    batch: &str,
    tasks: &mut [PreparedTask],
    close: bool,
) -> ApiResult<Vec<String>> {
    // A child whose unique key a live task holds is answered with that task's id but
    // does not join the batch (it would never report to it).
    let (ids, joined) = if tasks.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        match store_tasks(st, tasks, None).await {
            Ok(Submitted::Created { existing, .. }) => {
                let mut ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
                let mut joined = vec![true; ids.len()];
                for (i, holder) in existing {
                    if let Some(slot) = ids.get_mut(i) {
                        *slot = holder;
                        joined[i] = false;
                    }
                }
                let j = ids
                    .iter()
                    .zip(&joined)
                    .filter(|(_, j)| **j)
                    .map(|(id, _)| id.clone())
                    .collect();
                (ids, j)
            }
            Ok(Submitted::Duplicate { ids }) => (ids.clone(), ids),
            Err(e) => {
                // Nothing stored: end the chunk's in-flight count (best effort).
                let _ = st.store.batch_add(batch, false, &[]).await;
                return Err(e);
            }
        }
    };
    let check = st.store.batch_add(batch, close, &joined).await?;
    if check.then_due {
        crate::service::batches::fire_then(&st.store, &st.hub, batch, &check).await?;
    }
    Ok(ids)
}

#[utoipa::path(
    post,
    path = "/v1/batches",
    tag = "batches",
    summary = "Create a batch: children now, a then task once they all ended",
    request_body = NewBatch,
    responses(
        (status = 201, body = Batch, description = "The batch"),
        JsonBody,
        Invalid,
        UnknownDependency,
        Guarded
    )
)]
/// `POST /v1/batches`.
///
/// # Errors
/// 422 invalid children or then task, 503 Redis down.
pub async fn batches_create(
    State(st): State<AppState>,
    who: Authorized<NeedSubmit>,
    caller: Caller,
    Json(body): Json<NewBatch>,
) -> ApiResult<(StatusCode, Json<Batch>)> {
    who.require(Role::Submit)?;
    let id = ulid::Ulid::generate().to_string();
    let mut tasks = children(body.tasks, &id)?;
    for t in &tasks {
        caller.allow(&t.queue)?;
    }
    let then_json = match body.then {
        Some(t) => {
            // Validated now, stored as submitted, prepared again when it fires.
            let then_queue = prepare(t.clone(), "then.")?.queue;
            caller.allow(&then_queue)?;
            let mut queues: Vec<&str> = tasks.iter().map(|t| t.queue.as_str()).collect();
            queues.push(&then_queue);
            quota::claim_queues(&st, &caller, &queues).await?;
            Some(
                serde_json::to_string(&t)
                    .map_err(|e| ApiError::Internal(anyhow::anyhow!("then task: {e}")))?,
            )
        }
        None => {
            let queues: Vec<&str> = tasks.iter().map(|t| t.queue.as_str()).collect();
            quota::claim_queues(&st, &caller, &queues).await?;
            None
        }
    };
    // Refused before the batch exists: a batch left without children would finish.
    check_dependencies(&st.store, &tasks).await?;
    st.store
        .batch_create(&id, then_json.as_deref(), body.open)
        .await?;
    add_chunk(&st, &id, &mut tasks, false).await?;
    Ok((StatusCode::CREATED, Json(st.store.batch(&id).await?)))
}

#[utoipa::path(
    get,
    path = "/v1/batches/{id}",
    tag = "batches",
    summary = "A batch's progress",
    responses(
        (status = 200, body = Batch, description = "The batch"),
        BadRequest,
        NotFound,
        Guarded
    )
)]
/// `GET /v1/batches/{id}`.
///
/// # Errors
/// 404 unknown batch.
pub async fn batches_get(
    State(st): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Batch>> {
    who.require(Role::Read)?;
    batch_id(&id)?;
    Ok(Json(st.store.batch(&id).await?))
}

/// Query of `GET /v1/batches/{id}/results`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ResultsQuery {
    /// From `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{1,9}$")]
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/batches/{id}/results",
    tag = "batches",
    summary = "Page through a batch's children and their results",
    params(ResultsQuery),
    responses(
        (status = 200, body = BatchResultPage, description = "A page of children"),
        BadRequest,
        NotFound,
        Guarded
    )
)]
/// `GET /v1/batches/{id}/results?cursor=&limit=`.
///
/// # Errors
/// 400 bad cursor or limit, 404 unknown batch.
pub async fn batches_results(
    State(st): State<AppState>,
    who: Principal,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<ResultsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<BatchResultPage>> {
    who.require(Role::Read)?;
    batch_id(&id)?;
    let Query(q) = q.map_err(|e| ApiError::bad("bad_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("bad_query", "limit must be 1 to 1000"));
    }
    let cursor = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c
            .parse::<u32>()
            .map_err(|_| ApiError::bad("bad_cursor", "cursor is not one this server handed out"))?
            as usize,
    };
    let mut page = st.store.batch_results(&id, cursor, limit as usize).await?;
    // A token limited to some queues sees only its queues' children (the page keeps
    // its cursor, so paging goes on past the ones left out).
    page.items
        .retain(|r| validate::task_queue(&r.id).is_none_or(|q| caller.reaches(q)));
    Ok(Json(page))
}

#[utoipa::path(
    post,
    path = "/v1/batches/{id}/tasks",
    tag = "batches",
    summary = "Add children to a running batch (and close one held open)",
    request_body = BatchTasks,
    responses(
        (status = 201, body = BatchTasksAdded, description = "The new children and the batch"),
        (status = 409, body = Problem, description = "The batch finished, or (code unknown_dependency) a task named in depends_on does not exist", content_type = "application/problem+json"),
        JsonBody,
        NotFound,
        Invalid,
        Guarded
    )
)]
/// `POST /v1/batches/{id}/tasks`.
///
/// # Errors
/// 404 unknown batch, 409 finished batch, 422 invalid children.
pub async fn batches_add(
    State(st): State<AppState>,
    who: Authorized<NeedSubmit>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<BatchTasks>,
) -> ApiResult<(StatusCode, Json<BatchTasksAdded>)> {
    who.require(Role::Submit)?;
    batch_id(&id)?;
    let mut tasks = children(body.tasks, &id)?;
    for t in &tasks {
        caller.allow(&t.queue)?;
    }
    let queues: Vec<&str> = tasks.iter().map(|t| t.queue.as_str()).collect();
    quota::claim_queues(&st, &caller, &queues).await?;
    match st.store.batch_begin(&id).await? {
        BatchBegin::Open => {}
        BatchBegin::NotFound => return Err(ApiError::NotFound(format!("no batch {id}"))),
        BatchBegin::Finished => {
            return Err(ApiError::conflict(
                "batch_finished",
                format!("batch {id} finished: it takes no more tasks; create a new batch"),
            ));
        }
    }
    let ids = add_chunk(&st, &id, &mut tasks, body.close).await?;
    Ok((
        StatusCode::CREATED,
        Json(BatchTasksAdded {
            ids,
            batch: st.store.batch(&id).await?,
        }),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn batch_ids_are_ulids() {
        let id = ulid::Ulid::generate().to_string();
        assert!(super::batch_id(&id).is_ok(), "{id}");
        assert!(super::batch_id("not-a-ulid").is_err());
        assert!(super::batch_id(&format!("{id}.q")).is_err());
    }
}
