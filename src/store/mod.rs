//! The Redis store: the key schema ([`keys`]), the transition scripts ([`scripts`]) and
//! one async method per transition. No code outside this module writes task state.

pub mod coord;
pub mod doctor;
pub mod keys;
pub mod locks;
pub mod reports;
pub mod schedules;
pub mod scripts;

use crate::domain::{
    Node, NodeKind, NodeStatus, OnDependencyFailure, QueueCounts, QueueInfo, QueueUpdate, Task,
    TaskPage, TaskState, rfc3339_ms, validate,
};
use keys::{Keys, SCHEMA_VERSION};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Value};
use scripts::Scripts;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The task or node does not exist.
    #[error("not found")]
    NotFound,
    /// The lease token is stale or belongs to another node.
    #[error("the lease is not current (task is {state})")]
    LeaseConflict {
        /// The task's state now.
        state: String,
    },
    /// The transition is not legal from the current state.
    #[error("illegal transition from {from}")]
    IllegalTransition {
        /// The task's state now.
        from: String,
    },
    /// Redis cannot be reached (down, timing out, loading).
    #[error("redis unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// Any other Redis error.
    #[error("redis error: {0}")]
    Redis(#[source] redis::RedisError),
    /// Redis answered something the scripts never return.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// The Redis instance is not fit for muster.
    #[error("{0}")]
    Unfit(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        let unavailable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
            );
        if unavailable {
            StoreError::Unavailable(e)
        } else {
            StoreError::Redis(e)
        }
    }
}

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A validated task ready to be stored (validated in [`crate::domain::spec`]).
pub use crate::domain::TaskSpec as PreparedTask;

impl PreparedTask {
    /// Optional hash fields, stored only when set (a task without them stays small).
    fn extras(&self) -> Vec<(&'static str, String)> {
        let mut x = Vec::new();
        if !self.depends_on.is_empty() {
            x.push(("deps", self.depends_on.join(",")));
            x.push(("deps_left", self.depends_on.len().to_string()));
            x.push((
                "on_dep_fail",
                self.on_dependency_failure
                    .unwrap_or(OnDependencyFailure::Fail)
                    .as_str()
                    .to_string(),
            ));
        }
        if let Some(k) = &self.unique_key {
            x.push(("unique_key", k.clone()));
            if let Some(t) = self.unique_ttl_ms {
                x.push(("unique_ttl", t.to_string()));
            }
        }
        if let Some((k, n)) = &self.concurrency {
            x.push(("ckey", k.clone()));
            x.push(("climit", n.to_string()));
        }
        if let Some(r) = &self.result_schema {
            x.push(("result_schema", r.clone()));
        }
        if let Some(b) = &self.batch {
            x.push(("batch", b.clone()));
        }
        if let Some(o) = &self.origin {
            x.push(("origin", o.clone()));
        }
        x
    }
}

/// Outcome of [`Store::submit`].
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Stored at Redis time `now_ms`.
    Created {
        /// Redis time of the submission.
        now_ms: i64,
        /// Tasks not created because a live task holds their `unique_key`: (index in
        /// the submission, the existing task's id).
        existing: Vec<(usize, String)>,
    },
    /// An earlier submission with the same idempotency key; nothing stored.
    Duplicate {
        /// Its ids.
        ids: Vec<String>,
    },
}

/// A lease handed out by [`Store::lease`].
#[derive(Debug, Clone)]
pub struct Leased {
    /// The task, running.
    pub task: Task,
    /// `<fence>.<nonce>`.
    pub token: String,
    /// Lease deadline (ms).
    pub expires_ms: i64,
}

/// Outcome of complete / fail.
#[derive(Debug, Clone, PartialEq)]
pub struct Reported {
    /// The task's state after the report.
    pub state: TaskState,
    /// Run time of the attempt (ms); `None` for a repeat.
    pub run_ms: Option<i64>,
    /// The node that held the lease; `None` for a repeat.
    pub node: Option<String>,
}

/// Outcome of [`Store::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The task is cancelled.
    Done,
    /// The task is running: its node is told at the next heartbeat.
    Requested,
}

/// Outcome of [`Store::extend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extended {
    /// New deadline (ms).
    pub expires_ms: i64,
    /// The task was cancelled meanwhile: stop it.
    pub cancel_requested: bool,
}

/// A node's stored record, with its token hash.
#[derive(Debug, Clone)]
pub struct NodeRecord {
    /// The public view.
    pub node: Node,
    /// SHA-256 (hex) of the node's token.
    pub token_sha: String,
    /// Last heartbeat, ms (Redis clock).
    pub last_seen_ms: i64,
}

/// Parsed lease token `<fence>.<nonce>`.
pub fn parse_lease_token(token: &str) -> Option<(i64, &str)> {
    let (fence, nonce) = token.split_once('.')?;
    let fence: i64 = fence.parse().ok()?;
    (fence > 0
        && !nonce.is_empty()
        && nonce.len() <= 64
        && nonce.bytes().all(|b| b.is_ascii_hexdigit()))
    .then_some((fence, nonce))
}

/// Handle on the muster keyspace of one Redis.
#[derive(Clone)]
pub struct Store {
    /// The key schema.
    pub keys: Keys,
    conn: ConnectionManager,
    /// For scripts over thousands of tasks (a 10,000-task submission): ten times the
    /// timeout, so a busy Redis does not turn a long script into a 503.
    bulk: ConnectionManager,
    client: redis::Client,
    scripts: Arc<Scripts>,
    timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("ns", &self.keys.ns())
            .finish()
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => Err(StoreError::Protocol(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

/// Decodes a script's `{code, ...}` reply.
fn coded(v: Value) -> Result<(i64, Vec<Value>)> {
    let mut a = array(v)?;
    if a.is_empty() {
        return Err(StoreError::Protocol("empty reply".into()));
    }
    let code = int(&a[0]).ok_or_else(|| StoreError::Protocol("no code".into()))?;
    a.remove(0);
    Ok((code, a))
}

fn flat_map(v: Value) -> Result<HashMap<String, String>> {
    let a = array(v)?;
    let mut m = HashMap::with_capacity(a.len() / 2);
    let mut it = a.iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let (Some(k), Some(v)) = (text(k), text(v)) {
            m.insert(k, v);
        }
    }
    Ok(m)
}

fn state_of(code_state: Option<&Value>) -> String {
    code_state.and_then(text).unwrap_or_default()
}

/// Builds a [`Task`] from its hash; `None` when the hash is empty or malformed.
pub fn task_from_hash(queue: &str, h: &HashMap<String, String>) -> Option<Task> {
    let get = |k: &str| h.get(k).filter(|v| !v.is_empty());
    let num = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
    let json = |k: &str| {
        get(k).map(|v| serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone())))
    };
    let ts = |k: &str| num(k).map(rfc3339_ms);
    let state = TaskState::parse(get("state")?)?;
    Some(Task {
        id: get("id")?.clone(),
        queue: queue.to_string(),
        kind: get("kind")?.clone(),
        payload: json("payload").unwrap_or(serde_json::Value::Null),
        priority: num("priority").unwrap_or(0),
        state,
        attempts: num("attempts").unwrap_or(0),
        max_attempts: num("max_attempts").unwrap_or(1),
        timeout_ms: num("timeout_ms").unwrap_or(30_000),
        max_run_ms: num("max_run_ms"),
        requires: get("requires")
            .map(|r| r.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        node: get("node").cloned(),
        result: json("result"),
        error: get("error").cloned(),
        progress: json("progress"),
        fence: num("fence").unwrap_or(0),
        created_at: ts("created_at").unwrap_or_default(),
        run_at: ts("run_at"),
        started_at: ts("started_at"),
        finished_at: ts("finished_at"),
        lease_expires_at: if state == TaskState::Running {
            ts("lease_expires")
        } else {
            None
        },
        cancel_requested: get("cancel_requested").is_some_and(|v| v == "1"),
        depends_on: get("deps")
            .map(|r| r.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
        on_dependency_failure: get("on_dep_fail").and_then(|v| OnDependencyFailure::parse(v)),
        unique_key: get("unique_key").cloned(),
        concurrency_key: get("ckey").cloned(),
        concurrency_limit: num("climit"),
        batch: get("batch").cloned(),
        origin: get("origin").cloned(),
        result_schema: json("result_schema"),
    })
}

fn node_from_hash(h: &HashMap<String, String>, running: i64) -> Option<NodeRecord> {
    let get = |k: &str| h.get(k).cloned().unwrap_or_default();
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
    let list = |k: &str| -> Vec<String> {
        h.get(k)
            .filter(|v| !v.is_empty())
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    let runs = num("runs");
    Some(NodeRecord {
        node: Node {
            id: h.get("id")?.clone(),
            name: get("name"),
            kind: if get("kind") == "human" {
                NodeKind::Human
            } else {
                NodeKind::Machine
            },
            status: NodeStatus::parse(&get("status")).unwrap_or(NodeStatus::Offline),
            queues: list("queues"),
            tags: list("tags"),
            capacity: num("capacity"),
            running,
            succeeded: num("succeeded"),
            failed: num("failed"),
            mean_run_ms: (runs > 0).then(|| num("run_ms_total") as f64 / runs as f64),
            registered_at: rfc3339_ms(num("registered_at")),
            last_seen_at: rfc3339_ms(num("last_seen")),
        },
        token_sha: get("token_sha"),
        last_seen_ms: num("last_seen"),
    })
}

impl Store {
    /// Connects, with every command bounded by `timeout` (past it: [`StoreError::Unavailable`]).
    ///
    /// # Errors
    /// A bad URL or an unreachable Redis.
    pub async fn connect(url: &str, namespace: &str, timeout: Duration) -> Result<Store> {
        let client = redis::Client::open(url).map_err(StoreError::Redis)?;
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_with_config(client.clone(), cfg.clone()).await?;
        let bulk = ConnectionManager::new_with_config(
            client.clone(),
            cfg.set_response_timeout(Some(timeout * 10)),
        )
        .await?;
        Ok(Store {
            keys: Keys::new(namespace),
            conn,
            bulk,
            client,
            scripts: Arc::new(Scripts::new()),
            timeout,
        })
    }

    /// The underlying client (for pub/sub connections).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A clone of the shared multiplexed connection.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The connection for a call touching `n` tasks: the bulk one (longer timeout)
    /// past a few hundred.
    pub(crate) fn conn_for(&self, n: usize) -> ConnectionManager {
        if n > 200 {
            self.bulk.clone()
        } else {
            self.conn.clone()
        }
    }

    /// The configured command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Checks the schema version (writing it on an empty keyspace), refuses an evicting
    /// `maxmemory-policy`, loads the scripts, and reports whether persistence is on.
    ///
    /// # Errors
    /// [`StoreError::Unfit`] for an unknown schema or an evicting policy.
    pub async fn prepare(&self) -> Result<bool> {
        let mut c = self.conn();
        let key = self.keys.schema();
        let _: bool = c.set_nx(&key, SCHEMA_VERSION).await?;
        let v: Option<String> = c.get(&key).await?;
        if v.as_deref() != Some(SCHEMA_VERSION) {
            return Err(StoreError::Unfit(format!(
                "the keyspace under '{}' has schema version {:?}, this muster knows {SCHEMA_VERSION}; \
                 use another --namespace or the matching muster version",
                self.keys.ns(),
                v
            )));
        }
        let policy = self
            .config_get("maxmemory-policy")
            .await
            .unwrap_or_default();
        if policy.starts_with("allkeys") {
            return Err(StoreError::Unfit(format!(
                "redis maxmemory-policy is '{policy}': it may evict tasks; set it to noeviction \
                 (CONFIG SET maxmemory-policy noeviction)"
            )));
        }
        for s in self.scripts.all() {
            s.prepare_invoke().load_async(&mut c).await?;
        }
        let aof = self.config_get("appendonly").await.unwrap_or_default();
        let save = self.config_get("save").await.unwrap_or_default();
        Ok(aof == "yes" || !save.trim().is_empty())
    }

    async fn config_get(&self, name: &str) -> Result<String> {
        let mut c = self.conn();
        let v: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut c)
            .await?;
        Ok(v.get(1).cloned().unwrap_or_default())
    }

    /// PING.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Redis clock in ms.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn now_ms(&self) -> Result<i64> {
        let mut c = self.conn();
        let (s, us): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await?;
        Ok(s * 1000 + us / 1000)
    }

    fn channel(&self) -> String {
        self.keys.wake_channel()
    }

    // ----- tasks -----

    /// Stores tasks all or nothing (one script call). With `idem`, a repeat returns
    /// the first submission's ids and stores nothing.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn submit(
        &self,
        tasks: &[PreparedTask],
        idem: Option<&str>,
        idem_ttl_ms: i64,
    ) -> Result<Submitted> {
        let mut prefixes: Vec<String> = Vec::new();
        let mut inv = self.scripts.submit.prepare_invoke();
        let mut args: Vec<String> = Vec::with_capacity(4 + tasks.len() * 14);
        args.push(self.channel());
        args.push(
            idem.map(|k| hex::encode(sha2::Sha256::digest_str(k)))
                .unwrap_or_default(),
        );
        args.push(idem_ttl_ms.to_string());
        args.push(tasks.len().to_string());
        for t in tasks {
            let p = self.keys.queue_prefix(&t.queue);
            let idx = match prefixes.iter().position(|x| *x == p) {
                Some(i) => i + 1,
                None => {
                    prefixes.push(p);
                    prefixes.len()
                }
            };
            args.push(idx.to_string());
            args.push(t.id.clone());
            args.push(t.kind.clone());
            args.push(t.payload.clone());
            args.push(t.priority.to_string());
            args.push(t.run_at_ms.map(|v| v.to_string()).unwrap_or_default());
            args.push(t.delay_ms.map(|v| v.to_string()).unwrap_or_default());
            args.push(t.max_attempts.to_string());
            args.push(t.timeout_ms.to_string());
            args.push(t.backoff.initial_ms.to_string());
            args.push(t.backoff.max_ms.to_string());
            args.push(t.requires.join(","));
            args.push(t.retention_ms.to_string());
            args.push(t.max_run_ms.map(|v| v.to_string()).unwrap_or_default());
            let extras = t.extras();
            args.push(extras.len().to_string());
            for (k, v) in extras {
                args.push(k.to_string());
                args.push(v);
            }
        }
        if prefixes.is_empty() {
            return Err(StoreError::Protocol("empty submission".into()));
        }
        // Before the tasks exist, so timers, listings and the doctor never miss a queue
        // that holds tasks (the `queues` set has no hash tag, so the script cannot add it).
        let mut names: Vec<&str> = tasks.iter().map(|t| t.queue.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        self.add_queues(&names).await?;
        for p in &prefixes {
            inv.key(p);
        }
        inv.arg(args);
        let mut c = self.conn_for(tasks.len());
        let (code, rest) = coded(inv.invoke_async(&mut c).await?)?;
        match code {
            0 => Ok(Submitted::Created {
                now_ms: rest.first().and_then(int).unwrap_or(0),
                existing: rest
                    .get(1)
                    .and_then(text)
                    .map(|s| {
                        s.split(',')
                            .filter_map(|e| {
                                let (i, id) = e.split_once('=')?;
                                Some((i.parse::<usize>().ok()?.checked_sub(1)?, id.to_string()))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            1 => Ok(Submitted::Duplicate {
                ids: rest
                    .get(1)
                    .and_then(text)
                    .map(|s| s.split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
            }),
            c => Err(StoreError::Protocol(format!("submit returned {c}"))),
        }
    }

    /// Remembers queue names (the `queues` set) so timers and listings find them.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn add_queues(&self, names: &[&str]) -> Result<()> {
        let mut c = self.conn();
        let _: i64 = c.sadd(self.keys.queues(), names).await?;
        Ok(())
    }

    /// Every queue name, sorted.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn queues(&self) -> Result<Vec<String>> {
        let mut c = self.conn();
        let mut v: Vec<String> = c.smembers(self.keys.queues()).await?;
        v.sort();
        Ok(v)
    }

    /// One task by id.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown or malformed id.
    pub async fn task(&self, id: &str) -> Result<Task> {
        let queue = validate::task_queue(id).ok_or(StoreError::NotFound)?;
        let mut c = self.conn();
        let h: HashMap<String, String> = c.hgetall(self.keys.task(queue, id)).await?;
        task_from_hash(queue, &h).ok_or(StoreError::NotFound)
    }

    /// Several tasks of one queue (missing ones skipped), in one pipeline.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn tasks(&self, queue: &str, ids: &[String]) -> Result<Vec<Task>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(self.keys.task(queue, id));
        }
        let mut c = self.conn();
        let hs: Vec<HashMap<String, String>> = pipe.query_async(&mut c).await?;
        Ok(hs.iter().filter_map(|h| task_from_hash(queue, h)).collect())
    }

    /// A page of one queue's tasks in one state (oldest first by the state's score),
    /// optionally filtered by kind. The cursor is an offset into the state's index.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn list_tasks(
        &self,
        queue: &str,
        state: TaskState,
        kind: Option<&str>,
        limit: usize,
        cursor: usize,
    ) -> Result<(Vec<Task>, Option<usize>)> {
        let mut c = self.conn();
        let mut out = Vec::new();
        let mut pos = cursor;
        // Scan in chunks until the page is full (kind filtering may skip entries), but
        // at most SCAN_BUDGET entries per call: a filter that matches little answers a
        // short page with a cursor instead of reading a whole large index at once.
        const SCAN_BUDGET: usize = 5_000;
        loop {
            let chunk = (limit.max(1) * 2).min(1000);
            let ids: Vec<String> = if state == TaskState::Assigned {
                Vec::new()
            } else {
                c.zrange(
                    self.keys.state_index(queue, state.as_str()),
                    pos as isize,
                    (pos + chunk - 1) as isize,
                )
                .await?
            };
            let n = ids.len();
            let tasks = self.tasks(queue, &ids).await?;
            for (i, t) in tasks.into_iter().enumerate() {
                if out.len() >= limit {
                    return Ok((out, Some(pos + i)));
                }
                if t.state == state && kind.is_none_or(|k| k == t.kind) {
                    out.push(t);
                }
            }
            pos += n;
            if n < chunk {
                return Ok((out, None));
            }
            if out.len() >= limit || pos - cursor >= SCAN_BUDGET {
                return Ok((out, Some(pos)));
            }
        }
    }

    /// Tasks assigned to nodes (the inboxes of a queue), for listings.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn assigned_tasks(&self, queue: &str, limit: usize) -> Result<Vec<Task>> {
        let mut c = self.conn();
        let loads: HashMap<String, i64> = c.hgetall(self.keys.load(queue)).await?;
        let mut out = Vec::new();
        for node in loads.keys() {
            let ids: Vec<String> = c
                .lrange(self.keys.inbox(queue, node), 0, limit as isize)
                .await?;
            out.extend(
                self.tasks(queue, &ids)
                    .await?
                    .into_iter()
                    .filter(|t| t.state == TaskState::Assigned),
            );
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }

    /// Moves due scheduled and retrying tasks to pending.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn promote(&self, queue: &str, limit: usize) -> Result<i64> {
        let mut c = self.conn();
        let n: i64 = self
            .scripts
            .promote
            .key(self.keys.queue_prefix(queue))
            .arg(self.channel())
            .arg(limit)
            .invoke_async(&mut c)
            .await?;
        Ok(n)
    }

    /// Assigns up to `max` pending tasks of `queue` to `nodes` (id, budget, tags), where
    /// the budget is the node's capacity minus its load in other queues (the script
    /// subtracts this queue's load atomically), preferring the node with most free
    /// slots. Returns (assigned, pending left, ms until the queue's rate limit allows
    /// the next task or 0).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn dispatch(
        &self,
        queue: &str,
        nodes: &[(String, i64, String)],
        max: usize,
        scan: usize,
    ) -> Result<(i64, i64, i64)> {
        let mut inv = self.scripts.dispatch.key(self.keys.queue_prefix(queue));
        inv.arg(self.channel()).arg(max).arg(scan).arg(nodes.len());
        for (id, free, tags) in nodes {
            inv.arg(id).arg(*free).arg(tags);
        }
        let mut c = self.conn();
        let v = array(inv.invoke_async(&mut c).await?)?;
        Ok((
            v.first().and_then(int).unwrap_or(0),
            v.get(1).and_then(int).unwrap_or(0),
            v.get(2).and_then(int).unwrap_or(0),
        ))
    }

    /// Leases up to `max` tasks of `queue` to `node` from its inbox (and, with `pull`,
    /// straight from pending: human nodes).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn lease(
        &self,
        queue: &str,
        node: &str,
        max: usize,
        pull: bool,
        tags: &str,
    ) -> Result<Vec<Leased>> {
        // One seed per call, not one nonce per possible lease: most calls lease few.
        let seed = hex::encode(rand::random::<[u8; 12]>());
        let mut inv = self.scripts.lease.key(self.keys.queue_prefix(queue));
        inv.arg(self.channel())
            .arg(node)
            .arg(max)
            .arg(if pull { "1" } else { "0" })
            .arg(tags);
        inv.arg(&seed);
        let mut c = self.conn();
        let rows = array(inv.invoke_async(&mut c).await?)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let h = flat_map(row)?;
            let task = task_from_hash(queue, &h)
                .ok_or_else(|| StoreError::Protocol("bad task hash".into()))?;
            let nonce = h.get("nonce").cloned().unwrap_or_default();
            let expires_ms = h
                .get("lease_expires")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            out.push(Leased {
                token: format!("{}.{nonce}", task.fence),
                task,
                expires_ms,
            });
        }
        Ok(out)
    }

    /// Renews a lease. `node` is `None` for an admin caller.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::LeaseConflict`].
    pub async fn extend(
        &self,
        id: &str,
        node: Option<&str>,
        token: &str,
        progress: Option<&str>,
    ) -> Result<Extended> {
        let queue = validate::task_queue(id).ok_or(StoreError::NotFound)?;
        let (fence, nonce) = parse_lease_token(token).ok_or(StoreError::LeaseConflict {
            state: "unknown".into(),
        })?;
        let mut c = self.conn();
        let (code, rest) = coded(
            self.scripts
                .extend
                .key(self.keys.queue_prefix(queue))
                .arg(id)
                .arg(node.unwrap_or(""))
                .arg(fence)
                .arg(nonce)
                .arg(progress.unwrap_or(""))
                .invoke_async(&mut c)
                .await?,
        )?;
        match code {
            0 => Ok(Extended {
                expires_ms: rest.first().and_then(int).unwrap_or(0),
                cancel_requested: rest.get(1).and_then(int) == Some(1),
            }),
            1 => Err(StoreError::NotFound),
            _ => Err(StoreError::LeaseConflict {
                state: state_of(rest.first()),
            }),
        }
    }

    fn reported(code: i64, rest: &[Value]) -> Result<Reported> {
        let state = || {
            TaskState::parse(&state_of(rest.first()))
                .ok_or_else(|| StoreError::Protocol("bad state".into()))
        };
        match code {
            0 => Ok(Reported {
                state: state()?,
                run_ms: rest.get(1).and_then(int),
                node: rest.get(2).and_then(text),
            }),
            3 => Ok(Reported {
                state: state()?,
                run_ms: None,
                node: None,
            }),
            1 => Err(StoreError::NotFound),
            _ => Err(StoreError::LeaseConflict {
                state: state_of(rest.first()),
            }),
        }
    }

    /// Accepts a completion for the current lease (a repeat for the same lease answers
    /// the same; anything else is a [`StoreError::LeaseConflict`]).
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::LeaseConflict`].
    pub async fn complete(
        &self,
        id: &str,
        node: Option<&str>,
        token: &str,
        result: &str,
    ) -> Result<Reported> {
        let (code, rest) = self
            .report(&self.scripts.complete, id, node, token, &[result])
            .await?;
        Self::reported(code, &rest)
    }

    /// Runs complete.lua or fail.lua: KEYS[1] the queue, ARGV channel, id, node, fence,
    /// nonce, then `extra`.
    async fn report(
        &self,
        script: &redis::Script,
        id: &str,
        node: Option<&str>,
        token: &str,
        extra: &[&str],
    ) -> Result<(i64, Vec<Value>)> {
        let queue = validate::task_queue(id).ok_or(StoreError::NotFound)?;
        let (fence, nonce) = parse_lease_token(token).ok_or(StoreError::LeaseConflict {
            state: "unknown".into(),
        })?;
        let mut inv = script.key(self.keys.queue_prefix(queue));
        inv.arg(self.channel())
            .arg(id)
            .arg(node.unwrap_or(""))
            .arg(fence)
            .arg(nonce)
            .arg(extra);
        let mut c = self.conn();
        coded(inv.invoke_async(&mut c).await?)
    }

    /// Records a failed attempt for the current lease.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::LeaseConflict`].
    pub async fn fail(
        &self,
        id: &str,
        node: Option<&str>,
        token: &str,
        error: &str,
        retryable: bool,
    ) -> Result<Reported> {
        let jitter = rand::random::<f64>().to_string();
        let retryable = if retryable { "1" } else { "0" };
        let (code, rest) = self
            .report(
                &self.scripts.fail,
                id,
                node,
                token,
                &[error, retryable, &jitter],
            )
            .await?;
        Self::reported(code, &rest)
    }

    /// Treats expired leases of `queue` as failed attempts. Returns (id, node, new state).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn expire(&self, queue: &str, limit: usize) -> Result<Vec<(String, String, String)>> {
        let mut c = self.conn();
        let v = array(
            self.scripts
                .expire
                .key(self.keys.queue_prefix(queue))
                .arg(self.channel())
                .arg(limit)
                .arg(rand::random::<f64>())
                .invoke_async(&mut c)
                .await?,
        )?;
        Ok(v.chunks(3)
            .filter_map(|c| Some((text(c.first()?)?, text(c.get(1)?)?, text(c.get(2)?)?)))
            .collect())
    }

    /// Cancels a task.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::IllegalTransition`] once succeeded or failed.
    pub async fn cancel(&self, id: &str) -> Result<Cancelled> {
        let (code, rest) = self.operate(&self.scripts.cancel, id, true).await?;
        match code {
            0 if state_of(rest.first()) == "requested" => Ok(Cancelled::Requested),
            0 => Ok(Cancelled::Done),
            _ => Err(Self::refused(code, &rest)),
        }
    }

    /// Sends a failed or cancelled task back to pending with attempts reset.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::IllegalTransition`].
    pub async fn retry(&self, id: &str) -> Result<()> {
        let (code, rest) = self.operate(&self.scripts.retry, id, true).await?;
        if code == 0 {
            Ok(())
        } else {
            Err(Self::refused(code, &rest))
        }
    }

    /// Deletes a finished task.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::IllegalTransition`].
    pub async fn delete(&self, id: &str) -> Result<()> {
        let (code, rest) = self.operate(&self.scripts.delete, id, false).await?;
        if code == 0 {
            Ok(())
        } else {
            Err(Self::refused(code, &rest))
        }
    }

    /// Runs an operator script (cancel, retry, delete): KEYS[1] the queue, ARGV
    /// [channel,] id.
    async fn operate(
        &self,
        script: &redis::Script,
        id: &str,
        channel: bool,
    ) -> Result<(i64, Vec<Value>)> {
        let queue = validate::task_queue(id).ok_or(StoreError::NotFound)?;
        let mut inv = script.key(self.keys.queue_prefix(queue));
        if channel {
            inv.arg(self.channel());
        }
        inv.arg(id);
        let mut c = self.conn();
        coded(inv.invoke_async(&mut c).await?)
    }

    /// The error of a refusing operator script: 1 not found, else an illegal transition.
    fn refused(code: i64, rest: &[Value]) -> StoreError {
        if code == 1 {
            StoreError::NotFound
        } else {
            StoreError::IllegalTransition {
                from: state_of(rest.first()),
            }
        }
    }

    /// Returns a node's inbox in `queue` to pending.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn requeue_inbox(&self, queue: &str, node: &str) -> Result<i64> {
        let mut c = self.conn();
        let n: i64 = self
            .scripts
            .requeue_inbox
            .key(self.keys.queue_prefix(queue))
            .arg(self.channel())
            .arg(node)
            .invoke_async(&mut c)
            .await?;
        Ok(n)
    }

    /// Drops index entries of finished states whose task hash has expired (retention).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn trim_finished(&self, queue: &str, limit: usize) -> Result<usize> {
        let mut c = self.conn();
        let mut removed = 0;
        for st in ["succeeded", "failed", "cancelled"] {
            let key = self.keys.state_index(queue, st);
            let ids: Vec<String> = c.zrange(&key, 0, limit as isize - 1).await?;
            if ids.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.exists(self.keys.task(queue, id));
            }
            let exists: Vec<bool> = pipe.query_async(&mut c).await?;
            let gone: Vec<&String> = ids
                .iter()
                .zip(exists)
                .filter(|(_, e)| !e)
                .map(|(i, _)| i)
                .collect();
            if !gone.is_empty() {
                let _: i64 = c.zrem(&key, gone.as_slice()).await?;
                removed += gone.len();
            }
        }
        Ok(removed)
    }

    // ----- queues -----

    /// Counts, settings and oldest pending age of one queue.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn queue_info(&self, queue: &str) -> Result<QueueInfo> {
        let k = &self.keys;
        let mut pipe = redis::pipe();
        for st in [
            "blocked",
            "scheduled",
            "pending",
            "running",
            "retrying",
            "succeeded",
            "failed",
            "cancelled",
        ] {
            pipe.zcard(k.state_index(queue, st));
        }
        pipe.hgetall(k.load(queue));
        pipe.hgetall(k.conf(queue));
        pipe.zrange(k.state_index(queue, "pending"), 0, 0);
        let mut c = self.conn();
        #[allow(clippy::type_complexity)]
        let (bl, sc, pe, ru, re, su, fa, ca, load, conf, first): (
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            HashMap<String, i64>,
            HashMap<String, String>,
            Vec<String>,
        ) = pipe.query_async(&mut c).await?;
        let load_total: i64 = load.values().sum();
        let oldest = match first.first() {
            Some(id) => {
                let created: Option<i64> = c.hget(k.task(queue, id), "created_at").await?;
                let now = self.now_ms().await?;
                created.map(|t| (now - t).max(0))
            }
            None => None,
        };
        Ok(QueueInfo {
            name: queue.to_string(),
            paused: conf.get("paused").is_some_and(|v| v == "1"),
            weight: conf.get("weight").and_then(|v| v.parse().ok()).unwrap_or(1),
            human_only: conf.get("human_only").is_some_and(|v| v == "1"),
            counts: QueueCounts {
                blocked: bl,
                scheduled: sc,
                pending: pe,
                assigned: (load_total - ru).max(0),
                running: ru,
                retrying: re,
                succeeded: su,
                failed: fa,
                cancelled: ca,
            },
            oldest_pending_age_ms: oldest,
            max_running: conf
                .get("max_running")
                .and_then(|v| v.parse().ok())
                .filter(|v: &i64| *v > 0),
            rate_limit: conf
                .get("rate_limit")
                .and_then(|v| v.parse().ok())
                .filter(|v: &f64| *v > 0.0),
        })
    }

    /// Updates a queue's settings (absent fields unchanged) and remembers the queue.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn update_queue(&self, queue: &str, u: &QueueUpdate) -> Result<()> {
        let mut fields: Vec<(&str, String)> = Vec::new();
        if let Some(w) = u.weight {
            fields.push(("weight", w.to_string()));
        }
        if let Some(p) = u.paused {
            fields.push(("paused", if p { "1" } else { "0" }.into()));
        }
        if let Some(h) = u.human_only {
            fields.push(("human_only", if h { "1" } else { "0" }.into()));
        }
        if let Some(m) = u.max_running {
            fields.push(("max_running", m.to_string()));
        }
        if let Some(r) = u.rate_limit {
            fields.push(("rate_limit", r.to_string()));
        }
        self.add_queues(&[queue]).await?;
        if !fields.is_empty() {
            let mut c = self.conn();
            let _: () = c.hset_multiple(self.keys.conf(queue), &fields).await?;
            let _: i64 = c
                .publish(
                    self.channel(),
                    format!("new {}", self.keys.queue_prefix(queue)),
                )
                .await?;
        }
        Ok(())
    }

    /// A queue's counters (`submitted`, `succeeded`, `failed`, `retried`, `cancelled`).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn queue_stats(&self, queue: &str) -> Result<HashMap<String, i64>> {
        let mut c = self.conn();
        Ok(c.hgetall(self.keys.stats(queue)).await?)
    }

    /// Settings of a queue: (weight, paused, human_only).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn queue_conf(&self, queue: &str) -> Result<(i64, bool, bool)> {
        let mut c = self.conn();
        let conf: HashMap<String, String> = c.hgetall(self.keys.conf(queue)).await?;
        Ok((
            conf.get("weight").and_then(|v| v.parse().ok()).unwrap_or(1),
            conf.get("paused").is_some_and(|v| v == "1"),
            conf.get("human_only").is_some_and(|v| v == "1"),
        ))
    }

    /// Per-node load (assigned + running) of each queue given.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn loads(&self, queues: &[String]) -> Result<HashMap<String, HashMap<String, i64>>> {
        if queues.is_empty() {
            return Ok(HashMap::new());
        }
        let mut pipe = redis::pipe();
        for q in queues {
            pipe.hgetall(self.keys.load(q));
        }
        let mut c = self.conn();
        let v: Vec<HashMap<String, i64>> = pipe.query_async(&mut c).await?;
        Ok(queues.iter().cloned().zip(v).collect())
    }

    // ----- nodes -----

    /// Stores a new node.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn register_node(&self, node: &Node, token_sha: &str) -> Result<i64> {
        let mut c = self.conn();
        let key = self.keys.node(&node.id);
        let _: () = c
            .hset_multiple(
                &key,
                &[
                    ("id", node.id.clone()),
                    ("name", node.name.clone()),
                    ("kind", node.kind.as_str().to_string()),
                    ("status", NodeStatus::Active.as_str().to_string()),
                    ("queues", node.queues.join(",")),
                    ("tags", node.tags.join(",")),
                    ("capacity", node.capacity.to_string()),
                    ("token_sha", token_sha.to_string()),
                ],
            )
            .await?;
        let now = self.heartbeat(&node.id).await?.map(|(_, n)| n).unwrap_or(0);
        let _: () = c.hset(&key, "registered_at", now).await?;
        let qs: Vec<&str> = node.queues.iter().map(String::as_str).collect();
        if !qs.is_empty() {
            self.add_queues(&qs).await?;
        }
        Ok(now)
    }

    /// Marks a node alive (offline → active). `None` when the node is unknown.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn heartbeat(&self, id: &str) -> Result<Option<(NodeStatus, i64)>> {
        let mut c = self.conn();
        let (code, rest) = coded(
            self.scripts
                .heartbeat
                .key(self.keys.nodes())
                .key(self.keys.node(id))
                .arg(id)
                .invoke_async(&mut c)
                .await?,
        )?;
        if code != 0 {
            return Ok(None);
        }
        let status = NodeStatus::parse(&state_of(rest.first())).unwrap_or(NodeStatus::Active);
        Ok(Some((status, rest.get(1).and_then(int).unwrap_or(0))))
    }

    /// One node with its current load.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn node(&self, id: &str) -> Result<Option<NodeRecord>> {
        if !validate::node_id(id) {
            return Ok(None);
        }
        let mut c = self.conn();
        let h: HashMap<String, String> = c.hgetall(self.keys.node(id)).await?;
        if h.is_empty() {
            return Ok(None);
        }
        let queues: Vec<String> = h
            .get("queues")
            .filter(|v| !v.is_empty())
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        let loads = self.loads(&queues).await?;
        let running = loads.values().filter_map(|m| m.get(id)).sum();
        Ok(node_from_hash(&h, running))
    }

    /// Every node, newest first, with loads.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>> {
        let mut c = self.conn();
        let ids: Vec<String> = c.zrange(self.keys.nodes(), 0, -1).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.keys.node(id));
        }
        let hs: Vec<HashMap<String, String>> = pipe.query_async(&mut c).await?;
        let queues = self.queues().await?;
        let loads = self.loads(&queues).await?;
        let mut out: Vec<NodeRecord> = hs
            .iter()
            .filter_map(|h| {
                let id = h.get("id")?;
                let running = loads.values().filter_map(|m| m.get(id)).sum();
                node_from_hash(h, running)
            })
            .collect();
        out.sort_by(|a, b| b.node.id.cmp(&a.node.id));
        Ok(out)
    }

    /// Sets a node's status.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn set_node_status(&self, id: &str, status: NodeStatus) -> Result<()> {
        let mut c = self.conn();
        let _: () = c
            .hset(self.keys.node(id), "status", status.as_str())
            .await?;
        Ok(())
    }

    /// Returns a node's inboxes to pending in every queue it serves.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn requeue_node(&self, node: &Node) -> Result<i64> {
        let mut n = 0;
        for q in &node.queues {
            n += self.requeue_inbox(q, &node.id).await?;
        }
        Ok(n)
    }

    /// Removes a node: its inboxes go back to pending, its record is deleted. Tasks it
    /// still runs keep their leases until they end or expire.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn delete_node(&self, node: &Node) -> Result<i64> {
        let n = self.requeue_node(node).await?;
        let mut c = self.conn();
        let _: () = redis::pipe()
            .del(self.keys.node(&node.id))
            .zrem(self.keys.nodes(), &node.id)
            .query_async(&mut c)
            .await?;
        Ok(n)
    }

    /// Running tasks the node must stop (cancelled), across its queues.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn node_cancels(&self, node: &Node) -> Result<Vec<String>> {
        if node.queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for q in &node.queues {
            pipe.smembers(self.keys.cancels(q, &node.id));
        }
        let mut c = self.conn();
        let v: Vec<Vec<String>> = pipe.query_async(&mut c).await?;
        Ok(v.into_iter().flatten().collect())
    }

    /// Adds to a node's statistics (accepted completions, failed attempts, run time).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn add_node_stats(
        &self,
        id: &str,
        succeeded: i64,
        failed: i64,
        run_ms: i64,
        runs: i64,
    ) -> Result<()> {
        let key = self.keys.node(id);
        let mut c = self.conn();
        // Only existing nodes: HINCRBY would resurrect a deleted node's hash.
        let exists: bool = c.exists(&key).await?;
        if exists {
            let _: () = redis::pipe()
                .hincr(&key, "succeeded", succeeded)
                .hincr(&key, "failed", failed)
                .hincr(&key, "run_ms_total", run_ms)
                .hincr(&key, "runs", runs)
                .query_async(&mut c)
                .await?;
        }
        Ok(())
    }

    /// Nodes whose last heartbeat is older than `before_ms` and not yet offline.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn stale_nodes(&self, before_ms: i64) -> Result<Vec<String>> {
        let mut c = self.conn();
        let ids: Vec<String> = c
            .zrangebyscore(self.keys.nodes(), "-inf", before_ms)
            .await?;
        Ok(ids)
    }

    /// Builds a task page for `GET /v1/tasks` across queues and states.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn page(
        &self,
        queue: Option<&str>,
        state: Option<TaskState>,
        kind: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<TaskPage> {
        // Cursor: "<queue index>:<state index>:<offset>" over the sorted queue list.
        let queues: Vec<String> = match queue {
            Some(q) => vec![q.to_string()],
            None => self.queues().await?,
        };
        let states: Vec<TaskState> = match state {
            Some(s) => vec![s],
            None => TaskState::ALL.to_vec(),
        };
        let (mut qi, mut si, mut off) = match cursor {
            Some(c) => {
                let mut it = c.split(':').map(|p| p.parse::<usize>().ok());
                match (
                    it.next().flatten(),
                    it.next().flatten(),
                    it.next().flatten(),
                ) {
                    (Some(a), Some(b), Some(c)) => (a, b, c),
                    _ => return Err(StoreError::Protocol("bad cursor".into())),
                }
            }
            None => (0, 0, 0),
        };
        let mut items = Vec::new();
        while qi < queues.len() {
            while si < states.len() {
                let want = limit - items.len();
                let st = states[si];
                if st == TaskState::Assigned {
                    if off == 0 {
                        items.extend(
                            self.assigned_tasks(&queues[qi], want)
                                .await?
                                .into_iter()
                                .filter(|t| kind.is_none_or(|k| k == t.kind)),
                        );
                    }
                    si += 1;
                    off = 0;
                } else {
                    let (mut got, next) = self.list_tasks(&queues[qi], st, kind, want, off).await?;
                    items.append(&mut got);
                    match next {
                        Some(n) if items.len() < limit => {
                            // The scan budget ran out: a short page, resumable.
                            return Ok(TaskPage {
                                items,
                                next_cursor: Some(format!("{qi}:{si}:{n}")),
                            });
                        }
                        Some(n) => off = n,
                        None => {
                            si += 1;
                            off = 0;
                        }
                    }
                }
                if items.len() >= limit {
                    let more = qi < queues.len() && si < states.len() || qi + 1 < queues.len();
                    let next_cursor = more.then(|| {
                        if si >= states.len() {
                            format!("{}:0:0", qi + 1)
                        } else {
                            format!("{qi}:{si}:{off}")
                        }
                    });
                    return Ok(TaskPage { items, next_cursor });
                }
            }
            qi += 1;
            si = 0;
            off = 0;
        }
        Ok(TaskPage {
            items,
            next_cursor: None,
        })
    }
}

/// SHA-256 helper that reads well at call sites.
trait DigestStr {
    fn digest_str(s: &str) -> Vec<u8>;
}

impl DigestStr for sha2::Sha256 {
    fn digest_str(s: &str) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(s.as_bytes()).to_vec()
    }
}

/// Hex SHA-256 of a token, as stored.
pub fn token_sha(token: &str) -> String {
    hex::encode(<sha2::Sha256 as DigestStr>::digest_str(token))
}
