//! Domain types: the task and node records, their states, and the JSON shapes of the
//! HTTP contract (DESIGN.md). Server, agent and CLI all speak through these types.

pub mod batches;
pub mod coord;
pub mod cron;
pub mod limits;
pub mod nodes;
pub mod queues;
pub mod roles;
pub mod spec;
pub mod validate;

pub use nodes::*;
pub use queues::*;
pub use spec::{SpecError, TaskSpec};

/// Integers in request bodies: JSON Schema counts `102.0` as the integer 102, and so do we.
mod int {
    use serde::de::{Deserialize, Deserializer, Error};

    fn integral<E: Error>(n: serde_json::Number) -> Result<i64, E> {
        if let Some(i) = n.as_i64() {
            return Ok(i);
        }
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
            _ => Err(E::custom(format!("expected an integer, got {n}"))),
        }
    }

    pub(super) fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(integral)
            .transpose()
    }

    pub(super) fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let i = integral(serde_json::Number::deserialize(d)?)?;
        u64::try_from(i).map_err(|_| D::Error::custom("expected a non-negative integer"))
    }
}

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Lifecycle state of a task (DESIGN.md "Task lifecycle").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waits on dependencies.
    Blocked,
    /// Waits for its `run_at`.
    Scheduled,
    /// Queued and ready.
    Pending,
    /// In one node's inbox.
    Assigned,
    /// Leased by a node.
    Running,
    /// Failed an attempt, waits for its backoff.
    Retrying,
    /// Terminal: completed.
    Succeeded,
    /// Terminal: attempts exhausted or non-retryable failure.
    Failed,
    /// Terminal: cancelled.
    Cancelled,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 9] = [
        TaskState::Blocked,
        TaskState::Scheduled,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Retrying,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// The name used in Redis and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Blocked => "blocked",
            TaskState::Scheduled => "scheduled",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Parses the name used in Redis and in JSON.
    pub fn parse(s: &str) -> Option<TaskState> {
        TaskState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Terminal states are absorbing, except for an operator's retry.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Retry backoff: exponential from `initial_ms`, capped at `max_ms`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// Delay before the second attempt.
    #[schema(maximum = 604_800_000)]
    #[serde(deserialize_with = "int::u64")]
    pub initial_ms: u64,
    /// Upper bound of any delay.
    #[schema(maximum = 604_800_000)]
    #[serde(deserialize_with = "int::u64")]
    pub max_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 1_000,
            max_ms: 300_000,
        }
    }
}

/// A task id: `<ULID>.<queue>`, or `<ULID>.<queue>~<shard>` in shard 1..15 of a
/// sharded queue (schema only; [`validate::TASK_ID_PATTERN`]).
#[derive(ToSchema)]
#[schema(
    pattern = r"^[0-9A-HJKMNP-TV-Z]{26}\.(?!\.{1,2}(?:~|$))[A-Za-z0-9._:-]{1,128}(?:~(?:[1-9]|1[0-5]))?$"
)]
pub struct TaskId(pub String);

/// A queue name or node tag: `[A-Za-z0-9._:-]{1,128}`, not `.` or `..` (schema only).
#[derive(ToSchema)]
#[schema(pattern = r"^(?!\.{1,2}$)[A-Za-z0-9._:-]{1,128}$")]
pub struct Name(pub String);

/// Body of `POST /v1/tasks` and one item of `POST /v1/tasks/batch`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"kind": "resize", "queue": "images", "payload": {"url": "https://example.com/a.png", "width": 640}, "priority": 5, "max_attempts": 3, "timeout_ms": 30000}))]
pub struct NewTask {
    /// Handler name.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1F\x7F-\x9F\u00AD\u061C\u180E\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub kind: String,
    /// Queue, `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Name>)]
    pub queue: Option<String>,
    /// Any JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// 0..=9, higher first.
    #[serde(
        default,
        deserialize_with = "int::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 0, maximum = 9)]
    pub priority: Option<i64>,
    /// RFC 3339 time before which the task does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub run_at: Option<String>,
    /// Delay from now before the task runs (with `run_at` too, the later holds).
    #[serde(
        default,
        deserialize_with = "int::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 0, maximum = 31_536_000_000_i64)]
    pub delay_ms: Option<i64>,
    /// Attempts before the task fails for good (default 3).
    #[serde(
        default,
        deserialize_with = "int::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_attempts: Option<i64>,
    /// Retry backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// Lease TTL (default 30000); agents renew it while the handler runs.
    #[serde(
        default,
        deserialize_with = "int::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 100, maximum = 604_800_000)]
    pub timeout_ms: Option<i64>,
    /// Hard limit on one attempt's run time: the agent kills the handler past it and
    /// fails the attempt (retryable). Unlimited when absent.
    #[serde(
        default,
        deserialize_with = "int::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 100, maximum = 604_800_000)]
    pub max_run_ms: Option<i64>,
    /// Node tags that must all be present on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Name>>, max_items = 64)]
    pub requires: Option<Vec<String>>,
    /// How long a finished task is kept (default 7 days).
    #[serde(
        default,
        deserialize_with = "int::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1000, maximum = 31_536_000_000_i64)]
    pub retention_ms: Option<i64>,
    /// Task ids that must finish first (at most 1,000, each must exist): the task stays
    /// `blocked` until every one of them succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<TaskId>>, max_items = 1000)]
    pub depends_on: Option<Vec<String>>,
    /// What a blocked task does when a dependency ends failed or cancelled (default
    /// `fail`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_dependency_failure: Option<OnDependencyFailure>,
    /// While a non-terminal task of this queue holds the key (or for `unique_ttl_ms`
    /// from its submission), a submission with the same key returns that task (200)
    /// instead of creating one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1F\x7F-\x9F\u00AD\u061C\u180E\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub unique_key: Option<String>,
    /// How long the unique key holds from the submission, whatever the task's state.
    #[serde(
        default,
        deserialize_with = "int::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1000, maximum = 31_536_000_000_i64)]
    pub unique_ttl_ms: Option<i64>,
    /// At most `concurrency_limit` tasks of this queue with this key are assigned or
    /// running at once, across all nodes. Alone: a limit of 1. A limit alone applies
    /// to the task's kind (key `kind:<kind>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Name>)]
    pub concurrency_key: Option<String>,
    /// Slots of `concurrency_key`: 1..=100000.
    #[serde(
        default,
        deserialize_with = "int::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 100_000)]
    pub concurrency_limit: Option<i64>,
    /// JSON Schema of the expected result, for the human workbench's form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result_schema: Option<Value>,
}

/// What a blocked task does when one of its dependencies ends failed or cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnDependencyFailure {
    /// End `failed` (the default).
    Fail,
    /// Run anyway: the dependency counts as done.
    Run,
    /// End `cancelled`.
    Cancel,
}

impl OnDependencyFailure {
    /// The name used in Redis and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            OnDependencyFailure::Fail => "fail",
            OnDependencyFailure::Run => "run",
            OnDependencyFailure::Cancel => "cancel",
        }
    }

    /// Parses the name used in Redis and in JSON.
    pub fn parse(s: &str) -> Option<OnDependencyFailure> {
        [Self::Fail, Self::Run, Self::Cancel]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Body of `POST /v1/tasks/batch`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tasks": [{"kind": "resize", "payload": {"n": 1}}, {"kind": "resize", "payload": {"n": 2}, "priority": 9}]}))]
pub struct NewTaskBatch {
    /// Up to 10,000 tasks, all validated first, stored all or nothing.
    #[schema(min_items = 1, max_items = 10_000)]
    pub tasks: Vec<NewTask>,
}

/// Answer of `POST /v1/tasks/batch`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"ids": ["01JD8XK2ZQ8M3V6T1XW0Q2E7AB.default", "01JD8XK2ZQ8M3V6T1XW0Q2E7AC.default"]}))]
pub struct BatchCreated {
    /// Ids in the order of the request.
    pub ids: Vec<String>,
}

/// A task record as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "01JD8XK2ZQ8M3V6T1XW0Q2E7AB.images", "queue": "images", "kind": "resize", "payload": {"url": "https://example.com/a.png"}, "priority": 5, "state": "succeeded", "attempts": 1, "max_attempts": 3, "timeout_ms": 30000, "max_run_ms": null, "requires": [], "node": "01JD8XJ9Q1Y3G2C4B5D6E7F8G9", "result": {"bytes": 48213}, "error": null, "progress": null, "fence": 1, "created_at": "2026-11-27T06:24:36.546Z", "run_at": "2026-11-27T06:24:36.546Z", "started_at": "2026-11-27T06:24:36.909Z", "finished_at": "2026-11-27T06:24:37.301Z", "lease_expires_at": null, "cancel_requested": false}))]
pub struct Task {
    /// `<ULID>.<queue>`: the queue is part of the id so that lookups need no index.
    pub id: String,
    /// Queue name.
    pub queue: String,
    /// Handler name.
    pub kind: String,
    /// Payload as submitted.
    pub payload: Value,
    /// 0..=9.
    pub priority: i64,
    /// Current state.
    pub state: TaskState,
    /// Attempts started so far.
    pub attempts: i64,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// Lease TTL in ms.
    pub timeout_ms: i64,
    /// Hard limit on one attempt's run time, ms.
    #[serde(default, deserialize_with = "int::opt")]
    pub max_run_ms: Option<i64>,
    /// Required node tags.
    pub requires: Vec<String>,
    /// Node that holds or last held the task.
    pub node: Option<String>,
    /// Result of the accepted completion.
    pub result: Option<Value>,
    /// Last error.
    pub error: Option<String>,
    /// Last progress reported by `extend`.
    pub progress: Option<Value>,
    /// Fence of the current or last lease (0 before the first).
    pub fence: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, when the task becomes due.
    pub run_at: Option<String>,
    /// RFC 3339, start of the current or last attempt.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// RFC 3339, deadline of the current lease while running.
    pub lease_expires_at: Option<String>,
    /// Set when a cancel waits for the node to stop a running task.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Tasks that must succeed before this one runs.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// What this task does when a dependency fails (set when `depends_on` is).
    #[serde(default)]
    pub on_dependency_failure: Option<OnDependencyFailure>,
    /// Uniqueness key.
    #[serde(default)]
    pub unique_key: Option<String>,
    /// Concurrency key.
    #[serde(default)]
    pub concurrency_key: Option<String>,
    /// Concurrency limit of `concurrency_key`.
    #[serde(default)]
    pub concurrency_limit: Option<i64>,
    /// The batch this task belongs to.
    #[serde(default)]
    pub batch: Option<String>,
    /// What created the task, when not a client: `batch:<id>` (a batch's `then`
    /// task) or `schedule:<name>` (a cron fire).
    #[serde(default)]
    pub origin: Option<String>,
    /// JSON Schema of the expected result (human tasks).
    #[serde(default)]
    pub result_schema: Option<Value>,
}

/// Answer of `GET /v1/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskPage {
    /// Tasks of this page.
    pub items: Vec<Task>,
    /// Pass as `cursor` for the next page; absent on the last one. A filter that
    /// matches little may answer a short (even empty) page with a cursor: each call
    /// reads at most 5,000 index entries.
    pub next_cursor: Option<String>,
}

/// `application/problem+json` body (RFC 7807) with a stable `code`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"type": "https://muster.dev/problems/lease_conflict", "title": "Conflict", "status": 409, "detail": "the lease token is not the task's current lease", "code": "lease_conflict"}))]
pub struct Problem {
    /// URI naming the problem type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What happened and what to do.
    pub detail: String,
    /// Stable machine-readable code.
    pub code: String,
}

/// Milliseconds since the Unix epoch to RFC 3339 (UTC, millisecond precision).
pub fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

/// Parses RFC 3339 into milliseconds since the Unix epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for st in TaskState::ALL {
            assert_eq!(TaskState::parse(st.as_str()), Some(st));
        }
        assert_eq!(TaskState::parse("done"), None);
    }

    #[test]
    fn rfc3339_round_trips_milliseconds() {
        let ms = 1_790_000_000_123;
        assert_eq!(parse_rfc3339_ms(&rfc3339_ms(ms)), Some(ms));
        assert!(parse_rfc3339_ms("yesterday").is_none());
    }
}
