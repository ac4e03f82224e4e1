//! Queue routes: list with counts, read, settings, pause and resume.

use super::auth::{Authorized, Caller, NeedAdmin, Principal, Role};
use super::error::{ApiError, ApiResult};
use super::openapi::parts::{BadRequest, Conflict, Guarded, Invalid, JsonBody, NotFound};
use super::{AppState, Json};
use crate::domain::{QueueInfo, QueueUpdate, validate};
use axum::extract::{Path, Query, State};

/// Most queues on one page of `GET /v1/queues` (also the page size without `limit`).
pub const MAX_QUEUE_PAGE: usize = 1000;

/// Query of `GET /v1/queues`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QueuesQuery {
    /// Queues per page, 1 to 1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page: queues after this name.
    #[param(pattern = r"^(?!\.{1,2}$)[A-Za-z0-9._:-]{1,128}$")]
    cursor: Option<String>,
}

/// Answer of `GET /v1/queues`: a page of queues by name.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct QueuePage {
    /// Queues by name.
    pub items: Vec<QueueInfo>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/queues",
    tag = "queues",
    summary = "List queues with counts, a page at a time",
    params(QueuesQuery),
    responses(
        (status = 200, body = QueuePage, description = "A page of queues by name"),
        BadRequest,
        Guarded
    )
)]
/// `GET /v1/queues?limit=&cursor=`: queues by name with counts per state, at most
/// [`MAX_QUEUE_PAGE`] at a time (a caller that sends neither gets the first page, which
/// is every queue of a deployment with up to 1000).
///
/// # Errors
/// 400 bad limit or cursor, 503 Redis down.
pub async fn queues_list(
    State(st): State<AppState>,
    who: Principal,
    caller: Caller,
    q: Result<Query<QueuesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<QueuePage>> {
    who.require(Role::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad("bad_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(MAX_QUEUE_PAGE);
    if !(1..=MAX_QUEUE_PAGE).contains(&limit) {
        return Err(ApiError::bad(
            "bad_query",
            format!("limit must be 1 to {MAX_QUEUE_PAGE}"),
        ));
    }
    if let Some(c) = &q.cursor {
        validate::queue_name(c).map_err(|e| ApiError::bad("bad_query", format!("cursor: {e}")))?;
    }
    let mut names = st.store.queue_names().await?;
    // A token limited to some queues sees only those.
    names.retain(|n| caller.reaches(n));
    let start = match &q.cursor {
        Some(c) => names.partition_point(|n| n <= c),
        None => 0,
    };
    let page = &names[start.min(names.len())..];
    let mut items = Vec::new();
    for name in page.iter().take(limit) {
        items.push(st.store.queue_info(name).await?);
    }
    let next_cursor = (page.len() > limit)
        .then(|| items.last().map(|i: &QueueInfo| i.name.clone()))
        .flatten();
    Ok(Json(QueuePage { items, next_cursor }))
}

async fn known(st: &AppState, name: &str) -> ApiResult<()> {
    validate::queue_name(name).map_err(|e| ApiError::bad("bad_queue_name", e))?;
    if !st.store.queue_names().await?.iter().any(|q| q == name) {
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
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<QueueInfo>> {
    who.require(Role::Read)?;
    validate::queue_name(&name).map_err(|e| ApiError::bad("bad_queue_name", e))?;
    caller.allow(&name)?;
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
        Conflict,
        Guarded
    )
)]
/// `PUT /v1/queues/{name}`: set weight, paused, human_only, max_running, rate_limit,
/// shards (absent fields unchanged). Every value is checked before anything is written.
///
/// # Errors
/// 400 bad name, 422 bad values, 409 `shards_shrink` for fewer shards than now.
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
    if let Some(n) = body.shards
        && !(1..=i64::from(validate::MAX_SHARDS)).contains(&n)
    {
        return Err(ApiError::invalid(
            "invalid_queue",
            format!("shards must be 1 to {}", validate::MAX_SHARDS),
        ));
    }
    if body.shards.is_some() || body.max_running.is_some() {
        // Each shard holds a whole part of max_running: with fewer than one slot per
        // shard some part would be 0, which means unlimited.
        let info = st.store.queue_info(&name).await?;
        let shards = body.shards.unwrap_or(info.shards);
        let max_running = body.max_running.or(info.max_running).unwrap_or(0);
        if shards > 1 && (1..shards).contains(&max_running) {
            return Err(ApiError::invalid(
                "invalid_queue",
                format!(
                    "max_running {max_running} is below shards {shards}: each shard holds a \
                     part of it, at least 1; set max_running to 0 (unlimited) or at least {shards}"
                ),
            ));
        }
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
