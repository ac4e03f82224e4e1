//! The service layer: what the API and the background workers share above the store.
//! - [`submit`]: the one submit path (API, batches, coordinator, scheduler).
//! - [`batches`]: a finished batch's `then` task, stored exactly once.
//! - [`hub`]: in-process wake-ups and the queue-configuration cache.
//! - [`directory`]: the short-lived node-record cache.
//! - [`fitness`]: whether Redis may evict keys now (the periodic policy recheck).

pub mod batches;
pub mod directory;
pub mod fitness;
pub mod hub;
pub mod submit;
