//! Leasing and running: the lease loop (long-polls for at most the free slots) and one
//! runner per leased task (the executor raced against stop requests). Renewals are
//! the node's renewal loop (`renewals.rs`).

use super::backoff::Backoff;
use super::exec;
use super::handler::TaskContext;
use super::state::{Agent, StopReason, TaskHandle, lock, node_forgotten};
use super::{CANCELLED_ERROR, LEASE_WAIT_MS, SHUTDOWN_ERROR};
use crate::domain::{Lease, Report, ReportOutcome};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a stopped in-process handler may run on to see the stop and clean up.
const STOP_GRACE: Duration = Duration::from_secs(1);
use tracing::Instrument;

/// Leases tasks while slots are free, until `shutdown`.
pub(super) async fn lease_loop(
    agent: &Arc<Agent>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    // Leases are held to capacity + prefetch; handlers run at most `capacity` at once
    // (a prefetched task waits for one of those slots, its lease renewed meanwhile).
    let budget = agent.config.capacity as usize + agent.config.prefetch as usize;
    let slots = Arc::new(Semaphore::new(budget));
    let running = Arc::new(Semaphore::new(agent.config.capacity as usize));
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut last_leased = Instant::now() - super::reports::BUSY;
    loop {
        // Wait for a free slot: no polling while the node is full.
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        // Busy (the last lease brought tasks a moment ago, and most slots are taken): let
        // the slots freeing now join this call, one lease for many instead of one each.
        if last_leased.elapsed() < super::reports::BUSY && slots.available_permits() < budget / 2 {
            tokio::time::sleep(super::reports::LINGER).await;
        }
        let max = u32::try_from(slots.available_permits())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let s = agent.session();
        let asked = Instant::now();
        let res = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = agent.client.nodes_lease(&s.id, &s.token, max, LEASE_WAIT_MS) => r,
        };
        match res {
            Ok(reply) => {
                if reply.leases.is_empty() {
                    drop(first);
                    // A server that answers an empty long-poll at once (draining node,
                    // no long-poll support) must not turn this loop into a busy one.
                    if asked.elapsed() < Duration::from_millis(LEASE_WAIT_MS / 2) {
                        let delay = backoff.next_delay();
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                    continue;
                }
                backoff.reset();
                last_leased = Instant::now();
                let mut first = Some(first);
                for lease in reply.leases {
                    let permit = first
                        .take()
                        .or_else(|| slots.clone().try_acquire_owned().ok());
                    match permit {
                        Some(p) => {
                            tasks.spawn(run_task(agent.clone(), lease, p, running.clone()));
                        }
                        None => {
                            tracing::warn!(node_id = %s.id, task_id = %lease.task.id, "server granted more leases than asked; giving it back");
                            agent.send_report(failed_report(&lease, "node at capacity", true));
                        }
                    }
                }
            }
            Err(e) => {
                drop(first);
                if node_forgotten(&e) {
                    agent.reregister(&s.id, shutdown).await;
                    continue;
                }
                let delay = e.retry_after().unwrap_or_else(|| backoff.next_delay());
                tracing::warn!(node_id = %s.id, error = %e, retry_in_ms = delay.as_millis() as u64, "lease failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn failed_report(lease: &Lease, error: &str, retryable: bool) -> Report {
    Report {
        task_id: lease.task.id.clone(),
        lease_token: lease.lease_token.clone(),
        outcome: ReportOutcome::Failed,
        result: None,
        error: Some(error.to_string()),
        retryable: Some(retryable),
    }
}

/// Runs one leased task once one of the `running` slots is free (at once without
/// prefetch): the executor raced against renewal and stop requests; the lease's slot
/// (`permit`) is freed once the outcome is queued for reporting.
async fn run_task(
    agent: Arc<Agent>,
    lease: Lease,
    permit: OwnedSemaphorePermit,
    running: Arc<Semaphore>,
) {
    let handle = Arc::new(TaskHandle::new(
        lease.lease_token.clone(),
        exec::lease_ttl(&lease),
    ));
    let task_id = lease.task.id.clone();
    lock(&agent.running).insert(task_id.clone(), handle.clone());
    let node_id = agent.session().id.clone();
    let span = tracing::info_span!("task", task_id = %task_id, node_id = %node_id, kind = %lease.task.kind);
    async {
        tracing::debug!(attempt = lease.task.attempts, fence = lease.fence, "task started");
        // A prefetched task waits for a free slot; stopped meanwhile (cancelled, the
        // shutdown, its lease lost) it never starts and is reported by the reason.
        let slot = tokio::select! {
            biased;
            _ = handle.stop.cancelled() => None,
            s = running.acquire_owned() => s.ok(),
        };
        let started = Instant::now();
        let mut outcome = None;
        if slot.is_some() {
            let ctx = TaskContext::new(&lease, handle.stop.clone(), handle.progress.clone());
            let run = agent.runner.run_with(&lease, ctx);
            tokio::pin!(run);
            outcome = tokio::select! {
                r = &mut run => Some(r),
                _ = handle.stop.cancelled() => None,
            };
            if outcome.is_none() && agent.runner.in_process() {
                // In-process handlers see the stop through their context: give them a
                // moment to notice and clean up before the future is dropped. Whatever
                // they return now is not reported (the stop reason decides).
                let _ = tokio::time::timeout(STOP_GRACE, &mut run).await;
            }
        }
        {
            let mut running = lock(&agent.running);
            if running.get(&task_id).is_some_and(|h| Arc::ptr_eq(h, &handle)) {
                running.remove(&task_id);
            }
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let report = match (outcome, handle.reason()) {
            (Some(Ok(result)), _) => {
                tracing::debug!(elapsed_ms, "task succeeded");
                Some(Report {
                    task_id: task_id.clone(),
                    lease_token: lease.lease_token.clone(),
                    outcome: ReportOutcome::Succeeded,
                    result: Some(result),
                    error: None,
                    retryable: None,
                })
            }
            (Some(Err(e)), _) => {
                tracing::info!(elapsed_ms, error = %e.message, retryable = e.retryable, "task failed");
                Some(failed_report(&lease, &e.message, e.retryable))
            }
            (None, Some(StopReason::Cancelled)) => {
                tracing::info!(elapsed_ms, "task cancelled");
                Some(failed_report(&lease, CANCELLED_ERROR, false))
            }
            (None, Some(StopReason::Shutdown)) => {
                tracing::info!(elapsed_ms, "task killed by the shutdown");
                Some(failed_report(&lease, SHUTDOWN_ERROR, true))
            }
            (None, Some(StopReason::LeaseLost) | None) => {
                tracing::info!(elapsed_ms, "lease lost: task stopped, not reported");
                None
            }
        };
        if let Some(r) = report {
            agent.send_report(r);
        }
        drop(slot);
        drop(permit);
    }
    .instrument(span)
    .await;
}
