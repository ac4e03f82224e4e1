//! Wire types of nodes and the agent protocol: registration, heartbeats, leases and
//! reports (`/v1/nodes`, `/v1/tasks/{id}/extend|complete|fail`).

use super::{Name, Task, TaskState, int};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Kind of node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A program; the dispatcher pushes tasks to it.
    #[default]
    Machine,
    /// A person; pulls one task at a time.
    Human,
}

impl NodeKind {
    /// Name in Redis and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Machine => "machine",
            NodeKind::Human => "human",
        }
    }
}

/// Node status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Heartbeating and taking work.
    Active,
    /// Finishing its work, taking no more.
    Draining,
    /// Missed its heartbeats.
    Offline,
}

impl NodeStatus {
    /// Name in Redis and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Active => "active",
            NodeStatus::Draining => "draining",
            NodeStatus::Offline => "offline",
        }
    }
    /// Parses the name in Redis and JSON.
    pub fn parse(s: &str) -> Option<NodeStatus> {
        match s {
            "active" => Some(NodeStatus::Active),
            "draining" => Some(NodeStatus::Draining),
            "offline" => Some(NodeStatus::Offline),
            _ => None,
        }
    }
}

/// Body of `POST /v1/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "worker-1", "queues": ["images"], "tags": ["gpu"], "capacity": 8, "kind": "machine"}))]
pub struct RegisterNode {
    /// Human-readable name (host name, person).
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1F\x7F-\x9F\u00AD\u061C\u180E\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$"
    )]
    pub name: String,
    /// Queues served.
    #[serde(default)]
    #[schema(value_type = Vec<Name>, max_items = 64)]
    pub queues: Vec<String>,
    /// Tags matched against tasks' `requires`.
    #[serde(default)]
    #[schema(value_type = Vec<Name>, max_items = 64)]
    pub tags: Vec<String>,
    /// Tasks run at once (default 1).
    #[serde(default, deserialize_with = "int::opt")]
    #[schema(minimum = 1, maximum = 10_000)]
    pub capacity: Option<i64>,
    /// `machine` (default) or `human`.
    #[serde(default)]
    pub kind: Option<NodeKind>,
}

/// A node record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    /// Node id (ULID).
    pub id: String,
    /// Name given at registration.
    pub name: String,
    /// `machine` or `human`.
    pub kind: NodeKind,
    /// `active`, `draining` or `offline`.
    pub status: NodeStatus,
    /// Queues served.
    pub queues: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Tasks run at once.
    pub capacity: i64,
    /// Tasks assigned to or running on the node now.
    pub running: i64,
    /// Completions accepted.
    pub succeeded: i64,
    /// Failed attempts (including expired leases).
    pub failed: i64,
    /// Mean run time of accepted completions, ms.
    pub mean_run_ms: Option<f64>,
    /// RFC 3339.
    pub registered_at: String,
    /// RFC 3339 of the last heartbeat or lease call.
    pub last_seen_at: String,
}

/// Answer of `POST /v1/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeRegistered {
    /// Node id.
    pub id: String,
    /// Bearer token valid only for this node's own agent routes. Shown once.
    pub token: String,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// The node as stored.
    pub node: Node,
}

/// Answer of `GET /v1/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeList {
    /// Nodes, newest first.
    pub items: Vec<Node>,
}

/// Answer of `POST /v1/nodes/{id}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatReply {
    /// The node's status as the control plane sees it.
    pub status: NodeStatus,
    /// Running tasks the node must stop (they were cancelled).
    pub cancel: Vec<String>,
}

/// Body of `POST /v1/nodes/{id}/lease`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"max": 8, "wait_ms": 20000}))]
pub struct LeaseRequest {
    /// Most tasks to take (default 1, at most 1000).
    #[serde(default, deserialize_with = "int::opt")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max: Option<i64>,
    /// Long-poll up to this long when nothing is assigned (default 0, at most 60000).
    #[serde(default, deserialize_with = "int::opt")]
    #[schema(minimum = 0, maximum = 60_000)]
    pub wait_ms: Option<i64>,
}

/// One granted lease.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    /// The task, state `running`.
    pub task: Task,
    /// Present this on extend / complete / fail. Encodes fence and nonce.
    pub lease_token: String,
    /// Fence number: pass it to downstream stores so they can fence stale writers.
    pub fence: i64,
    /// RFC 3339.
    pub lease_expires_at: String,
}

/// Answer of `POST /v1/nodes/{id}/lease`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LeaseReply {
    /// Granted leases, possibly none.
    pub leases: Vec<Lease>,
}

/// Body of `POST /v1/tasks/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"lease_token": "1.5b4c177b96fb3d0fb4032c58", "progress": {"done": 40, "total": 100}}))]
pub struct ExtendRequest {
    /// The lease's token.
    pub lease_token: String,
    /// Optional progress (any JSON).
    #[serde(default)]
    pub progress: Option<Value>,
}

/// Answer of `POST /v1/tasks/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExtendReply {
    /// RFC 3339 new deadline.
    pub lease_expires_at: String,
    /// True when the task was cancelled: stop it and report a failure.
    pub cancel_requested: bool,
}

/// Most leases renewed by one `POST /v1/nodes/{id}/extend`.
pub const MAX_EXTEND_BATCH: usize = 1000;

/// One lease of `POST /v1/nodes/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseRenewal {
    /// Task id.
    #[schema(min_length = 1)]
    pub task_id: String,
    /// The lease's token.
    pub lease_token: String,
    /// Optional progress (any JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Value>,
}

/// Body of `POST /v1/nodes/{id}/extend`: the batched form of `POST /v1/tasks/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"leases": [{"task_id": "01JD0000000000000000000000.default", "lease_token": "1.5b4c177b96fb3d0fb4032c58"}]}))]
pub struct ExtendBatch {
    /// 1 to 1,000 leases of this node.
    #[schema(min_items = 1, max_items = 1000)]
    pub leases: Vec<LeaseRenewal>,
}

/// What renewing one lease did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RenewalStatus {
    /// Renewed: `lease_expires_at` is the new deadline.
    Extended,
    /// The token is not the current lease (409 on the single route).
    Conflict,
    /// No such task (404 on the single route).
    NotFound,
}

/// Per-item answer of `POST /v1/nodes/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RenewalResult {
    /// Task id.
    pub task_id: String,
    /// What happened.
    pub status: RenewalStatus,
    /// Stable error code when not extended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// RFC 3339 new deadline, when extended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
    /// True when the task was cancelled: stop it and report a failure.
    #[serde(default)]
    pub cancel_requested: bool,
}

/// Answer of `POST /v1/nodes/{id}/extend`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExtendBatchReply {
    /// One per lease, same order.
    pub results: Vec<RenewalResult>,
}

/// Body of `POST /v1/tasks/{id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"lease_token": "1.5b4c177b96fb3d0fb4032c58", "result": {"bytes": 48213}}))]
pub struct CompleteRequest {
    /// The lease's token.
    pub lease_token: String,
    /// Any JSON.
    #[serde(default)]
    pub result: Option<Value>,
}

/// Body of `POST /v1/tasks/{id}/fail`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"lease_token": "1.5b4c177b96fb3d0fb4032c58", "error": "upstream timed out", "retryable": true}))]
pub struct FailRequest {
    /// The lease's token.
    pub lease_token: String,
    /// What went wrong.
    #[serde(default)]
    pub error: Option<String>,
    /// False fails the task for good (default true).
    #[serde(default)]
    pub retryable: Option<bool>,
}

/// Outcome of one report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReportOutcome {
    /// Same as `complete`.
    Succeeded,
    /// Same as `fail`.
    Failed,
}

/// One item of `POST /v1/nodes/{id}/reports`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Task id.
    #[schema(min_length = 1)]
    pub task_id: String,
    /// The lease's token.
    pub lease_token: String,
    /// `succeeded` or `failed`.
    pub outcome: ReportOutcome,
    /// Result when succeeded.
    #[serde(default)]
    pub result: Option<Value>,
    /// Error when failed.
    #[serde(default)]
    pub error: Option<String>,
    /// When failed: false fails for good (default true).
    #[serde(default)]
    pub retryable: Option<bool>,
}

/// Body of `POST /v1/nodes/{id}/reports`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reports": [{"task_id": "01JD8XK2ZQ8M3V6T1XW0Q2E7AB.images", "lease_token": "1.5b4c177b96fb3d0fb4032c58", "outcome": "succeeded", "result": {"bytes": 48213}}]}))]
pub struct ReportBatch {
    /// Up to 10,000 reports.
    #[schema(max_items = 10_000)]
    pub reports: Vec<Report>,
    /// Also lease up to this many tasks in the same call, answered in the reply's
    /// `leases` at once (no waiting): a busy worker takes the next tasks for the slots
    /// these reports free without a second call, as BullMQ's worker fetches its next
    /// job when it finishes one. From the node's inbox first, then the queue's pending
    /// tasks in order, under the queue's limits. 0 or absent: none; at most 1,000; a
    /// draining node gets none, a person's node at most 1.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "int::opt"
    )]
    #[schema(minimum = 0, maximum = 1000)]
    pub lease_max: Option<i64>,
}

/// Per-item answer of `POST /v1/nodes/{id}/reports`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReportResult {
    /// Task id.
    pub task_id: String,
    /// The status the single-item route would have answered (200, 404, 409…).
    pub status: u16,
    /// Stable error code when not 200.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The task's state after the report, when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<TaskState>,
}

/// Answer of `POST /v1/nodes/{id}/reports`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReportBatchReply {
    /// One per report, same order.
    pub results: Vec<ReportResult>,
    /// The tasks leased for `lease_max` (absent when none were asked or none were
    /// ready); each is held exactly as a lease from `POST /v1/nodes/{id}/lease`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<Lease>,
}
