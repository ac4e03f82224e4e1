//! The Rust SDK: a [`Worker`] runs your async functions in-process, keyed by task
//! `kind`, on the same engine as `muster agent` ([`crate::agent::run`]): leases in
//! batches sized to the free slots with long-polls, batched reports, one batched lease
//! renewal per round (`POST /v1/nodes/{id}/extend`), heartbeats and cancels,
//! reconnects with backoff, several server URLs, and a drain on SIGTERM/SIGINT.
//!
//! ```no_run
//! use muster::worker::{Context, Error, Worker};
//! use serde_json::{Value, json};
//!
//! # async fn main_() -> Result<(), Error> {
//! Worker::builder()
//!     .queue("math")
//!     .concurrency(64)
//!     .handler("add", |p: Value, _ctx: Context| async move {
//!         Ok::<_, Error>(json!({"sum": p["a"].as_i64().unwrap_or(0) + p["b"].as_i64().unwrap_or(0)}))
//!     })
//!     .build()?
//!     .run()
//!     .await
//! # }
//! ```

use crate::agent::{self, AgentConfig, ExecError, Executor, Registry, TaskContext};
use crate::client::DEFAULT_SERVER;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Default number of tasks run at once.
pub const DEFAULT_CONCURRENCY: u32 = 16;

/// Default time running tasks get to finish after SIGTERM/SIGINT.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Errors of the SDK: a handler's failure ([`Error::Retryable`], [`Error::NonRetryable`])
/// or why a worker cannot be built or run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The attempt failed; the task is retried while it has attempts left.
    #[error("{0}")]
    Retryable(String),
    /// The task fails for good, whatever attempts are left.
    #[error("{0}")]
    NonRetryable(String),
    /// The builder's settings are not usable.
    #[error("invalid worker settings: {0}")]
    Config(String),
    /// The worker could not run: for example the server refused the token (a bad
    /// token is this error, not a retry loop).
    #[error("{0}")]
    Run(String),
}

impl Error {
    /// A retryable failure with this message.
    pub fn retryable(msg: impl std::fmt::Display) -> Self {
        Error::Retryable(msg.to_string())
    }

    /// A failure that fails the task for good.
    pub fn non_retryable(msg: impl std::fmt::Display) -> Self {
        Error::NonRetryable(msg.to_string())
    }
}

/// Turns whatever a handler returned as its error into the engine's failure: a
/// [`Error`] (also inside an `anyhow::Error`) keeps its kind; anything else is a
/// retryable failure carrying its message and its `source()` chain.
fn to_exec_error<E>(e: E) -> ExecError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
{
    let any: &dyn Any = &e;
    if let Some(a) = any.downcast_ref::<anyhow::Error>() {
        return match a.downcast_ref::<Error>() {
            Some(w) => from_sdk(w),
            None => ExecError::retryable(format!("{a:#}")),
        };
    }
    let boxed: Box<dyn std::error::Error + Send + Sync> = e.into();
    if let Some(w) = boxed.downcast_ref::<Error>() {
        return from_sdk(w);
    }
    let mut msg = boxed.to_string();
    let mut src = boxed.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    ExecError::retryable(msg)
}

fn from_sdk(e: &Error) -> ExecError {
    match e {
        Error::NonRetryable(m) => ExecError::fatal(m.clone()),
        other => ExecError::retryable(other.to_string()),
    }
}

/// What a handler sees of its task besides the payload.
#[derive(Debug, Clone)]
pub struct Context {
    inner: TaskContext,
}

impl Context {
    /// The task id.
    pub fn task_id(&self) -> &str {
        self.inner.task_id()
    }

    /// The attempt number, 1 for the first.
    pub fn attempt(&self) -> i64 {
        self.inner.attempt()
    }

    /// The lease's fence: larger for every new lease of the task; pass it to systems
    /// that should refuse writes of an older attempt.
    pub fn fence(&self) -> i64 {
        self.inner.fence()
    }

    /// Records progress (any JSON); the latest value is sent with the next lease
    /// renewal (every third of the lease TTL), so intermediate values may be skipped.
    pub fn progress(&self, value: impl Serialize) {
        if let Ok(v) = serde_json::to_value(value) {
            self.inner.set_progress(v);
        }
    }

    /// True once the task was stopped: cancelled by a user, its lease lost, or the end
    /// of the shutdown grace. The handler then has about a second to return before
    /// its future is dropped; what it returns is not reported.
    pub fn cancelled(&self) -> bool {
        self.inner.stop_token().is_cancelled()
    }

    /// A token cancelled when the task is stopped (see [`Context::cancelled`]); await
    /// `cancellation().cancelled()` in a `select!`.
    pub fn cancellation(&self) -> CancellationToken {
        self.inner.stop_token().clone()
    }
}

/// Settings of a [`Worker`]; see [`Worker::builder`].
#[derive(Debug)]
pub struct WorkerBuilder {
    servers: Vec<String>,
    token: Option<String>,
    queues: Vec<String>,
    concurrency: u32,
    prefetch: u32,
    name: Option<String>,
    tags: Vec<String>,
    grace: Duration,
    registry: Registry,
}

impl WorkerBuilder {
    /// The control plane's URL (replaces the default from `MUSTER_SERVER`).
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.servers = vec![url.into()];
        self
    }

    /// Several control-plane URLs, tried in turn on connection errors.
    pub fn servers<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.servers = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The token allowed to register nodes (default `MUSTER_TOKEN`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A queue to serve (call again for more; `default` when none).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queues.push(queue.into());
        self
    }

    /// Tasks run at once (the node's capacity).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// Tasks leased beyond the concurrency, waiting in the worker for a free slot
    /// (default 0: leases are sized to the free slots). Short tasks that end in waves
    /// (many handlers awaiting the same kind of I/O) start the moment slots free
    /// instead of after a round trip; the prefetched tasks are held away from other
    /// workers meanwhile, so keep it small for long tasks. Their leases are renewed.
    pub fn prefetch(mut self, n: u32) -> Self {
        self.prefetch = n;
        self
    }

    /// The node name (default: host name and pid).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A node tag (tasks may require tags).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Time running tasks get to finish after a shutdown starts (default 30 s);
    /// tasks still running then are stopped and handed back for a retry.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Runs `f` for tasks of `kind`. The payload is decoded into `P` (a payload that
    /// does not decode fails the task for good); the result is encoded as JSON. The
    /// error may be a [`Error`], an `anyhow::Error`, any `std::error::Error` or a
    /// string: all but [`Error::NonRetryable`] are retried.
    pub fn handler<P, T, E, F, Fut>(mut self, kind: impl Into<String>, f: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        T: Serialize + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
        F: Fn(P, Context) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
    {
        let kind = kind.into();
        let what = kind.clone();
        let f = Arc::new(f);
        self.registry.insert(
            kind,
            Arc::new(move |payload: Value, ctx: TaskContext| {
                let f = f.clone();
                let what = what.clone();
                Box::pin(async move {
                    let p: P = serde_json::from_value(payload).map_err(|e| {
                        ExecError::fatal(format!("invalid payload for {what}: {e}"))
                    })?;
                    let out = f(p, Context { inner: ctx }).await.map_err(to_exec_error)?;
                    serde_json::to_value(out).map_err(|e| {
                        ExecError::fatal(format!("cannot encode the result of {what}: {e}"))
                    })
                })
            }),
        );
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::Config`]: no handler, a concurrency of 0, no server or a server that
    /// is not an http(s) URL.
    pub fn build(self) -> Result<Worker, Error> {
        if self.registry.is_empty() {
            return Err(Error::Config("register at least one handler".into()));
        }
        if self.concurrency == 0 {
            return Err(Error::Config("concurrency must be at least 1".into()));
        }
        if self.concurrency.saturating_add(self.prefetch) > 10_000 {
            return Err(Error::Config(
                "concurrency + prefetch must be at most 10000".into(),
            ));
        }
        if self.servers.is_empty() {
            return Err(Error::Config("no server URL".into()));
        }
        for s in &self.servers {
            let ok = reqwest::Url::parse(s)
                .map(|u| matches!(u.scheme(), "http" | "https"))
                .unwrap_or(false);
            if !ok {
                return Err(Error::Config(format!("{s:?} is not an http(s) URL")));
            }
        }
        let queues = if self.queues.is_empty() {
            vec!["default".to_string()]
        } else {
            self.queues
        };
        Ok(Worker {
            config: AgentConfig {
                servers: self.servers,
                token: self.token,
                queues,
                capacity: self.concurrency,
                prefetch: self.prefetch,
                tags: self.tags,
                name: self.name.unwrap_or_else(agent::default_name),
                executor: Executor::Handler(Arc::new(self.registry)),
                grace: self.grace,
            },
        })
    }
}

/// A built worker: [`Worker::run`] until SIGTERM/SIGINT, or [`Worker::run_until`] a
/// token.
#[derive(Debug, Clone)]
pub struct Worker {
    config: AgentConfig,
}

impl Worker {
    /// A builder with the defaults: server(s) from `MUSTER_SERVER` (comma-separated;
    /// else `http://127.0.0.1:8080`), token from `MUSTER_TOKEN`, concurrency 16.
    pub fn builder() -> WorkerBuilder {
        let servers = std::env::var("MUSTER_SERVER")
            .ok()
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| vec![DEFAULT_SERVER.to_string()]);
        WorkerBuilder {
            servers,
            token: std::env::var("MUSTER_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty()),
            queues: Vec::new(),
            concurrency: DEFAULT_CONCURRENCY,
            prefetch: 0,
            name: None,
            tags: Vec::new(),
            grace: DEFAULT_GRACE,
            registry: Registry::new("this worker"),
        }
    }

    /// The engine settings this worker runs with.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Runs until SIGTERM or SIGINT, then drains (see [`WorkerBuilder::grace`]).
    ///
    /// # Errors
    /// [`Error::Run`]: the node cannot register (bad token, server refusing).
    pub async fn run(self) -> Result<(), Error> {
        let stop = crate::shutdown::on_signals("worker draining");
        self.run_until(stop).await
    }

    /// Runs until `shutdown` is cancelled, then drains.
    ///
    /// # Errors
    /// [`Error::Run`]: the node cannot register (bad token, server refusing).
    pub async fn run_until(self, shutdown: CancellationToken) -> Result<(), Error> {
        agent::run(self.config, shutdown)
            .await
            .map_err(|e| Error::Run(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_kind_through_anyhow_and_std() {
        assert_eq!(
            to_exec_error(Error::non_retryable("bad")),
            ExecError::fatal("bad")
        );
        assert_eq!(
            to_exec_error(Error::retryable("again")),
            ExecError::retryable("again")
        );
        let a = anyhow::Error::from(Error::non_retryable("deep"));
        assert_eq!(to_exec_error(a), ExecError::fatal("deep"));
        let a = anyhow::anyhow!("plain");
        assert_eq!(to_exec_error(a), ExecError::retryable("plain"));
        let io = std::io::Error::other("disk");
        assert_eq!(to_exec_error(io), ExecError::retryable("disk"));
        assert_eq!(to_exec_error("text"), ExecError::retryable("text"));
    }

    #[test]
    fn build_checks_the_settings() {
        let h = |p: Value, _c: Context| async move { Ok::<_, Error>(p) };
        assert!(matches!(Worker::builder().build(), Err(Error::Config(_))));
        assert!(matches!(
            Worker::builder().handler("a", h).concurrency(0).build(),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Worker::builder().handler("a", h).server("ftp://x").build(),
            Err(Error::Config(_))
        ));
        let w = Worker::builder()
            .servers(["http://a:1", "http://b:2"])
            .handler("a", h)
            .name("n")
            .tag("gpu")
            .build()
            .expect("valid");
        assert_eq!(w.config().queues, ["default"]);
        assert_eq!(w.config().servers.len(), 2);
        assert_eq!(w.config().tags, ["gpu"]);
    }
}
