//! Reports: a node's completion or failure of its current lease, one at a time
//! (`complete.lua`, `fail.lua`) or many with one `report_many.lua` call per queue (and
//! per [`CHUNK`] reports), each item answered as [`Store::complete`] or [`Store::fail`]
//! would have.

use super::dispatch::claim;
use super::{Code, Missing, Result, Store, StoreError, array, coded, int, state_of, text};
use crate::domain::TaskState;
use redis::Value;

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

impl Store {
    /// Decodes complete.lua's or fail.lua's reply (and each of report_many.lua's).
    fn reported((code, rest): (Code, Vec<Value>)) -> Result<Reported> {
        let state = || {
            TaskState::parse(&state_of(rest.first()))
                .ok_or_else(|| StoreError::Protocol("bad state".into()))
        };
        match code {
            Code::Ok => Ok(Reported {
                state: state()?,
                run_ms: rest.get(1).and_then(int),
                node: rest.get(2).and_then(text),
            }),
            Code::Repeat => Ok(Reported {
                state: state()?,
                run_ms: None,
                node: None,
            }),
            Code::NotFound => Err(StoreError::NotFound {
                what: Missing::Task,
            }),
            Code::Conflict => Err(StoreError::LeaseConflict {
                state: state_of(rest.first()),
            }),
            c => Err(c.unexpected("complete/fail")),
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
        Self::reported(
            self.report(&self.scripts.complete, id, node, token, &[result])
                .await?,
        )
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
    ) -> Result<(Code, Vec<Value>)> {
        let (queue, fence, nonce) = claim(id, token)?;
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
        Self::reported(
            self.report(
                &self.scripts.fail,
                id,
                node,
                token,
                &[error, retryable, &jitter],
            )
            .await?,
        )
    }
}

/// Reports per script call: bounds the time one call holds Redis.
pub const CHUNK: usize = 500;

/// What a report says about its attempt.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The handler succeeded with this result (JSON text).
    Succeeded(&'a str),
    /// The attempt failed.
    Failed {
        /// Error text.
        error: &'a str,
        /// Whether another attempt may follow.
        retryable: bool,
    },
}

/// One report of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// Task id.
    pub id: &'a str,
    /// `<fence>.<nonce>`.
    pub token: &'a str,
    /// What happened.
    pub outcome: Outcome<'a>,
}

/// A valid report of a batch: its index, fence and nonce.
type Item<'a> = (usize, i64, &'a str);

impl Store {
    /// Records many reports of `node` (`None`: an admin caller, any node's lease) with
    /// one script call per queue and chunk. The answer has one entry per report, in
    /// order, as [`Store::complete`] / [`Store::fail`] would have answered it.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when Redis cannot be reached (some chunks may have been
    /// written: each report is idempotent for its lease, so the caller may repeat all).
    pub async fn report_many(
        &self,
        node: Option<&str>,
        reports: &[Report<'_>],
    ) -> Result<Vec<Result<Reported>>> {
        Ok(self.report_many_echoed(node, reports).await?.0)
    }

    /// [`Store::report_many`], with the `done` wake-ups its scripts published (exactly
    /// as published), so that this process can skip their echo from pub/sub
    /// (`Hub::expect_echo`): it has acted on these reports itself.
    ///
    /// # Errors
    /// As [`Store::report_many`].
    pub async fn report_many_echoed(
        &self,
        node: Option<&str>,
        reports: &[Report<'_>],
    ) -> Result<(Vec<Result<Reported>>, Vec<String>)> {
        let mut out: Vec<Option<Result<Reported>>> = (0..reports.len()).map(|_| None).collect();
        // Valid reports grouped by queue, in order: (queue, [(index, fence, nonce)]).
        let mut groups: Vec<(&str, Vec<Item<'_>>)> = Vec::new();
        for (i, r) in reports.iter().enumerate() {
            let (queue, fence, nonce) = match claim(r.id, r.token) {
                Ok(claimed) => claimed,
                Err(e) => {
                    out[i] = Some(Err(e));
                    continue;
                }
            };
            match groups.iter_mut().find(|g| g.0 == queue) {
                Some(g) => g.1.push((i, fence, nonce)),
                None => groups.push((queue, vec![(i, fence, nonce)])),
            }
        }
        let calls = groups.iter().flat_map(|(queue, items)| {
            items.chunks(CHUNK).map(move |chunk| async move {
                let replies = self.report_chunk(queue, node, reports, chunk).await;
                ((*queue, chunk), replies)
            })
        });
        let mut echoes = Vec::new();
        for ((queue, chunk), replies) in futures::future::join_all(calls).await {
            match replies {
                Ok(replies) => {
                    echoes.extend(self.done_wakeups(queue, reports, chunk, &replies));
                    for (item, reply) in chunk.iter().zip(replies) {
                        out[item.0] = Some(reply);
                    }
                }
                Err(e @ StoreError::Unavailable(_)) => return Err(e),
                Err(e) => {
                    let msg = e.to_string();
                    for item in chunk {
                        out[item.0] = Some(Err(StoreError::Protocol(msg.clone())));
                    }
                }
            }
        }
        let out = out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::Protocol("no reply".into()))))
            .collect();
        Ok((out, echoes))
    }

    /// The `done` messages report_many.lua published for one chunk, as lib.lua's
    /// report_flush builds them: per node (in order of its first accepted report), the
    /// ids it accepted (not repeats), 1,000 per message.
    fn done_wakeups(
        &self,
        queue: &str,
        reports: &[Report<'_>],
        chunk: &[Item<'_>],
        replies: &[Result<Reported>],
    ) -> Vec<String> {
        let mut by_node: Vec<(&str, Vec<&str>)> = Vec::new();
        for (item, reply) in chunk.iter().zip(replies) {
            let Ok(Reported {
                node: Some(node), ..
            }) = reply
            else {
                continue;
            };
            let id = reports[item.0].id;
            match by_node.iter_mut().find(|(n, _)| n == node) {
                Some((_, ids)) => ids.push(id),
                None => by_node.push((node.as_str(), vec![id])),
            }
        }
        let mut out = Vec::new();
        for (node, ids) in by_node {
            for part in ids.chunks(1000) {
                let w = super::Wakeup::Done {
                    queue,
                    node,
                    tasks: part.to_vec(),
                };
                out.push(w.message(&self.keys));
            }
        }
        out
    }

    async fn report_chunk(
        &self,
        queue: &str,
        node: Option<&str>,
        reports: &[Report<'_>],
        chunk: &[Item<'_>],
    ) -> Result<Vec<Result<Reported>>> {
        let mut inv = self.scripts.report_many.key(self.keys.queue_prefix(queue));
        inv.arg(self.channel())
            .arg(node.unwrap_or(""))
            .arg(rand::random::<f64>())
            .arg(chunk.len());
        for &(i, fence, nonce) in chunk {
            let r = &reports[i];
            inv.arg(r.id).arg(fence).arg(nonce);
            match r.outcome {
                Outcome::Succeeded(result) => inv.arg("s").arg(result).arg(""),
                Outcome::Failed { error, retryable } => {
                    inv.arg("f")
                        .arg(error)
                        .arg(if retryable { "1" } else { "0" })
                }
            };
        }
        // Big batches on the bulk connection: a long script must not time out as 503.
        let mut c = self.conn_for(chunk.len());
        // Four elements per report, flat (report_many.lua builds no table per report).
        let flat = array(inv.invoke_async::<Value>(&mut c).await?)?;
        if flat.len() != chunk.len() * 4 {
            return Err(StoreError::Protocol(format!(
                "report_many answered {} values for {} reports",
                flat.len(),
                chunk.len()
            )));
        }
        let mut flat = flat.into_iter();
        Ok((0..chunk.len())
            .map(|_| coded(Value::Array(flat.by_ref().take(4).collect())).and_then(Self::reported))
            .collect())
    }
}
