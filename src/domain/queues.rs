//! Wire types of queues: counts, settings (`/v1/queues`).

use super::int;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Task counts of a queue per state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueCounts {
    /// `blocked`.
    pub blocked: i64,
    /// `scheduled`.
    pub scheduled: i64,
    /// `pending`.
    pub pending: i64,
    /// `assigned`.
    pub assigned: i64,
    /// `running`.
    pub running: i64,
    /// `retrying`.
    pub retrying: i64,
    /// `succeeded` (retained).
    pub succeeded: i64,
    /// `failed` (retained).
    pub failed: i64,
    /// `cancelled` (retained).
    pub cancelled: i64,
}

/// A queue's state and settings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueInfo {
    /// Queue name.
    pub name: String,
    /// Paused queues are not dispatched.
    pub paused: bool,
    /// Share of capacity relative to other queues (default 1).
    pub weight: i64,
    /// Only human nodes take its tasks; nothing is pushed.
    pub human_only: bool,
    /// Counts per state.
    pub counts: QueueCounts,
    /// Age of the oldest pending task, ms.
    pub oldest_pending_age_ms: Option<i64>,
    /// Most tasks assigned or running at once (null: unlimited).
    #[serde(default)]
    pub max_running: Option<i64>,
    /// Most tasks started per second (null: unlimited).
    #[serde(default)]
    pub rate_limit: Option<f64>,
    /// Hash tags the queue is spread over (1: not sharded); counts above are summed
    /// over them.
    #[serde(default = "one")]
    pub shards: i64,
}

fn one() -> i64 {
    1
}

/// Answer of `GET /v1/queues`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueList {
    /// Queues by name.
    pub items: Vec<QueueInfo>,
}

/// Body of `PUT /v1/queues/{name}`: every field optional, absent ones unchanged.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"weight": 2, "paused": false}))]
pub struct QueueUpdate {
    /// 1..=1000.
    #[serde(default, deserialize_with = "int::opt")]
    #[schema(minimum = 1, maximum = 1000)]
    pub weight: Option<i64>,
    /// Pause or resume.
    #[serde(default)]
    pub paused: Option<bool>,
    /// Only human nodes.
    #[serde(default)]
    pub human_only: Option<bool>,
    /// Most tasks assigned or running at once across all nodes; 0 = unlimited.
    #[serde(default, deserialize_with = "int::opt")]
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub max_running: Option<i64>,
    /// Most tasks started per second (token bucket, burst a tenth of a second's worth,
    /// at least 1); 0 = unlimited.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub rate_limit: Option<f64>,
    /// Spread the queue over this many hash tags (Redis Cluster slots, so primaries),
    /// 1..=16; priority and FIFO hold within a shard. Only grows: fewer than now is 409
    /// `shards_shrink`. With shards, `max_running` must be 0 or at least `shards` (each
    /// shard holds its share).
    #[serde(default, deserialize_with = "int::opt")]
    #[schema(minimum = 1, maximum = 16)]
    pub shards: Option<i64>,
}
