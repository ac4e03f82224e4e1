//! The node's renewal loop: every lease due for renewal (a third of its TTL after the
//! last one) goes out in one `POST /v1/nodes/{id}/extend` per round, with the latest
//! progress of each task; cancels and lost leases stop their tasks.

use super::state::{Agent, StopReason, TaskHandle, lock};
use crate::domain::{ExtendBatch, LeaseRenewal, MAX_EXTEND_BATCH, RenewalStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Longest sleep between two looks at the running tasks: new tasks are noticed within it.
const MAX_TICK: Duration = Duration::from_millis(100);

/// Retry delay of a failed renewal, capped by a quarter of what is left of the lease.
const RETRY: Duration = Duration::from_millis(200);

/// Renews the leases of the running tasks until `stop` (which comes after the drain,
/// so tasks finishing within the grace keep their leases).
pub(super) async fn renew_loop(agent: Arc<Agent>, stop: CancellationToken) {
    loop {
        let tick = next_tick(&agent);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let due = due_now(&agent);
        for chunk in due.chunks(MAX_EXTEND_BATCH) {
            tokio::select! {
                _ = stop.cancelled() => return,
                () = renew(&agent, chunk) => {}
            }
        }
    }
}

/// Time until the earliest renewal is due, within `[10 ms, MAX_TICK]`.
fn next_tick(agent: &Agent) -> Duration {
    let now = Instant::now();
    let running = lock(&agent.running);
    running
        .values()
        .map(|h| lock(&h.times).0.saturating_duration_since(now))
        .min()
        .unwrap_or(MAX_TICK)
        .clamp(Duration::from_millis(10), MAX_TICK)
}

/// Running tasks whose renewal is due now or soon (within a quarter period, so that
/// tasks leased together are renewed together).
fn due_now(agent: &Agent) -> Vec<(String, Arc<TaskHandle>)> {
    let now = Instant::now();
    lock(&agent.running)
        .iter()
        .filter(|(_, h)| !h.stop.is_cancelled() && lock(&h.times).0 <= now + h.every / 4)
        .map(|(id, h)| (id.clone(), h.clone()))
        .collect()
}

async fn renew(agent: &Agent, due: &[(String, Arc<TaskHandle>)]) {
    let leases: Vec<LeaseRenewal> = due
        .iter()
        .map(|(id, h)| LeaseRenewal {
            task_id: id.clone(),
            lease_token: h.lease_token.clone(),
            progress: lock(&h.progress).take(),
        })
        .collect();
    let s = agent.session();
    let sent = Instant::now();
    match agent
        .client
        .nodes_extend(&s.id, &s.token, &ExtendBatch { leases })
        .await
    {
        Ok(reply) => {
            for ((id, h), r) in due.iter().zip(reply.results) {
                match r.status {
                    RenewalStatus::Extended => {
                        *lock(&h.times) = (sent + h.every, sent + h.ttl);
                        if r.cancel_requested {
                            tracing::info!(task_id = %id, "cancel requested: stopping the task");
                            h.stop(StopReason::Cancelled);
                        }
                    }
                    RenewalStatus::Conflict | RenewalStatus::NotFound => {
                        // The status the single route would have answered, for logs
                        // that grep for it.
                        let status = if r.status == RenewalStatus::Conflict {
                            409
                        } else {
                            404
                        };
                        tracing::warn!(task_id = %id, status, code = ?r.code, "lease lost: stopping the task");
                        h.stop(StopReason::LeaseLost);
                    }
                }
            }
        }
        Err(e) => {
            let now = Instant::now();
            for (id, h) in due {
                let mut t = lock(&h.times);
                if now >= t.1 {
                    drop(t);
                    tracing::warn!(task_id = %id, error = %e, "lease expired without a renewal: stopping the task");
                    h.stop(StopReason::LeaseLost);
                    continue;
                }
                // Retry soon, well inside what is left of the lease: a Retry-After
                // that lands on the deadline races the reaper (a Redis blip would
                // expire healthy leases).
                let left = t.1 - now;
                t.0 = now + e.retry_after().unwrap_or(RETRY).min(RETRY).min(left / 4);
            }
            tracing::warn!(node_id = %s.id, leases = due.len(), error = %e, "lease renewal failed");
        }
    }
}
