//! The invariant checker behind `muster doctor` (and the tests): every non-terminal
//! task is in exactly one index matching its state; no index entry lacks its hash;
//! every running task has a lease; per-node load counters match the tasks; no
//! concurrency slot is held by a task that is not assigned or running; no blocked task
//! waits on dependencies that all ended; batch counters match their children (once
//! no follow-up is outstanding); schedules, the scheduler lease and handler locks are
//! well formed.

use super::keys::KeyFamily;
use super::locks::parse_lock_token;
use super::schedules::{fire_from_json, schedule_from_hash};
use super::{Result, Store, flat_map};
use redis::AsyncCommands;
use std::collections::HashMap;

/// What the checker found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Queues checked.
    pub queues: usize,
    /// Task hashes checked.
    pub tasks: usize,
    /// One line per violation.
    pub violations: Vec<String>,
}

const ZSETS: [&str; 5] = ["blocked", "pending", "scheduled", "retrying", "running"];

impl Store {
    /// Checks every queue's invariants.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn doctor(&self) -> Result<Report> {
        let mut report = Report::default();
        let queues = self.queues().await?;
        for q in &queues {
            report.queues += 1;
            self.doctor_queue(q, &mut report).await?;
        }
        // Follow-ups still queued mean counters and blocked tasks may lag: only a quiet
        // store is held to them.
        let outstanding: i64 = self.followup_counts(&queues).await?.iter().sum();
        if outstanding == 0 {
            for q in &queues {
                self.doctor_blocked(q, &mut report).await?;
            }
            self.doctor_batches(&mut report).await?;
        }
        self.doctor_coordination(&mut report.violations).await?;
        Ok(report)
    }

    async fn doctor_queue(&self, q: &str, report: &mut Report) -> Result<()> {
        let mut c = self.conn();
        let k = &self.keys;
        // Index contents.
        let mut members: HashMap<&str, HashMap<String, f64>> = HashMap::new();
        for z in ZSETS {
            let v: Vec<(String, f64)> = c.zrange_withscores(k.state_index(q, z), 0, -1).await?;
            members.insert(z, v.into_iter().collect());
        }
        let loads: HashMap<String, i64> = c.hgetall(k.load(q)).await?;
        // Inboxes: scan for inbox keys (nodes may be gone).
        let mut inboxes: HashMap<String, Vec<String>> = HashMap::new();
        for (node, key) in scan(&mut c, &KeyFamily::of(|n| k.inbox(q, n))).await? {
            let ids: Vec<String> = c.lrange(&key, 0, -1).await?;
            inboxes.insert(node, ids);
        }
        // Tasks.
        let mut counted: HashMap<String, i64> = HashMap::new();
        let mut states: HashMap<String, String> = HashMap::new();
        for (id, key) in &scan(&mut c, &KeyFamily::of(|id| k.task(q, id))).await? {
            let h: HashMap<String, String> = c.hgetall(key).await?;
            report.tasks += 1;
            let state = h.get("state").cloned().unwrap_or_default();
            let node = h.get("node").cloned().unwrap_or_default();
            states.insert(id.to_string(), state.clone());
            let in_z: Vec<&str> = ZSETS
                .into_iter()
                .filter(|z| members[z].contains_key(id))
                .collect();
            let in_inbox: Vec<&String> = inboxes
                .iter()
                .filter(|(_, ids)| ids.iter().any(|x| x == id))
                .map(|(n, _)| n)
                .collect();
            let indexes = in_z.len() + in_inbox.len();
            match state.as_str() {
                "blocked" | "pending" | "scheduled" | "retrying" | "running" => {
                    if indexes != 1 || in_z.first() != Some(&state.as_str()) {
                        report.violations.push(format!(
                            "task {id} is {state} but indexed in {in_z:?} and inboxes {in_inbox:?}"
                        ));
                    }
                    if state == "running" {
                        if node.is_empty() || h.get("lease_expires").is_none_or(|v| v.is_empty()) {
                            report
                                .violations
                                .push(format!("task {id} is running without a lease"));
                        }
                        *counted.entry(node.clone()).or_default() += 1;
                    }
                }
                "assigned" => {
                    if indexes != 1 || in_inbox.first().map(|n| n.as_str()) != Some(node.as_str()) {
                        report.violations.push(format!(
                            "task {id} is assigned to {node} but indexed in {in_z:?} and inboxes {in_inbox:?}"
                        ));
                    }
                    *counted.entry(node.clone()).or_default() += 1;
                }
                "succeeded" | "failed" | "cancelled" => {
                    if indexes != 0 {
                        report.violations.push(format!(
                            "task {id} is {state} but still indexed in {in_z:?} and inboxes {in_inbox:?}"
                        ));
                    }
                }
                other => report
                    .violations
                    .push(format!("task {id} has unknown state {other:?}")),
            }
        }
        // Index entries without a matching hash.
        for z in ZSETS {
            for id in members[z].keys() {
                if !states.contains_key(id) {
                    report
                        .violations
                        .push(format!("{q}:{z} holds {id}, which has no task hash"));
                }
            }
        }
        for (node, ids) in &inboxes {
            for id in ids {
                if !states.contains_key(id) {
                    report.violations.push(format!(
                        "{q} inbox of {node} holds {id}, which has no task hash"
                    ));
                }
            }
        }
        // Concurrency slots: held only by assigned or running tasks of that key.
        let now = self.now_ms().await?;
        for (ckey, key) in scan(&mut c, &KeyFamily::of(|ck| k.semaphore(q, ck))).await? {
            let ckey = ckey.as_str();
            let holders: Vec<(String, f64)> = c.zrange_withscores(&key, 0, -1).await?;
            for (id, until) in holders {
                if (until as i64) < now {
                    continue; // expired: the next dispatch drops it
                }
                let (state, held): (Option<String>, Option<String>) = redis::cmd("HMGET")
                    .arg(k.task(q, &id))
                    .arg("state")
                    .arg("ckey")
                    .query_async(&mut c)
                    .await?;
                let live = matches!(state.as_deref(), Some("assigned" | "running"));
                if !live || held.as_deref() != Some(ckey) {
                    report.violations.push(format!(
                        "{q} concurrency key {ckey:?}: slot held by {id}, which is {}",
                        state.as_deref().unwrap_or("gone")
                    ));
                }
            }
        }
        // Load counters.
        let mut nodes: Vec<&String> = loads.keys().chain(counted.keys()).collect();
        nodes.sort();
        nodes.dedup();
        for n in nodes {
            let (have, want) = (
                loads.get(n).copied().unwrap_or(0),
                counted.get(n).copied().unwrap_or(0),
            );
            if have != want {
                report
                    .violations
                    .push(format!("{q} load of node {n} is {have}, tasks say {want}"));
            }
        }
        Ok(())
    }
}

impl Store {
    async fn doctor_blocked(&self, q: &str, report: &mut Report) -> Result<()> {
        let mut c = self.conn();
        let ids: Vec<String> = c.zrange(self.keys.state_index(q, "blocked"), 0, -1).await?;
        for id in ids {
            let deps: Option<String> = c.hget(self.keys.task(q, &id), "deps").await?;
            let deps: Vec<String> = deps
                .unwrap_or_default()
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect();
            let mut all_ended = true;
            for d in &deps {
                let Some(dq) = crate::domain::validate::task_shard(d) else {
                    continue;
                };
                let st: Option<String> = c.hget(self.keys.task(dq, d), "state").await?;
                if !matches!(
                    st.as_deref(),
                    None | Some("succeeded" | "failed" | "cancelled")
                ) {
                    all_ended = false;
                    break;
                }
            }
            if all_ended {
                report.violations.push(format!(
                    "task {id} is blocked but its dependencies {deps:?} all ended"
                ));
            }
        }
        Ok(())
    }

    async fn doctor_batches(&self, report: &mut Report) -> Result<()> {
        let mut c = self.conn();
        let metas = KeyFamily::of(|id| self.keys.batch_meta(id));
        for (batch, key) in scan(&mut c, &metas).await? {
            let meta: HashMap<String, String> = c.hgetall(&key).await?;
            let num = |f: &str| meta.get(f).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            if num("adding") > 0 {
                continue; // a chunk is being stored right now
            }
            let children: Vec<String> = c.lrange(self.keys.batch_children(&batch), 0, -1).await?;
            let mut counts: HashMap<String, i64> = HashMap::new();
            for chunk in children.chunks(1000) {
                let mut pipe = redis::pipe();
                for id in chunk {
                    let q = crate::domain::validate::task_shard(id).unwrap_or("default");
                    pipe.hget(self.keys.task(q, id), "state");
                }
                let states: Vec<Option<String>> = pipe.query_async(&mut c).await?;
                for s in states.into_iter().flatten() {
                    *counts.entry(s).or_default() += 1;
                }
            }
            let id = meta.get("id").cloned().unwrap_or_default();
            if num("total") != children.len() as i64 {
                report.violations.push(format!(
                    "batch {id} counts {} children, lists {}",
                    num("total"),
                    children.len()
                ));
            }
            for st in ["succeeded", "failed", "cancelled"] {
                let have = num(st);
                let want = counts.get(st).copied().unwrap_or(0);
                // Children past their retention are gone: counters may only exceed.
                if have < want {
                    report.violations.push(format!(
                        "batch {id}: {have} children counted {st}, {want} are"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Store {
    /// Doctor checks of schedules, the scheduler lease and handler locks: every listed
    /// schedule has a well-formed record with a usable cron expression and vice versa,
    /// every stored fire parses, the leader lease has a TTL, and every held lock has
    /// a TTL and a fence counter at least its token's fence.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn doctor_coordination(&self, violations: &mut Vec<String>) -> Result<()> {
        let mut c = self.conn();
        let k = &self.keys;
        let names = self.schedule_names().await?;
        for name in &names {
            let v: redis::Value = redis::cmd("HGETALL")
                .arg(k.schedule(name))
                .query_async(&mut c)
                .await?;
            let h = flat_map(v)?;
            match schedule_from_hash(&h) {
                None if h.is_empty() => {
                    violations.push(format!("schedule {name} is listed but has no record"))
                }
                None => violations.push(format!("schedule {name} has a malformed record")),
                Some(rec) => {
                    if rec.name != *name {
                        violations.push(format!("schedule {name} records the name {:?}", rec.name));
                    }
                    if let Err(e) = crate::domain::cron::CronSpec::parse(&rec.cron, &rec.timezone) {
                        violations.push(format!("schedule {name} cannot be fired: {e}"));
                    }
                }
            }
            let fires: Vec<String> = c.lrange(k.schedule_fires(name), 0, -1).await?;
            if fires.iter().any(|f| fire_from_json(f).is_none()) {
                violations.push(format!("schedule {name} has a malformed fire record"));
            }
        }
        for (name, _) in scan(&mut c, &KeyFamily::of(|n| k.schedule(n))).await? {
            if !names.contains(&name) {
                violations.push(format!("schedule record {name} is not in the schedule set"));
            }
        }
        let pttl: i64 = c.pttl(k.scheduler_leader()).await?;
        if pttl == -1 {
            violations.push("the scheduler leader lease has no TTL".into());
        }
        for (name, key) in scan(&mut c, &KeyFamily::of(|n| k.lock_holder(n))).await? {
            let token: Option<String> = c.get(&key).await?;
            let ttl: i64 = c.pttl(&key).await?;
            let counter: Option<i64> = c.get(k.lock_fence(&name)).await?;
            let fence = token.as_deref().and_then(parse_lock_token);
            match (fence, counter) {
                (_, None) => {
                    violations.push(format!("lock {name} is held without a fence counter"))
                }
                (None, _) if token.is_some() => {
                    violations.push(format!("lock {name} has a malformed token"))
                }
                (Some(f), Some(n)) if f > n => violations.push(format!(
                    "lock {name} is held with fence {f} above its counter {n}"
                )),
                _ => {}
            }
            if ttl == -1 {
                violations.push(format!("lock {name} is held without a TTL"));
            }
        }
        Ok(())
    }
}

/// Every key of `family` with its name (SCAN, so a key written meanwhile may be missed).
pub(super) async fn scan(c: &mut super::Conn, family: &KeyFamily) -> Result<Vec<(String, String)>> {
    let keys = c.scan_match(&family.pattern()).await?;
    Ok(keys
        .into_iter()
        .filter_map(|key| {
            let name = family.name_of(&key)?.to_string();
            Some((name, key))
        })
        .collect())
}
