//! Timers: promote due scheduled/retrying tasks, expire leases past their deadline
//! (a failed attempt), mark nodes offline after missed heartbeats (their inboxes go
//! back to pending), and trim finished tasks past retention. Every step is an atomic
//! script, so several replicas running timers together is safe.

use crate::domain::NodeStatus;
use crate::service::directory::Directory;
use crate::service::hub::{Hub, NodeStats};
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Rounds between two trims of the finished indexes (entries whose task expired).
const TRIM_EVERY: u32 = 10;
/// Windows each trim may read per finished index and queue (`Store::trim_finished`).
const TRIM_WINDOWS: usize = 100;
/// Windows one trim round may read in all, over every queue.
const TRIM_BUDGET: usize = 1000;
/// Trim rounds between two that also probe behind alive oldest entries.
const TRIM_PROBE_EVERY: u64 = 6;

/// The timers component.
pub struct Timers {
    store: Store,
    hub: Arc<Hub>,
    directory: Arc<Directory>,
    interval: Duration,
    offline_after: Duration,
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Tasks promoted to pending.
    pub promoted: i64,
    /// Leases expired.
    pub expired: usize,
    /// Nodes marked offline.
    pub offline: usize,
}

impl Timers {
    /// Timers ticking every `interval`; nodes go offline after 3 missed heartbeats.
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        directory: Arc<Directory>,
        interval: Duration,
        heartbeat: Duration,
    ) -> Timers {
        Timers {
            store,
            hub,
            directory,
            interval,
            offline_after: heartbeat * 3,
        }
    }

    /// One round over every queue and node. The queues are first read in pipelines
    /// (what is due, by the Redis clock); the scripts then run only in queues with a
    /// due task or an expired lease. What falls due between the read and the scripts
    /// waits for the next round.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn tick_once(&self) -> Result<Round, StoreError> {
        let mut round = Round::default();
        let queues = self.store.queues().await?;
        let now = self.store.now_ms().await?;
        for due in self.store.due_queues(&queues, now).await? {
            let q = &due.queue;
            if due.promote {
                let n = self.store.promote(q, 1000).await?;
                if n > 0 {
                    round.promoted += n;
                    // `queues` lists shards: this one.
                    self.hub.mark_shard_dirty(q);
                }
            }
            if !due.expire {
                continue;
            }
            let expired = self.store.expire(q, 1000).await?;
            for (id, node, state) in &expired {
                tracing::info!(task_id = %id, node_id = %node, new_state = %state, "lease expired");
                self.hub.wake_task(id);
                self.hub.add_stats(
                    node,
                    NodeStats {
                        failed: 1,
                        ..Default::default()
                    },
                );
            }
            if !expired.is_empty() {
                round.expired += expired.len();
                self.hub.mark_shard_dirty(q);
            }
        }
        let stale = self
            .store
            .stale_nodes(now - self.offline_after.as_millis() as i64)
            .await?;
        for id in stale {
            let Some(rec) = self.store.node(&id).await? else {
                continue;
            };
            if rec.node.status == NodeStatus::Offline {
                continue;
            }
            self.store.set_node_status(&id, NodeStatus::Offline).await?;
            let n = self.store.requeue_node(&rec.node).await?;
            tracing::warn!(node_id = %id, requeued = n, "node missed its heartbeats: offline");
            round.offline += 1;
            self.directory.invalidate();
            for q in &rec.node.queues {
                self.hub.mark_dirty(q);
            }
        }
        Ok(round)
    }

    /// Ticks until `shutdown`. The trim of the finished indexes runs in a task of its
    /// own (one round at a time), so expiring leases and promoting due tasks never wait
    /// for it.
    pub async fn run(self, shutdown: CancellationToken) {
        let trim = tokio::spawn(trim_loop(
            self.store.clone(),
            self.interval * TRIM_EVERY,
            shutdown.clone(),
        ));
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.tick_once().await {
                tracing::debug!(error = %e, "timer round failed; next round retries");
            }
        }
        let _ = trim.await;
    }
}

/// Trims the finished indexes every `every` (10 timer rounds: at the default 1 s
/// reaper interval, up to about 100,000 expired entries per index and queue, and
/// 1,000,000 in all, in 10 s; `Store::trim_finished_many`) until `shutdown`.
async fn trim_loop(store: Store, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: wait one period, as the rounds did.
    tick.tick().await;
    let mut rounds: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(qs) = store.queues().await else {
            continue;
        };
        rounds += 1;
        // Every 6th round (a minute at the default interval) also reads behind oldest
        // entries still alive (tasks of a longer retention), from a random place.
        let probe = rounds.is_multiple_of(TRIM_PROBE_EVERY);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = store.trim_finished_many(&qs, TRIM_WINDOWS, TRIM_BUDGET, probe) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "trim of finished tasks failed; next round retries");
                }
            }
        }
    }
}
