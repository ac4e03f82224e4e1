//! Coordination state: dependencies between tasks and batches (fan-out / fan-in).
//!
//! Both cross hash tags (a dependency may sit in another queue, a batch's children in
//! many), so no single script can see both sides. The end of a task that something
//! waits on pushes its id onto its queue's `followups` list in the same script that
//! ends it; the coordinator (`crate::workers::coordinator`) works that list off with idempotent
//! scripts (each dependency and each child counts once) and only then removes the
//! entry, so a crash or a lost wake-up delays a follow-up but never loses it.

use super::{PreparedTask, Result, Store, StoreError, coded, int, text};
use crate::domain::batches::{Batch, BatchResult, BatchResultPage, BatchState};
use crate::domain::{TaskState, rfc3339_ms, validate};
use redis::AsyncCommands;
use std::collections::HashMap;

/// What a batch script found: the batch's counts and whether its `then` task is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCheck {
    /// The then task must be stored now (and recorded with [`Store::batch_then`]).
    pub then_due: bool,
    /// `running`, `succeeded` or `failed`.
    pub state: String,
    /// Children.
    pub total: i64,
    /// Children that succeeded.
    pub succeeded: i64,
    /// Children that failed.
    pub failed: i64,
    /// Children cancelled.
    pub cancelled: i64,
    /// The then task as submitted (NewTask JSON), or empty.
    pub then_json: String,
}

/// Outcome of [`Store::batch_begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchBegin {
    /// A chunk may be stored.
    Open,
    /// No such batch.
    NotFound,
    /// The batch finished: it takes no more children.
    Finished,
}

fn batch_check(v: redis::Value) -> Result<Option<BatchCheck>> {
    let (code, rest) = coded(v)?;
    if code == -1 {
        return Ok(None);
    }
    let n = |i: usize| rest.get(i).and_then(int).unwrap_or(0);
    Ok(Some(BatchCheck {
        then_due: n(0) == 1,
        state: rest.get(1).and_then(text).unwrap_or_default(),
        total: n(2),
        succeeded: n(3),
        failed: n(4),
        cancelled: n(5),
        then_json: rest.get(6).and_then(text).unwrap_or_default(),
    }))
}

impl Store {
    /// Of `ids`, those that name no existing task (malformed ids included).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn missing_tasks(&self, ids: &[String]) -> Result<Vec<String>> {
        // (An empty pipeline is an error in redis-rs: `asked` guards it below.)
        let mut missing = Vec::new();
        let mut pipe = redis::pipe();
        let mut asked = Vec::new();
        for id in ids {
            match validate::task_queue(id) {
                Some(q) => {
                    pipe.exists(self.keys.task(q, id));
                    asked.push(id.clone());
                }
                None => missing.push(id.clone()),
            }
        }
        if !asked.is_empty() {
            let mut c = self.conn();
            let found: Vec<bool> = pipe.query_async(&mut c).await?;
            missing.extend(
                asked
                    .into_iter()
                    .zip(found)
                    .filter(|(_, f)| !f)
                    .map(|(id, _)| id),
            );
        }
        Ok(missing)
    }

    /// Registers the dependencies of freshly stored blocked tasks: each dependency
    /// learns its waiter, and those already ended are resolved at once. Idempotent
    /// (the coordinator's sweep runs it again for a task a crash left unregistered).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn register_dependencies(&self, tasks: &[PreparedTask]) -> Result<()> {
        for t in tasks.iter().filter(|t| !t.depends_on.is_empty()) {
            self.register_task_dependencies(&t.id, &t.depends_on)
                .await?;
        }
        Ok(())
    }

    /// [`Store::register_dependencies`] for one task.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn register_task_dependencies(&self, id: &str, deps: &[String]) -> Result<()> {
        for dep in deps {
            let ended = match validate::task_queue(dep) {
                None => Some("missing".to_string()),
                Some(q) => {
                    let mut inv = self.scripts.dep_register.key(self.keys.queue_prefix(q));
                    inv.arg(dep).arg(id);
                    let mut c = self.conn();
                    let (code, rest) = coded(inv.invoke_async(&mut c).await?)?;
                    match code {
                        0 => None,
                        1 => Some("missing".to_string()),
                        _ => Some(rest.first().and_then(text).unwrap_or_default()),
                    }
                }
            };
            if let Some(state) = ended {
                self.resolve_dependency(id, dep, &state).await?;
            }
        }
        self.resolve_dependency(id, "", "registered").await
    }

    /// One dependency of blocked task `id` ended in `state` (`succeeded`, `failed`,
    /// `cancelled`, `missing`), or `registered`: every dependency knows its waiter.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn resolve_dependency(&self, id: &str, dep: &str, state: &str) -> Result<()> {
        let q = validate::task_queue(id).ok_or(StoreError::NotFound)?;
        let mut inv = self.scripts.dep_resolved.key(self.keys.queue_prefix(q));
        inv.arg(self.keys.wake_channel())
            .arg(id)
            .arg(dep)
            .arg(state);
        let mut c = self.conn();
        let _ = coded(inv.invoke_async(&mut c).await?)?;
        Ok(())
    }

    /// Blocked tasks of `queue` submitted before `before_ms` whose dependencies were
    /// never all registered (their submitter died half-way), with those dependencies.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn unregistered_blocked(
        &self,
        queue: &str,
        before_ms: i64,
        limit: isize,
    ) -> Result<Vec<(String, Vec<String>)>> {
        let mut c = self.conn();
        let ids: Vec<String> = c
            .zrangebyscore_limit(
                self.keys.state_index(queue, "blocked"),
                "-inf",
                before_ms,
                0,
                limit,
            )
            .await?;
        let mut out = Vec::new();
        for id in ids {
            let (reg, deps): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(self.keys.task(queue, &id))
                .arg("registered")
                .arg("deps")
                .query_async(&mut c)
                .await?;
            if reg.is_none()
                && let Some(d) = deps
            {
                out.push((id, d.split(',').map(str::to_string).collect()));
            }
        }
        Ok(out)
    }

    /// Up to `limit` follow-ups of `queue`, oldest first.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn followups(&self, queue: &str, limit: isize) -> Result<Vec<String>> {
        let mut c = self.conn();
        Ok(c.lrange(self.keys.followups(queue), 0, limit - 1).await?)
    }

    /// Lengths of the follow-up lists of `queues`.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn followup_counts(&self, queues: &[String]) -> Result<Vec<i64>> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for q in queues {
            pipe.llen(self.keys.followups(q));
        }
        let mut c = self.conn();
        Ok(pipe.query_async(&mut c).await?)
    }

    /// Works off one follow-up of ended task `id`: resolves its dependents and counts
    /// it in its batch. Returns the batch id and check when the batch's `then` task is
    /// due. The entry stays in the list until [`Store::ack_followup`].
    ///
    /// # Errors
    /// Redis errors.
    pub async fn process_followup(
        &self,
        queue: &str,
        id: &str,
    ) -> Result<Option<(String, BatchCheck)>> {
        let mut c = self.conn();
        let tkey = self.keys.task(queue, id);
        let (state, batch): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&tkey)
            .arg("state")
            .arg("batch")
            .query_async(&mut c)
            .await?;
        // Gone (deleted past retention): dependents see it as missing.
        let state = state.unwrap_or_else(|| "missing".into());
        let dkey = self.keys.dependents(queue, id);
        let waiters: Vec<String> = c.smembers(&dkey).await?;
        for w in &waiters {
            match self.resolve_dependency(w, id, &state).await {
                Ok(()) | Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        if !waiters.is_empty() {
            let _: i64 = c.del(&dkey).await?;
        }
        if let Some(b) = batch {
            let mut inv = self.scripts.batch_child.key(self.keys.batch_prefix(&b));
            inv.arg(id).arg(&state);
            if let Some(check) = batch_check(inv.invoke_async(&mut c).await?)?
                && check.then_due
            {
                return Ok(Some((b, check)));
            }
        }
        Ok(None)
    }

    /// Removes a worked-off follow-up.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn ack_followup(&self, queue: &str, id: &str) -> Result<()> {
        let mut c = self.conn();
        let _: i64 = c.lrem(self.keys.followups(queue), 1, id).await?;
        Ok(())
    }

    // ----- batches -----

    /// Creates batch `id` with one chunk in flight (see [`Store::batch_add`]).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn batch_create(&self, id: &str, then_json: Option<&str>, open: bool) -> Result<()> {
        let mut inv = self.scripts.batch_create.key(self.keys.batch_prefix(id));
        inv.arg(id)
            .arg(then_json.unwrap_or(""))
            .arg(if open { "1" } else { "0" });
        let mut c = self.conn();
        let _ = coded(inv.invoke_async(&mut c).await?)?;
        Ok(())
    }

    /// Counts a chunk in flight before its children are stored.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn batch_begin(&self, id: &str) -> Result<BatchBegin> {
        let inv = self.scripts.batch_begin.key(self.keys.batch_prefix(id));
        let mut c = self.conn();
        let (code, _) = coded(inv.invoke_async(&mut c).await?)?;
        Ok(match code {
            0 => BatchBegin::Open,
            1 => BatchBegin::NotFound,
            _ => BatchBegin::Finished,
        })
    }

    /// Records a chunk's stored children (none when storing failed) and ends its
    /// in-flight count; `close` ends an `open` hold.
    ///
    /// # Errors
    /// Redis errors; [`StoreError::NotFound`] when the batch is gone.
    pub async fn batch_add(
        &self,
        id: &str,
        close: bool,
        children: &[String],
    ) -> Result<BatchCheck> {
        let mut inv = self.scripts.batch_add.key(self.keys.batch_prefix(id));
        inv.arg(if close { "1" } else { "0" });
        for ch in children {
            inv.arg(ch);
        }
        let mut c = self.conn_for(children.len());
        batch_check(inv.invoke_async(&mut c).await?)?.ok_or(StoreError::NotFound)
    }

    /// Records the stored `then` task of a batch.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn batch_then(&self, id: &str, then_id: &str) -> Result<()> {
        let mut inv = self.scripts.batch_then.key(self.keys.batch_prefix(id));
        inv.arg(then_id);
        let mut c = self.conn();
        let _ = coded(inv.invoke_async(&mut c).await?)?;
        Ok(())
    }

    /// A batch's progress.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; Redis errors.
    pub async fn batch(&self, id: &str) -> Result<Batch> {
        let mut c = self.conn();
        let h: HashMap<String, String> = c
            .hgetall(format!("{}meta", self.keys.batch_prefix(id)))
            .await?;
        if h.is_empty() {
            return Err(StoreError::NotFound);
        }
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        let total = num("total");
        let done = num("done");
        Ok(Batch {
            id: id.to_string(),
            state: match h.get("state").map(String::as_str) {
                Some("succeeded") => BatchState::Succeeded,
                Some("failed") => BatchState::Failed,
                _ => BatchState::Running,
            },
            open: h.get("open").is_some_and(|v| v == "1"),
            total,
            succeeded: num("succeeded"),
            failed: num("failed"),
            cancelled: num("cancelled"),
            unfinished: (total - done).max(0),
            then_task: h.get("then_id").filter(|v| !v.is_empty()).cloned(),
            created_at: rfc3339_ms(num("created_at")),
            finished_at: h
                .get("finished_at")
                .and_then(|v| v.parse().ok())
                .map(rfc3339_ms),
        })
    }

    /// A page of a batch's children with their outcomes, in joining order.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; Redis errors.
    pub async fn batch_results(
        &self,
        id: &str,
        cursor: usize,
        limit: usize,
    ) -> Result<BatchResultPage> {
        let prefix = self.keys.batch_prefix(id);
        let mut c = self.conn();
        let exists: bool = c.exists(format!("{prefix}meta")).await?;
        if !exists {
            return Err(StoreError::NotFound);
        }
        let ids: Vec<String> = c
            .lrange(
                format!("{prefix}children"),
                cursor as isize,
                (cursor + limit) as isize - 1,
            )
            .await?;
        let mut pipe = redis::pipe();
        for child in &ids {
            let q = validate::task_queue(child).unwrap_or("default");
            pipe.cmd("HMGET")
                .arg(self.keys.task(q, child))
                .arg("state")
                .arg("result")
                .arg("error");
        }
        let rows: Vec<(Option<String>, Option<String>, Option<String>)> = if ids.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut c).await?
        };
        let items: Vec<BatchResult> = ids
            .into_iter()
            .zip(rows)
            .map(|(id, (state, result, error))| BatchResult {
                id,
                state: state.as_deref().and_then(TaskState::parse),
                result: result
                    .filter(|r| !r.is_empty())
                    .map(|r| serde_json::from_str(&r).unwrap_or(serde_json::Value::String(r))),
                error: error.filter(|e| !e.is_empty()),
            })
            .collect();
        let next_cursor = (items.len() == limit).then(|| (cursor + limit).to_string());
        Ok(BatchResultPage { items, next_cursor })
    }
}
