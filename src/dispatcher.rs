//! The dispatcher: a pool of workers that assign pending tasks to nodes' inboxes.
//!
//! Workers share one set of "dirty" queues (queues that may have dispatchable work,
//! fed by submissions, completions and the reconciler's sweep); a worker takes a queue,
//! picks the nodes that serve it (active, fresh heartbeat, free capacity, machine
//! kind), and runs `dispatch.lua`, which pops tasks and checks each task's `requires`
//! against node tags atomically. Idle workers sleep on a `Notify`: no busy polling.
//! Several workers or several `muster serve` processes are safe together because the
//! script pops each task once and reads the node's load in the same atomic step.

use crate::directory::Directory;
use crate::domain::{NodeKind, NodeStatus};
use crate::hub::Hub;
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Tasks one dispatch call may assign per unit of queue weight.
pub const BATCH: usize = 512;

/// Shared parts of the dispatcher workers.
#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    hub: Arc<Hub>,
    directory: Arc<Directory>,
    /// Heartbeats older than this make a node ineligible.
    fresh_for: Duration,
    /// Queues with a re-dispatch already timed for their rate limit.
    rate_waits: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Dispatcher {
    /// A dispatcher over `store`.
    pub fn new(
        store: Store,
        hub: Arc<Hub>,
        directory: Arc<Directory>,
        heartbeat_interval: Duration,
    ) -> Dispatcher {
        Dispatcher {
            store,
            hub,
            directory,
            fresh_for: heartbeat_interval * 3,
            rate_waits: Arc::default(),
        }
    }

    /// Runs `workers` workers until `shutdown`.
    pub async fn run(self, workers: usize, shutdown: CancellationToken) {
        let mut set = tokio::task::JoinSet::new();
        for w in 0..workers.max(1) {
            let d = self.clone();
            let sd = shutdown.clone();
            set.spawn(async move { d.worker(w, sd).await });
        }
        while set.join_next().await.is_some() {}
    }

    async fn worker(&self, w: usize, shutdown: CancellationToken) {
        loop {
            while let Some(q) = self.hub.take_dirty() {
                if shutdown.is_cancelled() {
                    return;
                }
                match self.dispatch_once(&q).await {
                    Ok(_) => {}
                    Err(StoreError::Unavailable(e)) => {
                        tracing::debug!(worker = w, queue = %q, error = %e, "redis unavailable, dispatch later");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(e) => tracing::warn!(worker = w, queue = %q, error = %e, "dispatch failed"),
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.hub.dispatch.notified() => {}
            }
        }
    }

    /// Dispatches one batch of `queue`; returns the number of tasks assigned. Marks the
    /// queue dirty again when more could go.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn dispatch_once(&self, queue: &str) -> Result<i64, StoreError> {
        let (weight, paused, human_only) = self.store.queue_conf(queue).await?;
        if paused || human_only {
            return Ok(0);
        }
        let nodes = self.directory.all(&self.store).await?;
        let now = self.store.now_ms().await?;
        let fresh = self.fresh_for.as_millis() as i64;
        let candidates: Vec<_> = nodes
            .iter()
            .filter(|n| {
                n.node.kind == NodeKind::Machine
                    && n.node.status == NodeStatus::Active
                    && now - n.last_seen_ms <= fresh
                    && n.node.queues.iter().any(|q| q == queue)
            })
            .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        let mut all_queues: Vec<String> = candidates
            .iter()
            .flat_map(|n| n.node.queues.iter().cloned())
            .collect();
        all_queues.sort();
        all_queues.dedup();
        let loads = self.store.loads(&all_queues).await?;
        let load_of = |q: &str, n: &str| loads.get(q).and_then(|m| m.get(n)).copied().unwrap_or(0);
        // (id, budget = capacity - load elsewhere, free here, mean run, tags)
        let mut rows: Vec<(String, i64, i64, f64, String)> = candidates
            .iter()
            .map(|n| {
                let elsewhere: i64 = n
                    .node
                    .queues
                    .iter()
                    .filter(|q| *q != queue)
                    .map(|q| load_of(q, &n.node.id))
                    .sum();
                let budget = n.node.capacity - elsewhere;
                let free = budget - load_of(queue, &n.node.id);
                (
                    n.node.id.clone(),
                    budget,
                    free,
                    n.node.mean_run_ms.unwrap_or(0.0),
                    n.node.tags.join(","),
                )
            })
            .filter(|r| r.2 > 0)
            .collect();
        if rows.is_empty() {
            return Ok(0);
        }
        // Most free slots first, then the fastest node.
        rows.sort_by(|a, b| b.2.cmp(&a.2).then(a.3.total_cmp(&b.3)));
        let total_free: i64 = rows.iter().map(|r| r.2).sum();
        let max = (BATCH * weight.max(1) as usize).min(total_free as usize);
        let args: Vec<(String, i64, String)> = rows
            .iter()
            .map(|r| (r.0.clone(), r.1, r.4.clone()))
            .collect();
        let (assigned, left, wait_ms) =
            self.store.dispatch(queue, &args, max, max * 2 + 64).await?;
        if wait_ms > 0 && left > 0 {
            self.after_rate_limit(queue, wait_ms);
        }
        if assigned > 0 {
            crate::metrics::METRICS
                .assigned
                .with_label_values(&[queue])
                .inc_by(assigned as u64);
            for r in &rows {
                self.hub.wake_node(&r.0);
            }
            if left > 0 && assigned as usize == max {
                self.hub.mark_dirty(queue);
            }
        }
        Ok(assigned)
    }

    /// The queue's rate limit holds tasks back: dispatch it again when the next token
    /// is due (one timer per queue, no polling).
    fn after_rate_limit(&self, queue: &str, wait_ms: i64) {
        let Ok(mut waits) = self.rate_waits.lock() else {
            return;
        };
        if !waits.insert(queue.to_string()) {
            return;
        }
        let (hub, waits, q) = (self.hub.clone(), self.rate_waits.clone(), queue.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(wait_ms.clamp(1, 60_000) as u64)).await;
            if let Ok(mut w) = waits.lock() {
                w.remove(&q);
            }
            hub.mark_dirty(&q);
        });
    }
}
