//! The one submit path. `POST /v1/tasks`, `/v1/tasks/batch`, batches (children and
//! `then` tasks) and the scheduler's fires all store tasks through [`submit`]: the
//! dependencies must exist (nothing is stored otherwise), the tasks are written by
//! `submit.lua` in one atomic step per queue, the blocked ones are registered with
//! their dependencies, and the dispatcher hears of the queues.

use crate::domain::TaskSpec;
use crate::service::hub::Hub;
use crate::store::{Store, StoreError, Submitted};

/// An idempotency key and how long it is remembered.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    /// The key (caller-supplied, or derived: `schedule:<name>:<tick>`, `batch-then:<id>`).
    pub key: &'a str,
    /// How long a repeat answers the first submission (ms).
    pub ttl_ms: i64,
    /// What the key is bound to (`<caller digest>:<body digest>`, see
    /// [`binding`]): a repeat with another binding is refused. Empty for derived keys.
    pub binding: &'a str,
}

/// The binding of an `Idempotency-Key` sent by `caller` (its stable identity, never a
/// token) with a body whose canonical JSON is `body`: 16 hex digits of the caller's
/// SHA-256, `:`, 32 of the body's. `route` keeps one route's key from answering
/// another's.
pub fn binding(caller: &str, route: &str, body: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let c = hex::encode(Sha256::digest(caller.as_bytes()));
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update(b"\n");
    h.update(body);
    let b = hex::encode(h.finalize());
    format!("{}:{}", &c[..16], &b[..32])
}

/// Why a submission stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// A task named in `depends_on` does not exist.
    #[error(
        "depends_on: no task {first:?} ({count} unknown in all); only existing tasks can be waited on"
    )]
    UnknownDependency {
        /// The first unknown id.
        first: String,
        /// How many are unknown.
        count: usize,
    },
    /// Redis.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Fails with [`SubmitError::UnknownDependency`] unless every dependency of `tasks`
/// exists. Returns the dependencies, sorted and unique.
///
/// # Errors
/// An unknown dependency; Redis errors.
pub async fn check_dependencies(
    store: &Store,
    tasks: &[TaskSpec],
) -> Result<Vec<String>, SubmitError> {
    let mut deps: Vec<String> = tasks.iter().flat_map(|t| t.depends_on.clone()).collect();
    if !deps.is_empty() {
        deps.sort();
        deps.dedup();
        let missing = store.missing_tasks(&deps).await?;
        if let Some(m) = missing.first() {
            return Err(SubmitError::UnknownDependency {
                first: m.clone(),
                count: missing.len(),
            });
        }
    }
    Ok(deps)
}

/// Stores validated tasks, all or nothing per call (see [`Store::submit`]). Each task
/// is first placed on a shard of its queue ([`Store::place`]: its id may change to
/// name the shard), so callers read the ids from `tasks` afterwards.
///
/// # Errors
/// An unknown dependency (nothing stored); Redis errors.
pub async fn submit(
    store: &Store,
    hub: &Hub,
    tasks: &mut [TaskSpec],
    idempotency: Option<Idempotency<'_>>,
) -> Result<Submitted, SubmitError> {
    let deps = check_dependencies(store, tasks).await?;
    let (key, ttl, bound) = match idempotency {
        Some(i) => (Some(i.key), i.ttl_ms, i.binding),
        None => (None, 0, ""),
    };
    store.place(tasks, key).await?;
    let tasks: &[TaskSpec] = tasks;
    let out = store.submit_bound(tasks, key, bound, ttl).await?;
    if let Submitted::Created { existing, .. } = &out
        && !deps.is_empty()
    {
        let stored: Vec<TaskSpec> = tasks
            .iter()
            .enumerate()
            .filter(|(i, t)| !t.depends_on.is_empty() && !existing.iter().any(|(j, _)| j == i))
            .map(|(_, t)| t.clone())
            .collect();
        store.register_dependencies(&stored).await?;
    }
    // Per shard (a queue's, unless it is sharded): the one that got the tasks.
    let shards: Vec<&str> = tasks.iter().map(|t| t.shard()).collect();
    // submit.lua published `new` for each shard where a task went pending: marked
    // here, so its echo needs no second dispatch. (One pass: a batch may name 10,000
    // queues.)
    let published: std::collections::HashSet<&str> = match &out {
        Submitted::Created { chosen, .. } => shards
            .iter()
            .zip(chosen)
            .filter(|(_, c)| matches!(c, Some((crate::domain::TaskState::Pending, _))))
            .map(|(q, _)| *q)
            .collect(),
        Submitted::Duplicate { .. } => std::collections::HashSet::new(),
    };
    let mut queues = shards.clone();
    queues.sort_unstable();
    queues.dedup();
    for q in queues {
        if published.contains(q) {
            hub.expect_echo(crate::store::Wakeup::New { queue: q }.message(&store.keys));
        }
        hub.mark_shard_dirty(q);
    }
    Ok(out)
}
