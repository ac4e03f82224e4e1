//! Dependencies between tasks and the follow-ups that resolve them.
//!
//! A dependency may sit in another queue (another hash tag), so no single script can
//! see both sides. The end of a task that something waits on pushes its id onto its
//! queue's `followups` list in the same script that ends it; the coordinator
//! (`crate::workers::coordinator`) works that list off with idempotent scripts (each dependency and
//! each batch child counts once) and only then removes the entry, so a crash or a lost
//! wake-up delays a follow-up but never loses it.

use super::batches::{BatchCheck, batch_check};
use super::{Code, Missing, PreparedTask, Result, Store, StoreError, coded, text};
use crate::domain::validate;
use redis::AsyncCommands;

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
            match validate::task_shard(id) {
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
            let ended = match validate::task_shard(dep) {
                None => Some("missing".to_string()),
                Some(q) => {
                    let mut inv = self.scripts.dep_register.key(self.keys.queue_prefix(q));
                    inv.arg(dep).arg(id);
                    let mut c = self.conn();
                    let (code, rest) = coded(inv.invoke_async(&mut c).await?)?;
                    match code {
                        Code::Ok => None,
                        Code::NotFound => Some("missing".to_string()),
                        // Already ended: resolved now, as its follow-up would have.
                        Code::Conflict => Some(rest.first().and_then(text).unwrap_or_default()),
                        c => return Err(c.unexpected("dep_register")),
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
        let q = validate::task_shard(id).ok_or(StoreError::NotFound {
            what: Missing::Task,
        })?;
        let mut inv = self.scripts.dep_resolved.key(self.keys.queue_prefix(q));
        inv.arg(self.keys.wake_channel())
            .arg(id)
            .arg(dep)
            .arg(state);
        let mut c = self.conn();
        match coded(inv.invoke_async(&mut c).await?)?.0 {
            // A task gone meanwhile (deleted, expired) has nothing left to resolve.
            Code::Ok | Code::NotFound => Ok(()),
            c => Err(c.unexpected("dep_resolved")),
        }
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
        self.per_queue(queues, |pipe, q| {
            pipe.llen(self.keys.followups(q));
        })
        .await
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
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
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
}
