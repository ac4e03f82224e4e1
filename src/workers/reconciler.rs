//! The reconciler: one pub/sub listener per server. Wake-up hints published by the
//! scripts (`new`, `assigned`, `done`) wake the dispatcher, lease long-polls and
//! `/wait` callers at once; a periodic sweep repairs whatever a lost message left
//! (pub/sub is lossy: nothing depends on it) and flushes node statistics.

use crate::service::directory::Directory;
use crate::service::fitness::{EVICTION_RECHECK, Fitness};
use crate::service::hub::Hub;
use crate::store::{Store, Wakeup};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the sweep runs.
pub const SWEEP: Duration = Duration::from_millis(1000);

/// Default time without a heartbeat after which a node holding no lease is removed.
pub const DEAD_NODE_AFTER: Duration = crate::config::DEFAULT_DEAD_NODE_AFTER;

/// Default time a queue must have been empty and idle before it is pruned from the
/// `queues` set (and its leftover keys deleted).
pub const EMPTY_QUEUE_AFTER: Duration = Duration::from_secs(3600);

/// The reconciler component.
pub struct Reconciler {
    store: Store,
    hub: Arc<Hub>,
    directory: Arc<Directory>,
    dead_after: Duration,
    /// When dead nodes were last looked for.
    forgot_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Where the periodic `maxmemory-policy` recheck records its outcome.
    fitness: Arc<Fitness>,
    /// When the policy was last checked.
    checked_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// How long a queue stays empty and idle before it is pruned.
    empty_after: Duration,
    /// When empty queues were last looked for.
    pruned_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// Empty queues that never had an event (their idle time cannot be read from their
    /// stream), with when this process first saw them empty.
    empty_since: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Reconciler {
    /// A reconciler over `store`.
    pub fn new(store: Store, hub: Arc<Hub>, directory: Arc<Directory>) -> Reconciler {
        Reconciler {
            store,
            hub,
            directory,
            dead_after: DEAD_NODE_AFTER,
            forgot_at: std::sync::Mutex::new(None),
            fitness: Fitness::new(),
            checked_at: std::sync::Mutex::new(None),
            empty_after: EMPTY_QUEUE_AFTER,
            pruned_at: std::sync::Mutex::new(None),
            empty_since: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Prunes queues after `d` empty and idle (instead of [`EMPTY_QUEUE_AFTER`]).
    pub fn with_empty_queue_after(mut self, d: Duration) -> Reconciler {
        self.empty_after = d;
        self
    }

    /// Prunes the queues that hold nothing (no task in any state, no settings, no
    /// follow-up, no node's load), that no node serves and no schedule submits to, and
    /// whose last event is older than the empty-queue time (a queue without events:
    /// seen empty by this process for that long), at most every minute (a quarter of
    /// that time when shorter). They leave the `queues` set, so timers, sweeps,
    /// listings and `/metrics` stop visiting them; a submit brings a queue back.
    /// Returns the queues pruned.
    pub async fn prune_empty_queues(&self) -> Vec<String> {
        let every = (self.empty_after / 4).min(Duration::from_secs(60));
        {
            let mut at = self.pruned_at.lock().unwrap_or_else(|e| e.into_inner());
            if at.is_some_and(|t| t.elapsed() < every) {
                return Vec::new();
            }
            *at = Some(std::time::Instant::now());
        }
        match self.prune_pass().await {
            Ok(pruned) => {
                if !pruned.is_empty() {
                    tracing::info!(pruned = pruned.len(), "pruned empty, idle queues");
                }
                pruned
            }
            Err(e) => {
                tracing::debug!(error = %e, "sweep: cannot prune empty queues");
                Vec::new()
            }
        }
    }

    async fn prune_pass(&self) -> Result<Vec<String>, crate::store::StoreError> {
        let kept = self.store.referenced_queues().await?;
        let queues: Vec<String> = self
            .store
            .queues()
            .await?
            .into_iter()
            .filter(|q| !kept.contains(q))
            .collect();
        let empty = self.store.empty_queues(&queues).await?;
        let idle_ms = self.empty_after.as_millis() as i64;
        let ready: Vec<String> = {
            let mut since = self.empty_since.lock().unwrap_or_else(|e| e.into_inner());
            let mut seen = std::collections::HashMap::new();
            let mut ready = Vec::new();
            for (q, last) in empty {
                match last {
                    // The script compares the last event with the Redis clock.
                    Some(_) => ready.push(q),
                    None => {
                        let first = since
                            .get(&q)
                            .copied()
                            .unwrap_or_else(std::time::Instant::now);
                        if first.elapsed() >= self.empty_after {
                            ready.push(q);
                        } else {
                            seen.insert(q, first);
                        }
                    }
                }
            }
            // Only queues still empty and waiting are remembered.
            *since = seen;
            ready
        };
        let mut pruned = Vec::new();
        for q in ready {
            if self.store.prune_queue(&q, idle_ms).await? {
                pruned.push(q);
            }
        }
        Ok(pruned)
    }

    /// Records the periodic eviction recheck in `f` (shared with the API).
    pub fn with_fitness(mut self, f: Arc<Fitness>) -> Reconciler {
        self.fitness = f;
        self
    }

    /// Re-reads `maxmemory-policy` at most every [`EVICTION_RECHECK`]: a policy switched
    /// to an evicting one at run time (`CONFIG SET`) makes this process refuse writes
    /// and `/readyz` answer 503 until it is switched back. An unreachable Redis changes
    /// nothing here (the API answers 503 for that by itself).
    pub async fn recheck_eviction(&self) {
        {
            let mut at = self.checked_at.lock().unwrap_or_else(|e| e.into_inner());
            if at.is_some_and(|t| t.elapsed() < EVICTION_RECHECK) {
                return;
            }
            *at = Some(std::time::Instant::now());
        }
        match self.store.check_eviction().await {
            Ok(()) => self.fitness.record(None),
            Err(crate::store::StoreError::Unfit(why)) => self.fitness.record(Some(why)),
            Err(e) => tracing::debug!(error = %e, "sweep: cannot read maxmemory-policy"),
        }
    }

    /// Removes nodes after `d` without a heartbeat (instead of [`DEAD_NODE_AFTER`]).
    pub fn with_dead_node_after(mut self, d: Duration) -> Reconciler {
        self.dead_after = d;
        self
    }

    /// Removes the nodes not seen for the dead-node time that hold no lease, at most
    /// every minute (a quarter of that time when shorter): nodes are never left behind
    /// for ever by agents that went away without deregistering.
    pub async fn forget_dead_nodes(&self) {
        let every = (self.dead_after / 4).min(Duration::from_secs(60));
        {
            let mut at = self.forgot_at.lock().unwrap_or_else(|e| e.into_inner());
            if at.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            *at = Some(std::time::Instant::now());
        }
        let before = match self.store.now_ms().await {
            Ok(now) => now - self.dead_after.as_millis() as i64,
            Err(e) => {
                tracing::debug!(error = %e, "sweep: cannot read the clock");
                return;
            }
        };
        match self.store.forget_dead_nodes(before).await {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(
                    removed = ids.len(),
                    ?ids,
                    "removed dead nodes (no heartbeat, no lease)"
                );
                self.directory.invalidate();
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "sweep: cannot remove dead nodes"),
        }
    }

    /// Handles one wake-up message.
    pub fn handle(&self, msg: &str) {
        if self.hub.take_echo(msg) {
            // This process acted on it already (Hub::expect_echo).
            return;
        }
        match Wakeup::parse(&self.store.keys, msg) {
            // Hints name a shard (a queue's own keys are its shard 0).
            Some(Wakeup::New { queue }) => self.hub.mark_shard_dirty(queue),
            Some(Wakeup::Assigned { node, .. }) => self.hub.wake_node_one(node),
            Some(Wakeup::Done { queue, tasks, .. }) => {
                for id in tasks {
                    self.hub.wake_task(id);
                }
                // A slot freed on a node: this queue (and others) may dispatch more; every
                // shard of it (the node's slot may go to any), as after a report here.
                self.hub
                    .mark_dirty(crate::domain::validate::split_shard(queue).0);
            }
            None => tracing::debug!(msg, "unknown wake-up message"),
        }
    }

    /// One sweep: every queue with pending tasks is looked at again (a lost `new` or
    /// `done` costs at most one sweep), node statistics are written. Lease long-polls
    /// are not woken here: the dispatcher wakes the nodes it assigned to, and each
    /// long-poll re-checks its inbox on its own every few seconds ([`Hub::RECHECK`]), so
    /// idle agents cost nothing between those re-checks. With `wake_all` (after
    /// (re)subscribing, when hints may have been lost) every waiter re-reads at once.
    pub async fn sweep_once(&self, wake_all: bool) {
        match self.store.queues().await {
            Ok(qs) => {
                let qs = if wake_all {
                    qs
                } else {
                    match self.store.pending_counts(&qs).await {
                        Ok(n) => qs
                            .into_iter()
                            .zip(n)
                            .filter(|(_, n)| *n > 0)
                            .map(|(q, _)| q)
                            .collect(),
                        Err(e) => {
                            tracing::debug!(error = %e, "sweep: cannot count pending tasks");
                            qs
                        }
                    }
                };
                qs.iter().for_each(|q| self.hub.mark_shard_dirty(q));
            }
            Err(e) => tracing::debug!(error = %e, "sweep: cannot list queues"),
        }
        if wake_all {
            self.hub.wake_all();
        }
        // Other replicas' node changes show within a sweep (refreshed in the background).
        self.directory.mark_stale();
        self.flush_stats().await;
        self.forget_dead_nodes().await;
        self.recheck_eviction().await;
        self.prune_empty_queues().await;
    }

    /// Writes accumulated node statistics to the node hashes.
    pub async fn flush_stats(&self) {
        for (node, s) in self.hub.take_stats() {
            if let Err(e) = self
                .store
                .add_node_stats(&node, s.succeeded, s.failed, s.run_ms, s.runs)
                .await
            {
                tracing::debug!(node_id = %node, error = %e, "cannot write node statistics, retrying later");
                self.hub.add_stats(&node, s);
            }
        }
    }

    /// Listens and sweeps until `shutdown`; reconnects by itself.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let sweeper = {
            let this = this.clone();
            let sd = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = sd.cancelled() => break,
                        _ = tick.tick() => this.sweep_once(false).await,
                    }
                }
                this.flush_stats().await;
            })
        };
        let channel = this.store.keys.wake_channel();
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let sub = async {
                let mut ps = this.store.pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, crate::store::StoreError>(ps)
            };
            let ps = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout(Duration::from_secs(2), sub) => r,
            };
            match ps {
                Ok(Ok(ps)) => {
                    backoff = Duration::from_millis(100);
                    tracing::debug!("subscribed to wake-ups");
                    // Subscribed anew (at start or after Redis was away, perhaps restarted
                    // empty): the node snapshot is read again before anything is
                    // dispatched to a node that Redis may have lost.
                    this.directory.invalidate();
                    // Whatever was published while we were away is repaired now.
                    this.sweep_once(true).await;
                    let mut stream = ps.into_on_message();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            m = stream.next() => match m {
                                Some(m) => {
                                    if let Ok(s) = m.get_payload::<String>() {
                                        this.handle(&s);
                                    }
                                }
                                None => break,
                            }
                        }
                    }
                    if !shutdown.is_cancelled() {
                        // Redis went away: what it comes back with is read, not assumed.
                        this.directory.invalidate();
                        tracing::warn!("wake-up subscription lost; reconnecting");
                    }
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to wake-ups; retrying"),
                Err(_) => tracing::debug!("subscribing to wake-ups timed out; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        let _ = sweeper.await;
    }
}
