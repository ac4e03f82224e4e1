//! [`Handler`]: how the engine runs one leased task, so that other executors (the
//! Rust SDK's in-process functions) plug into the same lease, renewal and report
//! machinery as the shell, webhook and built-in ones.

use crate::domain::Lease;
use futures::future::BoxFuture;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

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
    fn run<'a>(
        &'a self,
        lease: &'a Lease,
        ctx: TaskContext,
    ) -> BoxFuture<'a, Result<Value, ExecError>>;
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

/// What a running handler can see of its task besides the payload: identity, a stop
/// signal and a progress slot. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskContext {
    task_id: Arc<str>,
    attempt: i64,
    fence: i64,
    stop: CancellationToken,
    progress: Arc<Mutex<Option<Value>>>,
}

impl TaskContext {
    pub(super) fn new(
        lease: &Lease,
        stop: CancellationToken,
        progress: Arc<Mutex<Option<Value>>>,
    ) -> Self {
        TaskContext {
            task_id: Arc::from(lease.task.id.as_str()),
            attempt: lease.task.attempts,
            fence: lease.fence,
            stop,
            progress,
        }
    }

    /// A context that nothing stops and whose progress goes nowhere (for running a
    /// handler outside the engine, as tests do).
    pub fn detached(lease: &Lease) -> Self {
        TaskContext::new(lease, CancellationToken::new(), Arc::default())
    }

    /// The task id.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The attempt number, 1 for the first.
    pub fn attempt(&self) -> i64 {
        self.attempt
    }

    /// The lease's fence number: grows with every lease of the task, so side effects
    /// guarded by it cannot be applied by an older attempt.
    pub fn fence(&self) -> i64 {
        self.fence
    }

    /// Fires when the engine stops the task: a cancel, a lost lease or the end of the
    /// shutdown grace.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Records progress; the latest value goes out with the next lease renewal.
    pub fn set_progress(&self, value: Value) {
        *self
            .progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(value);
    }
}

/// One registered handler function: payload and context in, result out.
pub type HandlerFn =
    Arc<dyn Fn(Value, TaskContext) -> BoxFuture<'static, Result<Value, ExecError>> + Send + Sync>;

/// A [`Handler`] that picks a function by the task's `kind`: what the built-in
/// executor and the Rust SDK's worker both are.
#[derive(Clone)]
pub struct Registry {
    what: String,
    handlers: HashMap<String, HandlerFn>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<&String> = self.handlers.keys().collect();
        kinds.sort();
        f.debug_struct("Registry")
            .field("what", &self.what)
            .field("kinds", &kinds)
            .finish()
    }
}

impl Registry {
    /// An empty registry; `what` names it in the "unknown kind" error.
    pub fn new(what: impl Into<String>) -> Self {
        Registry {
            what: what.into(),
            handlers: HashMap::new(),
        }
    }

    /// Registers (or replaces) the function of `kind`.
    pub fn insert(&mut self, kind: impl Into<String>, f: HandlerFn) {
        self.handlers.insert(kind.into(), f);
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self.handlers.keys().cloned().collect();
        k.sort();
        k
    }

    /// True when no kind is registered.
    pub fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }
}

impl Handler for Registry {
    fn run<'a>(
        &'a self,
        lease: &'a Lease,
        ctx: TaskContext,
    ) -> BoxFuture<'a, Result<Value, ExecError>> {
        match self.handlers.get(&lease.task.kind) {
            Some(f) => f(lease.task.payload.clone(), ctx),
            None => {
                let e = ExecError::fatal(format!(
                    "unknown kind {} for {}",
                    lease.task.kind, self.what
                ));
                Box::pin(async move { Err(e) })
            }
        }
    }
}
