//! Wire types of the coordination resources: cron schedules (`/v1/schedules`) and fenced
//! locks for handlers (`/v1/locks`). See docs/schedules.md and docs/locks.md.

use super::NewTask;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Integers in request bodies: like JSON Schema, `30000.0` counts as the integer 30000.
fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(D::Error::custom(format!("expected an integer, got {n}"))),
    }
}

/// Shortest lock TTL.
pub const MIN_LOCK_TTL_MS: i64 = 10;
/// Longest lock TTL: one day.
pub const MAX_LOCK_TTL_MS: i64 = 24 * 3600 * 1000;
/// How long a lock's fence counter outlives the lock's last expiry: seven days, seven
/// times the longest lock TTL. Fences of a name strictly increase across grants less
/// than this apart; a name nobody took for that long leaves no key behind and starts
/// again at 1 (docs/locks.md).
pub const LOCK_FENCE_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

/// Body of `POST /v1/locks/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"ttl_ms": 30000}))]
pub struct LockAcquire {
    /// How long the lock is held unless extended or released (10 ms to one day).
    #[serde(deserialize_with = "integer")]
    #[schema(minimum = 10, maximum = 86_400_000)]
    pub ttl_ms: i64,
}

/// Body of `POST /v1/locks/{name}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"token": "7.3f1c9a0e5b2d4c8e9f0a1b2c3d4e5f60", "ttl_ms": 30000}))]
pub struct LockExtend {
    /// The token `POST /v1/locks/{name}` returned.
    #[schema(pattern = r"^[1-9][0-9]{0,17}\.[0-9a-fA-F]{32}$")]
    pub token: String,
    /// New TTL counted from now (10 ms to one day).
    #[serde(deserialize_with = "integer")]
    #[schema(minimum = 10, maximum = 86_400_000)]
    pub ttl_ms: i64,
}

/// Body of `DELETE /v1/locks/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"token": "7.3f1c9a0e5b2d4c8e9f0a1b2c3d4e5f60"}))]
pub struct LockRelease {
    /// The token `POST /v1/locks/{name}` returned.
    #[schema(pattern = r"^[1-9][0-9]{0,17}\.[0-9a-fA-F]{32}$")]
    pub token: String,
}

/// A held lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"name": "reports.daily", "token": "7.3f1c9a0e5b2d4c8e9f0a1b2c3d4e5f60", "fence": 7, "expires_at": "2026-11-27T06:25:06.546Z"}))]
pub struct Lock {
    /// Lock name.
    pub name: String,
    /// Proof of holding: present it to extend or release. `<fence>.<128-bit random hex>`.
    pub token: String,
    /// Strictly increasing per name, never reused: pass it to the storage you protect
    /// and have it refuse writes carrying a lower fence.
    pub fence: i64,
    /// RFC 3339: when the lock frees itself unless extended.
    pub expires_at: String,
}

/// What a schedule does when the previous fire's task has not finished yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Fire anyway.
    #[default]
    Allow,
    /// Do not fire; record a skipped fire.
    Skip,
}

/// What a schedule does with ticks missed while no replica could fire them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Skip ticks that are more than the misfire grace late; fire from the next one.
    #[default]
    None,
    /// Fire the most recent missed tick once, then continue.
    One,
}

/// `timezone`: one of the IANA names the server knows, as a pattern (an alternation of
/// the names) rather than an enum: code generators make an identifier of every enum
/// value, and `GMT0`, `GMT+0` and `GMT-0` (or `Etc/GMT+1` and `Etc/GMT-1`) collide.
fn timezone_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let names: Vec<String> = chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| regex::escape(tz.name()))
        .collect();
    // `null` means the default, as an absent field does.
    ObjectBuilder::new()
        .schema_type(
            [Type::String, Type::Null]
                .into_iter()
                .collect::<SchemaType>(),
        )
        .pattern(Some(format!("^(?:{})$", names.join("|"))))
        .description(Some(
            "IANA time zone the expression is read in (default `UTC`), e.g. `Europe/Paris`.",
        ))
        .build()
}

/// Body of `POST /v1/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "nightly-report", "cron": "0 30 2 * * *", "timezone": "Europe/Paris", "task": {"kind": "report", "queue": "reports", "payload": {"scope": "daily"}}, "overlap": "skip", "catch_up": "one"}))]
pub struct NewSchedule {
    /// Name: `[A-Za-z0-9._:-]{1,128}`, not `.` or `..`.
    #[schema(value_type = super::Name)]
    pub name: String,
    /// Cron expression with seconds: `sec min hour day-of-month month day-of-week
    /// [year]`, e.g. `0 */5 * * * *` (every five minutes). The server also takes ranges,
    /// names, a year field and `@hourly`-style shorthands (docs/schedules.md); the schema
    /// pattern is the subset that always fires: six fields, each `*`, `*/step` or a
    /// list of values in range (day of month up to 28, day of week 1-7 with Sunday = 1).
    #[schema(
        max_length = 256,
        pattern = r"^(\*|\*/([1-9]|[1-5][0-9])|[0-5]?[0-9](,[0-5]?[0-9]){0,9}) (\*|\*/([1-9]|[1-5][0-9])|[0-5]?[0-9](,[0-5]?[0-9]){0,9}) (\*|\*/([1-9]|1[0-9]|2[0-3])|([01]?[0-9]|2[0-3])(,([01]?[0-9]|2[0-3])){0,9}) (\*|\*/([1-9]|1[0-9]|2[0-8])|([1-9]|1[0-9]|2[0-8])(,([1-9]|1[0-9]|2[0-8])){0,9}) (\*|\*/([1-9]|1[0-2])|([1-9]|1[0-2])(,([1-9]|1[0-2])){0,9}) (\*|[1-7](,[1-7]){0,6})$"
    )]
    pub cron: String,
    /// IANA time zone the expression is read in (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = timezone_schema)]
    pub timezone: Option<String>,
    /// The task each fire submits, validated like `POST /v1/tasks` (no `run_at`).
    pub task: NewTask,
    /// Default `allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
    /// Default `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUp>,
}

/// What became of one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FireOutcome {
    /// A task was submitted.
    Fired,
    /// `overlap: skip` and the previous fire's task was still running.
    Skipped,
    /// Later than the misfire grace with `catch_up: none`.
    Missed,
    /// The task could not be built (it no longer validates); nothing submitted.
    Error,
}

/// One tick of a schedule and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"tick_at": "2026-11-27T02:30:00.000Z", "fired_at": "2026-11-27T02:30:00.004Z", "outcome": "fired", "task_id": "01JD8XK2ZQ8M3V6T1XW0Q2E7AB.reports"}))]
pub struct Fire {
    /// RFC 3339: the tick.
    pub tick_at: String,
    /// RFC 3339: when the fire was decided (Redis clock).
    pub fired_at: String,
    /// What happened.
    pub outcome: FireOutcome,
    /// The task submitted (`fired`), or the unfinished one that caused a skip.
    pub task_id: Option<String>,
    /// Why it failed (`error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Schedule {
    /// Name.
    pub name: String,
    /// Cron expression (with seconds).
    pub cron: String,
    /// IANA time zone.
    pub timezone: String,
    /// The task each fire submits.
    pub task: serde_json::Value,
    /// Overlap policy.
    pub overlap: Overlap,
    /// Catch-up policy.
    pub catch_up: CatchUp,
    /// Paused schedules do not fire; ticks passed while paused are never fired.
    pub paused: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: the next tick (absent while paused or when the expression never fires
    /// again).
    pub next_fire_at: Option<String>,
    /// Ticks fired (tasks submitted).
    pub fired: i64,
    /// Ticks skipped because the previous task was still running.
    pub skipped: i64,
    /// Ticks passed without a fire (downtime beyond the catch-up policy).
    pub missed: i64,
    /// The most recent fires, newest first.
    pub last_fires: Vec<Fire>,
}

/// Answer of `GET /v1/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleList {
    /// Every schedule, by name.
    pub items: Vec<Schedule>,
}
