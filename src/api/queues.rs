//! Queue routes: list with counts, read, settings, pause and resume.

use super::auth::{Authorized, NeedAdmin, Principal, Role};
use super::error::{ApiError, ApiResult};
use super::openapi::parts::{BadRequest, Guarded, Invalid, JsonBody, NotFound};
use super::{AppState, Json};
use crate::domain::{QueueInfo, QueueList, QueueUpdate, validate};
use axum::extract::{Path, State};

#[utoipa::path(
    get,
    path = "/v1/queues",
    tag = "queues",
    summary = "List queues with counts",
    responses(
        (status = 200, body = QueueList, description = "Queues"),
        Guarded
    )
)]
/// `GET /v1/queues`: every queue with counts per state.
///
/// # Errors
/// 503 Redis down.
pub async fn queues_list(State(st): State<AppState>, who: Principal) -> ApiResult<Json<QueueList>> {
    who.require(Role::Read)?;
    let mut items = Vec::new();
    for q in st.store.queues().await? {
        items.push(st.store.queue_info(&q).await?);
    }
    Ok(Json(QueueList { items }))
}

async fn known(st: &AppState, name: &str) -> ApiResult<()> {
    validate::queue_name(name).map_err(|e| ApiError::bad("bad_queue_name", e))?;
    if !st.store.queues().await?.iter().any(|q| q == name) {
        return Err(ApiError::NotFound(format!(
            "no queue {name:?}; queues appear when a task or node uses them, or with PUT"
        )));
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/v1/queues/{name}",
    tag = "queues",
    summary = "Read a queue",
    responses(
        (status = 200, body = QueueInfo, description = "The queue"),
        BadRequest,
        NotFound,
        Guarded
    )
)]
/// `GET /v1/queues/{name}`.
///
/// # Errors
/// 404 unknown queue.
pub async fn queues_get(
    State(st): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<Json<QueueInfo>> {
    who.require(Role::Read)?;
    known(&st, &name).await?;
    Ok(Json(st.store.queue_info(&name).await?))
}

#[utoipa::path(
    put,
    path = "/v1/queues/{name}",
    tag = "queues",
    summary = "Change a queue's settings",
    request_body = QueueUpdate,
    responses(
        (status = 200, body = QueueInfo, description = "The queue"),
        JsonBody,
        Invalid,
        Guarded
    )
)]
/// `PUT /v1/queues/{name}`: set weight, paused, human_only, max_running, rate_limit
/// (absent fields unchanged).
///
/// # Errors
/// 400 bad name, 422 bad values.
pub async fn queues_put(
    State(st): State<AppState>,
    who: Authorized<NeedAdmin>,
    Path(name): Path<String>,
    Json(body): Json<QueueUpdate>,
) -> ApiResult<Json<QueueInfo>> {
    who.require_admin()?;
    validate::queue_name(&name).map_err(|e| ApiError::bad("bad_queue_name", e))?;
    if let Some(w) = body.weight
        && !(1..=1000).contains(&w)
    {
        return Err(ApiError::invalid(
            "invalid_queue",
            "weight must be 1 to 1000",
        ));
    }
    if let Some(m) = body.max_running
        && !(0..=1_000_000).contains(&m)
    {
        return Err(ApiError::invalid(
            "invalid_queue",
            "max_running must be 0 (unlimited) to 1000000",
        ));
    }
    if let Some(r) = body.rate_limit
        && !(r.is_finite() && (0.0..=1_000_000.0).contains(&r))
    {
        return Err(ApiError::invalid(
            "invalid_queue",
            "rate_limit must be 0 (unlimited) to 1000000 tasks per second",
        ));
    }
    st.store.update_queue(&name, &body).await?;
    st.hub.forget_conf(&name);
    st.hub.mark_dirty(&name);
    Ok(Json(st.store.queue_info(&name).await?))
}

async fn set_paused(st: AppState, name: String, paused: bool) -> ApiResult<Json<QueueInfo>> {
    known(&st, &name).await?;
    st.store
        .update_queue(
            &name,
            &QueueUpdate {
                paused: Some(paused),
                ..Default::default()
            },
        )
        .await?;
    st.hub.forget_conf(&name);
    st.hub.mark_dirty(&name);
    Ok(Json(st.store.queue_info(&name).await?))
}

#[utoipa::path(
    post,
    path = "/v1/queues/{name}/pause",
    tag = "queues",
    summary = "Pause dispatching",
    responses(
        (status = 200, body = QueueInfo, description = "The queue"),
        BadRequest,
        NotFound,
        Guarded
    )
)]
/// `POST /v1/queues/{name}/pause`: stop dispatching (running tasks go on).
///
/// # Errors
/// 404 unknown queue.
pub async fn queues_pause(
    State(st): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<Json<QueueInfo>> {
    who.require_admin()?;
    set_paused(st, name, true).await
}

#[utoipa::path(
    post,
    path = "/v1/queues/{name}/resume",
    tag = "queues",
    summary = "Resume dispatching",
    responses(
        (status = 200, body = QueueInfo, description = "The queue"),
        BadRequest,
        NotFound,
        Guarded
    )
)]
/// `POST /v1/queues/{name}/resume`.
///
/// # Errors
/// 404 unknown queue.
pub async fn queues_resume(
    State(st): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
) -> ApiResult<Json<QueueInfo>> {
    who.require_admin()?;
    set_paused(st, name, false).await
}
