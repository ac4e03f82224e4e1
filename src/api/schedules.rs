//! Cron schedule routes (docs/schedules.md): create, list, read (with the next and the
//! last fires), delete, pause and resume. Reading needs `read`; changing needs
//! `submit` (a schedule submits tasks on the caller's behalf) or `admin`.

use super::auth::{Authorized, Caller, NeedSubmit, Principal, Role};
use super::error::{ApiError, ApiResult};
use super::openapi::parts::{BadRequest, Guarded, JsonBody, NotFound};
use super::quota;
use super::{AppState, Json};
use crate::domain::coord::{NewSchedule, Schedule, ScheduleList};
use crate::domain::cron::CronSpec;
use crate::domain::{Problem, rfc3339_ms, validate};
use crate::store::schedules::{FIRES_KEPT, ScheduleRecord};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

/// The cron form the schema documents (`domain::coord`'s `cron` pattern): the server
/// accepts exactly what the schema admits.
pub const CRON_PATTERN: &str = r"^(\*|\*/([1-9]|[1-5][0-9])|[0-5]?[0-9](,[0-5]?[0-9]){0,9}) (\*|\*/([1-9]|[1-5][0-9])|[0-5]?[0-9](,[0-5]?[0-9]){0,9}) (\*|\*/([1-9]|1[0-9]|2[0-3])|([01]?[0-9]|2[0-3])(,([01]?[0-9]|2[0-3])){0,9}) (\*|\*/([1-9]|1[0-9]|2[0-8])|([1-9]|1[0-9]|2[0-8])(,([1-9]|1[0-9]|2[0-8])){0,9}) (\*|\*/([1-9]|1[0-2])|([1-9]|1[0-2])(,([1-9]|1[0-2])){0,9}) (\*|[1-7](,[1-7]){0,6})$";

static CRON_RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(CRON_PATTERN).expect("the cron pattern compiles")
});

/// Fires shown by default.
const FIRES_SHOWN: i64 = 20;

fn schedule_name(name: &str) -> ApiResult<()> {
    validate::queue_name(name).map_err(|e| {
        ApiError::bad(
            "bad_schedule_name",
            e.replace("queue name", "schedule name"),
        )
    })
}

fn no_such(name: &str) -> ApiError {
    ApiError::NotFound(format!("no schedule {name:?}"))
}

async fn view(st: &AppState, rec: ScheduleRecord, fires: i64, now: i64) -> ApiResult<Schedule> {
    let next_fire_at = if rec.paused {
        None
    } else {
        CronSpec::parse(&rec.cron, &rec.timezone)
            .ok()
            .and_then(|s| s.next_after(rec.cursor_ms.max(now)))
            .map(rfc3339_ms)
    };
    let last_fires = st.store.schedule_fires(&rec.name, fires).await?;
    Ok(Schedule {
        task: serde_json::from_str(&rec.task).unwrap_or(serde_json::Value::Null),
        name: rec.name,
        cron: rec.cron,
        timezone: rec.timezone,
        overlap: rec.overlap,
        catch_up: rec.catch_up,
        paused: rec.paused,
        created_at: rfc3339_ms(rec.created_ms),
        next_fire_at,
        fired: rec.fired,
        skipped: rec.skipped,
        missed: rec.missed,
        last_fires,
    })
}

/// The queue a schedule's fires submit to (`default` when its task names none).
fn schedule_queue(task_json: &str) -> String {
    serde_json::from_str::<serde_json::Value>(task_json)
        .ok()
        .and_then(|v| v.get("queue").and_then(|q| q.as_str()).map(str::to_string))
        .unwrap_or_else(|| "default".to_string())
}

/// Allows the schedule `name` when the caller reaches the queue it submits to; an
/// unknown schedule is left to the route's 404.
///
/// # Errors
/// 403 for a schedule of a queue outside the caller's token's queues.
async fn allow_schedule(st: &AppState, caller: &Caller, name: &str) -> ApiResult<()> {
    if !caller.scoped() {
        return Ok(());
    }
    match st.store.schedule(name).await? {
        Some(rec) => caller.allow(&schedule_queue(&rec.task)),
        None => Ok(()),
    }
}

async fn load(st: &AppState, name: &str, fires: i64) -> ApiResult<Schedule> {
    let rec = st
        .store
        .schedule(name)
        .await?
        .ok_or_else(|| no_such(name))?;
    let now = st.store.now_ms().await?;
    view(st, rec, fires, now).await
}

#[utoipa::path(
    post,
    path = "/v1/schedules",
    tag = "schedules",
    summary = "Create a cron schedule",
    request_body = NewSchedule,
    responses(
        (status = 201, body = Schedule, description = "The schedule; its first tick is the first after now"),
        (status = 409, body = Problem, description = "A schedule of that name exists (`schedule_exists`); delete it first", content_type = "application/problem+json"),
        (status = 422, body = Problem, description = "Invalid cron expression, time zone or task", content_type = "application/problem+json"),
        JsonBody,
        Guarded
    )
)]
/// `POST /v1/schedules`: a new schedule (409 when the name is taken: no silent upsert).
///
/// # Errors
/// 422 invalid cron, time zone or task; 409 name taken.
pub async fn schedules_create(
    State(st): State<AppState>,
    who: Authorized<NeedSubmit>,
    caller: Caller,
    Json(body): Json<NewSchedule>,
) -> ApiResult<(StatusCode, Json<Schedule>)> {
    who.require(Role::Submit)?;
    schedule_name(&body.name)?;
    let invalid = |msg: String| ApiError::invalid("invalid_schedule", msg);
    if body.cron.len() > 256 {
        return Err(invalid("cron: at most 256 characters".into()));
    }
    if !CRON_RE.is_match(&body.cron) {
        return Err(invalid(format!(
            "cron: {:?} is outside the supported form: six fields (seconds first), each `*`, `*/step` or a list of numbers",
            body.cron
        )));
    }
    let timezone = body.timezone.clone().unwrap_or_else(|| "UTC".into());
    if timezone.len() > 64 {
        return Err(invalid("timezone: at most 64 characters".into()));
    }
    let spec = CronSpec::parse(&body.cron, &timezone).map_err(|e| {
        if e.contains("time zone") {
            invalid(format!("timezone: {e}"))
        } else {
            invalid(format!("cron: {e}"))
        }
    })?;
    // Validated exactly like a submission, so every fire can be stored.
    // Its fires submit as this caller would: only to queues its token reaches.
    let queue = crate::api::tasks::prepare(body.task.clone(), "task.")?.queue;
    caller.allow(&queue)?;
    let now = st.store.now_ms().await?;
    if spec.next_after(now).is_none() {
        return Err(invalid(format!(
            "cron: {:?} never fires after now",
            body.cron
        )));
    }
    let task_json = serde_json::to_string(&body.task)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("task to JSON: {e}")))?;
    let overlap = body.overlap.unwrap_or_default();
    let catch_up = body.catch_up.unwrap_or_default();
    // Counted against the token's quotas before it exists: the schedule, and the queue
    // its fires would bring into being.
    quota::claim_queues(&st, &caller, &[queue.as_str()]).await?;
    let claim = quota::claim_schedule(&st, &caller, &body.name).await?;
    if st
        .store
        .schedule_create(
            &body.name, &body.cron, &timezone, &task_json, overlap, catch_up,
        )
        .await?
        .is_none()
    {
        claim.give_back(&st).await;
        return Err(ApiError::conflict(
            "schedule_exists",
            format!("a schedule named {:?} exists; delete it first", body.name),
        ));
    }
    claim.keep();
    Ok((
        StatusCode::CREATED,
        Json(load(&st, &body.name, FIRES_SHOWN).await?),
    ))
}

#[utoipa::path(
    get,
    path = "/v1/schedules",
    tag = "schedules",
    summary = "List cron schedules",
    responses(
        (status = 200, body = ScheduleList, description = "Every schedule, by name"),
        Guarded
    )
)]
/// `GET /v1/schedules`: every schedule with its next fire and its last 5 fires.
///
/// # Errors
/// 503 Redis down.
pub async fn schedules_list(
    State(st): State<AppState>,
    who: Principal,
    caller: Caller,
) -> ApiResult<Json<ScheduleList>> {
    who.require(Role::Read)?;
    let now = st.store.now_ms().await?;
    let mut items = Vec::new();
    for name in st.store.schedule_names().await? {
        match st.store.schedule(&name).await {
            // A token limited to some queues sees the schedules submitting to them.
            Ok(Some(rec)) if !caller.reaches(&schedule_queue(&rec.task)) => {}
            Ok(Some(rec)) => items.push(view(&st, rec, 5, now).await?),
            Ok(None) => {}
            // A malformed record is the doctor's business; the list still answers.
            Err(crate::store::StoreError::Protocol(e)) => {
                tracing::warn!(schedule = %name, error = %e, "malformed schedule skipped");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(ScheduleList { items }))
}

/// Query of `GET /v1/schedules/{name}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// How many of the last fires to show, 0 to 100 (default 20).
    #[param(minimum = 0, maximum = 100)]
    fires: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/v1/schedules/{name}",
    tag = "schedules",
    summary = "Read a cron schedule with its next and last fires",
    params(GetQuery),
    responses(
        (status = 200, body = Schedule, description = "The schedule"),
        BadRequest,
        NotFound,
        Guarded
    )
)]
/// `GET /v1/schedules/{name}?fires=`.
///
/// # Errors
/// 404 unknown, 400 bad name or query.
pub async fn schedules_get(
    State(st): State<AppState>,
    who: Principal,
    caller: Caller,
    Path(name): Path<String>,
    q: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Schedule>> {
    who.require(Role::Read)?;
    schedule_name(&name)?;
    allow_schedule(&st, &caller, &name).await?;
    let Query(q) = q.map_err(|e| ApiError::bad("bad_query", e.body_text()))?;
    let fires = q.fires.unwrap_or(FIRES_SHOWN);
    if !(0..=FIRES_KEPT).contains(&fires) {
        return Err(ApiError::bad(
            "bad_query",
            format!("fires must be 0 to {FIRES_KEPT}"),
        ));
    }
    Ok(Json(load(&st, &name, fires).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/schedules/{name}",
    tag = "schedules",
    summary = "Delete a cron schedule (the tasks it fired stay)",
    responses(
        (status = 204, description = "Deleted"),
        BadRequest,
        NotFound,
        Guarded
    )
)]
/// `DELETE /v1/schedules/{name}`.
///
/// # Errors
/// 404 unknown.
pub async fn schedules_delete(
    State(st): State<AppState>,
    who: Principal,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    who.require(Role::Submit)?;
    schedule_name(&name)?;
    allow_schedule(&st, &caller, &name).await?;
    if st.store.schedule_delete(&name).await? {
        quota::release(
            &st,
            &caller,
            crate::store::quota::QuotaKind::Schedules,
            &name,
        )
        .await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such(&name))
    }
}

async fn set_paused(
    st: &AppState,
    who: &Principal,
    caller: &Caller,
    name: &str,
    paused: bool,
) -> ApiResult<Json<Schedule>> {
    who.require(Role::Submit)?;
    schedule_name(name)?;
    allow_schedule(st, caller, name).await?;
    if !st.store.schedule_set_paused(name, paused).await? {
        return Err(no_such(name));
    }
    Ok(Json(load(st, name, FIRES_SHOWN).await?))
}

#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/pause",
    tag = "schedules",
    summary = "Pause a cron schedule",
    responses(
        (status = 200, body = Schedule, description = "The schedule, paused"),
        BadRequest,
        NotFound,
        Guarded
    )
)]
/// `POST /v1/schedules/{name}/pause`.
///
/// # Errors
/// 404 unknown.
pub async fn schedules_pause(
    State(st): State<AppState>,
    who: Principal,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Schedule>> {
    set_paused(&st, &who, &caller, &name, true).await
}

#[utoipa::path(
    post,
    path = "/v1/schedules/{name}/resume",
    tag = "schedules",
    summary = "Resume a cron schedule (ticks passed while paused are not fired)",
    responses(
        (status = 200, body = Schedule, description = "The schedule, running"),
        BadRequest,
        NotFound,
        Guarded
    )
)]
/// `POST /v1/schedules/{name}/resume`.
///
/// # Errors
/// 404 unknown.
pub async fn schedules_resume(
    State(st): State<AppState>,
    who: Principal,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Schedule>> {
    set_paused(&st, &who, &caller, &name, false).await
}

#[cfg(test)]
mod cron_pattern_tests {
    use super::{CRON_PATTERN, CRON_RE};

    #[test]
    fn the_server_checks_the_pattern_the_schema_documents() {
        let doc = crate::api::openapi::json();
        let escaped = serde_json::to_string(CRON_PATTERN).expect("json string");
        assert!(
            doc.contains(&escaped),
            "the OpenAPI cron pattern differs from CRON_PATTERN"
        );
        for ok in [
            "* * * * * *",
            "*/5 * * * * *",
            "0 30 2 * * *",
            "0 0 12 1,15 * 1,2",
        ] {
            assert!(CRON_RE.is_match(ok), "{ok}");
        }
        for bad in [
            "* * */18 */16 * 2,1,4,2,5,6,6*",
            "* * * * *",
            "0 0 25 * * *",
            "@daily",
        ] {
            assert!(!CRON_RE.is_match(bad), "{bad}");
        }
    }
}
