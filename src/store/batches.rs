//! Batches (fan-out / fan-in): a batch's meta hash, its children in joining order and
//! the set of those counted as ended, all under the batch's own hash tag
//! `{~batch:<id>}`. A child's end reaches its batch through a follow-up
//! ([`super::dependencies`]).

use super::{Code, Missing, Result, Store, StoreError, coded, int, ok, text};
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

pub(super) fn batch_check(v: redis::Value) -> Result<Option<BatchCheck>> {
    let (code, rest) = coded(v)?;
    match code {
        Code::Ok => {}
        Code::NotFound => return Ok(None),
        c => return Err(c.unexpected("batch_check")),
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
        ok(coded(inv.invoke_async(&mut c).await?)?, "batch_create")
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
            Code::Ok => BatchBegin::Open,
            Code::NotFound => BatchBegin::NotFound,
            Code::Conflict => BatchBegin::Finished,
            c => return Err(c.unexpected("batch_begin")),
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
        batch_check(inv.invoke_async(&mut c).await?)?.ok_or(StoreError::NotFound {
            what: Missing::Batch,
        })
    }

    /// Records the stored `then` task of a batch.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn batch_then(&self, id: &str, then_id: &str) -> Result<()> {
        let mut inv = self.scripts.batch_then.key(self.keys.batch_prefix(id));
        inv.arg(then_id);
        let mut c = self.conn();
        ok(coded(inv.invoke_async(&mut c).await?)?, "batch_then")
    }

    /// A batch's progress.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; Redis errors.
    pub async fn batch(&self, id: &str) -> Result<Batch> {
        let mut c = self.conn();
        let h: HashMap<String, String> = c.hgetall(self.keys.batch_meta(id)).await?;
        if h.is_empty() {
            return Err(StoreError::NotFound {
                what: Missing::Batch,
            });
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
        let mut c = self.conn();
        let exists: bool = c.exists(self.keys.batch_meta(id)).await?;
        if !exists {
            return Err(StoreError::NotFound {
                what: Missing::Batch,
            });
        }
        let ids: Vec<String> = c
            .lrange(
                self.keys.batch_children(id),
                cursor as isize,
                (cursor + limit) as isize - 1,
            )
            .await?;
        let mut pipe = redis::pipe();
        for child in &ids {
            let q = validate::task_shard(child).unwrap_or("default");
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
