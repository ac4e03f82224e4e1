//! Queue routes: list with counts, read, settings, pause and resume.

use super::auth::Principal;
use super::error::{ApiError, ApiResult};
use super::{AppState, Json};
use crate::domain::{QueueInfo, QueueList, QueueUpdate, validate};
use axum::extract::{Path, State};

/// `GET /v1/queues`: every queue with counts per state.
///
/// # Errors
/// 503 Redis down.
pub async fn queues_list(State(st): State<AppState>, who: Principal) -> ApiResult<Json<QueueList>> {
    who.require_admin()?;
    let mut items = Vec::new();
    for q in st.store.queues().await? {
        items.push(st.store.queue_info(&q).await?);
    }
    Ok(Json(QueueList { items }))
}

async fn known(st: &AppState, name: &str) -> ApiResult<()> {
    validate::queue_name(name).map_err(|e| ApiError::bad("bad_queue_name", e))?;
    if !st.store.queues().await?.iter().any(|q| q == name) {
        return Err(ApiError::NotFound(format!("no queue {name:?}; queues appear when a task or node uses them, or with PUT")));
    }
    Ok(())
}

/// `GET /v1/queues/{name}`.
///
/// # Errors
/// 404 unknown queue.
pub async fn queues_get(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<Json<QueueInfo>> {
    who.require_admin()?;
    known(&st, &name).await?;
    Ok(Json(st.store.queue_info(&name).await?))
}

/// `PUT /v1/queues/{name}`: set weight, paused, human_only (absent fields unchanged).
///
/// # Errors
/// 400 bad name, 422 bad values.
pub async fn queues_put(
    State(st): State<AppState>,
    who: Principal,
    Path(name): Path<String>,
    Json(body): Json<QueueUpdate>,
) -> ApiResult<Json<QueueInfo>> {
    who.require_admin()?;
    validate::queue_name(&name).map_err(|e| ApiError::bad("bad_queue_name", e))?;
    if let Some(w) = body.weight {
        if !(1..=1000).contains(&w) {
            return Err(ApiError::invalid("invalid_queue", "weight must be 1 to 1000"));
        }
    }
    st.store.update_queue(&name, &body).await?;
    st.hub.mark_dirty(&name);
    Ok(Json(st.store.queue_info(&name).await?))
}

async fn set_paused(st: AppState, name: String, paused: bool) -> ApiResult<Json<QueueInfo>> {
    known(&st, &name).await?;
    st.store
        .update_queue(&name, &QueueUpdate { paused: Some(paused), ..Default::default() })
        .await?;
    st.hub.mark_dirty(&name);
    Ok(Json(st.store.queue_info(&name).await?))
}

/// `POST /v1/queues/{name}/pause`: stop dispatching (running tasks go on).
///
/// # Errors
/// 404 unknown queue.
pub async fn queues_pause(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<Json<QueueInfo>> {
    who.require_admin()?;
    set_paused(st, name, true).await
}

/// `POST /v1/queues/{name}/resume`.
///
/// # Errors
/// 404 unknown queue.
pub async fn queues_resume(State(st): State<AppState>, who: Principal, Path(name): Path<String>) -> ApiResult<Json<QueueInfo>> {
    who.require_admin()?;
    set_paused(st, name, false).await
}
