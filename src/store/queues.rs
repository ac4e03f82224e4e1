//! Queues: the set of names, settings, counts and per-node load, and the pruning of
//! empty, idle queues from the set (`queue_prune.lua`).

use super::{Code, Result, Store, Wakeup, coded, text};
use crate::domain::{QueueCounts, QueueInfo, QueueUpdate, validate};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a submission here trusts that its queue is still in the `queues` set after
/// one of this process's submissions stored tasks there. Only an empty queue whose last
/// event is older than the reconciler's idle time (an hour) is removed from the set
/// (`queue_prune.lua`), and a submit that races a removal anyway sees its queue as new
/// and adds it again (`submit.lua`'s `fresh`), so this only saves the `SADD` round trip
/// before each submission. One server or Sentinel only: there the set and the queue's
/// keys are on one primary, whose replica gets them in order, so a failover that loses
/// the `SADD` loses the tasks after it too. On a Cluster they are on different primaries
/// and a failover can lose the one without the other, so every submission adds its
/// queues there (a failover test left tasks of a queue missing from the set unswept).
pub const LISTED_FOR: Duration = Duration::from_secs(10);

/// Queues whose submission here stored tasks lately, with when.
#[derive(Debug, Default)]
pub(crate) struct Listed(Mutex<HashMap<String, Instant>>);

impl Listed {
    /// Of `names`, those not seen listed within [`LISTED_FOR`].
    fn unlisted<'a>(&self, names: &[&'a str]) -> Vec<&'a str> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        names
            .iter()
            .filter(|n| m.get(**n).is_none_or(|at| at.elapsed() >= LISTED_FOR))
            .copied()
            .collect()
    }

    /// `names` are in the set now.
    fn listed(&self, names: &[&str]) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 10_000 {
            // Many short-lived queue names must not grow this for ever.
            m.retain(|_, at| at.elapsed() < LISTED_FOR);
        }
        let now = Instant::now();
        for n in names {
            m.insert((*n).to_string(), now);
        }
    }
}

impl Store {
    /// Adds to the `queues` set the queues of a submission not listed by one of this
    /// process's submissions within [`LISTED_FOR`] (usually none: no round trip); on a
    /// Cluster all of them, always.
    ///
    /// # Errors
    /// Redis errors.
    pub(crate) async fn list_queues_for_submit(&self, names: &[&str]) -> Result<()> {
        if self.is_cluster() {
            return self.add_queues(names).await;
        }
        let unlisted = self.listed.unlisted(names);
        if unlisted.is_empty() {
            return Ok(());
        }
        self.add_queues(&unlisted).await
    }

    /// A submission stored tasks in `names`, which are in the `queues` set.
    pub(crate) fn submitted_to(&self, names: &[&str]) {
        self.listed.listed(names);
    }

    /// Remembers queue names (the `queues` set) so timers and listings find them.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn add_queues(&self, names: &[&str]) -> Result<()> {
        let mut c = self.conn();
        let _: i64 = c.sadd(self.keys.queues(), names).await?;
        Ok(())
    }

    /// Every queue and shard name in the `queues` set (a sharded queue's shards are
    /// there as `<queue>~<k>`), sorted: what timers, sweeps and the doctor go over.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn queues(&self) -> Result<Vec<String>> {
        let mut c = self.conn();
        let mut v: Vec<String> = c.smembers(self.keys.queues()).await?;
        v.sort();
        Ok(v)
    }

    /// Every queue name, sorted, a sharded queue once: what listings show.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn queue_names(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = self
            .queues()
            .await?
            .iter()
            .map(|q| validate::split_shard(q).0.to_string())
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }

    /// Counts, settings and oldest pending age of one queue, summed over its shards.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn queue_info(&self, queue: &str) -> Result<QueueInfo> {
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
        let k = &self.keys;
        let shards = self.shards_of(queue).await?;
        let mut pipe = redis::pipe();
        pipe.hgetall(k.conf(queue));
        for s in &shards {
            for st in STATES {
                pipe.zcard(k.state_index(s, st));
            }
            pipe.hgetall(k.load(s));
            pipe.zrange(k.state_index(s, "pending"), 0, 0);
        }
        let mut c = self.conn();
        let v: Vec<redis::Value> = pipe.query_async(&mut c).await?;
        let mut it = v.into_iter();
        let mut next = || it.next().unwrap_or(redis::Value::Nil);
        let conf: HashMap<String, String> = redis::from_redis_value(next())?;
        let mut n = [0i64; 8];
        let mut load_total = 0i64;
        let mut heads: Vec<String> = Vec::new();
        for s in &shards {
            for slot in n.iter_mut() {
                *slot += redis::from_redis_value::<i64>(next())?;
            }
            let load: HashMap<String, i64> = redis::from_redis_value(next())?;
            load_total += load.values().sum::<i64>();
            let first: Vec<String> = redis::from_redis_value(next())?;
            if let Some(id) = first.first() {
                heads.push(k.task(s, id));
            }
        }
        let [bl, sc, pe, ru, re, su, fa, ca] = n;
        let oldest = if heads.is_empty() {
            None
        } else {
            let mut pipe = redis::pipe();
            for h in &heads {
                pipe.hget(h, "created_at");
            }
            let created: Vec<Option<i64>> = pipe.query_async(&mut c).await?;
            let now = self.now_ms().await?;
            created
                .into_iter()
                .flatten()
                .min()
                .map(|t| (now - t).max(0))
        };
        let total = |f: &str| conf.get(&format!("q_{f}")).or_else(|| conf.get(f));
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
            max_running: total("max_running")
                .and_then(|v| v.parse().ok())
                .filter(|v: &i64| *v > 0),
            rate_limit: total("rate_limit")
                .and_then(|v| v.parse().ok())
                .filter(|v: &f64| *v > 0.0),
            shards: shards.len() as i64,
        })
    }

    /// Updates a queue's settings (absent fields unchanged) and remembers the queue.
    ///
    /// On a sharded queue (or one being sharded: `shards` above 1) every shard's `conf`
    /// holds the settings, since a script reads only its own shard's keys: `weight`,
    /// `paused` and `human_only` as they are, `max_running` and `rate_limit` as that
    /// shard's share (`max_running` split into whole parts adding up to it, `rate_limit`
    /// into equal parts), and the queue's own values in shard 0's `q_max_running` and
    /// `q_rate_limit`. The shard count only grows ([`StoreError::ShardsShrink`]).
    ///
    /// # Errors
    /// [`StoreError::ShardsShrink`]; Redis errors.
    pub async fn update_queue(&self, queue: &str, u: &QueueUpdate) -> Result<()> {
        let now = self.shard_count_fresh(queue).await?;
        let wanted = u
            .shards
            .map_or(now, |n| n.clamp(1, i64::from(validate::MAX_SHARDS)) as u32);
        super::shards::check_growth(queue, now, wanted)?;
        if wanted > 1 {
            return self.update_sharded(queue, u, wanted).await;
        }
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
        if u.shards.is_some() {
            fields.push(("shards", "1".into()));
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

    /// [`Store::update_queue`] of a queue with `n` > 1 shards: the settings as they will
    /// be (shard 0's merged with `u`) written to every shard, each with its share of
    /// the limits, in one pipeline (split per slot on a Cluster). The new shards join
    /// the `queues` set before the count that sends tasks to them is written.
    async fn update_sharded(&self, queue: &str, u: &QueueUpdate, n: u32) -> Result<()> {
        let mut c = self.conn();
        let conf: HashMap<String, String> = c.hgetall(self.keys.conf(queue)).await?;
        let get = |f: &str| conf.get(f).cloned();
        let total = |f: &str| get(&format!("q_{f}")).or_else(|| get(f));
        let weight = u.weight.map(|w| w.to_string()).or_else(|| get("weight"));
        let flag = |v: Option<bool>, f: &str| {
            v.map(|b| if b { "1" } else { "0" }.to_string())
                .or_else(|| get(f))
        };
        let paused = flag(u.paused, "paused");
        let human_only = flag(u.human_only, "human_only");
        let max_running: i64 = u
            .max_running
            .or_else(|| total("max_running").and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        let rate: f64 = u
            .rate_limit
            .or_else(|| total("rate_limit").and_then(|v| v.parse().ok()))
            .unwrap_or(0.0);
        let names: Vec<String> = (0..n).map(|k| validate::shard_name(queue, k)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        self.add_queues(&refs).await?;
        let mut pipe = redis::pipe();
        for (k, s) in names.iter().enumerate() {
            let mut f: Vec<(&str, String)> = vec![("shards", n.to_string())];
            for (name, v) in [
                ("weight", &weight),
                ("paused", &paused),
                ("human_only", &human_only),
            ] {
                if let Some(v) = v {
                    f.push((name, v.clone()));
                }
            }
            f.push((
                "max_running",
                max_running_share(max_running, n, k as u32).to_string(),
            ));
            f.push(("rate_limit", (rate / f64::from(n)).to_string()));
            if k == 0 {
                f.push(("q_max_running", max_running.to_string()));
                f.push(("q_rate_limit", rate.to_string()));
            }
            pipe.hset_multiple(self.keys.conf(s), &f).ignore();
        }
        let _: () = pipe.query_async(&mut c).await?;
        self.forget_shards(queue);
        // Again after the settings exist (see `update_queue`).
        self.add_queues(&refs).await?;
        for s in &names {
            let _: i64 = c
                .publish(self.channel(), Wakeup::New { queue: s }.message(&self.keys))
                .await?;
        }
        Ok(())
    }

    /// A queue's counters (`submitted`, `succeeded`, `failed`, `retried`, `cancelled`),
    /// summed over its shards.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn queue_stats(&self, queue: &str) -> Result<HashMap<String, i64>> {
        let shards = self.shards_of(queue).await?;
        let per: Vec<HashMap<String, i64>> = self
            .per_queue(&shards, |pipe, q| {
                pipe.hgetall(self.keys.stats(q));
            })
            .await?;
        let mut out: HashMap<String, i64> = HashMap::new();
        for m in per {
            for (k, v) in m {
                *out.entry(k).or_default() += v;
            }
        }
        Ok(out)
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

/// Shard `k`'s part of a queue's `max_running` `m` over `n` shards: whole parts that
/// add up to `m` (0 stays 0: unlimited). `m` is 0 or at least `n` (the API refuses
/// less), so no shard gets a part of 0, which would mean unlimited.
pub fn max_running_share(m: i64, n: u32, k: u32) -> i64 {
    if m <= 0 {
        return 0;
    }
    let n = i64::from(n.max(1));
    m / n + i64::from(i64::from(k) < m % n)
}

#[cfg(test)]
mod tests {
    use super::max_running_share;

    #[test]
    fn the_parts_of_max_running_add_up_to_it_and_none_is_zero() {
        for (m, n) in [(7, 3), (3, 3), (16, 16), (100, 7), (1_000_000, 16)] {
            let parts: Vec<i64> = (0..n).map(|k| max_running_share(m, n, k)).collect();
            assert_eq!(parts.iter().sum::<i64>(), m, "{m} over {n}");
            assert!(parts.iter().all(|p| *p >= 1), "{parts:?}");
        }
        assert_eq!(max_running_share(0, 3, 1), 0);
        assert_eq!(max_running_share(7, 1, 0), 7);
    }
}
