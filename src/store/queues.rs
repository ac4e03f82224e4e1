//! Queues: the set of names, settings, counts and per-node load.

use super::{Result, Store, Wakeup};
use crate::domain::{QueueCounts, QueueInfo, QueueUpdate};
use redis::AsyncCommands;
use std::collections::HashMap;

impl Store {
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
                .publish(self.channel(), Wakeup::New { queue }.message(&self.keys))
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
        let v: Vec<HashMap<String, i64>> = self
            .per_queue(queues, |pipe, q| {
                pipe.hgetall(self.keys.load(q));
            })
            .await?;
        Ok(queues.iter().cloned().zip(v).collect())
    }

    /// The number of pending tasks of each queue given, in order (one pipeline), so the
    /// reconciler's sweep looks again only at queues with work.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn pending_counts(&self, queues: &[String]) -> Result<Vec<i64>> {
        self.per_queue(queues, |pipe, q| {
            pipe.zcard(self.keys.state_index(q, "pending"));
        })
        .await
    }
}
