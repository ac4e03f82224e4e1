//! [`Handler`]: how the engine runs one leased task, so that other executors (the
//! Rust SDK's in-process functions) plug into the same lease, renewal and report
//! machinery as the shell, webhook and built-in ones.

use crate::domain::Lease;
use futures::future::BoxFuture;
use serde_json::Value;

/// Runs leased tasks. The engine calls [`Handler::run`] once per attempt, racing it
/// against lease renewal and stop requests (cancel, lost lease, shutdown), and bounds
/// it by the task's `max_run_ms`.
pub trait Handler: Send + Sync + 'static {
    /// Runs the task to its result. Dropping the future must stop the work: the
    /// engine drops it when the task is cancelled, its lease is lost or the agent
    /// shuts down.
    ///
    /// # Errors
    /// The attempt failed; [`ExecError::retryable`] decides whether it is retried.
    fn run<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Value, ExecError>>;
}

/// Why one attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExecError {
    /// Becomes the task's `error`.
    pub message: String,
    /// False fails the task for good.
    pub retryable: bool,
}

impl ExecError {
    /// A failure that a later attempt may not repeat.
    pub fn retryable(message: impl Into<String>) -> Self {
        ExecError {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that every attempt would repeat.
    pub fn fatal(message: impl Into<String>) -> Self {
        ExecError {
            message: message.into(),
            retryable: false,
        }
    }
}
