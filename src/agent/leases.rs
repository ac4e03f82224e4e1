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

/// A lease this soon after the previous one means a busy node ...
const BUSY: Duration = Duration::from_millis(10);
/// ... whose next long-poll waits this long for more free slots.
const LINGER: Duration = Duration::from_millis(1);

/// How long a stopped in-process handler may run on to see the stop and clean up.
const STOP_GRACE: Duration = Duration::from_secs(1);
use tracing::Instrument;

/// Leases tasks while slots are free, until `shutdown`. While outcomes wait to be
/// reported, the report flusher leases for the free slots in its report call, and this
/// loop waits: its long-poll is for a node with nothing to report.
pub(super) async fn lease_loop(agent: &Arc<Agent>, shutdown: &CancellationToken) {
    let slots = agent.slots.clone();
    let budget = agent.config.capacity as usize + agent.config.prefetch as usize;
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    let mut last_leased = Instant::now() - BUSY;
    loop {
        // Busy: the flusher takes the next tasks with the reports it is about to send.
        loop {
            let flushed = agent.flushed.notified();
            tokio::pin!(flushed);
            flushed.as_mut().enable();
            if !agent.flusher_leases() {
                break;
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = flushed => {}
            }
        }
        // Wait for a free slot: no polling while the node is full.
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        if agent.flusher_leases() {
            // The slot freed with an outcome to report: the flusher leases for it.
            drop(first);
            continue;
        }
        // Busy (the last lease brought tasks a moment ago, and most slots are taken): let
        // the slots freeing now join this call, one lease for many instead of one each.
        if last_leased.elapsed() < BUSY && slots.available_permits() < budget / 2 {
            tokio::time::sleep(LINGER).await;
        }
        // Every slot asked for is held, so a flush that leases meanwhile cannot be
        // granted the same ones.
        let mut held = first;
        let more = slots.available_permits();
        if more > 0
            && let Ok(p) = slots.clone().try_acquire_many_owned(more as u32)
        {
            held.merge(p);
        }
        let max = u32::try_from(held.num_permits()).unwrap_or(u32::MAX);
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
                    drop(held);
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
                start_leased(agent, reply.leases, held);
            }
            Err(e) => {
                drop(held);
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

/// Starts a runner for each lease, each with one of the `held` slots (the rest are
/// freed). A lease beyond them (a server granting more than asked) is given back, as
/// is every lease that comes after leasing stopped (the shutdown).
pub(super) fn start_leased(agent: &Arc<Agent>, leases: Vec<Lease>, mut held: OwnedSemaphorePermit) {
    for lease in leases {
        if agent.leasing.is_cancelled() {
            agent.send_report(failed_report(&lease, SHUTDOWN_ERROR, true));
            continue;
        }
        match held.split(1) {
            Some(p) => {
                agent
                    .tasks
                    .spawn(run_task(agent.clone(), lease, p, agent.handlers.clone()));
            }
            None => {
                tracing::warn!(task_id = %lease.task.id, "server granted more leases than asked; giving it back");
                agent.send_report(failed_report(&lease, "node at capacity", true));
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
        // Counted before the slots free, so that the lease loop woken by them leaves
        // them to the flusher, which leases for them with this report.
        if report.is_some() {
            agent.report_coming();
        }
        drop(slot);
        drop(permit);
        if let Some(r) = report {
            agent.push_report(r);
        }
    }
    .instrument(span)
    .await;
}
