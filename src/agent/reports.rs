//! The report flusher: sends the outcomes that are ready in batches, and leases for
//! the free slots in the same calls (`lease_max`), so the next tasks of a busy node come
//! with the answers to its reports. Up to [`IN_FLIGHT`] calls are out at once, each with
//! at most half of the node's slots: while one call's reports and leases are in
//! Redis, the tasks another call brought run here, instead of the whole node waiting on
//! one round trip per wave.

use super::MAX_REPORT_BATCH;
use super::backoff::Backoff;
use super::leases::start_leased;
use super::state::Agent;
use crate::domain::{Report, ReportBatch};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a batch of reports is retried before it is given up.
const REPORT_RETRY_FOR: Duration = Duration::from_secs(300);

/// Report calls out at once. Two, each with up to half the slots' reports: against
/// four (a quarter each), `scripts/bench-sdk --cases rust,agent` at concurrency 64 ran
/// 11-18% faster with less CPU per task in the worker, the server and Redis (each
/// script call has a fixed cost, so fuller calls are cheaper per task); one call alone
/// was no faster than two.
pub(super) const IN_FLIGHT: usize = 2;

/// Scheduler turns a free call waits for more outcomes of the same wave (each ends the
/// wait when it brought none).
const WAVE_YIELDS: usize = 4;

/// Most tasks asked for with one report call (the server's limit of `lease_max`).
const MAX_LEASE_WITH_REPORTS: usize = 1000;

/// Sends outcomes in batches: everything queued when a call is free goes in it (up to
/// half of the slots), at once, so reports arriving while calls are out are
/// coalesced into the next. Failed calls are retried with backoff. Returns once `stop` fired and
/// everything was sent.
pub(super) async fn report_loop(
    agent: Arc<Agent>,
    mut rx: mpsc::UnboundedReceiver<Report>,
    stop: CancellationToken,
) {
    let budget = agent.config.capacity as usize + agent.config.prefetch as usize;
    let chunk = budget.div_ceil(IN_FLIGHT).clamp(1, MAX_REPORT_BATCH);
    let calls = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut flushes = JoinSet::new();
    let mut pending: Vec<Report> = Vec::new();
    let mut open = true;
    while open || !pending.is_empty() {
        while flushes.try_join_next().is_some() {}
        if pending.is_empty() {
            tokio::select! {
                biased;
                r = rx.recv() => match r {
                    Some(r) => pending.push(r),
                    None => open = false,
                },
                _ = stop.cancelled() => open = false,
            }
            if !open {
                while let Ok(r) = rx.try_recv() {
                    pending.push(r);
                }
                continue;
            }
            // No lingering for more: while every call is out, the outcomes finishing
            // meanwhile gather for the next one (a linger of even 200 µs cost a fifth
            // of the no-op rate in scripts/bench-sdk).
        }
        // A free call; outcomes finishing while all are out join the next batch.
        let Ok(call) = calls.clone().acquire_owned().await else {
            break;
        };
        while let Ok(r) = rx.try_recv() {
            pending.push(r);
        }
        // Handlers started together end together: a few turns of the scheduler (no
        // timer) let the rest of their wave into this call instead of the next.
        for _ in 0..WAVE_YIELDS {
            if pending.len() >= chunk {
                break;
            }
            let before = pending.len();
            tokio::task::yield_now().await;
            while let Ok(r) = rx.try_recv() {
                pending.push(r);
            }
            if pending.len() == before {
                break;
            }
        }
        let n = pending.len().min(chunk);
        let batch: Vec<Report> = pending.drain(..n).collect();
        flushes.spawn(flush(agent.clone(), batch, call));
    }
    while flushes.join_next().await.is_some() {}
}

/// Sends one batch of reports (retried with backoff while the server or Redis is
/// away), leasing for the free slots with it; `_call` is its place among the calls out.
async fn flush(agent: Arc<Agent>, reports: Vec<Report>, _call: OwnedSemaphorePermit) {
    let n = reports.len();
    let mut batch = ReportBatch {
        reports,
        lease_max: None,
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failing_since: Option<Instant> = None;
    loop {
        // The free slots (those these outcomes freed among them) are held until the
        // answer, so the lease loop and the other calls cannot ask for them too.
        let mut held = None;
        if agent.lease_with_reports.load(Ordering::SeqCst) && !agent.leasing.is_cancelled() {
            // Every free slot: the first call out takes the next wave. (Each call asking
            // only its share, so that waves overlap, measured slower in scripts/bench-sdk.)
            let free = agent.slots.available_permits().min(MAX_LEASE_WITH_REPORTS);
            if free > 0 {
                held = agent.slots.clone().try_acquire_many_owned(free as u32).ok();
            }
        }
        batch.lease_max = held.as_ref().map(|h| h.num_permits() as i64);
        let s = agent.session();
        match agent.client.nodes_reports(&s.id, &s.token, &batch).await {
            Ok(reply) => {
                if let Some(h) = held {
                    start_leased(&agent, reply.leases, h);
                }
                agent.reports_settled(n);
                for r in reply.results {
                    match r.status {
                        200..=299 => {
                            tracing::debug!(node_id = %s.id, task_id = %r.task_id, state = ?r.state, "report accepted")
                        }
                        404 | 409 => {
                            tracing::debug!(node_id = %s.id, task_id = %r.task_id, status = r.status, code = ?r.code, "report refused: lease lost")
                        }
                        _ => {
                            tracing::warn!(node_id = %s.id, task_id = %r.task_id, status = r.status, code = ?r.code, "report refused")
                        }
                    }
                }
                return;
            }
            Err(e) if e.is_transient() => {
                drop(held);
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= REPORT_RETRY_FOR {
                    tracing::error!(node_id = %s.id, dropped = n, error = %e, "reports undeliverable; giving them up");
                    agent.reports_settled(n);
                    return;
                }
                let delay = e.retry_after().unwrap_or_else(|| backoff.next_delay());
                tracing::warn!(node_id = %s.id, reports = n, error = %e, retry_in_ms = delay.as_millis() as u64, "report flush failed");
                tokio::time::sleep(delay).await;
            }
            Err(e) if batch.lease_max.is_some() && e.code() == Some("invalid_body") => {
                // A server older than `lease_max` refuses the field: the lease loop alone
                // leases from now on, and the same reports go again without it.
                drop(held);
                tracing::info!(node_id = %s.id, error = %e, "the server does not lease with reports; the long-poll alone leases");
                agent.lease_with_reports.store(false, Ordering::SeqCst);
                agent.flushed.notify_waiters();
            }
            Err(e) => {
                // The node was forgotten (its leases with it) or the batch is refused
                // as a whole: retrying cannot help.
                tracing::warn!(node_id = %s.id, dropped = n, error = %e, "reports refused; dropping them");
                agent.reports_settled(n);
                return;
            }
        }
    }
}
