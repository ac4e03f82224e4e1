//! Nodes: registration, heartbeats, status, statistics and removal, with the decoder
//! of a node hash.

use super::{Code, Result, Store, coded, int, ok_unless, state_of};
use crate::domain::{Node, NodeKind, NodeStatus, rfc3339_ms, validate};
use redis::AsyncCommands;
use std::collections::HashMap;

/// A node's stored record, with its token hash.
#[derive(Debug, Clone)]
pub struct NodeRecord {
    /// The public view.
    pub node: Node,
    /// SHA-256 (hex) of the node's token.
    pub token_sha: String,
    /// Last heartbeat, ms (Redis clock).
    pub last_seen_ms: i64,
    /// SHA-256 (hex) of the role token that registered it (empty for the admin
    /// token): the node's streams and locks count against that token's quotas.
    pub owner: String,
}

/// The records of node hashes, newest first, `running(id)` each.
fn records(hs: &[HashMap<String, String>], running: impl Fn(&str) -> i64) -> Vec<NodeRecord> {
    let mut out: Vec<NodeRecord> = hs
        .iter()
        .filter_map(|h| node_from_hash(h, running(h.get("id")?)))
        .collect();
    out.sort_by(|a, b| b.node.id.cmp(&a.node.id));
    out
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
        owner: get("owner"),
    })
}

impl Store {
    /// Stores a new node.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn register_node(&self, node: &Node, token_sha: &str, owner: &str) -> Result<i64> {
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
                    ("owner", owner.to_string()),
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
        match code {
            Code::Ok => {}
            Code::NotFound => return Ok(None),
            c => return Err(c.unexpected("heartbeat")),
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
        let hs = self.node_hashes().await?;
        if hs.is_empty() {
            return Ok(Vec::new());
        }
        let queues = self.queues().await?;
        let loads = self.loads(&queues).await?;
        Ok(records(&hs, |id| {
            loads.values().filter_map(|m| m.get(id)).sum()
        }))
    }

    /// Every node, newest first, without loads (`node.running` is 0): two round trips
    /// whatever the number of queues, for the in-process node directory (auth and the
    /// dispatcher need a node's settings, token and heartbeat, not its running count).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn nodes_without_loads(&self) -> Result<Vec<NodeRecord>> {
        Ok(records(&self.node_hashes().await?, |_| 0))
    }

    /// The hash of every node in the directory.
    async fn node_hashes(&self) -> Result<Vec<HashMap<String, String>>> {
        let mut c = self.conn();
        let ids: Vec<String> = c.zrange(self.keys.nodes(), 0, -1).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.keys.node(id));
        }
        Ok(pipe.query_async(&mut c).await?)
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

    /// Returns a node's inboxes to pending in every queue (every shard) it serves.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn requeue_node(&self, node: &Node) -> Result<i64> {
        let mut n = 0;
        for q in &self.expand_shards(&node.queues).await? {
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
        let shards = self.expand_shards(&node.queues).await?;
        let v: Vec<Vec<String>> = self
            .per_queue(&shards, |pipe, q| {
                pipe.smembers(self.keys.cancels(q, &node.id));
            })
            .await?;
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

    /// Removes the nodes last seen at or before `before_ms` that hold no lease (a node
    /// with a running task stays until it ends or its lease expires); their inboxes go
    /// back to pending first. A node that heartbeats meanwhile stays (`node_forget.lua`
    /// checks its last heartbeat again). Returns the ids removed.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn forget_dead_nodes(&self, before_ms: i64) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for id in self.stale_nodes(before_ms).await? {
            let rec = self.node(&id).await?;
            if rec.as_ref().is_some_and(|r| r.node.running > 0) {
                continue;
            }
            if let Some(r) = &rec {
                self.requeue_node(&r.node).await?;
            }
            let mut c = self.conn();
            let v = self
                .scripts
                .node_forget
                .key(self.keys.nodes())
                .key(self.keys.node(&id))
                .arg(&id)
                .arg(before_ms)
                .invoke_async(&mut c)
                .await?;
            if ok_unless(coded(v)?.0, Code::Conflict, "node_forget")? {
                removed.push(id);
            }
        }
        Ok(removed)
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
}
