//! The fault harness, built on [`crate::support`] (which owns processes, `muster serve`
//! replicas that restart in place, signals and the process table): a redis-server with
//! AOF on (fsync policy per test) that can be killed, restarted in place and paused;
//! `muster agent` processes named for the checker; a recorder of client
//! operations (ok / failed / indeterminate); a tail of the queues' event streams; and
//! the checker (lost, duplicate_accepted, duplicate_task, unexpected, doctor).

use crate::support::{Ev, Http, Proc, RedisGuard, agent_args, signal};
use muster::domain::{Task, TaskState};
use muster::store::Store;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Shrunk timers of the suite.
pub const TTL_MS: u64 = 3000;
/// One fault scenario at a time: they measure recovery times on a 2-core box.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes the suite's lock (hold it for the whole scenario).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// True when `MUSTER_FAULTS_LONG=1`: the long version of every scenario.
pub fn long() -> bool {
    std::env::var("MUSTER_FAULTS_LONG").is_ok_and(|v| v == "1" || v == "true")
}

/// Wall clock in ms (the same clock as Redis stream ids on this box).
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------------

/// A redis-server with AOF on that can be killed, restarted in its data dir and paused.
pub struct FaultRedis {
    guard: Option<RedisGuard>,
    dir: Option<tempfile::TempDir>,
    /// Its port (kept across restarts).
    pub port: u16,
    args: Vec<String>,
    paused: bool,
}

impl FaultRedis {
    /// `appendonly yes`, `appendfsync <fsync>`, no RDB snapshots.
    pub fn start(fsync: &str) -> FaultRedis {
        let args: Vec<String> = ["--save", "", "--appendonly", "yes", "--appendfsync", fsync]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let guard = RedisGuard::start_with(&a);
        FaultRedis {
            port: guard.port,
            guard: Some(guard),
            dir: None,
            args,
            paused: false,
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's pid (panics while it is down).
    pub fn pid(&self) -> u32 {
        self.guard.as_ref().expect("redis is up").pid()
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let g = self.guard.take().expect("redis is up");
        let (dir, _) = g.kill();
        self.dir = Some(dir);
    }

    /// Starts it again on the same port and data dir; returns once it answers PING
    /// (that is, once the AOF is loaded).
    pub fn restart(&mut self) {
        let dir = self.dir.take().expect("redis is down");
        let a: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.guard = Some(RedisGuard::start_in(dir, self.port, &a));
    }

    /// SIGSTOP.
    pub fn pause(&mut self) {
        signal("STOP", &self.pid().to_string());
        self.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        signal("CONT", &self.pid().to_string());
        self.paused = false;
    }

    /// A blocking connection.
    pub fn conn(&self) -> redis::Connection {
        self.guard.as_ref().expect("redis is up").conn()
    }
}

impl Drop for FaultRedis {
    fn drop(&mut self) {
        if self.paused
            && let Some(g) = &self.guard
        {
            signal("CONT", &g.pid().to_string());
        }
    }
}

/// Starts `muster agent` with the admin token against `servers`; `extra` e.g.
/// `["--builtin", "--capacity", "4"]`. `debug` logs the agent at debug level (report
/// outcomes are logged there).
pub fn agent(name: &str, servers: &[&str], extra: &[&str], debug: bool) -> Proc {
    let mut args = agent_args(servers, extra);
    args.splice(1..1, ["--name".to_string(), name.to_string()]);
    Proc::spawn_logged(
        &format!("agent {name}"),
        &args,
        if debug {
            "info,muster::agent=debug"
        } else {
            "info"
        },
    )
}

/// Waits until nodes named `names` are registered and active; name → node id.
pub async fn node_ids(api: &Http, names: &[String], timeout: Duration) -> HashMap<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = api.get("/v1/nodes").await;
        if r.status == 200 {
            let nodes = r.json::<muster::domain::NodeList>().items;
            let m: HashMap<String, String> = nodes
                .iter()
                .filter(|n| {
                    n.status == muster::domain::NodeStatus::Active && names.contains(&n.name)
                })
                .map(|n| (n.name.clone(), n.id.clone()))
                .collect();
            if m.len() == names.len() {
                return m;
            }
        }
        assert!(
            Instant::now() < deadline,
            "agents {names:?} not all registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------
// recorder
// ---------------------------------------------------------------------------------

/// How one client operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx, with the task id.
    Ok(String),
    /// A definitive refusal (4xx).
    Failed(u16),
    /// No definitive answer: a connection error without a response, a timeout, or a
    /// 5xx (a Redis command that timed out may still run once Redis wakes up).
    Indeterminate(String),
}

/// One recorded operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// Logical submission (its Idempotency-Key).
    pub key: String,
    /// The server asked.
    pub server: String,
    /// The outcome.
    pub outcome: Outcome,
    /// HTTP status if any.
    pub status: Option<u16>,
    /// The `Retry-After` header was present.
    pub retry_after: bool,
    /// Time to the answer (or the error).
    pub took: Duration,
    /// Wall clock at the start (ms).
    pub at_ms: i64,
}

/// Logs every client operation.
#[derive(Clone, Default)]
pub struct Recorder {
    ops: Arc<Mutex<Vec<Op>>>,
    /// Logical submissions: key → the id of the acknowledged task (None: never acked).
    subs: Arc<Mutex<BTreeMap<String, Option<String>>>>,
}

impl Recorder {
    /// A new, empty recorder.
    pub fn new() -> Recorder {
        Recorder::default()
    }

    fn push(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }

    /// Every operation so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap().clone()
    }

    /// Logical submissions: key → acked id.
    pub fn subs(&self) -> BTreeMap<String, Option<String>> {
        self.subs.lock().unwrap().clone()
    }

    /// One `POST /v1/tasks` with an Idempotency-Key, recorded.
    pub async fn submit_once(&self, http: &Http, key: &str, body: &Value, timeout: Duration) -> Op {
        self.subs
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_insert(None);
        let started = Instant::now();
        let at_ms = wall_ms();
        let rb = http
            .req(reqwest::Method::POST, "/v1/tasks")
            .header("Idempotency-Key", key)
            .json(body)
            .timeout(timeout);
        let op = match rb.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r.headers().contains_key("retry-after");
                let text = r.text().await;
                let outcome = match (status, text) {
                    (200..=299, Ok(t)) => match serde_json::from_str::<Task>(&t) {
                        Ok(task) => Outcome::Ok(task.id),
                        Err(e) => Outcome::Indeterminate(format!("2xx with a bad body: {e}")),
                    },
                    (200..=299, Err(e)) => Outcome::Indeterminate(format!("2xx body lost: {e}")),
                    (400..=499, _) => Outcome::Failed(status),
                    (s, _) => Outcome::Indeterminate(format!("status {s}")),
                };
                Op {
                    key: key.into(),
                    server: http.base.clone(),
                    outcome,
                    status: Some(status),
                    retry_after,
                    took: started.elapsed(),
                    at_ms,
                }
            }
            Err(e) => Op {
                key: key.into(),
                server: http.base.clone(),
                outcome: Outcome::Indeterminate(e.to_string()),
                status: None,
                retry_after: false,
                took: started.elapsed(),
                at_ms,
            },
        };
        if let Outcome::Ok(id) = &op.outcome {
            let mut subs = self.subs.lock().unwrap();
            let e = subs.get_mut(key).unwrap();
            if e.is_none() {
                *e = Some(id.clone());
            }
        }
        self.push(op.clone());
        op
    }

    /// Submits under `key`, retrying indeterminate outcomes round-robin over `servers`
    /// until a definitive answer or `give_up`; the acked id.
    pub async fn submit_until_answered(
        &self,
        servers: &[Http],
        key: &str,
        body: &Value,
        give_up: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + give_up;
        let mut i = rand::random_range(0..servers.len());
        loop {
            let op = self
                .submit_once(
                    &servers[i % servers.len()],
                    key,
                    body,
                    Duration::from_secs(5),
                )
                .await;
            match op.outcome {
                Outcome::Ok(id) => return Some(id),
                Outcome::Failed(_) => return None,
                Outcome::Indeterminate(_) => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Counts of (ok, failed, indeterminate) operations.
    pub fn counts(&self) -> (usize, usize, usize) {
        let ops = self.ops.lock().unwrap();
        let ok = ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Ok(_)))
            .count();
        let failed = ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Failed(_)))
            .count();
        (ok, failed, ops.len() - ok - failed)
    }
}

/// Events per task, in order.
pub fn by_task(events: &[Ev]) -> HashMap<String, Vec<Ev>> {
    let mut m: HashMap<String, Vec<Ev>> = HashMap::new();
    for e in events {
        m.entry(e.task.clone()).or_default().push(e.clone());
    }
    m
}

// ---------------------------------------------------------------------------------
// checker
// ---------------------------------------------------------------------------------

/// Every task of `queue` (all states), via the store.
pub async fn all_tasks(store: &Store, queue: &str) -> Vec<Task> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut tries = 0;
        let page = loop {
            match store
                .page(Some(queue), None, None, 1000, cursor.as_deref())
                .await
            {
                Ok(p) => break p,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 50, "cannot list tasks: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    // Listing walks state by state: a task moving meanwhile may show twice.
    let mut seen = HashSet::new();
    out.retain(|t| seen.insert(t.id.clone()));
    out
}

/// Waits until `queue` has no open task and holds at least `min_tasks` tasks; the
/// time it took, or None after `timeout`.
pub async fn drain(
    store: &Store,
    queue: &str,
    min_tasks: i64,
    timeout: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if let Ok(info) = store.queue_info(queue).await {
            let c = info.counts;
            let open = c.pending + c.assigned + c.running + c.retrying + c.scheduled + c.blocked;
            let done = c.succeeded + c.failed + c.cancelled;
            if open == 0 && done >= min_tasks {
                return Some(started.elapsed());
            }
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the checker found.
#[derive(Debug, Default, Clone)]
pub struct Check {
    /// Logical submissions.
    pub submissions: usize,
    /// Acknowledged (2xx) logical submissions.
    pub acked: usize,
    /// Tasks stored.
    pub tasks: usize,
    /// Acknowledged submissions not terminal (or missing) after the drain.
    pub lost: Vec<String>,
    /// Tasks with more than one accepted completion (`task.succeeded` events).
    pub duplicate_accepted: Vec<String>,
    /// Keys with more than one task (or 2xx answers naming different ids).
    pub duplicate_task: Vec<String>,
    /// Tasks nobody submitted.
    pub unexpected: Vec<String>,
    /// Tasks of never-acked (indeterminate) submissions that exist.
    pub indeterminate_present: usize,
    /// Most executions (`task.running` events) of one task.
    pub max_executions: usize,
    /// Tasks executed more than once.
    pub re_executed: usize,
    /// Succeeded tasks without any `task.succeeded` event.
    pub succeeded_without_event: Vec<String>,
}

impl Check {
    /// The gate: nothing lost, duplicated or unexpected.
    #[track_caller]
    pub fn assert_clean(&self, what: &str) {
        assert!(self.lost.is_empty(), "{what}: lost {:?}", self.lost);
        assert!(
            self.duplicate_accepted.is_empty(),
            "{what}: duplicate_accepted {:?}",
            self.duplicate_accepted
        );
        assert!(
            self.duplicate_task.is_empty(),
            "{what}: duplicate_task {:?}",
            self.duplicate_task
        );
        assert!(
            self.unexpected.is_empty(),
            "{what}: unexpected {:?}",
            self.unexpected
        );
    }

    /// One line of figures.
    pub fn line(&self) -> String {
        format!(
            "submissions={} acked={} tasks={} lost={} duplicate_accepted={} duplicate_task={} unexpected={} \
             indeterminate_present={} re_executed={} max_executions={}",
            self.submissions,
            self.acked,
            self.tasks,
            self.lost.len(),
            self.duplicate_accepted.len(),
            self.duplicate_task.len(),
            self.unexpected.len(),
            self.indeterminate_present,
            self.re_executed,
            self.max_executions
        )
    }
}

/// Checks `queue` against the recorder (tasks carry their key as `payload.key`) and
/// the event tail.
pub async fn check(store: &Store, queue: &str, rec: &Recorder, events: &[Ev]) -> Check {
    let subs = rec.subs();
    let tasks = all_tasks(store, queue).await;
    let mut c = Check {
        submissions: subs.len(),
        tasks: tasks.len(),
        ..Check::default()
    };
    let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    for t in &tasks {
        match t.payload.get("key").and_then(Value::as_str) {
            Some(k) if subs.contains_key(k) => {
                by_key.entry(k.to_string()).or_default().push(t.id.clone())
            }
            _ => c.unexpected.push(t.id.clone()),
        }
    }
    // Ids acknowledged per key across every 2xx answer.
    let mut acked_ids: HashMap<String, HashSet<String>> = HashMap::new();
    for op in rec.ops() {
        if let Outcome::Ok(id) = op.outcome {
            acked_ids.entry(op.key).or_default().insert(id);
        }
    }
    for (key, acked) in &subs {
        let ids = by_key.get(key).cloned().unwrap_or_default();
        let answers = acked_ids.get(key).map(HashSet::len).unwrap_or(0);
        if ids.len() > 1 || answers > 1 {
            c.duplicate_task.push(key.clone());
        }
        match acked {
            Some(id) => {
                c.acked += 1;
                match by_id.get(id.as_str()) {
                    Some(t) if t.state.is_terminal() => {}
                    _ => c.lost.push(id.clone()),
                }
            }
            None => c.indeterminate_present += ids.len().min(1),
        }
    }
    let evs = by_task(events);
    for t in &tasks {
        let e = evs.get(&t.id).map(Vec::as_slice).unwrap_or(&[]);
        let succeeded = e.iter().filter(|x| x.typ == "task.succeeded").count();
        if succeeded > 1 {
            c.duplicate_accepted.push(t.id.clone());
        }
        if t.state == TaskState::Succeeded && succeeded == 0 {
            c.succeeded_without_event.push(t.id.clone());
        }
        let runs = e.iter().filter(|x| x.typ == "task.running").count();
        c.max_executions = c.max_executions.max(runs);
        if runs > 1 {
            c.re_executed += 1;
        }
    }
    c
}

/// A task body for the builtin `echo` carrying its key.
pub fn echo_task(queue: &str, key: &str) -> Value {
    json!({
        "kind": "echo",
        "queue": queue,
        "payload": { "key": key },
        "timeout_ms": TTL_MS,
        "max_attempts": 10,
        "backoff": { "initial_ms": 100, "max_ms": 200 },
    })
}

/// Percentile helper (nearest rank) of durations in ms.
pub fn pct(mut v: Vec<u128>, p: f64) -> u128 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((p / 100.0) * (v.len() as f64 - 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The pids a handler wrote to `path` (one a line).
pub fn pids_in(path: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
