//! The coordinator: works off follow-ups (a task ended and something waits on it:
//! blocked dependents, a batch) and submits batches' `then` tasks exactly once.
//!
//! Every replica runs one. The follow-up lists live in Redis and every step is
//! idempotent (a dependency or a child counts once, the `then` task is stored under an
//! idempotency key), so several coordinators working the same list, a crash half-way,
//! or a lost wake-up change nothing but timing. A slower sweep re-registers blocked
//! tasks whose submitter died before registering their dependencies.

use crate::service::batches::fire_then;
use crate::service::hub::Hub;
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the follow-up lists are looked at.
pub const POLL: Duration = Duration::from_millis(200);
/// Blocked tasks older than this with unregistered dependencies are repaired.
pub const REPAIR_AFTER_MS: i64 = 10_000;

/// The coordinator component.
pub struct Coordinator {
    store: Store,
    hub: Arc<Hub>,
}

impl Coordinator {
    /// A coordinator over `store`.
    pub fn new(store: Store, hub: Arc<Hub>) -> Coordinator {
        Coordinator { store, hub }
    }

    /// Runs until `shutdown`; Redis outages only delay it.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let repair = rounds.is_multiple_of(25);
            if let Err(e) = self.round(repair).await {
                tracing::debug!(error = %e, "coordinator round failed; next round retries");
            }
            rounds += 1;
        }
    }

    /// One round: every queue's follow-ups, and with `repair` the blocked-task sweep.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn round(&self, repair: bool) -> Result<usize, StoreError> {
        let queues = self.store.queues().await?;
        if queues.is_empty() {
            return Ok(0);
        }
        let counts = self.store.followup_counts(&queues).await?;
        let mut done = 0;
        for (q, n) in queues.iter().zip(counts) {
            if n > 0 {
                done += self.work(q).await?;
            }
        }
        if repair {
            let now = self.store.now_ms().await?;
            for q in &queues {
                for (id, deps) in self
                    .store
                    .unregistered_blocked(q, now - REPAIR_AFTER_MS, 200)
                    .await?
                {
                    tracing::info!(task_id = %id, "registering the dependencies of a blocked task");
                    self.store.register_task_dependencies(&id, &deps).await?;
                }
            }
        }
        Ok(done)
    }

    async fn work(&self, queue: &str) -> Result<usize, StoreError> {
        let mut done = 0;
        // Bounded per round so one busy queue cannot starve the others.
        for _ in 0..50 {
            let ids = self.store.followups(queue, 200).await?;
            if ids.is_empty() {
                break;
            }
            for id in &ids {
                if let Some((batch, check)) = self.store.process_followup(queue, id).await? {
                    fire_then(&self.store, &self.hub, &batch, &check).await?;
                }
                self.store.ack_followup(queue, id).await?;
                done += 1;
            }
        }
        Ok(done)
    }
}
