//! Listings: pages of tasks by queue, state and kind, with resumable cursors.

use super::{Result, Store, StoreError};
use crate::domain::{Task, TaskPage, TaskState};
use redis::AsyncCommands;
use std::collections::HashMap;

impl Store {
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
        // Cursor: "<queue index>:<state index>:<offset>" over the sorted shard list.
        // Over shards: a sharded queue is listed shard after shard.
        let queues: Vec<String> = match queue {
            Some(q) => self.shards_of(q).await?,
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
