//! The running agent's shared state: its node session (re-registered when the
//! control plane forgot the node), the stop switches of running tasks, and the
//! heartbeat loop that keeps the session alive and delivers cancels.

use super::AgentConfig;
use super::backoff::Backoff;
use super::exec::Runner;
use crate::client::{Client, ClientError};
use crate::domain::{NodeKind, NodeStatus, RegisterNode, Report};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the first registration retries an unreachable or overloaded server.
const REGISTER_RETRY_FOR: Duration = Duration::from_secs(30);

/// Heartbeat interval used when the server gives none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// The node identity the agent uses now (it changes when the node is re-registered).
#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: String,
    pub(super) token: String,
    pub(super) heartbeat: Duration,
}

/// Why a running task is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    /// Cancelled by a user: report failed, not retryable.
    Cancelled,
    /// The lease is no longer ours: report nothing.
    LeaseLost,
    /// The agent is shutting down: report failed, retryable.
    Shutdown,
}

/// Stop switch and renewal state of one running task.
#[derive(Debug)]
pub(super) struct TaskHandle {
    pub(super) stop: CancellationToken,
    reason: Mutex<Option<StopReason>>,
    pub(super) lease_token: String,
    /// The lease TTL and the renewal period (a third of it).
    pub(super) ttl: Duration,
    pub(super) every: Duration,
    /// (next renewal due, our conservative estimate of the lease deadline).
    pub(super) times: Mutex<(Instant, Instant)>,
    /// Latest progress from the handler, sent with the next renewal.
    pub(super) progress: Arc<Mutex<Option<serde_json::Value>>>,
}

impl TaskHandle {
    /// The handle of a task leased now with `lease_token` and `ttl`.
    pub(super) fn new(lease_token: String, ttl: Duration) -> Self {
        let every = (ttl / 3).max(Duration::from_millis(20));
        let now = Instant::now();
        TaskHandle {
            stop: CancellationToken::new(),
            reason: Mutex::new(None),
            lease_token,
            ttl,
            every,
            times: Mutex::new((now + every, now + ttl)),
            progress: Arc::default(),
        }
    }

    /// Stops the task; the first reason wins.
    pub(super) fn stop(&self, reason: StopReason) {
        let mut r = lock(&self.reason);
        if r.is_none() {
            *r = Some(reason);
        }
        drop(r);
        self.stop.cancel();
    }

    pub(super) fn reason(&self) -> Option<StopReason> {
        *lock(&self.reason)
    }
}

/// Shared state of a running agent.
pub(super) struct Agent {
    pub(super) config: AgentConfig,
    pub(super) client: Client,
    pub(super) runner: Runner,
    pub(super) session: RwLock<Arc<Session>>,
    /// Held while re-registering, so that concurrent callers register once.
    pub(super) reregister_lock: tokio::sync::Mutex<()>,
    /// Stop switches of the running tasks, by task id.
    pub(super) running: Mutex<HashMap<String, Arc<TaskHandle>>>,
    pub(super) reports: mpsc::UnboundedSender<Report>,
    /// Lease slots: capacity + prefetch leases are held at once.
    pub(super) slots: Arc<Semaphore>,
    /// Handler slots: capacity handlers run at once (a prefetched task waits for one).
    pub(super) handlers: Arc<Semaphore>,
    /// The runners of leased tasks (the drain waits for them).
    pub(super) tasks: TaskTracker,
    /// Cancelled when leasing stops (the shutdown began).
    pub(super) leasing: CancellationToken,
    /// Outcomes queued and not yet sent (or given up). While there are any, the report
    /// flusher leases for the free slots in its report call (`lease_max`) and the lease
    /// loop's long-poll holds back: a busy node takes its next tasks with its reports.
    pub(super) unreported: AtomicUsize,
    /// Notified after every flush that settled its reports.
    pub(super) flushed: Notify,
    /// Cleared when the server refuses `lease_max` (one older than this agent): the lease
    /// loop alone leases then.
    pub(super) lease_with_reports: AtomicBool,
}

/// Locks a mutex, ignoring poisoning (the data stays consistent: every critical
/// section here is a single map or option update).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Agent {
    pub(super) fn session(&self) -> Arc<Session> {
        self.session
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Registers a new node after `stale_id` was forgotten by the server. Concurrent
    /// callers that saw the same stale id register once. Gives up when `stop` fires.
    pub(super) async fn reregister(&self, stale_id: &str, stop: &CancellationToken) {
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

    /// Queues an outcome for the report flusher.
    pub(super) fn send_report(&self, report: Report) {
        self.report_coming();
        self.push_report(report);
    }

    /// Counts an outcome about to be queued: done before its lease slot is freed, so that
    /// the lease loop, woken by that slot, sees it and leaves the slot to the flusher.
    pub(super) fn report_coming(&self) {
        self.unreported.fetch_add(1, Ordering::SeqCst);
    }

    /// Queues an outcome counted by [`Agent::report_coming`].
    pub(super) fn push_report(&self, report: Report) {
        if self.reports.send(report).is_err() {
            tracing::error!("report flusher is gone; dropping a report");
            self.reports_settled(1);
        }
    }

    /// `n` outcomes were sent (or given up).
    pub(super) fn reports_settled(&self, n: usize) {
        let _ = self
            .unreported
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(n))
            });
        self.flushed.notify_waiters();
    }

    /// True while the report flusher leases for the free slots: outcomes are waiting
    /// and the server takes `lease_max`.
    pub(super) fn flusher_leases(&self) -> bool {
        self.lease_with_reports.load(Ordering::SeqCst) && self.unreported.load(Ordering::SeqCst) > 0
    }
}

pub(super) fn register_body(config: &AgentConfig) -> RegisterNode {
    RegisterNode {
        name: config.name.clone(),
        queues: config.queues.clone(),
        tags: config.tags.clone(),
        capacity: Some(i64::from(config.capacity) + i64::from(config.prefetch)),
        kind: Some(NodeKind::Machine),
    }
}

async fn register_node(client: &Client, config: &AgentConfig) -> Result<Session, ClientError> {
    let reg = client
        .nodes_register(config.token.as_deref(), &register_body(config))
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
pub(super) async fn register_first(
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
pub(super) fn node_forgotten(e: &ClientError) -> bool {
    matches!(e.status(), Some(401 | 404))
}

pub(super) async fn heartbeat_loop(agent: Arc<Agent>, stop: CancellationToken) {
    let mut last_status = NodeStatus::Active;
    loop {
        let s = agent.session();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(s.heartbeat) => {}
        }
        let res = tokio::select! {
            _ = stop.cancelled() => return,
            r = agent.client.nodes_heartbeat(&s.id, &s.token) => r,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stop_reason_wins() {
        let h = TaskHandle::new("1.ab".into(), Duration::from_secs(3));
        assert_eq!(h.every, Duration::from_secs(1));
        assert_eq!(h.reason(), None);
        h.stop(StopReason::Cancelled);
        h.stop(StopReason::Shutdown);
        assert_eq!(h.reason(), Some(StopReason::Cancelled));
        assert!(h.stop.is_cancelled());
    }

    #[test]
    fn register_body_is_a_machine() {
        let b = register_body(&crate::agent::tests::config(vec![]));
        assert_eq!(b.kind, Some(NodeKind::Machine));
        assert_eq!(b.capacity, Some(2));
        assert_eq!(b.name, "test");
        assert_eq!(b.queues, ["default"]);
    }
}
