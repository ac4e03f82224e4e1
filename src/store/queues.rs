//! Queues: the set of names, settings, counts and per-node load, and the pruning of
//! empty, idle queues from the set (`queue_prune.lua`).

use super::{Code, Result, Store, Wakeup, coded, text};
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
            // Again after the settings exist: a pruning pass that saw the queue empty
            // just before may have removed it from the set meanwhile.
            self.add_queues(&[queue]).await?;
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

    /// Of `queues`, those that look empty (no task in any state, no settings, no
    /// follow-up), each with the time (ms) of its last event, `None` when it has none;
    /// read in pipelines of 500 queues. [`Store::prune_queue`] checks again atomically.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn empty_queues(&self, queues: &[String]) -> Result<Vec<(String, Option<i64>)>> {
        const STATES: [&str; 8] = [
            "blocked",
            "scheduled",
            "pending",
            "running",
            "retrying",
            "succeeded",
            "failed",
            "cancelled",
        ];
        let mut out = Vec::new();
        let mut c = self.conn();
        for chunk in queues.chunks(500) {
            let mut pipe = redis::pipe();
            for q in chunk {
                for st in STATES {
                    pipe.zcard(self.keys.state_index(q, st));
                }
                pipe.exists(self.keys.conf(q));
                pipe.llen(self.keys.followups(q));
                pipe.cmd("XREVRANGE")
                    .arg(self.keys.events(q))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1);
            }
            let v: Vec<redis::Value> = pipe.query_async(&mut c).await?;
            for (q, row) in chunk.iter().zip(v.chunks(STATES.len() + 3)) {
                let n = |v: &redis::Value| redis::from_redis_value::<i64>(v.clone()).unwrap_or(1);
                if row.len() < STATES.len() + 3 || row[..STATES.len() + 2].iter().any(|v| n(v) != 0)
                {
                    continue;
                }
                out.push((q.clone(), last_event_ms(&row[STATES.len() + 2])));
            }
        }
        Ok(out)
    }

    /// Prunes `queue` from the `queues` set when it is still empty (see
    /// [`Store::empty_queues`]), holds no node's load and its last event is at least
    /// `idle_ms` old: removed from the set, then `queue_prune.lua` checks again and
    /// deletes its leftovers, or the queue is added back. A concurrent submit adds the
    /// queue again after its script (it finds the queue new), so a queue with tasks is
    /// never left out. `true` when pruned.
    ///
    /// # Errors
    /// Redis errors (the queue is then added back when Redis answers again: it is
    /// re-added by the next submit in any case).
    pub async fn prune_queue(&self, queue: &str, idle_ms: i64) -> Result<bool> {
        let mut c = self.conn();
        let _: i64 = c.srem(self.keys.queues(), queue).await?;
        let reply = self
            .scripts
            .queue_prune
            .key(self.keys.queue_prefix(queue))
            .arg(idle_ms)
            .invoke_async(&mut c)
            .await;
        let code = match reply {
            Ok(v) => coded(v),
            Err(e) => Err(e.into()),
        };
        match code {
            Ok((Code::Ok, _)) => Ok(true),
            Ok((Code::Conflict, rest)) => {
                tracing::debug!(queue, why = ?rest.first().and_then(text), "queue not pruned");
                self.add_queues(&[queue]).await?;
                Ok(false)
            }
            Ok((other, _)) => {
                self.add_queues(&[queue]).await?;
                Err(other.unexpected("queue_prune"))
            }
            Err(e) => {
                // Unknown outcome: put it back (an empty queue in the set costs little).
                let _ = self.add_queues(&[queue]).await;
                Err(e)
            }
        }
    }

    /// Queues something still points at, which pruning leaves alone: every registered
    /// node's queues and every schedule's task queue.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn referenced_queues(&self) -> Result<std::collections::HashSet<String>> {
        let mut c = self.conn();
        let mut out = std::collections::HashSet::new();
        let ids: Vec<String> = c.zrange(self.keys.nodes(), 0, -1).await?;
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hget(self.keys.node(id), "queues");
            }
            let qs: Vec<Option<String>> = pipe.query_async(&mut c).await?;
            for q in qs.into_iter().flatten() {
                out.extend(q.split(',').filter(|s| !s.is_empty()).map(str::to_string));
            }
        }
        let names: Vec<String> = c.smembers(self.keys.schedules()).await?;
        if !names.is_empty() {
            let mut pipe = redis::pipe();
            for n in &names {
                pipe.hget(self.keys.schedule(n), "task");
            }
            let tasks: Vec<Option<String>> = pipe.query_async(&mut c).await?;
            for t in tasks.into_iter().flatten() {
                let queue = serde_json::from_str::<serde_json::Value>(&t)
                    .ok()
                    .and_then(|v| v.get("queue").and_then(|q| q.as_str()).map(str::to_string))
                    .unwrap_or_else(|| "default".to_string());
                out.insert(queue);
            }
        }
        Ok(out)
    }
}

/// What a timer round has to do in one queue ([`Store::due_queues`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The queue.
    pub queue: String,
    /// A scheduled or retrying task is due: run `promote`.
    pub promote: bool,
    /// A lease is past its deadline: run `expire`.
    pub expire: bool,
}

impl Store {
    /// Of `queues`, those with a scheduled or retrying task due at `now_ms` or a lease
    /// past it (`ZCOUNT`s in pipelines of 500 queues), so that a timer round runs its
    /// scripts only where there is work: a round over 10,000 quiet queues is 20
    /// pipelined reads, not 20,000 script calls one after the other.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn due_queues(&self, queues: &[String], now_ms: i64) -> Result<Vec<Due>> {
        let mut out = Vec::new();
        let mut c = self.conn();
        for chunk in queues.chunks(500) {
            let mut pipe = redis::pipe();
            for q in chunk {
                for st in ["scheduled", "retrying", "running"] {
                    pipe.zcount(self.keys.state_index(q, st), "-inf", now_ms);
                }
            }
            let n: Vec<i64> = pipe.query_async(&mut c).await?;
            for (q, row) in chunk.iter().zip(n.chunks(3)) {
                let (promote, expire) = match row {
                    [s, r, x] => (*s > 0 || *r > 0, *x > 0),
                    _ => (true, true),
                };
                if promote || expire {
                    out.push(Due {
                        queue: q.clone(),
                        promote,
                        expire,
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The time (ms) in the id of the one entry of an `XREVRANGE … COUNT 1` reply.
fn last_event_ms(v: &redis::Value) -> Option<i64> {
    let redis::Value::Array(entries) = v else {
        return None;
    };
    let redis::Value::Array(entry) = entries.first()? else {
        return None;
    };
    let id: String = redis::from_redis_value(entry.first()?.clone()).ok()?;
    id.split('-').next()?.parse().ok()
}
