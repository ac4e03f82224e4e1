//! Wire types of batches (fan-out / fan-in): `/v1/batches`.

use super::{NewTask, TaskState};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Body of `POST /v1/batches`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tasks": [{"kind": "count", "queue": "chunks", "payload": {"part": 1}}, {"kind": "count", "queue": "chunks", "payload": {"part": 2}}], "then": {"kind": "merge", "queue": "chunks"}}))]
pub struct NewBatch {
    /// The first children (up to 10,000; more join with `POST /v1/batches/{id}/tasks`).
    /// Empty only with `open`.
    #[schema(max_items = 10_000)]
    pub tasks: Vec<NewTask>,
    /// Submitted exactly once when every child ended (and the batch is not open); its
    /// payload gets a `batch` key with the batch's id, state and counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<NewTask>,
    /// Hold the batch open: it cannot finish until a `POST /v1/batches/{id}/tasks`
    /// with `close: true` (for batches filled in several chunks).
    #[serde(default)]
    pub open: bool,
}

/// Body of `POST /v1/batches/{id}/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tasks": [{"kind": "count", "queue": "chunks", "payload": {"part": 3}}], "close": true}))]
pub struct BatchTasks {
    /// More children (up to 10,000 per call; may be empty to only close).
    #[schema(max_items = 10_000)]
    pub tasks: Vec<NewTask>,
    /// Close a batch created with `open: true`.
    #[serde(default)]
    pub close: bool,
}

/// State of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BatchState {
    /// Children still running, or the batch is held open.
    Running,
    /// Every child succeeded.
    Succeeded,
    /// Every child ended, and at least one failed or was cancelled.
    Failed,
}

/// A batch and its progress.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"id": "01JD8XK2ZQ8M3V6T1XW0Q2E7AB", "state": "running", "open": false, "total": 2, "succeeded": 1, "failed": 0, "cancelled": 0, "unfinished": 1, "then_task": null, "created_at": "2026-11-27T06:24:36.546Z", "finished_at": null}))]
pub struct Batch {
    /// ULID.
    pub id: String,
    /// State.
    pub state: BatchState,
    /// Held open (cannot finish until closed).
    pub open: bool,
    /// Children.
    pub total: i64,
    /// Children that succeeded.
    pub succeeded: i64,
    /// Children that failed.
    pub failed: i64,
    /// Children cancelled.
    pub cancelled: i64,
    /// Children not ended yet.
    pub unfinished: i64,
    /// The `then` task, once submitted.
    pub then_task: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, when the last child ended.
    pub finished_at: Option<String>,
}

/// Answer of `POST /v1/batches/{id}/tasks`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchTasksAdded {
    /// Ids of the new children, in request order.
    pub ids: Vec<String>,
    /// The batch afterwards.
    pub batch: Batch,
}

/// One child's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// Task id.
    pub id: String,
    /// Its state (null when it no longer exists: deleted or past retention).
    pub state: Option<TaskState>,
    /// Its result.
    pub result: Option<Value>,
    /// Its last error.
    pub error: Option<String>,
}

/// Answer of `GET /v1/batches/{id}/results`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResultPage {
    /// Children in the order they joined.
    pub items: Vec<BatchResult>,
    /// Pass as `cursor` for the next page; null at the end.
    pub next_cursor: Option<String>,
}
