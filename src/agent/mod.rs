//! The node agent, as a library: [`run`] registers a node with the control plane,
//! heartbeats, long-polls leases up to its free capacity, runs each task with a
//! [`Handler`], renews leases at a third of the TTL and reports outcomes. Nodes speak
//! HTTP only (through [`crate::client`]); they never touch Redis. `muster agent`,
//! `muster dev` and (later) the Rust SDK only build an [`AgentConfig`].
//!
//! # Shape
//! - one heartbeat task (re-registers when the node was forgotten, stops cancelled
//!   tasks): `state.rs`;
//! - the lease loop: a semaphore sized to the capacity; it waits for a free slot
//!   (no polling), then long-polls for at most the free slots: `leases.rs`;
//! - one runner per leased task: the executor raced against stop requests (cancel,
//!   lost lease, shutdown): `leases.rs`, [`exec`];
//! - one renewal loop: every lease due (a third of its TTL) in one
//!   `POST /v1/nodes/{id}/extend` per round: `renewals.rs`;
//! - one report flusher: sends whatever outcomes are ready in one batch, so outcomes
//!   arriving during a flush go out together in the next one, and asks in the same
//!   call for as many new tasks as there are free slots (`lease_max`): a busy node
//!   takes its next tasks with its reports, and the lease loop's long-poll is for the
//!   moments nothing waits to be reported: `reports.rs`;
//! - drain on shutdown: no more leases, `grace` for running tasks, then kill, report,
//!   flush and `DELETE /v1/nodes/{id}`: [`run`].

mod backoff;
pub mod builtin;
pub mod exec;
mod handler;
mod leases;
mod renewals;
mod reports;
mod state;

pub use handler::{ExecError, Handler, HandlerFn, Registry, TaskContext};

use crate::client::{CONNECT_TIMEOUT, Client};
use backoff::Backoff;
use leases::lease_loop;
use renewals::renew_loop;
use reports::report_loop;
use state::{Agent, StopReason, TaskHandle, heartbeat_loop, lock, register_first};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How an agent runs a task.
#[derive(Clone)]
pub enum Executor {
    /// Shell command: payload JSON on stdin, result JSON on stdout.
    Exec(String),
    /// POST the payload to this URL; a 2xx body is the result.
    Http(String),
    /// In-process handlers for the kinds echo, sleep, fail, noop, wordcount.
    Builtin,
    /// Any other [`Handler`] (in-process code).
    Handler(Arc<dyn Handler>),
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Executor::Exec(cmd) => f.debug_tuple("Exec").field(cmd).finish(),
            Executor::Http(url) => f.debug_tuple("Http").field(url).finish(),
            Executor::Builtin => f.write_str("Builtin"),
            Executor::Handler(_) => f.write_str("Handler(..)"),
        }
    }
}

/// Agent settings. `Debug` redacts the token.
#[derive(Clone)]
pub struct AgentConfig {
    /// Control-plane URLs, tried in turn.
    pub servers: Vec<String>,
    /// Token allowed to register nodes.
    pub token: Option<String>,
    /// Queues served.
    pub queues: Vec<String>,
    /// Tasks run at once.
    pub capacity: u32,
    /// Tasks leased beyond `capacity`, waiting here for a free slot (default 0): their
    /// leases are renewed while they wait, so the next tasks are at hand the moment
    /// slots free, at the cost of holding them away from other nodes meanwhile (as
    /// Celery's prefetch). The node registers `capacity + prefetch`.
    pub prefetch: u32,
    /// Node tags.
    pub tags: Vec<String>,
    /// Node name.
    pub name: String,
    /// How tasks run.
    pub executor: Executor,
    /// Time running tasks get after shutdown starts.
    pub grace: Duration,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("servers", &self.servers)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("queues", &self.queues)
            .field("capacity", &self.capacity)
            .field("prefetch", &self.prefetch)
            .field("tags", &self.tags)
            .field("name", &self.name)
            .field("executor", &self.executor)
            .field("grace", &self.grace)
            .finish()
    }
}

/// Long-poll time asked of `lease`.
pub const LEASE_WAIT_MS: u64 = 20_000;

/// Most reports sent in one call (the server's limit).
pub const MAX_REPORT_BATCH: usize = crate::domain::limits::MAX_BATCH;

/// Timeout of every call except the lease long-poll.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the final flush of reports may take after the drain.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Error reported for tasks killed by a shutdown.
const SHUTDOWN_ERROR: &str = "agent shutting down";

/// Error reported for tasks stopped by a cancel.
const CANCELLED_ERROR: &str = "cancelled";

/// The default node name: host name and pid.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.trim().is_empty())
        })
        .unwrap_or_else(|| "agent".to_string());
    format!("{}-{}", host, std::process::id())
}

/// Runs an agent until `shutdown` is cancelled, then drains and deregisters.
///
/// # Errors
/// A capacity of 0, no usable server URL, or a registration failure.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if config.capacity == 0 {
        anyhow::bail!("capacity must be at least 1");
    }
    if config.capacity.saturating_add(config.prefetch) > 10_000 {
        anyhow::bail!("capacity + prefetch must be at most 10000 (a node's capacity)");
    }
    let client = Client::builder(&config.servers)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(60))
        .build()?;
    let runner = exec::Runner::new(config.executor.clone())?;
    let Some(session) = register_first(&client, &config, &shutdown).await? else {
        return Ok(());
    };
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let tasks = TaskTracker::new();
    // Leases are held to capacity + prefetch; handlers run at most `capacity` at once
    // (a prefetched task waits for one of those slots, its lease renewed meanwhile).
    let budget = config.capacity as usize + config.prefetch as usize;
    let handlers = config.capacity as usize;
    let agent = Arc::new(Agent {
        config,
        client,
        runner,
        session: RwLock::new(Arc::new(session)),
        reregister_lock: tokio::sync::Mutex::new(()),
        running: Mutex::new(HashMap::new()),
        reports: report_tx,
        slots: Arc::new(Semaphore::new(budget)),
        handlers: Arc::new(Semaphore::new(handlers)),
        tasks: tasks.clone(),
        leasing: shutdown.clone(),
        unreported: AtomicUsize::new(0),
        flushed: Notify::new(),
        lease_with_reports: AtomicBool::new(true),
    });

    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(agent.clone(), heartbeat_stop.clone()));
    let renewer_stop = CancellationToken::new();
    let renewer = tokio::spawn(renew_loop(agent.clone(), renewer_stop.clone()));
    let reporter_stop = CancellationToken::new();
    let reporter = tokio::spawn(report_loop(agent.clone(), report_rx, reporter_stop.clone()));

    lease_loop(&agent, &shutdown).await;

    // Drain.
    let node_id = agent.session().id.clone();
    tasks.close();
    tracing::info!(
        node_id = %node_id,
        running = tasks.len(),
        grace_ms = agent.config.grace.as_millis() as u64,
        "shutting down: leasing stopped, waiting for running tasks"
    );
    if tokio::time::timeout(agent.config.grace, tasks.wait())
        .await
        .is_err()
    {
        let handles: Vec<Arc<TaskHandle>> = lock(&agent.running).values().cloned().collect();
        tracing::warn!(node_id = %node_id, killed = handles.len(), "grace over: killing the remaining tasks");
        for h in handles {
            h.stop(StopReason::Shutdown);
        }
        if tokio::time::timeout(Duration::from_secs(10), tasks.wait())
            .await
            .is_err()
        {
            tracing::error!(node_id = %node_id, "tasks did not stop after the kill");
        }
    }
    renewer_stop.cancel();
    let _ = renewer.await;
    reporter_stop.cancel();
    let mut reporter = reporter;
    if tokio::time::timeout(FINAL_FLUSH_TIMEOUT, &mut reporter)
        .await
        .is_err()
    {
        tracing::error!(node_id = %node_id, "could not flush the last reports in time; dropping them");
        reporter.abort();
    }
    heartbeat_stop.cancel();
    let _ = heartbeat.await;

    let s = agent.session();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    for attempt in 1..=3 {
        match agent.client.nodes_deregister(&s.id, &s.token).await {
            Ok(()) => {
                tracing::info!(node_id = %s.id, "deregistered");
                break;
            }
            Err(e) if e.status() == Some(404) => break,
            Err(e) if e.is_transient() && attempt < 3 => {
                tokio::time::sleep(e.retry_after().unwrap_or_else(|| backoff.next_delay())).await;
            }
            Err(e) => {
                tracing::warn!(node_id = %s.id, error = %e, "deregistration failed; the server will time the node out");
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::{Lease, Task, TaskState};

    /// A lease of task `id` for tests (queue `default`, node `n1`, token `<fence>.<id>`).
    pub(crate) fn lease(
        id: &str,
        kind: &str,
        payload: serde_json::Value,
        timeout_ms: i64,
        attempts: i64,
        fence: i64,
    ) -> Lease {
        Lease {
            task: Task {
                id: id.into(),
                queue: "default".into(),
                kind: kind.into(),
                payload,
                priority: 0,
                state: TaskState::Running,
                attempts,
                max_attempts: 3,
                timeout_ms,
                max_run_ms: Some(timeout_ms),
                requires: vec![],
                node: Some("n1".into()),
                result: None,
                error: None,
                progress: None,
                fence,
                created_at: "2026-01-01T00:00:00.000Z".into(),
                run_at: None,
                started_at: None,
                finished_at: None,
                lease_expires_at: None,
                depends_on: Vec::new(),
                on_dependency_failure: None,
                unique_key: None,
                concurrency_key: None,
                concurrency_limit: None,
                batch: None,
                origin: None,
                result_schema: None,
                cancel_requested: false,
            },
            lease_token: format!("{fence}.{id}"),
            fence,
            lease_expires_at: "2026-01-01T00:00:30.000Z".into(),
        }
    }

    #[test]
    fn default_name_ends_with_the_pid() {
        let n = default_name();
        assert!(n.ends_with(&format!("-{}", std::process::id())), "{n}");
        assert!(n.len() > 2);
    }

    /// A config for tests: queue `default`, capacity 2, the built-in executor.
    pub(crate) fn config(servers: Vec<String>) -> AgentConfig {
        AgentConfig {
            servers,
            token: Some("admin".into()),
            queues: vec!["default".into()],
            capacity: 2,
            prefetch: 0,
            tags: vec![],
            name: "test".into(),
            executor: Executor::Builtin,
            grace: Duration::from_millis(100),
        }
    }

    #[tokio::test]
    async fn shutdown_before_registration_returns_cleanly() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let r = run(config(vec!["http://127.0.0.1:9".into()]), shutdown).await;
        assert!(r.is_ok(), "{r:?}");
    }

    #[tokio::test]
    async fn zero_capacity_and_no_server_are_refused() {
        let mut c = config(vec!["http://127.0.0.1:9".into()]);
        c.capacity = 0;
        assert!(run(c, CancellationToken::new()).await.is_err());
        assert!(run(config(vec![]), CancellationToken::new()).await.is_err());
    }

    #[test]
    fn debug_redacts_the_token() {
        let mut c = config(vec![]);
        c.token = Some("register-secret".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("register-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}

#[cfg(test)]
mod engine_tests;
