//! The key schema: one function per key, each with its Redis type. All keys of a queue
//! share the hash tag `{<queue>}` so one script only ever touches one Cluster slot.
//! Documented in `docs/redis-schema.md`; bump [`SCHEMA_VERSION`] on any change.
//!
//! The scripts build the keys of a queue and of a batch from the prefix they get as
//! `KEYS[1]`, with the `k_*` functions of `lua/lib.lua`: `k_<name>(p, ...)` there is
//! [`Keys`]`::<name>(queue, ...)` here. Change both together; the unit test in
//! [`super::scripts`] evaluates the Lua ones in a real redis-server and compares.

/// Version of this schema, stored at [`Keys::schema`].
pub const SCHEMA_VERSION: &str = "2";

/// Key builder for one namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    ns: String,
}

impl Keys {
    /// Keys under namespace `ns` (default `muster`).
    pub fn new(ns: &str) -> Keys {
        Keys { ns: ns.to_string() }
    }

    /// The namespace.
    pub fn ns(&self) -> &str {
        &self.ns
    }

    /// STRING: schema version.
    pub fn schema(&self) -> String {
        format!("{}:schema", self.ns)
    }

    /// SET: names of every queue ever used.
    pub fn queues(&self) -> String {
        format!("{}:queues", self.ns)
    }

    /// ZSET: node id → last heartbeat (ms). Node keys share the tag `{~nodes}`
    /// (`~` cannot occur in a queue name).
    pub fn nodes(&self) -> String {
        format!("{}:{{~nodes}}:all", self.ns)
    }

    /// HASH: one node's record.
    pub fn node(&self, id: &str) -> String {
        format!("{}:{{~nodes}}:node:{id}", self.ns)
    }

    /// PUB/SUB channel of wake-up hints (`new`, `assigned`, `done`: [`super::Wakeup`]).
    pub fn wake_channel(&self) -> String {
        format!("{}:wake", self.ns)
    }

    /// Prefix of every key of `queue`: `<ns>:{<queue>}:`. Scripts get it as KEYS[1].
    pub fn queue_prefix(&self, queue: &str) -> String {
        format!("{}:{{{queue}}}:", self.ns)
    }

    /// HASH: one task (`<prefix>t:<id>`).
    pub fn task(&self, queue: &str, id: &str) -> String {
        format!("{}t:{id}", self.queue_prefix(queue))
    }

    /// ZSET `pending` / `scheduled` / `retrying` / `running` / `succeeded` / `failed` /
    /// `cancelled`: the index of one state (scores: priority+sequence, due time, lease
    /// deadline, finish time).
    pub fn state_index(&self, queue: &str, state: &str) -> String {
        format!("{}{state}", self.queue_prefix(queue))
    }

    /// LIST: tasks assigned to `node`, not yet leased.
    pub fn inbox(&self, queue: &str, node: &str) -> String {
        format!("{}inbox:{node}", self.queue_prefix(queue))
    }

    /// HASH: node id → tasks of this queue assigned to or running on it.
    pub fn load(&self, queue: &str) -> String {
        format!("{}load", self.queue_prefix(queue))
    }

    /// SET: running tasks of this queue the node must stop.
    pub fn cancels(&self, queue: &str, node: &str) -> String {
        format!("{}cancels:{node}", self.queue_prefix(queue))
    }

    /// HASH: queue settings (paused, weight, human_only).
    pub fn conf(&self, queue: &str) -> String {
        format!("{}conf", self.queue_prefix(queue))
    }

    /// STRING: the counter behind FIFO order inside one priority.
    pub fn seq(&self, queue: &str) -> String {
        format!("{}seq", self.queue_prefix(queue))
    }

    /// HASH: the token bucket of the queue's `rate_limit` (`tokens`, `ts`).
    pub fn bucket(&self, queue: &str) -> String {
        format!("{}bucket", self.queue_prefix(queue))
    }

    /// STRING: the id of the live task holding a `unique_key` (`<prefix>uniq:<key>`).
    pub fn unique(&self, queue: &str, key: &str) -> String {
        format!("{}uniq:{key}", self.queue_prefix(queue))
    }

    /// STRING with PX: the ids a submission with an `Idempotency-Key` created
    /// (`<prefix>idem:<sha256 hex of the key>`, under the first queue of the submission).
    pub fn idempotency(&self, queue: &str, key_sha: &str) -> String {
        format!("{}idem:{key_sha}", self.queue_prefix(queue))
    }

    /// HASH: counters (submitted, succeeded, failed, retried, cancelled).
    pub fn stats(&self, queue: &str) -> String {
        format!("{}stats", self.queue_prefix(queue))
    }

    /// STREAM: lifecycle events, capped at about 10,000.
    pub fn events(&self, queue: &str) -> String {
        format!("{}events", self.queue_prefix(queue))
    }

    /// LIST: ids of tasks that ended with something waiting on them (dependents, a
    /// batch): the coordinator's work list (`<prefix>followups`).
    pub fn followups(&self, queue: &str) -> String {
        format!("{}followups", self.queue_prefix(queue))
    }

    /// SET: tasks blocked on task `id` (`<prefix>dependents:<id>`).
    pub fn dependents(&self, queue: &str, id: &str) -> String {
        format!("{}dependents:{id}", self.queue_prefix(queue))
    }

    /// SET: dependencies of blocked task `id` already counted (`<prefix>depdone:<id>`).
    pub fn dep_done(&self, queue: &str, id: &str) -> String {
        format!("{}depdone:{id}", self.queue_prefix(queue))
    }

    /// ZSET: holders of a concurrency key's slots, scored by lease deadline
    /// (`<prefix>sem:<key>`).
    pub fn semaphore(&self, queue: &str, key: &str) -> String {
        format!("{}sem:{key}", self.queue_prefix(queue))
    }

    /// Prefix of a batch's keys: `<ns>:{~batch:<id>}:`. Batch scripts get it as KEYS[1].
    pub fn batch_prefix(&self, id: &str) -> String {
        format!("{}:{{~batch:{id}}}:", self.ns)
    }

    /// HASH: a batch's state and counters (`id then open total done succeeded failed
    /// cancelled adding created_at state finished_at then_state then_id`).
    pub fn batch_meta(&self, id: &str) -> String {
        format!("{}meta", self.batch_prefix(id))
    }

    /// LIST: a batch's children in joining order.
    pub fn batch_children(&self, id: &str) -> String {
        format!("{}children", self.batch_prefix(id))
    }

    /// SET: the children of a batch already counted as ended.
    pub fn batch_done(&self, id: &str) -> String {
        format!("{}done", self.batch_prefix(id))
    }

    /// Extracts the queue from a prefix `<ns>:{<queue>}:` (as sent in wake-ups).
    pub fn queue_of_prefix<'a>(&self, prefix: &'a str) -> Option<&'a str> {
        let rest = prefix.strip_prefix(self.ns.as_str())?.strip_prefix(":{")?;
        rest.strip_suffix("}:")
    }
}

/// Keys of cron schedules (tag `{~sched}`, one slot for all of them so the leader's
/// scripts are atomic) and of handler locks (tag `{~lock:<name>}`, one slot per lock).
impl Keys {
    /// SET: every schedule name.
    pub fn schedules(&self) -> String {
        format!("{}:{{~sched}}:all", self.ns)
    }

    /// HASH: one schedule (definition, cursor, counters, pending fire).
    pub fn schedule(&self, name: &str) -> String {
        format!("{}:{{~sched}}:s:{name}", self.ns)
    }

    /// LIST: one schedule's most recent fires (JSON), newest first, capped.
    pub fn schedule_fires(&self, name: &str) -> String {
        format!("{}:{{~sched}}:fires:{name}", self.ns)
    }

    /// STRING with PX: the scheduler leader's token `<fence>.<nonce>.<pid>`.
    pub fn scheduler_leader(&self) -> String {
        format!("{}:{{~sched}}:leader", self.ns)
    }

    /// STRING: counter of scheduler leaderships (the leader token's fence).
    pub fn scheduler_fence(&self) -> String {
        format!("{}:{{~sched}}:leader_fence", self.ns)
    }

    /// ZSET: what the token `owner` (16 hex digits of its SHA-256) holds against its
    /// quota of `kind` (`queues`, `schedules`, `locks`): member → expiry ms (`inf` for
    /// none). Bounded by the quota.
    pub fn quota(&self, owner: &str, kind: &str) -> String {
        format!("{}:{{~quota:{owner}}}:{kind}", self.ns)
    }

    /// STRING with PX: the token `<fence>.<hex>` of a lock's holder.
    pub fn lock_holder(&self, name: &str) -> String {
        format!("{}:{{~lock:{name}}}:holder", self.ns)
    }

    /// STRING with PX: the lock's fence counter; expires
    /// [`crate::domain::coord::LOCK_FENCE_KEEP_MS`] after the lock's last expiry.
    pub fn lock_fence(&self, name: &str) -> String {
        format!("{}:{{~lock:{name}}}:fence", self.ns)
    }
}

/// Every key of one kind (the tasks of a queue, every lock holder), for SCAN: a key
/// function with the name cut out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFamily {
    prefix: String,
    suffix: String,
}

impl KeyFamily {
    /// The family of the keys `key` makes, one per name.
    pub fn of(key: impl Fn(&str) -> String) -> KeyFamily {
        // A NUL never occurs in a name or in the schema, so it marks where the name goes.
        let k = key("\0");
        let (prefix, suffix) = k.split_once('\0').unwrap_or((&k, ""));
        KeyFamily {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        }
    }

    /// The SCAN `MATCH` pattern of every key of the family.
    pub fn pattern(&self) -> String {
        format!(
            "{}*{}",
            glob_escape(&self.prefix),
            glob_escape(&self.suffix)
        )
    }

    /// The name in `key`, when `key` belongs to the family.
    pub fn name_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())
    }
}

/// `s` with the glob characters of SCAN `MATCH` escaped.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_queue_key_carries_the_queue_hash_tag() {
        let k = Keys::new("muster");
        for key in [
            k.task("q1", "x"),
            k.state_index("q1", "pending"),
            k.inbox("q1", "n"),
            k.load("q1"),
            k.cancels("q1", "n"),
            k.conf("q1"),
            k.stats("q1"),
            k.events("q1"),
        ] {
            assert!(key.starts_with("muster:{q1}:"), "{key}");
        }
        assert_eq!(k.queue_of_prefix(&k.queue_prefix("a.b")), Some("a.b"));
        assert_eq!(k.queue_of_prefix("other:{a}:"), None);
    }

    #[test]
    fn a_key_family_matches_the_keys_of_its_function_and_names_them() {
        let k = Keys::new("m*s");
        let tasks = KeyFamily::of(|id| k.task("q", id));
        assert_eq!(tasks.pattern(), "m\\*s:{q}:t:*");
        assert_eq!(tasks.name_of(&k.task("q", "a.q")), Some("a.q"));
        assert_eq!(tasks.name_of(&k.task("r", "a.q")), None);
        let holders = KeyFamily::of(|name| k.lock_holder(name));
        assert_eq!(holders.pattern(), "m\\*s:{~lock:*}:holder");
        assert_eq!(holders.name_of(&k.lock_holder("l")), Some("l"));
        assert_eq!(holders.name_of(&k.lock_fence("l")), None);
    }
}
