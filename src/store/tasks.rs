//! Tasks: submitting, reading, and the operator transitions (cancel, retry, delete),
//! with the decoder of a task hash.

use super::tokens::sha256_hex;
use super::{Code, Missing, Result, Store, StoreError, coded, int, state_of, text};
use crate::domain::spec::{DEFAULT_MAX_ATTEMPTS, DEFAULT_RETENTION_MS, DEFAULT_TIMEOUT_MS};
use crate::domain::{Backoff, OnDependencyFailure, Task, TaskState, rfc3339_ms, validate};
use redis::{AsyncCommands, Value};
use std::collections::HashMap;

/// A validated task ready to be stored (validated in [`crate::domain::spec`]).
pub use crate::domain::TaskSpec as PreparedTask;

impl PreparedTask {
    /// The hash fields `submit.lua` stores as they are: kind, payload and every field
    /// not at its default (the defaults are `task_from_hash`'s and lib.lua's), so that
    /// a plain task is a hash of five small fields.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut x = vec![("kind", self.kind.clone())];
        if self.payload != "null" {
            x.push(("payload", self.payload.clone()));
        }
        let mut num = |name: &'static str, v: i64, default: i64| {
            if v != default {
                x.push((name, v.to_string()));
            }
        };
        num("priority", self.priority, 0);
        num("max_attempts", self.max_attempts, DEFAULT_MAX_ATTEMPTS);
        num("timeout_ms", self.timeout_ms, DEFAULT_TIMEOUT_MS);
        num("retention_ms", self.retention_ms, DEFAULT_RETENTION_MS);
        let defaults = Backoff::default();
        if self.backoff.initial_ms != defaults.initial_ms {
            x.push(("backoff_initial", self.backoff.initial_ms.to_string()));
        }
        if self.backoff.max_ms != defaults.max_ms {
            x.push(("backoff_max", self.backoff.max_ms.to_string()));
        }
        if !self.requires.is_empty() {
            x.push(("requires", self.requires.join(",")));
        }
        if let Some(m) = self.max_run_ms {
            x.push(("max_run_ms", m.to_string()));
        }
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
        /// Per submitted task, the state and due time (ms) `submit.lua` gave it; `None`
        /// for the tasks in `existing`.
        chosen: Vec<Option<(TaskState, i64)>>,
    },
    /// An earlier submission with the same idempotency key; nothing stored.
    Duplicate {
        /// Its ids.
        ids: Vec<String>,
    },
}

/// Outcome of [`Store::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// The task is cancelled.
    Done,
    /// The task is running: its node is told at the next heartbeat.
    Requested,
}

/// Builds the [`Task`] `id` from its hash (fields at their default are not stored);
/// `None` when the hash is empty or malformed. `queue` is the queue or the shard
/// (`<queue>~<k>`) that holds it; the task shows the queue.
pub fn task_from_hash(queue: &str, id: &str, h: &HashMap<String, String>) -> Option<Task> {
    let queue = validate::split_shard(queue).0;
    let get = |k: &str| h.get(k).filter(|v| !v.is_empty());
    let num = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
    let json = |k: &str| {
        get(k).map(|v| serde_json::from_str(v).unwrap_or(serde_json::Value::String(v.clone())))
    };
    let ts = |k: &str| num(k).map(rfc3339_ms);
    let state = TaskState::parse(get("state")?)?;
    Some(Task {
        id: id.to_string(),
        queue: queue.to_string(),
        kind: get("kind")?.clone(),
        payload: json("payload").unwrap_or(serde_json::Value::Null),
        priority: num("priority").unwrap_or(0),
        state,
        attempts: num("attempts").unwrap_or(0),
        max_attempts: num("max_attempts").unwrap_or(DEFAULT_MAX_ATTEMPTS),
        timeout_ms: num("timeout_ms").unwrap_or(DEFAULT_TIMEOUT_MS),
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
        run_at: ts("run_at").or_else(|| ts("created_at")),
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

impl Store {
    /// Stores tasks all or nothing (one script call). With `idem`, a repeat returns
    /// the first submission's ids and stores nothing (whoever repeats it: see
    /// [`Store::submit_bound`] for keys bound to a caller and a body).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn submit(
        &self,
        tasks: &[PreparedTask],
        idem: Option<&str>,
        idem_ttl_ms: i64,
    ) -> Result<Submitted> {
        self.submit_bound(tasks, idem, "", idem_ttl_ms).await
    }

    /// [`Store::submit`] with the idempotency key bound to `binding`
    /// (`<caller digest>:<body digest>`, no `|`): a repeat with another binding stores
    /// nothing and fails with [`StoreError::IdempotencyReused`] (`caller` when the part
    /// before `:` differs). An empty binding is [`Store::submit`].
    ///
    /// # Errors
    /// [`StoreError::IdempotencyReused`]; Redis errors.
    pub async fn submit_bound(
        &self,
        tasks: &[PreparedTask],
        idem: Option<&str>,
        binding: &str,
        idem_ttl_ms: i64,
    ) -> Result<Submitted> {
        if binding.contains('|') {
            return Err(StoreError::Protocol(
                "an idempotency binding holds '|'".into(),
            ));
        }
        // A task's keys are its shard's (its queue's, unless the queue is sharded).
        if self.is_cluster() && tasks.iter().any(|t| t.shard() != tasks[0].shard()) {
            return Box::pin(self.submit_per_queue(tasks, idem, binding, idem_ttl_ms)).await;
        }
        let mut prefixes: Vec<String> = Vec::new();
        let mut prefix_queues: Vec<&str> = Vec::new();
        // The idempotency record lives under the first prefix (KEYS[1]): a repeat places
        // its tasks as the first time did (`Store::place`), so it looks there again.
        let mut inv = self.scripts.submit.prepare_invoke();
        let mut args: Vec<String> = Vec::with_capacity(5 + tasks.len() * 14);
        args.push(self.channel());
        args.push(idem.map(sha256_hex).unwrap_or_default());
        args.push(idem_ttl_ms.to_string());
        args.push(binding.to_string());
        args.push(tasks.len().to_string());
        for t in tasks {
            let p = self.keys.queue_prefix(t.shard());
            let idx = match prefixes.iter().position(|x| *x == p) {
                Some(i) => i + 1,
                None => {
                    prefixes.push(p);
                    prefix_queues.push(t.shard());
                    prefixes.len()
                }
            };
            args.push(idx.to_string());
            args.push(t.id.clone());
            args.push(t.priority.to_string());
            args.push(t.run_at_ms.map(|v| v.to_string()).unwrap_or_default());
            args.push(t.delay_ms.map(|v| v.to_string()).unwrap_or_default());
            let fields = t.fields();
            args.push(fields.len().to_string());
            for (k, v) in fields {
                args.push(k.to_string());
                args.push(v);
            }
        }
        if prefixes.is_empty() {
            return Err(StoreError::Protocol("empty submission".into()));
        }
        // Before the tasks exist, so timers, listings and the doctor never miss a queue
        // that holds tasks (the `queues` set has no hash tag, so the script cannot add
        // it); skipped for queues this process submitted to a moment ago.
        let mut names: Vec<&str> = tasks.iter().map(|t| t.shard()).collect();
        names.sort_unstable();
        names.dedup();
        self.list_queues_for_submit(&names).await?;
        for p in &prefixes {
            inv.key(p);
        }
        inv.arg(args);
        let mut c = self.conn_for(tasks.len());
        let (code, rest) = coded(inv.invoke_async(&mut c).await?)?;
        if code == Code::Ok {
            // Queues the script found new may have been pruned from the `queues` set
            // while this submit was on its way (`queue_prune.lua`): add them again, now
            // that their tasks exist.
            let fresh: Vec<&str> = rest
                .get(3)
                .and_then(text)
                .unwrap_or_default()
                .split(',')
                .filter_map(|i| prefix_queues.get(i.parse::<usize>().ok()?.checked_sub(1)?))
                .copied()
                .collect();
            if !fresh.is_empty() {
                self.add_queues(&fresh).await?;
            }
            self.submitted_to(&names);
        }
        match code {
            Code::Ok => Ok(Submitted::Created {
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
                chosen: rest
                    .get(2)
                    .and_then(text)
                    .map(|s| {
                        s.split(',')
                            .map(|e| {
                                let (state, run_at) = e.split_once('@')?;
                                Some((TaskState::parse(state)?, run_at.parse().ok()?))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            }),
            Code::Repeat => Ok(Submitted::Duplicate {
                ids: rest
                    .get(1)
                    .and_then(text)
                    .map(|s| s.split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
            }),
            Code::Conflict => Err(StoreError::IdempotencyReused {
                by_another_caller: rest.get(1).and_then(text).as_deref() == Some("caller"),
            }),
            c => Err(c.unexpected("submit")),
        }
    }

    /// A submission over several queues on a Redis Cluster, where one script cannot
    /// reach several slots: one `submit.lua` call per queue, in order of first
    /// appearance, each all-or-nothing. When a part fails, the parts stored before it
    /// are rolled back (their tasks cancelled and deleted, their idempotency records
    /// removed) and the error returned: the whole is all-or-nothing except for a task a
    /// node already started in that moment (it is cancelled, not deleted).
    async fn submit_per_queue(
        &self,
        tasks: &[PreparedTask],
        idem: Option<&str>,
        binding: &str,
        idem_ttl_ms: i64,
    ) -> Result<Submitted> {
        // One part per shard (a queue's, unless it is sharded).
        let mut order: Vec<&str> = Vec::new();
        for t in tasks {
            if !order.contains(&t.shard()) {
                order.push(t.shard());
            }
        }
        let mut now = 0;
        let mut existing = Vec::new();
        let mut chosen = vec![None; tasks.len()];
        let mut repeated: Vec<Option<String>> = vec![None; tasks.len()];
        let mut stored: Vec<(String, Vec<String>)> = Vec::new();
        for q in &order {
            let idx: Vec<usize> = (0..tasks.len())
                .filter(|&i| tasks[i].shard() == *q)
                .collect();
            let part: Vec<PreparedTask> = idx.iter().map(|&i| tasks[i].clone()).collect();
            match self.submit_bound(&part, idem, binding, idem_ttl_ms).await {
                Ok(Submitted::Created {
                    now_ms,
                    existing: held,
                    chosen: ch,
                }) => {
                    now = now.max(now_ms);
                    let ids = part
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| !held.iter().any(|(h, _)| h == j))
                        .map(|(_, t)| t.id.clone())
                        .collect();
                    stored.push((q.to_string(), ids));
                    existing.extend(held.into_iter().map(|(j, id)| (idx[j], id)));
                    for (j, c) in ch.into_iter().enumerate() {
                        chosen[idx[j]] = c;
                    }
                }
                Ok(Submitted::Duplicate { ids }) => {
                    for (j, id) in ids.into_iter().enumerate() {
                        if let Some(&i) = idx.get(j) {
                            repeated[i] = Some(id);
                        }
                    }
                }
                Err(e) => {
                    self.roll_back(&stored, idem).await;
                    return Err(e);
                }
            }
        }
        if stored.is_empty() {
            return Ok(Submitted::Duplicate {
                ids: repeated.into_iter().flatten().collect(),
            });
        }
        // A part that repeats an earlier submission answers its tasks as held.
        existing.extend(
            repeated
                .into_iter()
                .enumerate()
                .filter_map(|(i, id)| Some((i, id?))),
        );
        Ok(Submitted::Created {
            now_ms: now,
            existing,
            chosen,
        })
    }

    /// Undoes the parts of a split submission stored before one failed (best effort:
    /// Redis may be what failed).
    async fn roll_back(&self, stored: &[(String, Vec<String>)], idem: Option<&str>) {
        for (q, ids) in stored {
            for id in ids {
                let _ = self.cancel(id).await;
                let _ = self.delete(id).await;
            }
            if let Some(k) = idem {
                let mut c = self.conn();
                let _: redis::RedisResult<()> =
                    c.del(self.keys.idempotency(q, &sha256_hex(k))).await;
            }
        }
        tracing::warn!(
            parts = stored.len(),
            "a submission over several queues failed midway; its stored parts were rolled back"
        );
    }

    /// One task by id.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown or malformed id.
    pub async fn task(&self, id: &str) -> Result<Task> {
        let queue = validate::task_shard(id).ok_or(StoreError::NotFound {
            what: Missing::Task,
        })?;
        let mut c = self.conn();
        let h: HashMap<String, String> = c.hgetall(self.keys.task(queue, id)).await?;
        task_from_hash(queue, id, &h).ok_or(StoreError::NotFound {
            what: Missing::Task,
        })
    }

    /// Several tasks of one queue or shard (missing ones skipped), in one pipeline.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn tasks(&self, queue: &str, ids: &[String]) -> Result<Vec<Task>> {
        let hs = self.task_hashes(queue, ids).await?;
        Ok(ids
            .iter()
            .zip(&hs)
            .filter_map(|(id, h)| task_from_hash(queue, id, h))
            .collect())
    }

    /// The hashes of tasks of one queue or shard, in one pipeline, in order (empty:
    /// no such task).
    pub(super) async fn task_hashes(
        &self,
        queue: &str,
        ids: &[String],
    ) -> Result<Vec<HashMap<String, String>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(self.keys.task(queue, id));
        }
        let mut c = self.conn();
        Ok(pipe.query_async(&mut c).await?)
    }

    /// Cancels a task.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::IllegalTransition`] once succeeded or failed.
    pub async fn cancel(&self, id: &str) -> Result<Cancelled> {
        let rest = self
            .operate(&self.scripts.cancel, "cancel", id, true)
            .await?;
        Ok(if state_of(rest.first()) == "requested" {
            Cancelled::Requested
        } else {
            Cancelled::Done
        })
    }

    /// Sends a failed or cancelled task back to pending with attempts reset.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::IllegalTransition`].
    pub async fn retry(&self, id: &str) -> Result<()> {
        self.operate(&self.scripts.retry, "retry", id, true)
            .await
            .map(drop)
    }

    /// Deletes a finished task.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::IllegalTransition`].
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.operate(&self.scripts.delete, "delete", id, false)
            .await
            .map(drop)
    }

    /// Runs an operator script (cancel, retry, delete): KEYS[1] the queue, ARGV
    /// [channel,] id. Returns the rest of its `OK` reply; `NOT_FOUND` and `CONFLICT` (the
    /// task's state refuses it) are errors.
    async fn operate(
        &self,
        script: &redis::Script,
        name: &str,
        id: &str,
        channel: bool,
    ) -> Result<Vec<Value>> {
        let queue = validate::task_shard(id).ok_or(StoreError::NotFound {
            what: Missing::Task,
        })?;
        let mut inv = script.key(self.keys.queue_prefix(queue));
        if channel {
            inv.arg(self.channel());
        }
        inv.arg(id);
        let mut c = self.conn();
        let (code, rest) = coded(inv.invoke_async(&mut c).await?)?;
        match code {
            Code::Ok => Ok(rest),
            Code::NotFound => Err(StoreError::NotFound {
                what: Missing::Task,
            }),
            Code::Conflict => Err(StoreError::IllegalTransition {
                from: state_of(rest.first()),
            }),
            c => Err(c.unexpected(name)),
        }
    }

    /// Drops index entries of finished states whose task hash has expired (retention).
    /// Each index is read from its oldest entry on, a window at a time (100 entries,
    /// then 1,000), past the entries still alive, until a window holds none that are
    /// gone or `max_windows` were read: one round keeps up with a queue finishing many
    /// thousand tasks a second, while a queue with nothing to trim costs one small
    /// window. (One window of 1,000 a round, as before, let the index of a queue
    /// finishing more than about 17 tasks/s for longer than their retention grow for
    /// good.) Entries expired behind a window of entries still alive (tasks with a
    /// longer retention finished before them) are left to a probing round of
    /// [`Store::trim_finished_many`].
    ///
    /// # Errors
    /// Redis errors.
    pub async fn trim_finished(&self, queue: &str, max_windows: usize) -> Result<usize> {
        let mut budget = usize::MAX;
        self.trim_queue(queue, max_windows, &mut budget, false)
            .await
    }

    /// [`Store::trim_finished`] of one queue, each index reading at most `per_index`
    /// windows and all of them together at most `budget` (decreased by the windows read).
    /// With `probe`, an index whose oldest entries are alive is also read from a random
    /// place behind them, so entries expired behind tasks of a longer retention are
    /// found too, in time.
    async fn trim_queue(
        &self,
        queue: &str,
        per_index: usize,
        budget: &mut usize,
        probe: bool,
    ) -> Result<usize> {
        const FIRST_WINDOW: usize = 100;
        let mut c = self.conn();
        let mut removed = 0;
        for st in FINISHED {
            let key = self.keys.state_index(queue, st);
            let scan = self
                .trim_scan(&mut c, queue, &key, 0, FIRST_WINDOW, per_index, budget)
                .await?;
            removed += scan.removed;
            if let Some(from) = scan.alive_at
                && probe
                && *budget > 0
            {
                let n: usize = c.zcard(&key).await?;
                if n > from + FIRST_WINDOW {
                    let start = rand::random_range(from..n);
                    let left = per_index.saturating_sub(scan.windows).max(1);
                    removed += self
                        .trim_scan(&mut c, queue, &key, start, TRIM_WINDOW, left, budget)
                        .await?
                        .removed;
                }
            }
        }
        Ok(removed)
    }

    /// Reads index `key` of `queue` from offset `from`, a window at a time (`first`
    /// entries, then [`TRIM_WINDOW`]), removing the entries whose task hash is gone,
    /// until a window holds none that are gone, the index ends, or `windows` (or the
    /// shared `budget`) were read.
    #[allow(clippy::too_many_arguments)]
    async fn trim_scan(
        &self,
        c: &mut super::Conn,
        queue: &str,
        key: &str,
        from: usize,
        first: usize,
        windows: usize,
        budget: &mut usize,
    ) -> Result<TrimScan> {
        let mut out = TrimScan::default();
        // Offset of the first entry not yet read (entries before it, from `from` on,
        // are alive).
        let mut from = from;
        for w in 0..windows.max(1) {
            if *budget == 0 {
                break;
            }
            *budget -= 1;
            out.windows += 1;
            let size = if w == 0 { first } else { TRIM_WINDOW };
            let ids: Vec<String> = c
                .zrange(key, from as isize, (from + size) as isize - 1)
                .await?;
            if ids.is_empty() {
                break;
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.exists(self.keys.task(queue, id));
            }
            let exists: Vec<bool> = pipe.query_async(c).await?;
            let gone: Vec<&String> = ids
                .iter()
                .zip(&exists)
                .filter(|(_, e)| !**e)
                .map(|(i, _)| i)
                .collect();
            if !gone.is_empty() {
                let _: i64 = c.zrem(key, gone.as_slice()).await?;
                out.removed += gone.len();
            }
            from += ids.len() - gone.len();
            if ids.len() < size {
                break;
            }
            if gone.is_empty() {
                out.alive_at = Some(from);
                break;
            }
        }
        Ok(out)
    }

    /// [`Store::trim_finished`] over `queues`: which of them hold finished entries is
    /// read in pipelines of 500 queues, and only those are trimmed (a round over
    /// thousands of queues takes a few round trips, not three per queue). Each index
    /// reads at most `per_index` windows and the round at most `budget` in all, so a
    /// round after a long pile-up ends in bounded time; the next takes up the rest.
    /// `probe`: also read behind alive oldest entries, from a random place (see
    /// `trim_queue`).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn trim_finished_many(
        &self,
        queues: &[String],
        per_index: usize,
        mut budget: usize,
        probe: bool,
    ) -> Result<usize> {
        let mut c = self.conn();
        let mut removed = 0;
        for chunk in queues.chunks(500) {
            let mut pipe = redis::pipe();
            for q in chunk {
                for st in FINISHED {
                    pipe.zcard(self.keys.state_index(q, st));
                }
            }
            let n: Vec<i64> = pipe.query_async(&mut c).await?;
            for (q, row) in chunk.iter().zip(n.chunks(FINISHED.len())) {
                if budget == 0 {
                    return Ok(removed);
                }
                if row.iter().any(|n| *n > 0) {
                    removed += self.trim_queue(q, per_index, &mut budget, probe).await?;
                }
            }
        }
        Ok(removed)
    }
}

/// The finished states, whose indexes are trimmed.
const FINISHED: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// Entries a trim window reads after the first.
const TRIM_WINDOW: usize = 1000;

/// What one [`Store::trim_scan`] did.
#[derive(Debug, Default)]
struct TrimScan {
    /// Entries removed.
    removed: usize,
    /// Windows read.
    windows: usize,
    /// Where it stopped at a window of entries all alive (its offset after them).
    alive_at: Option<usize>,
}
