//! The dispatcher: a pool of workers that assign pending tasks to nodes' inboxes.
//!
//! Workers share one set of "dirty" queues (queues that may have dispatchable work,
//! fed by submissions, completions and the reconciler's sweep); a worker takes a queue,
//! picks the nodes that serve it (active, fresh heartbeat, free capacity, machine
//! kind), and runs `dispatch.lua`, which pops tasks and checks each task's `requires`
//! against node tags atomically. Idle workers sleep on a `Notify`: no busy polling.
//! Several workers or several `muster serve` processes are safe together because the
//! script pops each task once and reads the node's load in the same atomic step.
//!
//! The hot path (a submission marks its queue dirty in-process) costs one Redis round
//! trip: the queue configuration is cached ([`crate::service::hub::CONF_TTL`]), the clock is
//! Redis TIME sampled every [`CLOCK_RESYNC`] and advanced locally, and the per-queue
//! loads are read only when a candidate node also serves other queues (otherwise the
//! script's own atomic read of this queue's load is all the budget needs).

use crate::domain::{NodeKind, NodeStatus, validate};
use crate::service::directory::Directory;
use crate::service::hub::{Hub, QueueConf};
use crate::store::shards::Visit;
use crate::store::{Store, StoreError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Tasks one dispatch call may assign per unit of queue weight.
pub const BATCH: usize = 512;

/// How often the dispatcher samples Redis TIME (node freshness is judged on Redis's
/// clock; between samples it advances with the local monotonic clock).
pub const CLOCK_RESYNC: Duration = Duration::from_secs(5);

/// Shared parts of the dispatcher workers.
#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    hub: Arc<Hub>,
    directory: Arc<Directory>,
    /// Heartbeats older than this make a node ineligible.
    fresh_for: Duration,
    /// Last Redis TIME sample (ms) and when it was taken.
    clock: Arc<Mutex<Option<(Instant, i64)>>>,
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
            clock: Arc::new(Mutex::new(None)),
            rate_waits: Arc::default(),
        }
    }

    /// Redis's clock (ms), from a sample at most [`CLOCK_RESYNC`] old.
    async fn now_ms(&self) -> Result<i64, StoreError> {
        let sample = *self.clock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, ms)) = sample
            && at.elapsed() < CLOCK_RESYNC
        {
            return Ok(ms + at.elapsed().as_millis() as i64);
        }
        let at = Instant::now();
        let ms = self.store.now_ms().await?;
        *self.clock.lock().unwrap_or_else(|e| e.into_inner()) = Some((at, ms));
        Ok(ms)
    }

    /// The queue's configuration, cached for [`crate::service::hub::CONF_TTL`].
    async fn conf(&self, queue: &str) -> Result<QueueConf, StoreError> {
        if let Some(c) = self.hub.conf(queue) {
            return Ok(c);
        }
        let (weight, paused, human_only) = self.store.queue_conf(queue).await?;
        let c = QueueConf {
            weight,
            paused,
            human_only,
        };
        self.hub.set_conf(queue, c);
        Ok(c)
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
                        // Redis may come back without the nodes it had (restarted empty):
                        // no task goes to a node from before the outage unread.
                        self.directory.invalidate();
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

    /// Dispatches one batch of `name`; returns the number of tasks assigned. Marks it
    /// dirty again when more could go. `name` is a queue, so every shard of it, from the
    /// one after the shard that last got tasks ([`Hub::mark_dirty`]), or one shard, `<queue>~<k>` (shard 0 as
    /// `<queue>~0`, [`Hub::mark_shard_dirty`]).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn dispatch_once(&self, name: &str) -> Result<i64, StoreError> {
        let (queue, shard) = validate::split_shard_opt(name);
        let n = self.store.shard_count(queue).await?;
        let shards = match shard {
            Some(k) => vec![validate::shard_name(queue, k)],
            None => self.store.shards_rotated(queue, Visit::Dispatch).await?,
        };
        let mut assigned = 0;
        for s in &shards {
            let got = self.dispatch_shard(queue, s, n).await?;
            if got > 0 && n > 1 {
                self.store.shard_gave(s, Visit::Dispatch);
            }
            assigned += got;
        }
        Ok(assigned)
    }

    /// Dispatches one batch of shard `shard` (of `n`) of `queue`.
    async fn dispatch_shard(&self, queue: &str, shard: &str, n: u32) -> Result<i64, StoreError> {
        let QueueConf {
            weight,
            paused,
            human_only,
        } = self.conf(queue).await?;
        if paused {
            return Ok(0);
        }
        let nodes = self.directory.all(&self.store).await?;
        // Human nodes pull from pending themselves: wake their long-polls (nobody
        // assigns to them, and a waiting long-poll re-checks only every few seconds).
        for n in nodes.iter().filter(|n| {
            n.node.kind == NodeKind::Human
                && n.node.status == NodeStatus::Active
                && n.node.queues.iter().any(|q| q == queue)
        }) {
            self.hub.wake_node(&n.node.id);
        }
        if human_only {
            return Ok(0);
        }
        let now = self.now_ms().await?;
        let fresh = self.fresh_for.as_millis() as i64;
        let candidates: Vec<_> = nodes
            .iter()
            .filter(|n| {
                n.node.kind == NodeKind::Machine
                    && n.node.status == NodeStatus::Active
                    && now - n.last_seen_ms <= fresh
                    && n.node.queues.iter().any(|q| q == queue)
                    // Its report call is taking its next tasks itself (Hub::pulling).
                    && !self.hub.is_pulling(&n.node.id)
            })
            .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        // The shards of every queue a candidate serves: its load is kept per shard.
        let mut served: Vec<Vec<String>> = Vec::with_capacity(candidates.len());
        for c in &candidates {
            served.push(self.store.expand_shards(&c.node.queues).await?);
        }
        let views = || {
            candidates.iter().zip(&served).map(|(n, queues)| NodeView {
                id: &n.node.id,
                queues,
                capacity: n.node.capacity,
                mean_run_ms: n.node.mean_run_ms.unwrap_or(0.0),
                tags: &n.node.tags,
            })
        };
        let mut rows = select_nodes(shard, views(), None);
        if rows.iter().any(|r| r.shared) {
            // Some candidate also serves other queues (or shards): its budget here
            // depends on its load there (one pipelined read of those loads).
            let mut all_queues: Vec<String> = served.iter().flatten().cloned().collect();
            all_queues.sort();
            all_queues.dedup();
            let loads = self.store.loads(&all_queues).await?;
            rows = select_nodes(shard, views(), Some(&loads));
        }
        if rows.is_empty() {
            return Ok(0);
        }
        let total_free: i64 = rows.iter().map(|r| r.free).sum();
        // A queue's weight is shared by its shards: one round over a sharded queue
        // assigns as much as one over an unsharded queue of the same weight.
        let per_shard = (BATCH * weight.max(1) as usize).div_ceil(n.max(1) as usize);
        let max = per_shard.min(total_free as usize);
        let args: Vec<(String, i64, String)> = rows
            .iter()
            .map(|r| (r.id.to_string(), r.budget, r.tags.clone()))
            .collect();
        // Long-polls of these nodes waiting in this process get their leases directly.
        let mut offers: Vec<Option<crate::service::hub::Offer>> =
            rows.iter().map(|r| self.hub.take_offer(r.id)).collect();
        let direct: Vec<usize> = offers
            .iter()
            .map(|o| o.as_ref().map_or(0, |o| o.max))
            .collect();
        let d = {
            let (queue, args, direct) = (shard.to_string(), args.clone(), direct.clone());
            let hub = self.hub.clone();
            self.store
                .lease_in_time(
                    "dispatching",
                    move |s| async move {
                        s.dispatch_direct(&queue, &args, &direct, max, max * 2 + 64)
                            .await
                    },
                    // Redis answered after the timeout: the direct leases wait for their
                    // nodes' next lease calls, and the inboxes' long-polls look again.
                    move |late: crate::store::Dispatched| {
                        for (node, leases) in late.direct {
                            hub.hand_back(&node, leases);
                        }
                        for n in &late.nodes {
                            hub.wake_node_one(n);
                        }
                    },
                )
                .await
        };
        let d = match d {
            Ok(d) => d,
            Err(e) => {
                // Nothing was leased in time (what Redis leases later reaches the nodes
                // through the hub): the offers go back to their long-polls.
                for (r, o) in rows.iter().zip(offers) {
                    if let Some(o) = o {
                        self.hub.restore(r.id, o);
                    }
                }
                return Err(e);
            }
        };
        for (node, leases) in d.direct {
            let Some(i) = rows.iter().position(|r| r.id == node) else {
                continue;
            };
            match offers[i].take() {
                Some(o) => {
                    if let Err(back) = o.hand(leases) {
                        // Its long-poll left meanwhile: its node's next lease call
                        // takes them (or they expire and are retried).
                        self.hub.hand_back(&node, back);
                    }
                }
                None => self.hub.hand_back(&node, leases),
            }
        }
        for (r, o) in rows.iter().zip(offers) {
            if let Some(o) = o {
                self.hub.restore(r.id, o);
            }
        }
        let (assigned, left) = (d.assigned, d.left);
        // This shard again, alone (shard 0 as `<queue>~0`).
        let again = if shard.contains('~') {
            shard.to_string()
        } else {
            format!("{shard}~0")
        };
        if d.wait_ms > 0 && left > 0 {
            self.after_rate_limit(&again, d.wait_ms);
        }
        if assigned > 0 {
            crate::metrics::METRICS
                .assigned
                .with_label_values(&[queue])
                .inc_by(assigned as u64);
            // Only the nodes that got tasks, one long-poll each (see Hub::wake_node_one).
            for n in &d.nodes {
                let hint = crate::store::Wakeup::Assigned {
                    queue: shard,
                    node: n,
                };
                self.hub.expect_echo(hint.message(&self.store.keys));
                self.hub.wake_node_one(n);
            }
            if left > 0 && assigned as usize == max {
                self.hub.mark_dirty(&again);
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
            tokio::time::sleep(Duration::from_millis(
                wait_ms.clamp(1, crate::domain::limits::MAX_WAIT_MS) as u64,
            ))
            .await;
            if let Ok(mut w) = waits.lock() {
                w.remove(&q);
            }
            hub.mark_dirty(&q);
        });
    }
}

/// A candidate node as [`select_nodes`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    /// Node id.
    pub id: &'a str,
    /// Queues it serves.
    pub queues: &'a [String],
    /// Slots over all its queues.
    pub capacity: i64,
    /// Mean run time (ms), 0 when unknown.
    pub mean_run_ms: f64,
    /// Its tags.
    pub tags: &'a [String],
}

/// One row of `dispatch.lua`'s node list.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow<'a> {
    /// Node id.
    pub id: &'a str,
    /// Capacity minus the load in other queues (the script subtracts this queue's).
    pub budget: i64,
    /// Free slots here as far as known (the script has the last word).
    pub free: i64,
    /// Mean run time (ms).
    pub mean_run_ms: f64,
    /// Tags, csv.
    pub tags: String,
    /// The node also serves other queues.
    pub shared: bool,
}

/// Orders the candidate nodes of `queue` for `dispatch.lua`: most free slots first, then
/// the fastest; full nodes are left out. `loads` (queue → node → assigned + running) is
/// needed only for nodes that serve several queues; without it every node counts as
/// free up to its capacity and the script's atomic read of this queue's load decides.
pub fn select_nodes<'a>(
    queue: &str,
    nodes: impl Iterator<Item = NodeView<'a>>,
    loads: Option<&std::collections::HashMap<String, std::collections::HashMap<String, i64>>>,
) -> Vec<NodeRow<'a>> {
    let load_of = |q: &str, n: &str| {
        loads
            .and_then(|l| l.get(q))
            .and_then(|m| m.get(n))
            .copied()
            .unwrap_or(0)
    };
    let mut rows: Vec<NodeRow<'a>> = nodes
        .map(|n| {
            let elsewhere: i64 = n
                .queues
                .iter()
                .filter(|q| *q != queue)
                .map(|q| load_of(q, n.id))
                .sum();
            let budget = n.capacity - elsewhere;
            NodeRow {
                id: n.id,
                budget,
                free: budget - load_of(queue, n.id),
                mean_run_ms: n.mean_run_ms,
                tags: n.tags.join(","),
                shared: n.queues.iter().any(|q| q != queue),
            }
        })
        .filter(|r| r.free > 0)
        .collect();
    rows.sort_by(|a, b| {
        b.free
            .cmp(&a.free)
            .then(a.mean_run_ms.total_cmp(&b.mean_run_ms))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn q(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nodes_are_ordered_by_free_slots_then_speed_and_full_ones_dropped() {
        let (a, b, c) = (q(&["x"]), q(&["x", "y"]), q(&["x"]));
        let none: Vec<String> = Vec::new();
        let nodes = [
            NodeView {
                id: "a",
                queues: &a,
                capacity: 4,
                mean_run_ms: 9.0,
                tags: &none,
            },
            NodeView {
                id: "b",
                queues: &b,
                capacity: 4,
                mean_run_ms: 1.0,
                tags: &none,
            },
            NodeView {
                id: "c",
                queues: &c,
                capacity: 2,
                mean_run_ms: 1.0,
                tags: &none,
            },
        ];
        // Without loads: capacities.
        let rows = select_nodes("x", nodes.iter().copied(), None);
        assert_eq!(
            rows.iter().map(|r| r.id).collect::<Vec<_>>(),
            ["b", "a", "c"]
        );
        assert!(rows[0].shared && !rows[1].shared);
        // b runs 3 in y: its budget here is 1; c is full here.
        let loads: HashMap<String, HashMap<String, i64>> = [
            ("y".to_string(), [("b".to_string(), 3)].into()),
            ("x".to_string(), [("c".to_string(), 2)].into()),
        ]
        .into();
        let rows = select_nodes("x", nodes.iter().copied(), Some(&loads));
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!((rows[1].budget, rows[1].free), (1, 1));
    }
}
