//! A short-lived cache of node records, shared by auth (token checks) and the
//! dispatcher (who can take work). Its records carry no running count (`node.running`
//! is 0: the dispatcher reads the loads it needs itself; `GET /v1/nodes` reads
//! [`Store::nodes`]).
//!
//! A snapshot is fresh for `max_age`. Past that, for up to [`STALE_GRACE`] more, it is
//! still served while one refresh runs in the background, so that no request waits for
//! the reads of every node (the dispatcher met them about twice a second, a tail of its
//! submit→start latency). [`Directory::invalidate`] (a node changed in this process)
//! drops the snapshot: the next call reads Redis itself. [`Directory::mark_stale`]
//! (the reconciler's periodic nudge for other replicas' changes) only starts a
//! background refresh at the next call.

use crate::store::{NodeRecord, Store, StoreError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long past its `max_age` a snapshot may be served while it is being refreshed.
pub const STALE_GRACE: Duration = Duration::from_secs(2);

/// A snapshot and when it was read.
type Snapshot = Option<(Instant, Arc<Vec<NodeRecord>>)>;

/// Cached node records.
#[derive(Debug)]
pub struct Directory {
    max_age: Duration,
    inner: Arc<Mutex<Snapshot>>,
    /// A background refresh is running.
    refreshing: Arc<AtomicBool>,
    /// Bumped by [`Directory::invalidate`]: a refresh read before it is not installed.
    generation: Arc<AtomicU64>,
}

impl Directory {
    /// A cache whose snapshot is refreshed after `max_age`.
    pub fn new(max_age: Duration) -> Directory {
        Directory {
            max_age,
            inner: Arc::default(),
            refreshing: Arc::default(),
            generation: Arc::default(),
        }
    }

    /// Forgets the snapshot (a node registered, changed or left): the next call reads
    /// Redis before it answers.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        *lock(&self.inner) = None;
    }

    /// Makes the snapshot due for a refresh, which the next call starts in the
    /// background while it is served (within [`STALE_GRACE`]).
    pub fn mark_stale(&self) {
        if let Some((at, _)) = lock(&self.inner).as_mut()
            && let Some(due) = Instant::now().checked_sub(self.max_age)
        {
            *at = (*at).min(due);
        }
    }

    /// Every node, from a snapshot at most `max_age` old, or at most [`STALE_GRACE`]
    /// older while a refresh is on its way.
    ///
    /// # Errors
    /// Redis errors while refreshing.
    pub async fn all(&self, store: &Store) -> Result<Arc<Vec<NodeRecord>>, StoreError> {
        let snapshot = lock(&self.inner).clone();
        if let Some((at, v)) = snapshot {
            let age = at.elapsed();
            if age < self.max_age {
                return Ok(v);
            }
            if age < self.max_age + STALE_GRACE {
                self.refresh_in_background(store);
                return Ok(v);
            }
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let v = Arc::new(store.nodes_without_loads().await?);
        install(&self.inner, &self.generation, generation, v.clone());
        Ok(v)
    }

    /// Starts one refresh unless one is running.
    fn refresh_in_background(&self, store: &Store) {
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let (store, inner, generation, refreshing) = (
            store.clone(),
            self.inner.clone(),
            self.generation.clone(),
            self.refreshing.clone(),
        );
        tokio::spawn(async move {
            let started = generation.load(Ordering::SeqCst);
            match store.nodes_without_loads().await {
                Ok(v) => install(&inner, &generation, started, Arc::new(v)),
                // The stale snapshot serves until STALE_GRACE, then a caller reads itself.
                Err(e) => tracing::debug!(error = %e, "node directory refresh failed"),
            }
            refreshing.store(false, Ordering::SeqCst);
        });
    }

    /// One node from the snapshot, reading Redis when it is not there (new node).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn get(&self, store: &Store, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        if let Some(n) = self.all(store).await?.iter().find(|n| n.node.id == id) {
            return Ok(Some(n.clone()));
        }
        let n = store.node(id).await?;
        if n.is_some() {
            self.invalidate();
        }
        Ok(n)
    }
}

/// Installs a snapshot read while the generation was `read_at` (not when the directory
/// was invalidated since: that read may miss the change).
fn install(inner: &Mutex<Snapshot>, generation: &AtomicU64, read_at: u64, v: Arc<Vec<NodeRecord>>) {
    let mut g = lock(inner);
    if generation.load(Ordering::SeqCst) == read_at {
        *g = Some((Instant::now(), v));
    }
}

fn lock(m: &Mutex<Snapshot>) -> std::sync::MutexGuard<'_, Snapshot> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
