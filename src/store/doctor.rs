//! The invariant checker behind `muster doctor` (and the tests): every non-terminal
//! task is in exactly one index matching its state; no index entry lacks its hash;
//! every running task has a lease; per-node load counters match the tasks.

use super::{Result, Store};
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

const ZSETS: [&str; 4] = ["pending", "scheduled", "retrying", "running"];

impl Store {
    /// Checks every queue's invariants.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn doctor(&self) -> Result<Report> {
        let mut report = Report::default();
        for q in self.queues().await? {
            report.queues += 1;
            self.doctor_queue(&q, &mut report).await?;
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
        let inbox_prefix = k.inbox(q, "");
        let inbox_keys: Vec<String> =
            scan(&mut c, &format!("{}*", glob_escape(&inbox_prefix))).await?;
        let mut inboxes: HashMap<String, Vec<String>> = HashMap::new();
        for key in inbox_keys {
            let node = key[inbox_prefix.len()..].to_string();
            let ids: Vec<String> = c.lrange(&key, 0, -1).await?;
            inboxes.insert(node, ids);
        }
        // Tasks.
        let task_prefix = k.task(q, "");
        let task_keys: Vec<String> =
            scan(&mut c, &format!("{}*", glob_escape(&task_prefix))).await?;
        let mut counted: HashMap<String, i64> = HashMap::new();
        let mut states: HashMap<String, String> = HashMap::new();
        for key in &task_keys {
            let id = &key[task_prefix.len()..];
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
                "pending" | "scheduled" | "retrying" | "running" => {
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

pub(super) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

pub(super) async fn scan(c: &mut redis::aio::ConnectionManager, pattern: &str) -> Result<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await?;
        out.extend(keys);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}
