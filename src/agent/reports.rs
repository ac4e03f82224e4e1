//! The report flusher: sends whatever outcomes are ready in one batch, so outcomes
//! arriving during a flush go out together in the next one.

use super::MAX_REPORT_BATCH;
use super::backoff::Backoff;
use super::state::Agent;
use crate::domain::{Report, ReportBatch};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long a batch of reports is retried before it is given up.
const REPORT_RETRY_FOR: Duration = Duration::from_secs(300);

/// A flush this soon after the previous one means a busy node ...
pub(super) const BUSY: Duration = Duration::from_millis(10);
/// ... whose next batch waits this long for more outcomes (or leases, see `leases.rs`).
pub(super) const LINGER: Duration = Duration::from_millis(1);

/// Sends outcomes in batches: everything queued when a flush starts goes in it, so
/// reports arriving during a flush are coalesced into the next one. Failed flushes
/// are retried with backoff. Returns once `stop` fired and everything was sent.
pub(super) async fn report_loop(
    agent: Arc<Agent>,
    mut rx: mpsc::UnboundedReceiver<Report>,
    stop: CancellationToken,
) {
    let mut pending: Vec<Report> = Vec::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failing_since: Option<Instant> = None;
    let mut last_flush = Instant::now() - BUSY;
    loop {
        if pending.is_empty() {
            tokio::select! {
                biased;
                r = rx.recv() => match r {
                    Some(r) => pending.push(r),
                    None => return,
                },
                _ = stop.cancelled() => {
                    while let Ok(r) = rx.try_recv() {
                        pending.push(r);
                    }
                    if pending.is_empty() {
                        return;
                    }
                }
            }
            // Busy (the last flush was a moment ago): let the outcomes finishing now
            // join this batch, one call for many instead of one each. Idle: at once.
            if last_flush.elapsed() < BUSY && !stop.is_cancelled() {
                tokio::time::sleep(LINGER).await;
            }
        }
        last_flush = Instant::now();
        while let Ok(r) = rx.try_recv() {
            pending.push(r);
        }
        let n = pending.len().min(MAX_REPORT_BATCH);
        let batch = ReportBatch {
            reports: pending[..n].to_vec(),
        };
        let s = agent.session();
        match agent.client.nodes_reports(&s.id, &s.token, &batch).await {
            Ok(reply) => {
                backoff.reset();
                failing_since = None;
                pending.drain(..n);
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
            }
            Err(e) if e.is_transient() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= REPORT_RETRY_FOR {
                    tracing::error!(node_id = %s.id, dropped = n, error = %e, "reports undeliverable; giving them up");
                    pending.drain(..n);
                    failing_since = None;
                    backoff.reset();
                    continue;
                }
                let delay = e.retry_after().unwrap_or_else(|| backoff.next_delay());
                tracing::warn!(node_id = %s.id, reports = n, error = %e, retry_in_ms = delay.as_millis() as u64, "report flush failed");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                // The node was forgotten (its leases with it) or the batch is refused
                // as a whole: retrying cannot help.
                tracing::warn!(node_id = %s.id, dropped = n, error = %e, "reports refused; dropping them");
                pending.drain(..n);
            }
        }
    }
}
