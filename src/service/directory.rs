//! A short-lived cache of node records, shared by auth (token checks) and the
//! dispatcher (who can take work). Invalidated on node changes; at most `max_age` old.
//! Its records carry no running count (`node.running` is 0: the dispatcher reads the
//! loads it needs itself; `GET /v1/nodes` reads [`Store::nodes`]).

use crate::store::{NodeRecord, Store, StoreError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Cached node records.
#[derive(Debug)]
pub struct Directory {
    max_age: Duration,
    inner: Mutex<Option<(Instant, std::sync::Arc<Vec<NodeRecord>>)>>,
}

impl Directory {
    /// A cache whose snapshot is refreshed after `max_age`.
    pub fn new(max_age: Duration) -> Directory {
        Directory {
            max_age,
            inner: Mutex::new(None),
        }
    }

    /// Forgets the snapshot (a node registered, changed or left).
    pub fn invalidate(&self) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Every node, from a snapshot at most `max_age` old.
    ///
    /// # Errors
    /// Redis errors while refreshing.
    pub async fn all(&self, store: &Store) -> Result<std::sync::Arc<Vec<NodeRecord>>, StoreError> {
        if let Some((at, v)) = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            && at.elapsed() < self.max_age
        {
            return Ok(v.clone());
        }
        let v = std::sync::Arc::new(store.nodes_without_loads().await?);
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), v.clone()));
        Ok(v)
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
