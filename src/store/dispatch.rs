//! The way of a task to a node and back: promote (due → pending), dispatch (pending →
//! a node's inbox), lease (inbox → running), extend (renew a lease), expire (a lease
//! past its deadline → a failed attempt), and requeue (an inbox → pending).

use super::shards::Visit;
use super::{
    Code, Missing, Result, Store, StoreError, array, coded, int, state_of, task_from_hash, text,
};
use crate::domain::{Task, validate};
use std::collections::HashMap;

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

/// Outcome of [`Store::dispatch_to`].
#[derive(Debug, Clone, Default)]
pub struct Dispatched {
    /// Tasks assigned.
    pub assigned: i64,
    /// Tasks left pending.
    pub left: i64,
    /// Ms until the queue's rate limit allows the next task (0: not rate-limited).
    pub wait_ms: i64,
    /// The nodes whose inbox got tasks, each once (the ones to wake).
    pub nodes: Vec<String>,
    /// Leases started at once for nodes given a direct count (node, its leases).
    pub direct: Vec<(String, Vec<Leased>)>,
}

/// Outcome of [`Store::extend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extended {
    /// New deadline (ms).
    pub expires_ms: i64,
    /// The task was cancelled meanwhile: stop it.
    pub cancel_requested: bool,
}

/// What a lease holder's call names: task `id`'s queue and the token's fence and nonce.
///
/// # Errors
/// [`StoreError::NotFound`] for a malformed id, [`StoreError::LeaseConflict`] for a
/// malformed token.
pub(super) fn claim<'a>(id: &'a str, token: &'a str) -> Result<(&'a str, i64, &'a str)> {
    let queue = validate::task_shard(id).ok_or(StoreError::NotFound {
        what: Missing::Task,
    })?;
    let (fence, nonce) = parse_lease_token(token).ok_or(StoreError::LeaseConflict {
        state: "unknown".into(),
    })?;
    Ok((queue, fence, nonce))
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

/// Task `id`'s hash, read just after `lease.lua` (or `dispatch.lua`) leased it, as a
/// lease; `None` when the hash is gone (deleted in between: its lease is nobody's and
/// ends at its deadline).
fn leased_from_hash(queue: &str, id: &str, h: &HashMap<String, String>) -> Result<Option<Leased>> {
    if h.is_empty() {
        return Ok(None);
    }
    let task =
        task_from_hash(queue, id, h).ok_or_else(|| StoreError::Protocol("bad task hash".into()))?;
    let nonce = h.get("nonce").map(String::as_str).unwrap_or_default();
    let expires_ms = h
        .get("lease_expires")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Some(Leased {
        token: format!("{}.{nonce}", task.fence),
        task,
        expires_ms,
    }))
}

/// Where [`Store::lease`] takes tasks from besides the node's inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    /// The inbox only (what the dispatcher assigned): a machine node's long-poll.
    Inbox,
    /// Also pending tasks, under the queue's limits: a person's node, which the
    /// dispatcher never pushes to.
    Person,
    /// As `Person`, for a machine node's report call that asks for its next tasks
    /// (`lease_max`): never from a human-only queue, as the dispatcher would not.
    Machine,
}

impl From<bool> for Pull {
    fn from(pull: bool) -> Self {
        if pull { Pull::Person } else { Pull::Inbox }
    }
}

impl Store {
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
    /// the next task or 0); [`Store::dispatch_to`] also says which nodes got tasks.
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
        let d = self.dispatch_to(queue, nodes, max, scan).await?;
        Ok((d.assigned, d.left, d.wait_ms))
    }

    /// [`Store::dispatch`], with the nodes that got tasks (the ones to wake).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn dispatch_to(
        &self,
        queue: &str,
        nodes: &[(String, i64, String)],
        max: usize,
        scan: usize,
    ) -> Result<Dispatched> {
        self.dispatch_direct(queue, nodes, &[], max, scan).await
    }

    /// [`Store::dispatch_to`], where the i-th node gets up to `direct[i]` of its tasks
    /// leased at once (running, with a new fence and nonce, as [`Store::lease`] would
    /// have leased them from its inbox) instead of put in its inbox: the direct hand-off
    /// to a lease long-poll of that node waiting in this process. Missing entries are 0.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn dispatch_direct(
        &self,
        queue: &str,
        nodes: &[(String, i64, String)],
        direct: &[usize],
        max: usize,
        scan: usize,
    ) -> Result<Dispatched> {
        let seed = hex::encode(rand::random::<[u8; 12]>());
        let mut inv = self.scripts.dispatch.key(self.keys.queue_prefix(queue));
        inv.arg(self.channel())
            .arg(max)
            .arg(scan)
            .arg(&seed)
            .arg(nodes.len());
        for (i, (id, free, tags)) in nodes.iter().enumerate() {
            inv.arg(id)
                .arg(*free)
                .arg(tags)
                .arg(direct.get(i).copied().unwrap_or(0));
        }
        let mut c = self.conn();
        let v = array(inv.invoke_async(&mut c).await?)?;
        let woken = v.get(3).and_then(int).unwrap_or(0).max(0) as usize;
        let mut out = Dispatched {
            assigned: v.first().and_then(int).unwrap_or(0),
            left: v.get(1).and_then(int).unwrap_or(0),
            wait_ms: v.get(2).and_then(int).unwrap_or(0),
            nodes: v.iter().skip(4).take(woken).filter_map(text).collect(),
            direct: Vec::new(),
        };
        let mut rest = v.into_iter().skip(4 + woken);
        let mut per_node: Vec<(String, usize)> = Vec::new();
        let mut ids: Vec<String> = Vec::new();
        while let Some(node) = rest.next() {
            let node = text(&node)
                .ok_or_else(|| StoreError::Protocol("dispatch reply: no node id".into()))?;
            let k = rest.next().as_ref().and_then(int).unwrap_or(0).max(0) as usize;
            ids.extend(rest.by_ref().take(k).filter_map(|v| text(&v)));
            per_node.push((node, k));
        }
        let mut leased = self.leased_tasks(queue, &ids).await?.into_iter();
        for (node, k) in per_node {
            let leases = leased.by_ref().take(k).flatten().collect();
            out.direct.push((node, leases));
        }
        Ok(out)
    }

    /// The tasks a lease script just leased (ids of one shard), read in one pipeline
    /// after the script: the scripts hand back ids, not whole hashes, since Redis
    /// converts a hash to Lua and back at a cost per field. Until its holder hears of the
    /// lease, nothing writes a running task's hash but a cancel request or an admin, so
    /// what is read is the lease as written. One entry per id, in order (`None`: gone).
    async fn leased_tasks(&self, queue: &str, ids: &[String]) -> Result<Vec<Option<Leased>>> {
        let hashes = self.task_hashes(queue, ids).await?;
        ids.iter()
            .zip(&hashes)
            .map(|(id, h)| leased_from_hash(queue, id, h))
            .collect()
    }

    /// Leases up to `max` tasks of `queue` to `node` from its inbox (and, with `pull`,
    /// straight from pending: see [`Pull`]; `false` is [`Pull::Inbox`], `true`
    /// [`Pull::Person`]). A sharded queue's shards are visited in turn, from the one
    /// after the shard that last gave a lease, until `max` are leased.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn lease(
        &self,
        queue: &str,
        node: &str,
        max: usize,
        pull: impl Into<Pull>,
        tags: &str,
    ) -> Result<Vec<Leased>> {
        let pull = pull.into();
        let shards = self.shards_rotated(queue, Visit::Lease).await?;
        let mut out = Vec::new();
        for s in &shards {
            if out.len() >= max {
                break;
            }
            let got = self
                .lease_shard(s, node, max - out.len(), pull, tags)
                .await?;
            if !got.is_empty() && shards.len() > 1 {
                self.shard_gave(s, Visit::Lease);
            }
            out.extend(got);
        }
        Ok(out)
    }

    /// [`Store::lease`] from one shard (`queue` or `queue~k`).
    async fn lease_shard(
        &self,
        queue: &str,
        node: &str,
        max: usize,
        pull: Pull,
        tags: &str,
    ) -> Result<Vec<Leased>> {
        // One seed per call, not one nonce per possible lease: most calls lease few.
        let seed = hex::encode(rand::random::<[u8; 12]>());
        let mut inv = self.scripts.lease.key(self.keys.queue_prefix(queue));
        inv.arg(self.channel())
            .arg(node)
            .arg(max)
            .arg(match pull {
                Pull::Inbox => "0",
                Pull::Person => "1",
                Pull::Machine => "m",
            })
            .arg(tags);
        inv.arg(&seed);
        let mut c = self.conn();
        let ids: Vec<String> = inv.invoke_async(&mut c).await?;
        Ok(self
            .leased_tasks(queue, &ids)
            .await?
            .into_iter()
            .flatten()
            .collect())
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
        let (queue, fence, nonce) = claim(id, token)?;
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
            Code::Ok => Ok(Extended {
                expires_ms: rest.first().and_then(int).unwrap_or(0),
                cancel_requested: rest.get(1).and_then(int) == Some(1),
            }),
            Code::NotFound => Err(StoreError::NotFound {
                what: Missing::Task,
            }),
            Code::Conflict => Err(StoreError::LeaseConflict {
                state: state_of(rest.first()),
            }),
            c => Err(c.unexpected("extend")),
        }
    }

    /// Renews many leases of `node` (`None`: any holder): (task id, lease token,
    /// progress JSON) each. One `extend.lua` call per lease, sent together over the
    /// multiplexed connection (so pipelined); one result per item, in order.
    pub async fn extend_many(
        &self,
        node: Option<&str>,
        leases: &[(&str, &str, Option<&str>)],
    ) -> Vec<Result<Extended>> {
        futures::future::join_all(
            leases
                .iter()
                .map(|(id, token, progress)| self.extend(id, node, token, *progress)),
        )
        .await
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
}
