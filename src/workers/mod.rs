//! Background workers, each named after its job. Every replica runs all of them;
//! each is safe to run many times over (atomic scripts, idempotent steps).
//! - [`dispatcher`]: pending tasks → a node's inbox.
//! - [`reconciler`]: the pub/sub listener (wake-ups) and the sweep that repairs lost ones.
//! - [`timers`]: due tasks → pending, expired leases, dead nodes, retention.
//! - [`coordinator`]: follow-ups of finished tasks (dependents, batches).
//! - [`scheduler`]: cron fires, one per tick (leader lease + per-tick idempotency key).

pub mod coordinator;
pub mod dispatcher;
pub mod reconciler;
pub mod scheduler;
pub mod timers;
