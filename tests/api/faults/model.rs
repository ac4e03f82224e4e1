//! R8: seeded random schedules against real Redis through the `Store` API: submit /
//! dispatch / lease / extend / complete / fail (fresh, stale, forged or foreign token) /
//! cancel / promote / advance time / expire / Redis restart (`kill -9`, AOF `always`).
//! After every step: one live lease per task at most (every older token is refused),
//! fences strictly increasing (fence = leases handed out), terminal states absorbing,
//! at most one accepted completion, every task terminal once its attempts are used up,
//! nothing lost across a restart; `doctor` clean. A failure prints the seed of the
//! schedule: `MUSTER_R8_SEED=<seed>` replays it alone.

use super::harness::*;
use crate::support::*;
use muster::domain::{Backoff, Task, TaskState};
use muster::store::{Cancelled, PreparedTask, Store, StoreError};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use redis::AsyncCommands;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const QUEUE: &str = "r8";
const NODES: [&str; 2] = ["node-a", "node-b"];

/// What the model remembers of one task.
#[derive(Debug, Default, Clone)]
struct M {
    id: String,
    /// Every lease handed out: (fence, token, node).
    leases: Vec<(i64, String, String)>,
    /// Accepted (first, not repeated) completions.
    accepted: usize,
    /// The first terminal view seen.
    terminal: Option<Task>,
}

#[derive(Debug, Default)]
struct Stats {
    steps: usize,
    ops: BTreeMap<&'static str, usize>,
    restarts: usize,
    stale_refused: usize,
    leases: usize,
    accepted: usize,
    expired: usize,
    t_restart: Duration,
    t_invariants: Duration,
    t_setup: Duration,
}

struct World {
    redis: FaultRedis,
    store: Store,
    rng: StdRng,
    tasks: Vec<M>,
    seed: u64,
    log: Vec<String>,
    stats: Stats,
}

fn fail_msg(w: &World, what: String) -> String {
    let tail: Vec<&String> = w
        .log
        .iter()
        .rev()
        .take(25)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!(
        "R8 invariant violated (replay: MUSTER_R8_SEED={}): {what}\nlast steps:\n{tail:#?}",
        w.seed
    )
}

macro_rules! ensure {
    ($w:expr, $cond:expr, $($fmt:tt)*) => {
        if !$cond {
            panic!("{}", fail_msg($w, format!($($fmt)*)));
        }
    };
}

fn prepared(rng: &mut StdRng) -> PreparedTask {
    let short = rng.random_bool(0.5);
    PreparedTask {
        id: muster::domain::validate::new_task_id(QUEUE),
        queue: QUEUE.into(),
        kind: "model".into(),
        payload: "{}".into(),
        priority: rng.random_range(0..10),
        run_at_ms: None,
        delay_ms: None,
        max_attempts: rng.random_range(1..=3),
        // Short leases expire between steps; long ones only when time is advanced far.
        timeout_ms: if short { 10 } else { 60_000 },
        max_run_ms: None,
        backoff: Backoff {
            initial_ms: 2,
            max_ms: 4,
        },
        requires: vec![],
        retention_ms: 3_600_000,
        ..Default::default()
    }
}

impl World {
    async fn read(&self, id: &str) -> Task {
        retry(|| self.store.task(id)).await
    }

    async fn read_all(&self) -> Vec<Task> {
        let ids: Vec<String> = self.tasks.iter().map(|t| t.id.clone()).collect();
        retry(|| self.store.tasks(QUEUE, &ids)).await
    }

    fn pick(&mut self) -> Option<usize> {
        (!self.tasks.is_empty()).then(|| self.rng.random_range(0..self.tasks.len()))
    }

    /// A token for task `i`: (token, node to present, expected "is the current lease").
    fn token(
        &mut self,
        i: usize,
        cur_fence: i64,
    ) -> Option<(String, Option<String>, &'static str)> {
        let leases = self.tasks[i].leases.clone();
        if leases.is_empty() {
            return None;
        }
        let roll = self.rng.random_range(0..10);
        let (fence, token, node) = if roll < 6 {
            leases.last().cloned().unwrap()
        } else {
            leases[self.rng.random_range(0..leases.len())].clone()
        };
        let mut kind = if fence == cur_fence {
            "current"
        } else {
            "stale"
        };
        let mut token = token;
        let mut as_node = if self.rng.random_bool(0.3) {
            None
        } else {
            Some(node.clone())
        };
        match self.rng.random_range(0..12) {
            0 => {
                // Forged: the current fence with another nonce.
                token = format!("{cur_fence}.{}", "ab".repeat(12));
                kind = "forged";
            }
            1 => {
                as_node = Some(NODES.iter().find(|n| **n != node).unwrap().to_string());
                if kind == "current" {
                    kind = "foreign";
                }
            }
            _ => {}
        }
        Some((token, as_node, kind))
    }

    async fn step(&mut self) {
        self.stats.steps += 1;
        let roll = self.rng.random_range(0..100);
        match roll {
            0..=9 => self.submit().await,
            10..=17 => {
                let n = retry(|| self.store.promote(QUEUE, 100)).await;
                self.note("promote", format!("promoted {n}"));
            }
            18..=25 => {
                let node = NODES[self.rng.random_range(0..2)];
                let budget = self.rng.random_range(1..4);
                let nodes = [(node.to_string(), budget, String::new())];
                let r = retry(|| self.store.dispatch(QUEUE, &nodes, 4, 100)).await;
                self.note("dispatch", format!("{node} budget {budget}: {r:?}"));
            }
            26..=41 => self.lease().await,
            42..=51 => self.extend().await,
            52..=65 => self.complete().await,
            66..=75 => self.fail().await,
            76..=80 => self.cancel().await,
            81..=89 => {
                let ms = if self.rng.random_bool(0.8) { 12 } else { 3 };
                tokio::time::sleep(Duration::from_millis(ms)).await;
                self.note("advance", format!("{ms} ms"));
            }
            90..=97 => self.expire().await,
            _ => {
                if self.rng.random_bool(0.5) {
                    self.restart().await
                } else {
                    self.submit().await
                }
            }
        }
    }

    fn note(&mut self, op: &'static str, what: String) {
        *self.stats.ops.entry(op).or_default() += 1;
        self.log.push(format!("{op}: {what}"));
    }

    async fn submit(&mut self) {
        if self.tasks.len() >= 6 {
            return;
        }
        let n = self.rng.random_range(1..=2).min(6 - self.tasks.len());
        let ts: Vec<PreparedTask> = (0..n).map(|_| prepared(&mut self.rng)).collect();
        let r = retry(|| self.store.submit(&ts, None, 60_000)).await;
        ensure!(
            self,
            matches!(r, muster::store::Submitted::Created { .. }),
            "submit: {r:?}"
        );
        for t in &ts {
            self.tasks.push(M {
                id: t.id.clone(),
                ..M::default()
            });
        }
        let d: Vec<String> = ts
            .iter()
            .map(|t| {
                format!(
                    "{} max_attempts={} ttl={}",
                    t.id, t.max_attempts, t.timeout_ms
                )
            })
            .collect();
        self.note("submit", d.join(", "));
    }

    async fn lease(&mut self) {
        let node = NODES[self.rng.random_range(0..2)];
        let max = self.rng.random_range(1..=3);
        let pull = self.rng.random_bool(0.5);
        let before: HashMap<String, Task> = self
            .read_all()
            .await
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        let got = retry(|| self.store.lease(QUEUE, node, max, pull, "")).await;
        let ids: Vec<String> = got
            .iter()
            .map(|l| format!("{} fence {}", l.task.id, l.task.fence))
            .collect();
        self.note("lease", format!("{node} max {max} pull {pull}: {ids:?}"));
        for l in got {
            let i = self.tasks.iter().position(|m| m.id == l.task.id);
            ensure!(
                self,
                i.is_some(),
                "lease handed out a task nobody submitted: {}",
                l.task.id
            );
            let i = i.unwrap();
            let b = &before[&l.task.id];
            ensure!(
                self,
                b.state == TaskState::Pending
                    || (b.state == TaskState::Assigned && b.node.as_deref() == Some(node)),
                "lease of {} which was {:?} (node {:?})",
                b.id,
                b.state,
                b.node
            );
            ensure!(
                self,
                self.tasks[i].terminal.is_none(),
                "lease of a terminal task {}",
                b.id
            );
            let prev = self.tasks[i].leases.last().map(|x| x.0).unwrap_or(0);
            ensure!(
                self,
                l.task.fence == prev + 1 && l.task.fence == b.fence + 1,
                "fence {} after {prev}",
                l.task.fence
            );
            ensure!(
                self,
                l.token.starts_with(&format!("{}.", l.task.fence)),
                "token {} for fence {}",
                l.token,
                l.task.fence
            );
            self.tasks[i]
                .leases
                .push((l.task.fence, l.token.clone(), node.to_string()));
            self.stats.leases += 1;
        }
    }

    async fn extend(&mut self) {
        let Some(i) = self.pick() else { return };
        let cur = self.read(&self.tasks[i].id.clone()).await;
        let Some((token, node, kind)) = self.token(i, cur.fence) else {
            return;
        };
        let id = cur.id.clone();
        let before = retry_op(|| self.store.now_ms()).await.unwrap_or(i64::MIN);
        let r = retry_op(|| self.store.extend(&id, node.as_deref(), &token, None)).await;
        let after = retry_op(|| self.store.now_ms()).await.unwrap_or(i64::MAX);
        self.note(
            "extend",
            format!(
                "{id} {kind} token {token} as {node:?} while {:?}: {r:?}",
                cur.state
            ),
        );
        // A lease past its deadline is over even before the timers expire it: the
        // current token must be accepted while the deadline is ahead, refused once it
        // passed; within the call's own duration either answer is right.
        let expires = cur
            .lease_expires_at
            .as_deref()
            .and_then(muster::domain::parse_rfc3339_ms)
            .unwrap_or(i64::MIN);
        let current = cur.state == TaskState::Running && kind == "current";
        let live = current && expires >= after;
        let dead = !current || expires < before;
        match r {
            Ok(_) => ensure!(
                self,
                !dead,
                "extend accepted a {kind} token while {:?} (deadline {expires}, now {before})",
                cur.state
            ),
            Err(StoreError::LeaseConflict { .. }) => {
                ensure!(self, !live, "extend refused the current lease");
                self.stats.stale_refused += 1;
                let after = self.read(&id).await;
                ensure!(self, after == cur, "a refused extend changed the task");
            }
            Err(e) => ensure!(self, false, "extend: {e}"),
        }
    }

    async fn complete(&mut self) {
        let Some(i) = self.pick() else { return };
        let cur = self.read(&self.tasks[i].id.clone()).await;
        let Some((token, node, kind)) = self.token(i, cur.fence) else {
            return;
        };
        let id = cur.id.clone();
        let result = format!("{{\"by_fence\": \"{token}\"}}");
        let r = retry_op(|| self.store.complete(&id, node.as_deref(), &token, &result)).await;
        self.note(
            "complete",
            format!(
                "{id} {kind} token {token} as {node:?} while {:?}: {r:?}",
                cur.state
            ),
        );
        let after = self.read(&id).await;
        let completed = cur.state == TaskState::Succeeded
            || (cur.state == TaskState::Cancelled && cur.result.is_some());
        match r {
            Ok(rep) if rep.run_ms.is_some() => {
                ensure!(
                    self,
                    cur.state == TaskState::Running && kind == "current",
                    "complete accepted a {kind} token while {:?}",
                    cur.state
                );
                let want = if cur.cancel_requested {
                    TaskState::Cancelled
                } else {
                    TaskState::Succeeded
                };
                ensure!(
                    self,
                    rep.state == want && after.state == want,
                    "complete ended {:?} / {:?}, want {want:?}",
                    rep.state,
                    after.state
                );
                self.tasks[i].accepted += 1;
                self.stats.accepted += 1;
                ensure!(
                    self,
                    self.tasks[i].accepted == 1,
                    "a second accepted completion for {id}"
                );
            }
            Ok(rep) => {
                // A repeat of the accepted completion: same answer, nothing written.
                ensure!(
                    self,
                    completed && kind == "current",
                    "a repeat answer for a {kind} token while {:?}",
                    cur.state
                );
                ensure!(
                    self,
                    rep.state == cur.state && after == cur,
                    "a repeated completion changed the task"
                );
            }
            Err(StoreError::LeaseConflict { .. }) => {
                ensure!(
                    self,
                    !(kind == "current" && (cur.state == TaskState::Running || completed)),
                    "complete refused the current lease while {:?}",
                    cur.state
                );
                self.stats.stale_refused += 1;
                ensure!(self, after == cur, "a refused completion changed the task");
            }
            Err(e) => ensure!(self, false, "complete: {e}"),
        }
    }

    async fn fail(&mut self) {
        let Some(i) = self.pick() else { return };
        let cur = self.read(&self.tasks[i].id.clone()).await;
        let Some((token, node, kind)) = self.token(i, cur.fence) else {
            return;
        };
        let id = cur.id.clone();
        let retryable = self.rng.random_bool(0.7);
        let r = retry_op(|| {
            self.store
                .fail(&id, node.as_deref(), &token, "model failure", retryable)
        })
        .await;
        self.note(
            "fail",
            format!(
                "{id} {kind} token {token} retryable {retryable} while {:?}: {r:?}",
                cur.state
            ),
        );
        let after = self.read(&id).await;
        match r {
            Ok(rep) if rep.run_ms.is_some() => {
                ensure!(
                    self,
                    cur.state == TaskState::Running && kind == "current",
                    "fail accepted a {kind} token while {:?}",
                    cur.state
                );
                let want = if cur.cancel_requested {
                    TaskState::Cancelled
                } else if retryable && cur.attempts < cur.max_attempts {
                    TaskState::Retrying
                } else {
                    TaskState::Failed
                };
                ensure!(
                    self,
                    rep.state == want && after.state == want,
                    "fail ended {:?} / {:?}, want {want:?}",
                    rep.state,
                    after.state
                );
            }
            Ok(rep) => {
                ensure!(
                    self,
                    kind == "current"
                        && matches!(
                            cur.state,
                            TaskState::Retrying | TaskState::Failed | TaskState::Cancelled
                        ),
                    "a repeat answer to fail for a {kind} token while {:?}",
                    cur.state
                );
                ensure!(
                    self,
                    rep.state == cur.state && after == cur,
                    "a repeated fail changed the task"
                );
            }
            Err(StoreError::LeaseConflict { .. }) => {
                ensure!(
                    self,
                    !(kind == "current" && cur.state == TaskState::Running),
                    "fail refused the current lease"
                );
                self.stats.stale_refused += 1;
                ensure!(self, after == cur, "a refused fail changed the task");
            }
            Err(e) => ensure!(self, false, "fail: {e}"),
        }
    }

    async fn cancel(&mut self) {
        let Some(i) = self.pick() else { return };
        let id = self.tasks[i].id.clone();
        let cur = self.read(&id).await;
        let r = retry_op(|| self.store.cancel(&id)).await;
        self.note("cancel", format!("{id} while {:?}: {r:?}", cur.state));
        let after = self.read(&id).await;
        match (cur.state, &r) {
            (
                TaskState::Succeeded | TaskState::Failed,
                Err(StoreError::IllegalTransition { .. }),
            ) => {
                ensure!(self, after == cur, "a refused cancel changed the task")
            }
            (TaskState::Cancelled, Ok(Cancelled::Done)) => {
                ensure!(self, after == cur, "cancel of a cancelled task changed it")
            }
            (TaskState::Running, Ok(Cancelled::Requested)) => {
                ensure!(
                    self,
                    after.state == TaskState::Running && after.cancel_requested,
                    "cancel request not recorded"
                )
            }
            (s, Ok(Cancelled::Done)) if !s.is_terminal() && s != TaskState::Running => {
                ensure!(
                    self,
                    after.state == TaskState::Cancelled,
                    "cancel left {:?}",
                    after.state
                )
            }
            (s, r) => ensure!(self, false, "cancel while {s:?} answered {r:?}"),
        }
    }

    async fn expire(&mut self) {
        let before: HashMap<String, Task> = self
            .read_all()
            .await
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        let out = retry(|| self.store.expire(QUEUE, 100)).await;
        let now = retry(|| self.store.now_ms()).await;
        self.note("expire", format!("{out:?}"));
        for (id, node, state) in &out {
            let b = before.get(id);
            ensure!(self, b.is_some(), "expire of an unknown task {id}");
            let b = b.unwrap();
            ensure!(
                self,
                b.state == TaskState::Running,
                "expire of {id} which was {:?}",
                b.state
            );
            let deadline = b
                .lease_expires_at
                .as_deref()
                .and_then(muster::domain::parse_rfc3339_ms)
                .unwrap_or(i64::MAX);
            ensure!(
                self,
                deadline <= now,
                "expire of {id} before its deadline ({deadline} > {now})"
            );
            ensure!(
                self,
                b.node.as_deref() == Some(node.as_str()),
                "expire reported node {node} for {:?}",
                b.node
            );
            let want = if b.cancel_requested {
                "cancelled"
            } else if b.attempts < b.max_attempts {
                "retrying"
            } else {
                "failed"
            };
            ensure!(
                self,
                state == want,
                "expired {id} became {state}, want {want}"
            );
            self.stats.expired += 1;
        }
    }

    async fn restart(&mut self) {
        let t0 = Instant::now();
        let before = snapshot(&self.redis).await;
        self.redis.kill9();
        self.redis.restart();
        // The store reconnects by itself.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.store.ping().await.is_err() {
            ensure!(
                self,
                Instant::now() < deadline,
                "the store did not reconnect after a redis restart"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let after = snapshot(&self.redis).await;
        self.stats.restarts += 1;
        self.stats.t_restart += t0.elapsed();
        self.note("restart", format!("{} keys", before.len()));
        if before != after {
            let diff: Vec<&String> = before
                .keys()
                .chain(after.keys())
                .filter(|k| before.get(*k) != after.get(*k))
                .collect();
            ensure!(
                self,
                false,
                "a redis restart (AOF always) changed keys {diff:?}"
            );
        }
    }

    /// The invariants that hold after every step.
    async fn invariants(&mut self, doctor: bool) {
        let tasks = self.read_all().await;
        ensure!(
            self,
            tasks.len() == self.tasks.len(),
            "lost a task: {} of {}",
            tasks.len(),
            self.tasks.len()
        );
        for t in tasks {
            let i = self.tasks.iter().position(|m| m.id == t.id).unwrap();
            let m = self.tasks[i].clone();
            ensure!(
                self,
                t.fence == m.leases.len() as i64,
                "{}: fence {} but {} leases handed out",
                t.id,
                t.fence,
                m.leases.len()
            );
            ensure!(
                self,
                t.attempts == t.fence,
                "{}: attempts {} != fence {}",
                t.id,
                t.attempts,
                t.fence
            );
            ensure!(
                self,
                t.attempts <= t.max_attempts,
                "{}: attempts {} > max {}",
                t.id,
                t.attempts,
                t.max_attempts
            );
            let open = matches!(
                t.state,
                TaskState::Pending
                    | TaskState::Assigned
                    | TaskState::Retrying
                    | TaskState::Scheduled
            );
            ensure!(
                self,
                !(open && t.attempts >= t.max_attempts),
                "{}: {:?} with all {} attempts used",
                t.id,
                t.state,
                t.attempts
            );
            ensure!(
                self,
                m.accepted <= 1,
                "{}: {} accepted completions",
                t.id,
                m.accepted
            );
            if m.accepted == 1 {
                ensure!(
                    self,
                    matches!(t.state, TaskState::Succeeded | TaskState::Cancelled),
                    "{}: completed but {:?}",
                    t.id,
                    t.state
                );
            }
            if t.state == TaskState::Succeeded {
                ensure!(
                    self,
                    m.accepted == 1,
                    "{}: succeeded without an accepted completion",
                    t.id
                );
            }
            match &m.terminal {
                Some(first) => ensure!(
                    self,
                    &t == first,
                    "{}: terminal state not absorbing: {first:?} then {t:?}",
                    t.id
                ),
                None if t.state.is_terminal() => self.tasks[i].terminal = Some(t.clone()),
                None => {}
            }
            // At most one live lease: every older token is refused (no write on refusal).
            let live: Vec<&(i64, String, String)> =
                m.leases.iter().filter(|l| l.0 != t.fence).collect();
            for (fence, token, node) in live {
                let r = retry_op(|| self.store.extend(&t.id, Some(node), token, None)).await;
                ensure!(
                    self,
                    matches!(r, Err(StoreError::LeaseConflict { .. })),
                    "{}: the old lease (fence {fence}) is still live next to fence {}: {r:?}",
                    t.id,
                    t.fence
                );
            }
        }
        if doctor {
            let report = retry(|| self.store.doctor()).await;
            ensure!(
                self,
                report.violations.is_empty(),
                "doctor: {:#?}",
                report.violations
            );
        }
    }

    /// End of a schedule: the event stream holds one `task.succeeded` per succeeded task.
    async fn final_checks(&mut self) {
        self.invariants(true).await;
        let mut c = self.store.conn();
        let key = format!("{}:{{{QUEUE}}}:events", self.store.keys.ns());
        let reply: redis::streams::StreamRangeReply = c.xrange_all(&key).await.expect("xrange");
        let mut succeeded: HashMap<String, usize> = HashMap::new();
        for e in &reply.ids {
            for (typ, task, _) in crate::support::event_fields(e, QUEUE) {
                if typ == "task.succeeded" {
                    *succeeded.entry(task).or_default() += 1;
                }
            }
        }
        for t in self.read_all().await {
            let n = succeeded.get(&t.id).copied().unwrap_or(0);
            let want = usize::from(t.state == TaskState::Succeeded);
            ensure!(
                self,
                n == want,
                "{}: {n} task.succeeded events, state {:?}",
                t.id,
                t.state
            );
        }
    }
}

/// Retries a store call across a Redis restart (connection errors only).
async fn retry<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut n = 0;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(StoreError::Unavailable(e)) if n < 100 => {
                n += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("store call failed: {e}"),
        }
    }
}

/// Like [`retry`] but hands back refusals (conflicts) to the caller.
async fn retry_op<T, F, Fut>(mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut n = 0;
    loop {
        match f().await {
            Err(StoreError::Unavailable(_)) if n < 100 => {
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Every key of the Redis with its content, for comparing across a restart.
async fn snapshot(redis: &FaultRedis) -> BTreeMap<String, String> {
    let mut c = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let keys: Vec<String> = c.keys("*").await.expect("keys");
    let mut out = BTreeMap::new();
    for k in keys {
        let t: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut c)
            .await
            .unwrap();
        let v = match t.as_str() {
            "hash" => {
                let h: BTreeMap<String, String> = c.hgetall(&k).await.unwrap();
                format!("{h:?}")
            }
            "zset" => {
                let z: Vec<(String, f64)> = c.zrange_withscores(&k, 0, -1).await.unwrap();
                format!("{z:?}")
            }
            "list" => {
                let l: Vec<String> = c.lrange(&k, 0, -1).await.unwrap();
                format!("{l:?}")
            }
            "set" => {
                let mut s: Vec<String> = c.smembers(&k).await.unwrap();
                s.sort();
                format!("{s:?}")
            }
            "string" => {
                let s: String = c.get(&k).await.unwrap();
                s
            }
            "stream" => {
                let r: redis::streams::StreamRangeReply = c.xrange_all(&k).await.unwrap();
                let ids: Vec<&String> = r.ids.iter().map(|e| &e.id).collect();
                format!("{ids:?}")
            }
            other => other.to_string(),
        };
        out.insert(k, v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r8_random_schedules_keep_one_live_lease_increasing_fences_absorbing_ends_and_one_accepted_completion()
 {
    let _serial = serial().await;
    let replay: Option<u64> = std::env::var("MUSTER_R8_SEED")
        .ok()
        .and_then(|v| v.parse().ok());
    let schedules: u64 = if replay.is_some() {
        1
    } else if long() {
        10_000
    } else {
        std::env::var("MUSTER_R8_SCHEDULES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300)
    };
    let base: u64 = std::env::var("MUSTER_FAULTS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!(
        "R8 base seed {base} (schedule k runs seed base + k; MUSTER_R8_SEED=<seed> replays one)"
    );
    let redis =
        FaultRedis::start(&std::env::var("MUSTER_R8_FSYNC").unwrap_or_else(|_| "always".into()));
    let store = store_on(&redis.url(), &unique_ns()).await;
    let mut w = World {
        redis,
        store,
        rng: StdRng::seed_from_u64(base),
        tasks: Vec::new(),
        seed: base,
        log: Vec::new(),
        stats: Stats::default(),
    };
    let started = Instant::now();
    for k in 0..schedules {
        let seed = replay.unwrap_or(base.wrapping_add(k));
        let t0 = Instant::now();
        // A fresh, empty keyspace per schedule.
        let mut c = w.redis.conn();
        let _: () = redis::cmd("FLUSHALL").query(&mut c).expect("flushall");
        w.store = store_on(&w.redis.url(), &unique_ns()).await;
        w.store.prepare().await.expect("prepare");
        w.rng = StdRng::seed_from_u64(seed);
        w.seed = seed;
        w.tasks.clear();
        w.log.clear();
        let steps = w.rng.random_range(10..40);
        w.stats.t_setup += t0.elapsed();
        for s in 0..steps {
            w.step().await;
            let t1 = Instant::now();
            w.invariants(s % 8 == 7).await;
            w.stats.t_invariants += t1.elapsed();
        }
        w.final_checks().await;
    }
    let s = &w.stats;
    eprintln!(
        "R8 figures: schedules={schedules} steps={} leases={} accepted_completions={} stale_or_forged_refused={} \
         expired={} redis_restarts={} violations=0 ops={:?} runtime={:?} (restarts {:?}, invariants {:?}, setup {:?}) base_seed={base}",
        s.steps,
        s.leases,
        s.accepted,
        s.stale_refused,
        s.expired,
        s.restarts,
        s.ops,
        started.elapsed(),
        s.t_restart,
        s.t_invariants,
        s.t_setup
    );
}
