//! Limits of the HTTP contract that server, agent, CLI and bench must agree on.

use std::time::Duration;

/// Longest long-poll, ms: `GET /v1/tasks/{id}/wait?timeout_ms=` and the `wait_ms` of
/// `POST /v1/nodes/{id}/lease`; also the ceiling of the server's `--max-wait-ms`.
pub const MAX_WAIT_MS: i64 = 60_000;

/// [`MAX_WAIT_MS`] as a duration.
pub const MAX_WAIT: Duration = Duration::from_millis(MAX_WAIT_MS as u64);

/// Most tasks in one batch submit, and most reports in one report batch.
pub const MAX_BATCH: usize = 10_000;
