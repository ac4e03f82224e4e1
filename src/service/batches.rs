//! A finished batch's `then` task: built from the batch's counts and stored exactly
//! once, whoever notices the batch finished (the report that finished it, or the
//! coordinator's follow-up) and however often.

use crate::domain::{NewTask, TaskSpec};
use crate::service::hub::Hub;
use crate::service::submit::{Idempotency, SubmitError, submit};
use crate::store::coord::BatchCheck;
use crate::store::{Store, StoreError, Submitted};
use serde_json::{Value, json};

/// How long the `then` task's idempotency key is kept: 30 days.
pub const THEN_IDEMPOTENCY_TTL_MS: i64 = 30 * 24 * 3600 * 1000;

/// The `then` task's payload: the submitted payload with a `batch` key (a non-object
/// payload is wrapped as `{value, batch}`).
pub fn then_payload(payload: Option<Value>, batch_id: &str, c: &BatchCheck) -> Value {
    let info = json!({
        "id": batch_id,
        "state": c.state,
        "total": c.total,
        "succeeded": c.succeeded,
        "failed": c.failed,
        "cancelled": c.cancelled,
    });
    match payload {
        None | Some(Value::Null) => json!({ "batch": info }),
        Some(Value::Object(mut m)) => {
            m.insert("batch".into(), info);
            Value::Object(m)
        }
        Some(v) => json!({ "value": v, "batch": info }),
    }
}

/// Stores a finished batch's `then` task, exactly once whoever calls it and however
/// often (idempotency key `batch-then:<id>`), and records it on the batch.
///
/// # Errors
/// Redis errors.
pub async fn fire_then(
    store: &Store,
    hub: &Hub,
    batch_id: &str,
    check: &BatchCheck,
) -> Result<(), StoreError> {
    let mut nt: NewTask = match serde_json::from_str(&check.then_json) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(batch_id, error = %e, "a batch's then task does not parse; it is dropped");
            return store.batch_then(batch_id, "").await;
        }
    };
    nt.payload = Some(then_payload(nt.payload.take(), batch_id, check));
    let mut t = match TaskSpec::parse(nt, "then.") {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(batch_id, error = %e, "a batch's then task is no longer valid; it is dropped");
            return store.batch_then(batch_id, "").await;
        }
    };
    t.origin = Some(format!("batch:{batch_id}"));
    let key = format!("batch-then:{batch_id}");
    let idem = Idempotency {
        key: &key,
        ttl_ms: THEN_IDEMPOTENCY_TTL_MS,
        binding: "",
    };
    let id = match submit(store, hub, std::slice::from_mut(&mut t), Some(idem)).await {
        Ok(Submitted::Created { existing, .. }) => match existing.first() {
            Some((_, holder)) => holder.clone(),
            None => {
                tracing::info!(batch_id, task_id = %t.id, "batch finished: then task submitted");
                t.id.clone()
            }
        },
        Ok(Submitted::Duplicate { ids }) => ids.into_iter().next().unwrap_or_default(),
        Err(SubmitError::Store(e)) => return Err(e),
        Err(e @ SubmitError::UnknownDependency { .. }) => {
            tracing::error!(batch_id, error = %e, "a batch's then task waits on a task that no longer exists; it is dropped");
            String::new()
        }
    };
    store.batch_then(batch_id, &id).await
}
