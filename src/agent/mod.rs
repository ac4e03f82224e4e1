//! The node agent: registers with the control plane, heartbeats, long-polls leases up
//! to its free capacity, runs each task with an executor, renews leases at a third of
//! the TTL and reports outcomes. Nodes speak HTTP only; they never touch Redis.
//!
//! # Shape
//! - one heartbeat task (re-registers when the node was forgotten, stops cancelled tasks);
//! - the lease loop: a [`Semaphore`] sized to the capacity; it waits for a free slot
//!   (no polling), then long-polls for at most the free slots;
//! - one runner per leased task: the executor raced against lease renewal and stop
//!   requests (cancel, lost lease, shutdown);
//! - one report flusher: sends whatever outcomes are ready in one batch, so outcomes
//!   arriving during a flush go out together in the next one;
//! - drain on shutdown: no more leases, `grace` for running tasks, then kill, report,
//!   flush and `DELETE /v1/nodes/{id}`.

pub mod builtin;
pub mod client;
pub mod exec;

use crate::domain::{
    ExtendRequest, Lease, NodeKind, NodeStatus, RegisterNode, Report, ReportBatch, ReportOutcome,
};
use client::{Client, ClientError};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// How an agent runs a task.
#[derive(Debug, Clone)]
pub enum Executor {
    /// Shell command: payload JSON on stdin, result JSON on stdout.
    Exec(String),
    /// POST the payload to this URL; a 2xx body is the result.
    Http(String),
    /// In-process handlers for the kinds echo, sleep, fail, noop, wordcount.
    Builtin,
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Control-plane URLs, tried in turn.
    pub servers: Vec<String>,
    /// Token allowed to register nodes.
    pub token: Option<String>,
    /// Queues served.
    pub queues: Vec<String>,
    /// Tasks run at once.
    pub capacity: u32,
    /// Node tags.
    pub tags: Vec<String>,
    /// Node name.
    pub name: String,
    /// How tasks run.
    pub executor: Executor,
    /// Time running tasks get after shutdown starts.
    pub grace: Duration,
}

/// Long-poll time asked of `lease`.
pub const LEASE_WAIT_MS: u64 = 20_000;

/// Most reports sent in one call (the server's limit).
pub const MAX_REPORT_BATCH: usize = 10_000;

/// How long a batch of reports is retried before it is given up.
const REPORT_RETRY_FOR: Duration = Duration::from_secs(300);

/// How long the first registration retries an unreachable or overloaded server.
const REGISTER_RETRY_FOR: Duration = Duration::from_secs(30);

/// How long the final flush of reports may take after the drain.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// Heartbeat interval used when the server gives none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

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
/// Registration failure.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if config.capacity == 0 {
        anyhow::bail!("capacity must be at least 1");
    }
    let client = Client::new(&config.servers)?;
    let runner = exec::Runner::new(config.executor.clone())?;
    let Some(session) = register_first(&client, &config, &shutdown).await? else {
        return Ok(());
    };
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let agent = Arc::new(Agent {
        config,
        client,
        runner,
        session: RwLock::new(Arc::new(session)),
        reregister_lock: tokio::sync::Mutex::new(()),
        running: Mutex::new(HashMap::new()),
        reports: report_tx,
    });

    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(agent.clone(), heartbeat_stop.clone()));
    let reporter_stop = CancellationToken::new();
    let reporter = tokio::spawn(report_loop(agent.clone(), report_rx, reporter_stop.clone()));
    let tasks = TaskTracker::new();

    lease_loop(&agent, &tasks, &shutdown).await;

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
        match agent.client.deregister(&s.id, &s.token).await {
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

/// `muster agent`.
///
/// # Errors
/// Registration failure or bad flags.
pub async fn run_cli(args: crate::cli::agent::AgentArgs) -> anyhow::Result<ExitCode> {
    let executor = match (args.exec, args.http, args.builtin) {
        (Some(cmd), None, false) => Executor::Exec(cmd),
        (None, Some(url), false) => Executor::Http(url),
        (None, None, true) => Executor::Builtin,
        (None, None, false) => anyhow::bail!("give --exec CMD, --http URL or --builtin"),
        _ => anyhow::bail!("give only one of --exec CMD, --http URL or --builtin"),
    };
    let config = AgentConfig {
        servers: args.servers,
        token: args.token,
        queues: args.queues,
        capacity: args.capacity,
        tags: args.tags,
        name: args
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(default_name),
        executor,
        grace: Duration::from_secs(args.grace_secs),
    };
    let shutdown = CancellationToken::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            r = tokio::signal::ctrl_c() => match r {
                Ok(()) => tracing::info!("interrupted: draining"),
                Err(e) => tracing::warn!(error = %e, "cannot listen for Ctrl-C"),
            },
        }
        on_signal.cancel();
    });
    run(config, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// The node identity the agent uses now (it changes when the node is re-registered).
#[derive(Debug)]
struct Session {
    id: String,
    token: String,
    heartbeat: Duration,
}

/// Why a running task is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    /// Cancelled by a user: report failed, not retryable.
    Cancelled,
    /// The lease is no longer ours: report nothing.
    LeaseLost,
    /// The agent is shutting down: report failed, retryable.
    Shutdown,
}

/// Stop switch of one running task.
#[derive(Debug, Default)]
struct TaskHandle {
    stop: CancellationToken,
    reason: Mutex<Option<StopReason>>,
}

impl TaskHandle {
    /// Stops the task; the first reason wins.
    fn stop(&self, reason: StopReason) {
        let mut r = lock(&self.reason);
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        self.stop.cancel();
    }

    fn reason(&self) -> Option<StopReason> {
        *lock(&self.reason)
    }
}

/// Shared state of a running agent.
struct Agent {
    config: AgentConfig,
    client: Client,
    runner: exec::Runner,
    session: RwLock<Arc<Session>>,
    reregister_lock: tokio::sync::Mutex<()>,
    running: Mutex<HashMap<String, Arc<TaskHandle>>>,
    reports: mpsc::UnboundedSender<Report>,
}

/// Locks a mutex, ignoring poisoning (the data stays consistent: every critical
/// section here is a single map or option update).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Agent {
    fn session(&self) -> Arc<Session> {
        self.session
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Registers a new node after `stale_id` was forgotten by the server. Concurrent
    /// callers that saw the same stale id register once. Gives up when `stop` fires.
    async fn reregister(&self, stale_id: &str, stop: &CancellationToken) {
        let _guard = self.reregister_lock.lock().await;
        if self.session().id != stale_id {
            return;
        }
        tracing::warn!(node_id = %stale_id, "the control plane forgot this node: registering again");
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            match register_node(&self.client, &self.config).await {
                Ok(s) => {
                    tracing::info!(node_id = %s.id, old_node_id = %stale_id, "registered again");
                    *self
                        .session
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(s);
                    return;
                }
                Err(e) => {
                    let delay = e.retry_after().unwrap_or_else(|| backoff.next_delay());
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "re-registration failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn send_report(&self, report: Report) {
        if self.reports.send(report).is_err() {
            tracing::error!("report flusher is gone; dropping a report");
        }
    }
}

fn register_body(config: &AgentConfig) -> RegisterNode {
    RegisterNode {
        name: config.name.clone(),
        queues: config.queues.clone(),
        tags: config.tags.clone(),
        capacity: Some(i64::from(config.capacity)),
        kind: Some(NodeKind::Machine),
    }
}

async fn register_node(client: &Client, config: &AgentConfig) -> Result<Session, ClientError> {
    let reg = client
        .register(config.token.as_deref(), &register_body(config))
        .await?;
    let heartbeat = match reg.heartbeat_interval_ms {
        0 => DEFAULT_HEARTBEAT,
        ms => Duration::from_millis(ms.max(100)),
    };
    Ok(Session {
        id: reg.id,
        token: reg.token,
        heartbeat,
    })
}

/// First registration: retries transient errors for a while (the server may be
/// starting); `None` when shutdown came first.
async fn register_first(
    client: &Client,
    config: &AgentConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Session>> {
    let started = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let res = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            r = register_node(client, config) => r,
        };
        match res {
            Ok(s) => {
                tracing::info!(
                    node_id = %s.id,
                    name = %config.name,
                    server = client.current_server(),
                    capacity = config.capacity,
                    queues = ?config.queues,
                    "node registered"
                );
                return Ok(Some(s));
            }
            Err(e) if e.is_transient() && started.elapsed() < REGISTER_RETRY_FOR => {
                let delay = e.retry_after().unwrap_or_else(|| backoff.next_delay());
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "registration failed, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => return Err(anyhow::anyhow!("cannot register the node: {e}")),
        }
    }
}

/// True when an error on a node route means the node (or its token) is unknown.
fn node_forgotten(e: &ClientError) -> bool {
    matches!(e.status(), Some(401 | 404))
}

async fn heartbeat_loop(agent: Arc<Agent>, stop: CancellationToken) {
    let mut last_status = NodeStatus::Active;
    loop {
        let s = agent.session();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(s.heartbeat) => {}
        }
        let res = tokio::select! {
            _ = stop.cancelled() => return,
            r = agent.client.heartbeat(&s.id, &s.token) => r,
        };
        match res {
            Ok(reply) => {
                if reply.status != last_status {
                    tracing::info!(node_id = %s.id, status = reply.status.as_str(), "node status changed");
                    last_status = reply.status;
                }
                for task_id in reply.cancel {
                    let handle = lock(&agent.running).get(&task_id).cloned();
                    if let Some(h) = handle {
                        tracing::info!(node_id = %s.id, task_id = %task_id, "cancel requested: stopping the task");
                        h.stop(StopReason::Cancelled);
                    }
                }
            }
            Err(e) if node_forgotten(&e) => {
                agent.reregister(&s.id, &stop).await;
                last_status = NodeStatus::Active;
            }
            Err(e) => tracing::warn!(node_id = %s.id, error = %e, "heartbeat failed"),
        }
    }
}

/// Leases tasks while slots are free, until `shutdown`.
async fn lease_loop(agent: &Arc<Agent>, tasks: &TaskTracker, shutdown: &CancellationToken) {
    let slots = Arc::new(Semaphore::new(agent.config.capacity as usize));
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(10));
    loop {
        // Wait for a free slot: no polling while the node is full.
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let max = u32::try_from(slots.available_permits())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let s = agent.session();
        let asked = Instant::now();
        let res = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = agent.client.lease(&s.id, &s.token, max, LEASE_WAIT_MS) => r,
        };
        match res {
            Ok(reply) => {
                if reply.leases.is_empty() {
                    drop(first);
                    // A server that answers an empty long-poll at once (draining node,
                    // no long-poll support) must not turn this loop into a busy one.
                    if asked.elapsed() < Duration::from_millis(LEASE_WAIT_MS / 2) {
                        let delay = backoff.next_delay();
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                    continue;
                }
                backoff.reset();
                let mut first = Some(first);
                for lease in reply.leases {
                    let permit = first
                        .take()
                        .or_else(|| slots.clone().try_acquire_owned().ok());
                    match permit {
                        Some(p) => {
                            tasks.spawn(run_task(agent.clone(), lease, p));
                        }
                        None => {
                            tracing::warn!(node_id = %s.id, task_id = %lease.task.id, "server granted more leases than asked; giving it back");
                            agent.send_report(failed_report(&lease, "node at capacity", true));
                        }
                    }
                }
            }
            Err(e) => {
                drop(first);
                if node_forgotten(&e) {
                    agent.reregister(&s.id, shutdown).await;
                    continue;
                }
                let delay = e.retry_after().unwrap_or_else(|| backoff.next_delay());
                tracing::warn!(node_id = %s.id, error = %e, retry_in_ms = delay.as_millis() as u64, "lease failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn failed_report(lease: &Lease, error: &str, retryable: bool) -> Report {
    Report {
        task_id: lease.task.id.clone(),
        lease_token: lease.lease_token.clone(),
        outcome: ReportOutcome::Failed,
        result: None,
        error: Some(error.to_string()),
        retryable: Some(retryable),
    }
}

/// Runs one leased task: the executor raced against renewal and stop requests; the
/// slot (`permit`) is freed once the outcome is queued for reporting.
async fn run_task(agent: Arc<Agent>, lease: Lease, permit: OwnedSemaphorePermit) {
    let handle = Arc::new(TaskHandle::default());
    let task_id = lease.task.id.clone();
    lock(&agent.running).insert(task_id.clone(), handle.clone());
    let node_id = agent.session().id.clone();
    let span = tracing::info_span!("task", task_id = %task_id, node_id = %node_id, kind = %lease.task.kind);
    async {
        tracing::debug!(attempt = lease.task.attempts, fence = lease.fence, "task started");
        let started = Instant::now();
        let outcome = tokio::select! {
            r = agent.runner.run(&lease) => Some(r),
            _ = handle.stop.cancelled() => None,
            () = renew_loop(&agent, &lease, &handle) => None,
        };
        {
            let mut running = lock(&agent.running);
            if running.get(&task_id).is_some_and(|h| Arc::ptr_eq(h, &handle)) {
                running.remove(&task_id);
            }
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let report = match (outcome, handle.reason()) {
            (Some(Ok(result)), _) => {
                tracing::debug!(elapsed_ms, "task succeeded");
                Some(Report {
                    task_id: task_id.clone(),
                    lease_token: lease.lease_token.clone(),
                    outcome: ReportOutcome::Succeeded,
                    result: Some(result),
                    error: None,
                    retryable: None,
                })
            }
            (Some(Err(e)), _) => {
                tracing::info!(elapsed_ms, error = %e.message, retryable = e.retryable, "task failed");
                Some(failed_report(&lease, &e.message, e.retryable))
            }
            (None, Some(StopReason::Cancelled)) => {
                tracing::info!(elapsed_ms, "task cancelled");
                Some(failed_report(&lease, CANCELLED_ERROR, false))
            }
            (None, Some(StopReason::Shutdown)) => {
                tracing::info!(elapsed_ms, "task killed by the shutdown");
                Some(failed_report(&lease, SHUTDOWN_ERROR, true))
            }
            (None, Some(StopReason::LeaseLost) | None) => {
                tracing::info!(elapsed_ms, "lease lost: task stopped, not reported");
                None
            }
        };
        if let Some(r) = report {
            agent.send_report(r);
        }
        drop(permit);
    }
    .instrument(span)
    .await;
}

/// Renews the lease every third of the TTL until the task is stopped; returns after
/// stopping it (lease lost or cancel requested).
async fn renew_loop(agent: &Agent, lease: &Lease, handle: &TaskHandle) {
    let ttl = exec::lease_ttl(lease);
    let every = (ttl / 3).max(Duration::from_millis(20));
    // Our own estimate of the lease deadline, kept conservative.
    let mut deadline = Instant::now() + ttl;
    let mut next = every;
    let req = ExtendRequest {
        lease_token: lease.lease_token.clone(),
        progress: None,
    };
    loop {
        tokio::time::sleep(next).await;
        let sent = Instant::now();
        let s = agent.session();
        match agent.client.extend(&lease.task.id, &s.token, &req).await {
            Ok(reply) => {
                deadline = sent + ttl;
                next = every;
                if reply.cancel_requested {
                    tracing::info!("cancel requested: stopping the task");
                    handle.stop(StopReason::Cancelled);
                    return;
                }
            }
            Err(e) if matches!(e.status(), Some(404 | 409)) => {
                tracing::warn!(error = %e, "lease lost: stopping the task");
                handle.stop(StopReason::LeaseLost);
                return;
            }
            Err(e) => {
                let now = Instant::now();
                if now >= deadline {
                    tracing::warn!(error = %e, "lease expired without a renewal: stopping the task");
                    handle.stop(StopReason::LeaseLost);
                    return;
                }
                // Retry soon, well inside what is left of the lease: a Retry-After
                // that lands on the deadline races the reaper (a Redis blip would
                // expire healthy leases).
                let left = deadline - now;
                next = e
                    .retry_after()
                    .unwrap_or(Duration::from_millis(200))
                    .min(Duration::from_millis(200))
                    .min(left / 4);
                tracing::warn!(error = %e, retry_in_ms = next.as_millis() as u64, "lease renewal failed");
            }
        }
    }
}

/// Sends outcomes in batches: everything queued when a flush starts goes in it, so
/// reports arriving during a flush are coalesced into the next one. Failed flushes
/// are retried with backoff. Returns once `stop` fired and everything was sent.
async fn report_loop(
    agent: Arc<Agent>,
    mut rx: mpsc::UnboundedReceiver<Report>,
    stop: CancellationToken,
) {
    let mut pending: Vec<Report> = Vec::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failing_since: Option<Instant> = None;
    loop {
        if pending.is_empty() {
            tokio::select! {
                biased;
                r = rx.recv() => match r {
                    Some(r) => pending.push(r),
                    None => return,
                },
                _ = stop.cancelled() => {
                    while let Ok(r) = rx.try_recv() {
                        pending.push(r);
                    }
                    if pending.is_empty() {
                        return;
                    }
                }
            }
        }
        while let Ok(r) = rx.try_recv() {
            pending.push(r);
        }
        let n = pending.len().min(MAX_REPORT_BATCH);
        let batch = ReportBatch {
            reports: pending[..n].to_vec(),
        };
        let s = agent.session();
        match agent.client.reports(&s.id, &s.token, &batch).await {
            Ok(reply) => {
                backoff.reset();
                failing_since = None;
                pending.drain(..n);
                for r in reply.results {
                    match r.status {
                        200..=299 => {
                            tracing::debug!(node_id = %s.id, task_id = %r.task_id, state = ?r.state, "report accepted")
                        }
                        404 | 409 => {
                            tracing::debug!(node_id = %s.id, task_id = %r.task_id, status = r.status, code = ?r.code, "report refused: lease lost")
                        }
                        _ => {
                            tracing::warn!(node_id = %s.id, task_id = %r.task_id, status = r.status, code = ?r.code, "report refused")
                        }
                    }
                }
            }
            Err(e) if e.is_transient() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= REPORT_RETRY_FOR {
                    tracing::error!(node_id = %s.id, dropped = n, error = %e, "reports undeliverable; giving them up");
                    pending.drain(..n);
                    failing_since = None;
                    backoff.reset();
                    continue;
                }
                let delay = e.retry_after().unwrap_or_else(|| backoff.next_delay());
                tracing::warn!(node_id = %s.id, reports = n, error = %e, retry_in_ms = delay.as_millis() as u64, "report flush failed");
                tokio::time::sleep(delay).await;
            }
            Err(e) => {
                // The node was forgotten (its leases with it) or the batch is refused
                // as a whole: retrying cannot help.
                tracing::warn!(node_id = %s.id, dropped = n, error = %e, "reports refused; dropping them");
                pending.drain(..n);
            }
        }
    }
}

/// Exponential backoff with jitter.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    cur: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, cur: min }
    }

    fn reset(&mut self) {
        self.cur = self.min;
    }

    /// The next delay (between half and all of the current step), then doubles the step.
    fn next_delay(&mut self) -> Duration {
        let d = self.cur.mul_f64(rand::random_range(0.5..=1.0));
        self.cur = (self.cur * 2).min(self.max);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[4] >= Duration::from_millis(200) && d[4] <= Duration::from_millis(400));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn the_first_stop_reason_wins() {
        let h = TaskHandle::default();
        assert_eq!(h.reason(), None);
        h.stop(StopReason::Cancelled);
        h.stop(StopReason::Shutdown);
        assert_eq!(h.reason(), Some(StopReason::Cancelled));
        assert!(h.stop.is_cancelled());
    }

    #[test]
    fn default_name_ends_with_the_pid() {
        let n = default_name();
        assert!(n.ends_with(&format!("-{}", std::process::id())), "{n}");
        assert!(n.len() > 2);
    }

    fn config(servers: Vec<String>) -> AgentConfig {
        AgentConfig {
            servers,
            token: Some("admin".into()),
            queues: vec!["default".into()],
            capacity: 2,
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
    fn register_body_is_a_machine() {
        let b = register_body(&config(vec![]));
        assert_eq!(b.kind, Some(NodeKind::Machine));
        assert_eq!(b.capacity, Some(2));
        assert_eq!(b.name, "test");
    }
}

#[cfg(test)]
mod engine_tests;
