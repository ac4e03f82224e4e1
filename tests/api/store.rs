//! Store tests: each seeds keys through the `Store` transitions, runs one transition and
//! asserts every key it touches (task hash, state indexes, inboxes, load, cancels,
//! events, stats), then runs the invariant checker, which must find nothing.

use crate::support::{E2eConn, e2e_conn, shared_redis, store, store_on, unique_ns};
use muster::domain::validate::new_task_id;
use muster::domain::{Backoff, Node, NodeKind, NodeStatus, QueueUpdate, TaskState};
use muster::store::{Cancelled, Leased, PreparedTask, Store, StoreError, Submitted};
use redis::Commands;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

// ----- fixtures -----

/// Every index a task can sit in, besides inboxes.
const INDEXES: [&str; 7] = [
    "pending",
    "scheduled",
    "retrying",
    "running",
    "succeeded",
    "failed",
    "cancelled",
];

/// A store on the shared Redis (or Cluster) plus a blocking connection to inspect its
/// keys.
struct Kit {
    store: Store,
    r: E2eConn,
}

impl Kit {
    async fn new() -> Kit {
        Kit {
            store: store().await,
            r: e2e_conn(),
        }
    }

    fn hash(&mut self, q: &str, id: &str) -> HashMap<String, String> {
        self.r.hgetall(self.store.keys.task(q, id)).unwrap()
    }

    fn field(&mut self, q: &str, id: &str, f: &str) -> String {
        let v: Option<String> = self.r.hget(self.store.keys.task(q, id), f).unwrap();
        v.unwrap_or_default()
    }

    fn int_field(&mut self, q: &str, id: &str, f: &str) -> i64 {
        self.field(q, id, f)
            .parse()
            .unwrap_or_else(|_| panic!("field {f} of {id} is not a number"))
    }

    /// Every index holding `id`: state zsets by name, inboxes as `inbox:<node>`.
    fn indexes(&mut self, q: &str, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        for z in INDEXES {
            let s: Option<f64> = self
                .r
                .zscore(self.store.keys.state_index(q, z), id)
                .unwrap();
            if s.is_some() {
                out.push(z.to_string());
            }
        }
        let prefix = self.store.keys.inbox(q, "");
        let mut inbox_keys: Vec<String> = self.r.keys(format!("{prefix}*")).unwrap();
        inbox_keys.sort();
        for key in inbox_keys {
            let ids: Vec<String> = self.r.lrange(&key, 0, -1).unwrap();
            for _ in ids.iter().filter(|x| *x == id) {
                out.push(format!("inbox:{}", &key[prefix.len()..]));
            }
        }
        out
    }

    fn score(&mut self, q: &str, index: &str, id: &str) -> Option<i64> {
        let s: Option<f64> = self
            .r
            .zscore(self.store.keys.state_index(q, index), id)
            .unwrap();
        s.map(|v| v as i64)
    }

    /// Puts the lease of running task `id` past its deadline (its `lease_expires` and
    /// its `running` score a second ago), as if its TTL had run out: a test with a long
    /// TTL need not sleep through one, nor race a short one on a slow machine.
    fn make_overdue(&mut self, q: &str, id: &str) {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query(&mut self.r).unwrap();
        let past = secs * 1000 + micros / 1000 - 1000;
        let _: () = self
            .r
            .hset(self.store.keys.task(q, id), "lease_expires", past)
            .unwrap();
        let _: () = self
            .r
            .zadd(self.store.keys.state_index(q, "running"), id, past)
            .unwrap();
    }

    fn zcard(&mut self, q: &str, index: &str) -> usize {
        self.r.zcard(self.store.keys.state_index(q, index)).unwrap()
    }

    fn inbox(&mut self, q: &str, node: &str) -> Vec<String> {
        self.r
            .lrange(self.store.keys.inbox(q, node), 0, -1)
            .unwrap()
    }

    fn inbox_exists(&mut self, q: &str, node: &str) -> bool {
        self.r.exists(self.store.keys.inbox(q, node)).unwrap()
    }

    fn load(&mut self, q: &str) -> HashMap<String, i64> {
        self.r.hgetall(self.store.keys.load(q)).unwrap()
    }

    fn cancels(&mut self, q: &str, node: &str) -> Vec<String> {
        self.r.smembers(self.store.keys.cancels(q, node)).unwrap()
    }

    /// Events in the queue's stream: an entry holds one task (`task`) or several
    /// (`tasks`, one script call's events of one kind).
    fn xlen(&mut self, q: &str) -> usize {
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(self.store.keys.events(q))
            .arg("-")
            .arg("+")
            .query(&mut self.r)
            .unwrap();
        entries
            .iter()
            .map(|(_, f)| match (f.get("task"), f.get("tasks")) {
                (Some(_), _) => 1,
                (None, Some(ts)) => ts.split(' ').count(),
                (None, None) => panic!("an event entry without tasks: {f:?}"),
            })
            .sum()
    }

    fn stat(&mut self, q: &str, f: &str) -> i64 {
        let v: Option<i64> = self.r.hget(self.store.keys.stats(q), f).unwrap();
        v.unwrap_or(0)
    }

    fn redis_now(&mut self) -> i64 {
        let (s, us): (i64, i64) = redis::cmd("TIME").query(&mut self.r).unwrap();
        s * 1000 + us / 1000
    }

    /// Every key of the namespace with its contents, to prove that nothing was written.
    fn snapshot(&mut self) -> BTreeMap<String, String> {
        let keys: Vec<String> = self.r.keys(format!("{}:*", self.store.keys.ns())).unwrap();
        let mut out = BTreeMap::new();
        for k in keys {
            let t: String = redis::cmd("TYPE").arg(&k).query(&mut self.r).unwrap();
            let v = match t.as_str() {
                "string" => self.r.get::<_, String>(&k).unwrap(),
                "hash" => format!(
                    "{:?}",
                    self.r.hgetall::<_, BTreeMap<String, String>>(&k).unwrap()
                ),
                "zset" => format!(
                    "{:?}",
                    self.r
                        .zrange_withscores::<_, Vec<(String, f64)>>(&k, 0, -1)
                        .unwrap()
                ),
                "list" => format!("{:?}", self.r.lrange::<_, Vec<String>>(&k, 0, -1).unwrap()),
                "set" => {
                    let mut m: Vec<String> = self.r.smembers(&k).unwrap();
                    m.sort();
                    format!("{m:?}")
                }
                "stream" => format!("xlen {}", self.r.xlen::<_, usize>(&k).unwrap()),
                other => other.to_string(),
            };
            out.insert(k, v);
        }
        out
    }

    /// The invariant checker finds nothing wrong, and it did look at `queues`.
    async fn assert_doctor_clean(&self, queues: &[&str]) {
        let report = self.store.doctor().await.expect("doctor");
        assert!(
            report.violations.is_empty(),
            "doctor found violations: {:#?}",
            report.violations
        );
        let known = self.store.queues().await.unwrap();
        for q in queues {
            assert!(
                known.iter().any(|k| k == q),
                "doctor does not know queue {q} (knows {known:?})"
            );
        }
        assert!(
            report.queues >= queues.len(),
            "doctor checked {} queues",
            report.queues
        );
    }

    // ----- steps -----

    async fn submit(&self, tasks: &[PreparedTask]) -> i64 {
        match self.store.submit(tasks, None, 0).await.expect("submit") {
            Submitted::Created { now_ms, .. } => now_ms,
            other => panic!("expected Created, got {other:?}"),
        }
    }

    async fn submit_one(&self, t: PreparedTask) -> String {
        let id = t.id.clone();
        self.submit(&[t]).await;
        id
    }

    /// Dispatches pending tasks of `q` to one node whose budget in `q` (capacity minus
    /// its load in other queues) is `budget`; its load in `q` is subtracted by the script.
    async fn dispatch_to(&self, q: &str, node: &str, budget: i64) -> i64 {
        self.store
            .dispatch(q, &[(node.to_string(), budget, String::new())], 1000, 1000)
            .await
            .expect("dispatch")
            .0
    }

    async fn load_of(&self, q: &str, node: &str) -> i64 {
        let loads = self.store.loads(&[q.to_string()]).await.expect("loads");
        loads.get(q).and_then(|m| m.get(node)).copied().unwrap_or(0)
    }

    async fn lease(&self, q: &str, node: &str, max: usize) -> Vec<Leased> {
        self.store
            .lease(q, node, max, false, "")
            .await
            .expect("lease")
    }

    /// Seeds `t` straight into `state` instead of driving the transitions that lead
    /// there: `submit` writes the hash a task starts with, then the fields of `state`
    /// and its index entry are written with the production key names ([`Keys`]), as
    /// the scripts leave them (`finish()` in `lua/lib.lua` for the ended states, a due
    /// time one minute ahead for `scheduled` / `retrying`). `running` is not seeded: a
    /// lease also spans the node's load and fence; use [`Kit::running`].
    ///
    /// [`Keys`]: muster::store::keys::Keys
    async fn seed(&mut self, t: PreparedTask, state: &str) -> String {
        let q = t.queue.clone();
        let id = self.submit_one(t).await;
        let keys = self.store.keys.clone();
        let now = self.redis_now();
        let (score, fields): (i64, Vec<(&str, String)>) = match state {
            "pending" => return id,
            "scheduled" | "retrying" => {
                (now + 60_000, vec![("run_at", (now + 60_000).to_string())])
            }
            "succeeded" => (now, vec![("attempts", "1".into()), ("result", "1".into())]),
            "failed" => (now, vec![("attempts", "3".into()), ("error", "x".into())]),
            "cancelled" => (now, vec![]),
            other => panic!("cannot seed state {other}"),
        };
        let tkey = keys.task(&q, &id);
        // One script (atomic, and routed by its first key on a Cluster).
        let mut fields: Vec<(String, String)> = fields
            .into_iter()
            .map(|(f, v)| (f.to_string(), v))
            .collect();
        let finished = matches!(state, "succeeded" | "failed" | "cancelled");
        if finished {
            fields.push(("finished_at".into(), now.to_string()));
            fields.push(("lease_expires".into(), String::new()));
        }
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(
            "redis.call('HSET', KEYS[1], 'state', ARGV[1]) \
             redis.call('ZREM', KEYS[2], ARGV[2]) \
             redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2]) \
             for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end \
             if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[4], ARGV[1], 1) end",
        )
        .arg(4)
        .arg(&tkey)
        .arg(keys.state_index(&q, "pending"))
        .arg(keys.state_index(&q, state))
        .arg(keys.stats(&q))
        .arg(state)
        .arg(&id)
        .arg(score)
        .arg(if finished { "1" } else { "0" });
        for (f, v) in &fields {
            cmd.arg(f).arg(v);
        }
        let () = cmd.query(&mut self.r).expect("seed");
        assert_eq!(self.field(&q, &id, "state"), state, "seeded");
        id
    }

    /// The keys whose content differs between two snapshots (added, removed or changed).
    fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
        let mut keys: Vec<String> = before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Submits `t`, assigns it to `node` and leases it (no other task may be pending).
    async fn running(&self, t: PreparedTask, node: &str) -> Leased {
        let q = t.queue.clone();
        let id = self.submit_one(t).await;
        self.lease_again(&q, &id, node).await
    }

    /// Assigns the pending `id` to `node` and leases it (no other task may be pending).
    async fn lease_again(&self, q: &str, id: &str, node: &str) -> Leased {
        let budget = self.load_of(q, node).await + 1;
        assert_eq!(
            self.dispatch_to(q, node, budget).await,
            1,
            "one task assigned"
        );
        let mut l = self.lease(q, node, 1).await;
        assert_eq!(l.len(), 1, "one lease expected");
        let l = l.remove(0);
        assert_eq!(l.task.id, id);
        l
    }
}

/// A task of `queue` with plain defaults (3 attempts, 30 s lease, no tags).
fn task(queue: &str) -> PreparedTask {
    PreparedTask {
        max_run_ms: None,
        id: new_task_id(queue),
        queue: queue.to_string(),
        kind: "echo".into(),
        payload: r#"{"n":1}"#.into(),
        priority: 0,
        run_at_ms: None,
        delay_ms: None,
        max_attempts: 3,
        timeout_ms: 30_000,
        backoff: Backoff {
            initial_ms: 1_000,
            max_ms: 60_000,
        },
        requires: Vec::new(),
        retention_ms: 0,
        ..Default::default()
    }
}

fn machine(id: &str, queues: &[&str]) -> Node {
    Node {
        id: id.to_string(),
        name: id.to_string(),
        kind: NodeKind::Machine,
        status: NodeStatus::Active,
        queues: queues.iter().map(|q| q.to_string()).collect(),
        tags: Vec::new(),
        capacity: 4,
        running: 0,
        succeeded: 0,
        failed: 0,
        mean_run_ms: None,
        registered_at: String::new(),
        last_seen_at: String::new(),
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn assert_conflict<T: std::fmt::Debug>(r: Result<T, StoreError>, want_state: &str, case: &str) {
    match r {
        Err(StoreError::LeaseConflict { state }) => {
            assert_eq!(state, want_state, "{case}: conflict state")
        }
        other => panic!("{case}: expected LeaseConflict, got {other:?}"),
    }
}

fn assert_illegal<T: std::fmt::Debug>(r: Result<T, StoreError>, want_from: &str, case: &str) {
    match r {
        Err(StoreError::IllegalTransition { from }) => assert_eq!(from, want_from, "{case}: from"),
        other => panic!("{case}: expected IllegalTransition, got {other:?}"),
    }
}

// ----- submit -----

#[tokio::test]
async fn submit_stores_one_pending_task_with_its_fields_index_stats_and_event() {
    let mut k = Kit::new().await;
    let t = PreparedTask {
        priority: 4,
        requires: strs(&["gpu", "linux"]),
        max_attempts: 5,
        timeout_ms: 1234,
        retention_ms: 60_000,
        ..task("q")
    };
    let id = t.id.clone();
    let now = k.submit(&[t]).await;

    // Only what differs from the defaults is stored (the id is the key's).
    let h = k.hash("q", &id);
    let mut fields: Vec<&str> = h.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "backoff_max",
            "created_at",
            "kind",
            "max_attempts",
            "payload",
            "priority",
            "requires",
            "retention_ms",
            "state",
            "timeout_ms"
        ]
    );
    for (f, want) in [
        ("kind", "echo"),
        ("payload", r#"{"n":1}"#),
        ("priority", "4"),
        ("state", "pending"),
        ("max_attempts", "5"),
        ("timeout_ms", "1234"),
        ("backoff_max", "60000"),
        ("requires", "gpu,linux"),
        ("retention_ms", "60000"),
    ] {
        assert_eq!(h.get(f).map(String::as_str), Some(want), "field {f}");
    }
    assert_eq!(h["created_at"], now.to_string());
    assert_eq!(k.indexes("q", &id), ["pending"]);
    let seq: i64 = k.r.get(k.store.keys.seq("q")).unwrap();
    assert_eq!(
        k.score("q", "pending", &id),
        Some((9 - 4) * 10_000_000_000_000 + seq)
    );
    assert_eq!(k.stat("q", "submitted"), 1);
    assert_eq!(k.xlen("q"), 1);
    assert!(k.load("q").is_empty());
    let t = k.store.task(&id).await.unwrap();
    assert_eq!((t.state, t.attempts, t.fence), (TaskState::Pending, 0, 0));
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn a_batchs_event_lists_its_tasks_by_ulid_and_reads_back_with_their_queue() {
    let mut k = Kit::new().await;
    let tasks: Vec<PreparedTask> = (0..3).map(|_| task("q")).collect();
    let ids: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
    k.submit(&tasks).await;
    // Stored: one entry, the ids without `.q` (the stream is q's).
    let raw: redis::streams::StreamRangeReply =
        k.r.xrange_all(k.store.keys.events("q")).expect("xrange");
    assert_eq!(raw.ids.len(), 1);
    let listed: String = raw.ids[0].get("tasks").expect("a tasks field");
    let ulids: Vec<&str> = ids.iter().map(|i| i.strip_suffix(".q").unwrap()).collect();
    assert_eq!(listed, ulids.join(" "));
    // Read: each with its queue again, as SSE shows it.
    let evs = k
        .store
        .read_events(None, &[("q".to_string(), "0-0".to_string())], 100, None)
        .await
        .expect("read");
    let read: Vec<&str> = evs.iter().map(|e| e.task.as_str()).collect();
    assert_eq!(read, ids);
    assert!(evs.iter().all(|e| e.type_ == "task.submitted"));
}

#[tokio::test]
async fn a_submit_lists_its_queue_once_and_again_after_the_queue_was_pruned() {
    let redis = crate::support::RedisGuard::start();
    let mut conn = redis.conn();
    let (store, reconciler) = crate::support::pruner_on(&redis.url(), &unique_ns()).await;
    let sadds = |c: &mut redis::Connection| crate::support::command_calls(c, &["sadd"]);
    let submit = |t: PreparedTask| {
        let store = store.clone();
        async move {
            let id = t.id.clone();
            store.submit(&[t], None, 0).await.expect("submit");
            id
        }
    };
    let before = sadds(&mut conn);
    let a = submit(task("lq")).await;
    // Before its script, and after it, as the script found the queue new.
    let first = sadds(&mut conn);
    assert_eq!(first - before, 2, "the first submit lists its queue");
    let b = submit(task("lq")).await;
    assert_eq!(
        sadds(&mut conn),
        first,
        "a submit a moment later has no SADD round trip"
    );
    // Emptied and pruned: the next submit, still trusting its cache, finds the queue
    // new and lists it again after its script.
    crate::support::cancel_and_delete(&store, &[a, b], 10).await;
    let pruned = reconciler.prune_empty_queues().await;
    assert_eq!(pruned, ["lq".to_string()]);
    assert!(!store.queues().await.unwrap().contains(&"lq".to_string()));
    submit(task("lq")).await;
    assert!(
        store.queues().await.unwrap().contains(&"lq".to_string()),
        "a queue holding a task is in the queues set"
    );
}

#[tokio::test]
async fn the_node_directory_serves_a_stale_snapshot_while_it_refreshes_and_rereads_after_invalidate()
 {
    use muster::service::directory::Directory;
    let store = store().await;
    let register = |name: &str| {
        let node = Node {
            id: ulid::Ulid::generate().to_string(),
            name: name.to_string(),
            kind: NodeKind::Machine,
            status: NodeStatus::Active,
            queues: vec!["dq".to_string()],
            tags: vec![],
            capacity: 1,
            running: 0,
            succeeded: 0,
            failed: 0,
            mean_run_ms: None,
            registered_at: String::new(),
            last_seen_at: String::new(),
        };
        let store = store.clone();
        async move {
            store
                .register_node(&node, "sha", "")
                .await
                .expect("register")
        }
    };
    // A second of freshness: a slow machine between the first reads must not age it.
    let dir = Directory::new(Duration::from_millis(1000));
    let count = || async { dir.all(&store).await.expect("directory").len() };
    // The background refresh lands within 3 s with `n` nodes.
    let refreshed_to = |n: usize| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while count().await != n {
            assert!(
                std::time::Instant::now() < deadline,
                "the refresh never landed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert_eq!(count().await, 0);
    register("a").await;
    assert_eq!(count().await, 0, "a fresh snapshot is served as it is");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        count().await,
        0,
        "a stale one once more, while it is refreshed"
    );
    refreshed_to(1).await;
    register("b").await;
    dir.invalidate();
    assert_eq!(
        count().await,
        2,
        "after invalidate the next call reads Redis"
    );
    register("c").await;
    dir.mark_stale();
    assert_eq!(
        count().await,
        2,
        "marked stale: served, and refreshed behind"
    );
    refreshed_to(3).await;
    // The directory's records carry no running count; the store's listing does.
    assert!(
        dir.all(&store)
            .await
            .unwrap()
            .iter()
            .all(|n| n.node.running == 0)
    );
}

#[tokio::test]
async fn submit_of_a_batch_across_two_queues_stores_every_task_in_its_own_queue() {
    let mut k = Kit::new().await;
    let batch = [
        task("qa"),
        task("qb"),
        task("qa"),
        PreparedTask {
            delay_ms: Some(60_000),
            ..task("qb")
        },
    ];
    k.submit(&batch).await;
    for (t, want) in batch
        .iter()
        .zip(["pending", "pending", "pending", "scheduled"])
    {
        assert_eq!(k.field(&t.queue, &t.id, "state"), want, "{}", t.id);
        assert_eq!(k.indexes(&t.queue, &t.id), [want], "{}", t.id);
    }
    assert_eq!(
        (
            k.zcard("qa", "pending"),
            k.zcard("qb", "pending"),
            k.zcard("qb", "scheduled")
        ),
        (2, 1, 1)
    );
    assert_eq!(
        (k.stat("qa", "submitted"), k.stat("qb", "submitted")),
        (2, 2)
    );
    assert_eq!((k.xlen("qa"), k.xlen("qb")), (2, 2));
    k.assert_doctor_clean(&["qa", "qb"]).await;
}

#[tokio::test]
async fn submit_of_a_batch_the_script_refuses_stores_nothing_in_either_queue() {
    let mut k = Kit::new().await;
    let before = k.snapshot();
    // An idempotency key whose TTL Redis rejects: the whole batch must be refused.
    let r = k
        .store
        .submit(&[task("qa"), task("qb")], Some("key-1"), 0)
        .await;
    assert!(r.is_err(), "a zero idempotency TTL was accepted: {r:?}");
    let mut after = k.snapshot();
    // Remembering the queue names (done before the script) is harmless.
    after.remove(&k.store.keys.queues());
    assert_eq!(after, before, "a refused batch wrote keys");
}

#[tokio::test]
async fn submit_orders_pending_by_priority_higher_first_and_fifo_within_one_priority() {
    let mut k = Kit::new().await;
    // (priority, label) in submission order.
    let table = [
        (0, "a0"),
        (5, "b5"),
        (0, "c0"),
        (9, "d9"),
        (5, "e5"),
        (0, "f0"),
        (9, "g9"),
    ];
    let mut by_label = HashMap::new();
    // One at a time, so FIFO is by submission, and once as a batch below.
    for (prio, label) in table {
        let t = PreparedTask {
            priority: prio,
            kind: label.into(),
            ..task("q")
        };
        by_label.insert(t.id.clone(), label);
        k.submit_one(t).await;
    }
    let assigned = k.dispatch_to("q", "n1", table.len() as i64).await;
    assert_eq!(assigned, table.len() as i64);
    assert_eq!(k.load("q"), HashMap::from([("n1".to_string(), 7)]));
    let leased = k.lease("q", "n1", 10).await;
    let order: Vec<&str> = leased.iter().map(|l| by_label[&l.task.id]).collect();
    assert_eq!(order, ["d9", "g9", "b5", "e5", "a0", "c0", "f0"]);
    assert!(!k.inbox_exists("q", "n1"));
    k.assert_doctor_clean(&["q"]).await;

    // Inside one batch the order of the batch is the FIFO order.
    let batch: Vec<PreparedTask> = (0..5)
        .map(|i| PreparedTask {
            kind: format!("b{i}"),
            ..task("q2")
        })
        .collect();
    k.submit(&batch).await;
    k.dispatch_to("q2", "n1", 5).await;
    let kinds: Vec<String> = k
        .lease("q2", "n1", 5)
        .await
        .into_iter()
        .map(|l| l.task.kind)
        .collect();
    assert_eq!(kinds, ["b0", "b1", "b2", "b3", "b4"]);
    k.assert_doctor_clean(&["q", "q2"]).await;
}

#[tokio::test]
async fn submit_with_a_future_run_at_or_a_delay_is_scheduled_and_otherwise_pending() {
    let mut k = Kit::new().await;
    let now = k.redis_now();
    struct Case {
        name: &'static str,
        run_at_ms: Option<i64>,
        delay_ms: Option<i64>,
        want: &'static str,
    }
    let table = [
        Case {
            name: "run_at in a minute",
            run_at_ms: Some(now + 60_000),
            delay_ms: None,
            want: "scheduled",
        },
        Case {
            name: "delay of a minute",
            run_at_ms: None,
            delay_ms: Some(60_000),
            want: "scheduled",
        },
        Case {
            name: "run_at in the past",
            run_at_ms: Some(now - 60_000),
            delay_ms: None,
            want: "pending",
        },
        Case {
            name: "zero delay",
            run_at_ms: None,
            delay_ms: Some(0),
            want: "pending",
        },
    ];
    for c in table {
        let t = PreparedTask {
            run_at_ms: c.run_at_ms,
            delay_ms: c.delay_ms,
            ..task("q")
        };
        let id = t.id.clone();
        let at = k.submit(&[t]).await;
        assert_eq!(k.field("q", &id, "state"), c.want, "{}", c.name);
        assert_eq!(k.indexes("q", &id), [c.want], "{}", c.name);
        let want_run_at = c.run_at_ms.unwrap_or(at + c.delay_ms.unwrap_or(0));
        // run_at is stored only when it is not created_at.
        let run_at = k.field("q", &id, "run_at");
        let run_at = if run_at.is_empty() {
            k.int_field("q", &id, "created_at")
        } else {
            run_at.parse().unwrap()
        };
        assert_eq!(run_at, want_run_at, "{}: run_at", c.name);
        if c.want == "scheduled" {
            assert_eq!(
                k.score("q", "scheduled", &id),
                Some(want_run_at),
                "{}: score is the due time",
                c.name
            );
        }
    }
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn submit_repeated_with_the_same_idempotency_key_returns_the_first_ids_and_stores_nothing() {
    let mut k = Kit::new().await;
    let first = [task("q"), task("q")];
    let ids: Vec<String> = first.iter().map(|t| t.id.clone()).collect();
    let r = k
        .store
        .submit(&first, Some("order-42"), 60_000)
        .await
        .unwrap();
    assert!(matches!(r, Submitted::Created { .. }), "{r:?}");
    let idem_keys: Vec<String> =
        k.r.keys(format!("{}idem:*", k.store.keys.queue_prefix("q")))
            .unwrap();
    assert_eq!(idem_keys.len(), 1);
    let ttl: i64 = k.r.pttl(&idem_keys[0]).unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "idempotency key ttl {ttl}");

    let before = k.snapshot();
    let again = [task("q"), task("q"), task("q")];
    let r = k
        .store
        .submit(&again, Some("order-42"), 60_000)
        .await
        .unwrap();
    assert_eq!(r, Submitted::Duplicate { ids: ids.clone() });
    assert_eq!(k.snapshot(), before, "a duplicate submission wrote keys");
    for t in &again {
        assert!(k.hash("q", &t.id).is_empty());
    }

    // Another key is a new submission.
    let r = k
        .store
        .submit(&[task("q")], Some("order-43"), 60_000)
        .await
        .unwrap();
    assert!(matches!(r, Submitted::Created { .. }), "{r:?}");
    assert_eq!(k.zcard("q", "pending"), 3);
    k.assert_doctor_clean(&["q"]).await;
}

// ----- promote -----

#[tokio::test]
async fn promote_moves_a_scheduled_task_to_pending_once_it_is_due_and_not_before() {
    let mut k = Kit::new().await;
    let id = k
        .submit_one(PreparedTask {
            delay_ms: Some(50),
            priority: 2,
            ..task("q")
        })
        .await;
    assert_eq!(k.store.promote("q", 100).await.unwrap(), 0);
    assert_eq!(k.field("q", &id, "state"), "scheduled");
    assert_eq!(k.indexes("q", &id), ["scheduled"]);
    let events = k.xlen("q");

    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(k.store.promote("q", 100).await.unwrap(), 1);
    assert_eq!(k.field("q", &id, "state"), "pending");
    assert_eq!(k.indexes("q", &id), ["pending"]);
    let seq: i64 = k.r.get(k.store.keys.seq("q")).unwrap();
    assert_eq!(
        k.score("q", "pending", &id),
        Some(7 * 10_000_000_000_000 + seq)
    );
    assert_eq!(k.xlen("q"), events + 1);
    assert_eq!(
        k.store.promote("q", 100).await.unwrap(),
        0,
        "promoted twice"
    );
    k.assert_doctor_clean(&["q"]).await;
}

// ----- dispatch -----

#[tokio::test]
async fn dispatch_assigns_no_more_tasks_than_the_nodes_have_free_slots() {
    struct Case {
        name: &'static str,
        /// Tasks of this queue already assigned to a node before the dispatch.
        busy: &'static [(&'static str, i64)],
        /// (node, budget: capacity minus load in other queues).
        nodes: &'static [(&'static str, i64)],
        /// New assignments per node.
        want: &'static [(&'static str, usize)],
    }
    let table = [
        Case {
            name: "one node, two slots",
            busy: &[],
            nodes: &[("n1", 2)],
            want: &[("n1", 2)],
        },
        Case {
            name: "two nodes, most free first",
            busy: &[],
            nodes: &[("n1", 1), ("n2", 3)],
            want: &[("n1", 1), ("n2", 3)],
        },
        Case {
            name: "no free slot",
            busy: &[],
            nodes: &[("n1", 0)],
            want: &[("n1", 0)],
        },
        Case {
            name: "a negative budget costs the others nothing",
            busy: &[],
            nodes: &[("n1", -2), ("n2", 3)],
            want: &[("n1", 0), ("n2", 3)],
        },
        Case {
            name: "more slots than tasks",
            busy: &[],
            nodes: &[("n1", 10)],
            want: &[("n1", 5)],
        },
        Case {
            name: "this queue's load uses up part of the budget",
            busy: &[("n1", 2)],
            nodes: &[("n1", 3)],
            want: &[("n1", 1)],
        },
        Case {
            name: "a load above the budget leaves no slot",
            busy: &[("n1", 3), ("n2", 1)],
            nodes: &[("n1", 1), ("n2", 3)],
            want: &[("n1", 0), ("n2", 2)],
        },
    ];
    for c in table {
        let mut k = Kit::new().await;
        for (node, n) in c.busy {
            let seed: Vec<PreparedTask> = (0..*n).map(|_| task("q")).collect();
            k.submit(&seed).await;
            assert_eq!(
                k.dispatch_to("q", node, *n).await,
                *n,
                "{}: seeding",
                c.name
            );
        }
        let tasks: Vec<PreparedTask> = (0..5).map(|_| task("q")).collect();
        k.submit(&tasks).await;
        let events = k.xlen("q");
        let nodes: Vec<(String, i64, String)> = c
            .nodes
            .iter()
            .map(|(n, f)| (n.to_string(), *f, String::new()))
            .collect();
        let d = k.store.dispatch_to("q", &nodes, 100, 100).await.unwrap();
        let (assigned, left) = (d.assigned, d.left);
        let total: usize = c.want.iter().map(|(_, n)| n).sum();
        let got: Vec<&str> = c
            .want
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(d.nodes, got, "{}: the nodes to wake", c.name);
        assert_eq!(
            (assigned, left),
            (total as i64, 5 - total as i64),
            "{}",
            c.name
        );
        assert_eq!(k.zcard("q", "pending"), 5 - total, "{}", c.name);
        for (node, n) in c.want {
            let busy = c
                .busy
                .iter()
                .find(|(b, _)| b == node)
                .map_or(0, |(_, n)| *n as usize);
            let inbox = k.inbox("q", node);
            assert_eq!(inbox.len(), busy + *n, "{}: inbox of {node}", c.name);
            assert_eq!(
                k.load("q").get(*node).copied().unwrap_or(0),
                (busy + *n) as i64,
                "{}: load of {node}",
                c.name
            );
            for id in &inbox {
                assert_eq!(k.field("q", id, "state"), "assigned", "{}", c.name);
                assert_eq!(k.field("q", id, "node"), *node, "{}", c.name);
                assert_eq!(k.indexes("q", id), [format!("inbox:{node}")], "{}", c.name);
            }
        }
        assert_eq!(
            k.xlen("q"),
            events + total,
            "{}: one event per assignment",
            c.name
        );
        k.assert_doctor_clean(&["q"]).await;
    }
}

#[tokio::test]
async fn a_direct_dispatch_leases_at_once_what_an_inbox_and_a_lease_would_have() {
    let mut k = Kit::new().await;
    let tasks: Vec<PreparedTask> = (0..5).map(|_| task("q")).collect();
    k.submit(&tasks).await;
    let nodes = vec![
        ("n1".to_string(), 10, String::new()),
        ("n2".to_string(), 10, String::new()),
    ];
    // n1's long-poll takes up to 2 directly; the rest of its share goes to its inbox.
    let d = k
        .store
        .dispatch_direct("q", &nodes, &[2, 0], 100, 100)
        .await
        .expect("dispatch");
    assert_eq!((d.assigned, d.left), (5, 0));
    assert_eq!(d.direct.len(), 1, "{:?}", d.direct);
    let (node, leases) = &d.direct[0];
    assert_eq!(node, "n1");
    assert_eq!(leases.len(), 2);
    let mut tokens = std::collections::HashSet::new();
    for l in leases {
        let id = &l.task.id;
        assert_eq!(l.task.state, TaskState::Running);
        assert_eq!((l.task.fence, l.task.attempts), (1, 1));
        assert!(l.token.starts_with("1."), "{}", l.token);
        assert!(tokens.insert(l.token.clone()), "two leases share a token");
        assert_eq!(k.field("q", id, "state"), "running");
        assert_eq!(k.field("q", id, "node"), "n1");
        assert_eq!(k.indexes("q", id), ["running".to_string()]);
    }
    // What went to inboxes is leased as before; loads count both.
    let inboxed = k.inbox("q", "n1").len() + k.inbox("q", "n2").len();
    assert_eq!(inboxed, 3);
    assert_eq!(
        k.load("q").values().sum::<i64>(),
        5,
        "the load counts direct leases too"
    );
    k.assert_doctor_clean(&["q"]).await;
    // A direct lease is a lease: its token completes the task, once.
    let l = &leases[0];
    k.store
        .complete(&l.task.id, Some("n1"), &l.token, "1")
        .await
        .expect("complete");
    assert_eq!(k.field("q", &l.task.id, "state"), "succeeded");
    assert_eq!(
        k.load("q").get("n1").copied().unwrap_or(0) + k.load("q").get("n2").copied().unwrap_or(0),
        4
    );
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn dispatch_skips_nodes_lacking_a_required_tag_and_leaves_the_task_pending() {
    let mut k = Kit::new().await;
    let gpu = k
        .submit_one(PreparedTask {
            requires: strs(&["gpu", "linux"]),
            ..task("q")
        })
        .await;
    let plain = k.submit_one(task("q")).await;
    let nodes = vec![("cpu".to_string(), 5, "linux,ssd".to_string())];
    assert_eq!(
        k.store.dispatch("q", &nodes, 10, 10).await.unwrap(),
        (1, 1, 0)
    );
    assert_eq!(k.field("q", &gpu, "state"), "pending");
    assert_eq!(k.indexes("q", &gpu), ["pending"]);
    assert_eq!(k.indexes("q", &plain), ["inbox:cpu"]);
    assert_eq!(k.load("q"), HashMap::from([("cpu".to_string(), 1)]));

    // A node with every required tag (and more) takes it.
    let nodes = vec![
        ("cpu".to_string(), 4, "linux,ssd".to_string()),
        ("big".to_string(), 1, "ssd,gpu,linux".to_string()),
    ];
    assert_eq!(
        k.store.dispatch("q", &nodes, 10, 10).await.unwrap(),
        (1, 0, 0)
    );
    assert_eq!(k.indexes("q", &gpu), ["inbox:big"]);
    assert_eq!(k.field("q", &gpu, "node"), "big");
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn dispatch_on_a_paused_queue_assigns_nothing_until_it_is_resumed() {
    let mut k = Kit::new().await;
    let id = k.submit_one(task("q")).await;
    k.store
        .update_queue(
            "q",
            &QueueUpdate {
                paused: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let before = k.snapshot();
    assert_eq!(
        k.store
            .dispatch("q", &[("n1".into(), 5, String::new())], 10, 10)
            .await
            .unwrap(),
        (0, 1, 0)
    );
    assert_eq!(k.snapshot(), before, "a paused dispatch wrote keys");
    // A pull lease does not take from a paused queue either.
    assert!(
        k.store
            .lease("q", "h1", 1, true, "")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(k.indexes("q", &id), ["pending"]);

    k.store
        .update_queue(
            "q",
            &QueueUpdate {
                paused: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        k.store
            .dispatch("q", &[("n1".into(), 5, String::new())], 10, 10)
            .await
            .unwrap(),
        (1, 0, 0)
    );
    assert_eq!(k.indexes("q", &id), ["inbox:n1"]);
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn concurrent_dispatch_calls_never_assign_a_task_twice() {
    let mut k = Kit::new().await;
    let tasks: Vec<PreparedTask> = (0..200).map(|_| task("q")).collect();
    let ids: HashSet<String> = tasks.iter().map(|t| t.id.clone()).collect();
    k.submit(&tasks).await;
    // Budgets add up to exactly 200: a racing dispatcher must neither double-assign
    // nor overfill a node.
    let nodes: Vec<(String, i64, String)> = (0..5)
        .map(|i| (format!("n{i}"), 40, String::new()))
        .collect();
    // Every call asks for a few tasks at once.
    let call = |max: usize| {
        let s = k.store.clone();
        let nodes = nodes.clone();
        async move { s.dispatch("q", &nodes, max, 500).await.unwrap().0 }
    };
    let round = || async {
        let (a, b, c, d, e, f, g, h) = tokio::join!(
            call(7),
            call(11),
            call(13),
            call(5),
            call(17),
            call(3),
            call(19),
            call(9)
        );
        a + b + c + d + e + f + g + h
    };
    let mut assigned = 0;
    for _ in 0..20 {
        let (x, y, z) = tokio::join!(round(), round(), round());
        assigned += x + y + z;
        if assigned >= 200 {
            break;
        }
    }
    assert_eq!(assigned, 200, "every task assigned, and counted once");
    assert_eq!(k.zcard("q", "pending"), 0);
    let mut seen: HashMap<String, String> = HashMap::new();
    for (node, _, _) in &nodes {
        let inbox = k.inbox("q", node);
        assert_eq!(inbox.len(), 40, "inbox of {node}");
        assert_eq!(
            k.load("q").get(node).copied().unwrap_or(0),
            40,
            "load of {node}"
        );
        for id in inbox {
            assert_eq!(k.field("q", &id, "node"), *node);
            if let Some(other) = seen.insert(id.clone(), node.clone()) {
                panic!("{id} is in the inboxes of {other} and {node}");
            }
        }
    }
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), ids);
    k.assert_doctor_clean(&["q"]).await;
}

// ----- lease -----

#[tokio::test]
async fn lease_takes_an_assigned_task_from_the_inbox_and_starts_a_fenced_lease() {
    let mut k = Kit::new().await;
    let id = k
        .submit_one(PreparedTask {
            timeout_ms: 5_000,
            ..task("q")
        })
        .await;
    k.dispatch_to("q", "n1", 1).await;
    let events = k.xlen("q");
    let before = k.redis_now();
    let l = k.lease("q", "n1", 3).await;
    let after = k.redis_now();
    assert_eq!(l.len(), 1);
    let l = &l[0];

    let h = k.hash("q", &id);
    assert_eq!(h["state"], "running");
    assert_eq!(h["node"], "n1");
    assert_eq!(h["fence"], "1");
    assert_eq!(h["attempts"], "1");
    let (fence, nonce) = l.token.split_once('.').expect("token is <fence>.<nonce>");
    assert_eq!(fence, "1");
    assert_eq!(nonce, h["nonce"]);
    assert!(
        nonce.len() >= 16 && nonce.bytes().all(|b| b.is_ascii_hexdigit()),
        "nonce {nonce}"
    );
    let started: i64 = h["started_at"].parse().unwrap();
    assert!((before..=after).contains(&started));
    assert_eq!(l.expires_ms, started + 5_000);
    assert_eq!(h["lease_expires"], l.expires_ms.to_string());
    assert_eq!(k.indexes("q", &id), ["running"]);
    assert_eq!(k.score("q", "running", &id), Some(l.expires_ms));
    assert!(!k.inbox_exists("q", "n1"));
    assert_eq!(
        k.load("q"),
        HashMap::from([("n1".to_string(), 1)]),
        "a running task still counts"
    );
    assert_eq!(k.xlen("q"), events + 1);
    assert_eq!(
        (l.task.state, l.task.fence, l.task.attempts),
        (TaskState::Running, 1, 1)
    );
    assert!(l.task.lease_expires_at.is_some());

    assert!(
        k.lease("q", "n1", 1).await.is_empty(),
        "the inbox is empty now"
    );
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn lease_drops_a_cancelled_task_left_in_an_inbox() {
    let mut k = Kit::new().await;
    let gone = k.submit_one(task("q")).await;
    let live = k.submit_one(task("q")).await;
    k.dispatch_to("q", "n1", 2).await;
    assert_eq!(k.store.cancel(&gone).await.unwrap(), Cancelled::Done);
    // Simulate a stale entry the cancel did not remove (e.g. a requeued-then-cancelled race).
    let _: () = k.r.lpush(k.store.keys.inbox("q", "n1"), &gone).unwrap();
    let l = k.lease("q", "n1", 5).await;
    assert_eq!(
        l.iter().map(|l| l.task.id.as_str()).collect::<Vec<_>>(),
        [live.as_str()]
    );
    assert_eq!(k.field("q", &gone, "state"), "cancelled");
    // Never leased: fence and attempts are still at their default (0, not stored).
    assert_eq!(
        k.field("q", &gone, "fence"),
        "",
        "the cancelled task was not leased"
    );
    assert_eq!(k.field("q", &gone, "attempts"), "");
    assert_eq!(k.indexes("q", &gone), ["cancelled"]);
    assert!(!k.inbox_exists("q", "n1"));
    assert_eq!(k.load("q"), HashMap::from([("n1".to_string(), 1)]));
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn lease_in_pull_mode_takes_pending_tasks_whose_required_tags_the_node_has() {
    let mut k = Kit::new().await;
    let needs_de = k
        .submit_one(PreparedTask {
            requires: strs(&["lang-de"]),
            priority: 9,
            ..task("q")
        })
        .await;
    let needs_fr = k
        .submit_one(PreparedTask {
            requires: strs(&["lang-fr"]),
            priority: 9,
            ..task("q")
        })
        .await;
    let any = k.submit_one(task("q")).await;
    let l = k
        .store
        .lease("q", "human1", 1, true, "lang-de,senior")
        .await
        .unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(
        l[0].task.id, needs_de,
        "the highest priority the person can do"
    );
    assert_eq!(k.field("q", &needs_de, "state"), "running");
    assert_eq!(k.field("q", &needs_de, "node"), "human1");
    assert_eq!(k.indexes("q", &needs_de), ["running"]);
    assert_eq!(k.load("q"), HashMap::from([("human1".to_string(), 1)]));

    let l = k
        .store
        .lease("q", "human1", 5, true, "lang-de,senior")
        .await
        .unwrap();
    assert_eq!(
        l.iter().map(|l| l.task.id.as_str()).collect::<Vec<_>>(),
        [any.as_str()]
    );
    assert_eq!(
        k.indexes("q", &needs_fr),
        ["pending"],
        "a task needing a tag the person lacks stays pending"
    );
    assert_eq!(k.load("q"), HashMap::from([("human1".to_string(), 2)]));
    // Without pull, the same node gets nothing from pending.
    assert!(
        k.store
            .lease("q", "human2", 1, false, "lang-fr")
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(k.indexes("q", &needs_fr), ["pending"]);
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn lease_in_pull_mode_drops_a_pending_entry_whose_task_hash_is_gone() {
    let mut k = Kit::new().await;
    let real = k
        .submit_one(PreparedTask {
            priority: 0,
            ..task("q")
        })
        .await;
    let ghost = new_task_id("q");
    // An index entry without its hash, ahead of the real task.
    let _: () =
        k.r.zadd(k.store.keys.state_index("q", "pending"), &ghost, 1)
            .unwrap();
    let l = k.store.lease("q", "human1", 1, true, "").await.unwrap();
    assert_eq!(
        l.iter().map(|l| l.task.id.as_str()).collect::<Vec<_>>(),
        [real.as_str()]
    );
    assert!(
        k.hash("q", &ghost).is_empty(),
        "lease made up a task hash for a ghost entry"
    );
    assert!(
        k.indexes("q", &ghost).is_empty(),
        "the ghost entry is still indexed"
    );
    assert_eq!(k.load("q"), HashMap::from([("human1".to_string(), 1)]));
    k.assert_doctor_clean(&["q"]).await;
}

// ----- extend -----

#[tokio::test]
async fn extend_with_the_current_token_moves_the_deadline_and_stores_progress() {
    let mut k = Kit::new().await;
    let l = k
        .running(
            PreparedTask {
                timeout_ms: 5_000,
                ..task("q")
            },
            "n1",
        )
        .await;
    let id = l.task.id.clone();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let events = k.xlen("q");
    let e = k
        .store
        .extend(&id, Some("n1"), &l.token, Some(r#"{"pct":40}"#))
        .await
        .unwrap();
    assert!(
        e.expires_ms >= l.expires_ms + 20,
        "deadline moved from {} to {}",
        l.expires_ms,
        e.expires_ms
    );
    assert!(!e.cancel_requested);
    assert_eq!(k.int_field("q", &id, "lease_expires"), e.expires_ms);
    assert_eq!(k.score("q", "running", &id), Some(e.expires_ms));
    assert_eq!(k.field("q", &id, "progress"), r#"{"pct":40}"#);
    assert_eq!(k.xlen("q"), events + 1, "a progress event");
    assert_eq!(k.field("q", &id, "fence"), "1", "extend is not a new lease");

    // Without progress the progress stays, and an admin (no node) may extend too.
    let e2 = k.store.extend(&id, None, &l.token, None).await.unwrap();
    assert!(e2.expires_ms >= e.expires_ms);
    assert_eq!(k.field("q", &id, "progress"), r#"{"pct":40}"#);
    assert_eq!(k.xlen("q"), events + 1, "no event without progress");
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn extend_with_a_stale_token_or_from_another_node_is_a_lease_conflict_and_changes_nothing() {
    let mut k = Kit::new().await;
    let l = k.running(task("q"), "n1").await;
    let id = l.task.id.clone();
    let nonce = l.token.split_once('.').unwrap().1.to_string();
    let table = [
        ("another node", Some("n2"), l.token.clone()),
        ("a future fence", Some("n1"), format!("2.{nonce}")),
        (
            "another nonce",
            Some("n1"),
            "1.abcdef0123456789abcdef01".to_string(),
        ),
        ("an admin with a wrong nonce", None, "1.00".to_string()),
    ];
    for (name, node, token) in table {
        let before = k.snapshot();
        assert_conflict(
            k.store.extend(&id, node, &token, Some("{}")).await,
            "running",
            name,
        );
        assert_eq!(k.snapshot(), before, "{name}: keys changed");
    }
    // A malformed token is refused without a script call.
    assert_conflict(
        k.store.extend(&id, Some("n1"), "nonsense", None).await,
        "unknown",
        "malformed",
    );
    k.assert_doctor_clean(&["q"]).await;
}

// ----- complete -----

#[tokio::test]
async fn complete_with_the_current_token_records_the_result_once() {
    let mut k = Kit::new().await;
    let l = k.running(task("q"), "n1").await;
    let id = l.task.id.clone();
    let events = k.xlen("q");
    let r = k
        .store
        .complete(&id, Some("n1"), &l.token, r#"{"ok":true}"#)
        .await
        .unwrap();
    assert_eq!(r.state, TaskState::Succeeded);
    assert_eq!(r.node.as_deref(), Some("n1"));
    assert!(r.run_ms.is_some_and(|ms| ms >= 0));

    let h = k.hash("q", &id);
    assert_eq!(h["state"], "succeeded");
    assert_eq!(h["result"], r#"{"ok":true}"#);
    assert_eq!(h["lease_expires"], "");
    let finished: i64 = h["finished_at"].parse().unwrap();
    assert_eq!(k.indexes("q", &id), ["succeeded"]);
    assert_eq!(k.score("q", "succeeded", &id), Some(finished));
    assert!(k.load("q").is_empty(), "load decremented to nothing");
    assert_eq!(k.stat("q", "succeeded"), 1);
    assert_eq!(k.xlen("q"), events + 1);

    // The same report again: the same answer, nothing written.
    let before = k.snapshot();
    let again = k
        .store
        .complete(&id, Some("n1"), &l.token, r#"{"ok":"different"}"#)
        .await
        .unwrap();
    assert_eq!(again.state, TaskState::Succeeded);
    assert_eq!(
        (again.run_ms, again.node),
        (None, None),
        "a repeat is marked as such"
    );
    assert_eq!(k.snapshot(), before, "a repeat wrote keys");
    // A fail for the completed lease is a conflict.
    assert_conflict(
        k.store.fail(&id, Some("n1"), &l.token, "late", true).await,
        "succeeded",
        "fail after complete",
    );
    assert_eq!(k.snapshot(), before);
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn complete_with_a_token_of_another_lease_is_a_lease_conflict_and_changes_nothing() {
    let mut k = Kit::new().await;
    let l = k.running(task("q"), "n1").await;
    let other = k.running(task("q"), "n2").await;
    let id = l.task.id.clone();
    let nonce = l.token.split_once('.').unwrap().1.to_string();
    let table = [
        (
            "the token of another task's lease",
            Some("n1"),
            other.token.clone(),
        ),
        (
            "the right token from another node",
            Some("n2"),
            l.token.clone(),
        ),
        ("a future fence", Some("n1"), format!("2.{nonce}")),
    ];
    for (name, node, token) in table {
        let before = k.snapshot();
        assert_conflict(
            k.store.complete(&id, node, &token, "1").await,
            "running",
            name,
        );
        assert_conflict(
            k.store.fail(&id, node, &token, "x", true).await,
            "running",
            name,
        );
        assert_eq!(k.snapshot(), before, "{name}: keys changed");
    }
    assert!(matches!(
        k.store
            .complete(&new_task_id("q"), None, &l.token, "1")
            .await,
        Err(StoreError::NotFound { .. })
    ));
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn complete_with_the_token_of_an_expired_lease_is_refused_once_the_task_is_leased_again() {
    let mut k = Kit::new().await;
    let old = k
        .running(
            PreparedTask {
                timeout_ms: 100,
                backoff: Backoff {
                    initial_ms: 1,
                    max_ms: 1,
                },
                ..task("q")
            },
            "n1",
        )
        .await;
    let id = old.task.id.clone();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let expired = k.store.expire("q", 10).await.unwrap();
    assert_eq!(
        expired,
        [(id.clone(), "n1".to_string(), "retrying".to_string())]
    );
    // While retrying the old lease is over.
    assert_conflict(
        k.store
            .complete(&id, Some("n1"), &old.token, "\"late\"")
            .await,
        "retrying",
        "while retrying",
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(k.store.promote("q", 10).await.unwrap(), 1);
    let new = k.lease_again("q", &id, "n2").await;
    assert_eq!(new.task.fence, 2);
    assert_eq!(new.task.attempts, 2);
    assert!(new.token.starts_with("2."));

    let before = k.snapshot();
    assert_conflict(
        k.store
            .complete(&id, Some("n1"), &old.token, "\"late\"")
            .await,
        "running",
        "old lease, new run",
    );
    assert_conflict(
        k.store.complete(&id, None, &old.token, "\"late\"").await,
        "running",
        "old lease, as admin",
    );
    assert_eq!(k.snapshot(), before, "a stale completion wrote keys");

    let r = k
        .store
        .complete(&id, Some("n2"), &new.token, "\"fresh\"")
        .await
        .unwrap();
    assert_eq!(r.state, TaskState::Succeeded);
    assert_conflict(
        k.store
            .complete(&id, Some("n1"), &old.token, "\"late\"")
            .await,
        "succeeded",
        "old lease, after",
    );
    assert_eq!(k.field("q", &id, "result"), "\"fresh\"");
    assert_eq!(k.indexes("q", &id), ["succeeded"]);
    assert!(k.load("q").is_empty());
    k.assert_doctor_clean(&["q"]).await;
}

// ----- fail -----

#[tokio::test]
async fn fail_retries_while_attempts_are_left_and_otherwise_ends_the_task() {
    struct Case {
        name: &'static str,
        max_attempts: i64,
        retryable: bool,
        cancel_first: bool,
        want: &'static str,
    }
    let table = [
        Case {
            name: "retryable with attempts left",
            max_attempts: 3,
            retryable: true,
            cancel_first: false,
            want: "retrying",
        },
        Case {
            name: "retryable on the final attempt",
            max_attempts: 1,
            retryable: true,
            cancel_first: false,
            want: "failed",
        },
        Case {
            name: "not retryable",
            max_attempts: 3,
            retryable: false,
            cancel_first: false,
            want: "failed",
        },
        Case {
            name: "cancel requested",
            max_attempts: 3,
            retryable: true,
            cancel_first: true,
            want: "cancelled",
        },
    ];
    let mut k = Kit::new().await;
    for c in table {
        let l = k
            .running(
                PreparedTask {
                    max_attempts: c.max_attempts,
                    backoff: Backoff {
                        initial_ms: 1_000,
                        max_ms: 60_000,
                    },
                    ..task("q")
                },
                "n1",
            )
            .await;
        let id = l.task.id.clone();
        if c.cancel_first {
            assert_eq!(
                k.store.cancel(&id).await.unwrap(),
                Cancelled::Requested,
                "{}",
                c.name
            );
        }
        let stat = if c.want == "retrying" {
            "retried"
        } else {
            c.want
        };
        let (stat_before, events) = (k.stat("q", stat), k.xlen("q"));
        let before = k.redis_now();
        let r = k
            .store
            .fail(&id, Some("n1"), &l.token, "boom", c.retryable)
            .await
            .unwrap();
        let after = k.redis_now();
        assert_eq!(r.state.as_str(), c.want, "{}", c.name);
        assert_eq!(r.node.as_deref(), Some("n1"), "{}", c.name);

        let h = k.hash("q", &id);
        assert_eq!(h["state"], c.want, "{}", c.name);
        assert_eq!(h["error"], "boom", "{}", c.name);
        assert_eq!(h["attempts"], "1", "{}", c.name);
        assert_eq!(h["lease_expires"], "", "{}", c.name);
        assert_eq!(k.indexes("q", &id), [c.want], "{}", c.name);
        if c.want == "retrying" {
            let run_at: i64 = h["run_at"].parse().unwrap();
            // Equal jitter: between half the initial backoff and all of it.
            assert!(
                run_at >= before + 500 && run_at <= after + 1_000,
                "{}: run_at {run_at} not in [{}, {}]",
                c.name,
                before + 500,
                after + 1_000
            );
            assert_eq!(k.score("q", "retrying", &id), Some(run_at), "{}", c.name);
            assert!(!h.contains_key("finished_at"), "{}", c.name);
        } else {
            let finished: i64 = h["finished_at"].parse().unwrap();
            assert_eq!(k.score("q", c.want, &id), Some(finished), "{}", c.name);
        }
        assert!(k.load("q").is_empty(), "{}: load", c.name);
        assert!(k.cancels("q", "n1").is_empty(), "{}: cancels", c.name);
        assert_eq!(
            k.stat("q", stat),
            stat_before + 1,
            "{}: stat {stat}",
            c.name
        );
        assert_eq!(k.xlen("q"), events + 1, "{}: events", c.name);

        // The same report again answers the same and writes nothing.
        let snap = k.snapshot();
        let again = k
            .store
            .fail(&id, Some("n1"), &l.token, "boom", c.retryable)
            .await
            .unwrap();
        assert_eq!(
            (again.state.as_str(), again.node),
            (c.want, None),
            "{}: repeat",
            c.name
        );
        assert_eq!(k.snapshot(), snap, "{}: a repeat wrote keys", c.name);
    }
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn fail_of_the_last_of_several_attempts_fails_the_task() {
    let mut k = Kit::new().await;
    let t = PreparedTask {
        max_attempts: 2,
        backoff: Backoff {
            initial_ms: 1,
            max_ms: 1,
        },
        ..task("q")
    };
    let l1 = k.running(t, "n1").await;
    let id = l1.task.id.clone();
    assert_eq!(
        k.store
            .fail(&id, Some("n1"), &l1.token, "one", true)
            .await
            .unwrap()
            .state,
        TaskState::Retrying
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(k.store.promote("q", 10).await.unwrap(), 1);
    let l2 = k.lease_again("q", &id, "n1").await;
    assert_eq!((l2.task.attempts, l2.task.fence), (2, 2));
    assert_eq!(
        k.store
            .fail(&id, Some("n1"), &l2.token, "two", true)
            .await
            .unwrap()
            .state,
        TaskState::Failed
    );
    assert_eq!(k.field("q", &id, "error"), "two");
    assert_eq!(k.indexes("q", &id), ["failed"]);
    assert_eq!(k.stat("q", "failed"), 1);
    assert_eq!(k.stat("q", "retried"), 1);
    k.assert_doctor_clean(&["q"]).await;
}

// ----- expire -----

#[tokio::test]
async fn expire_treats_an_overdue_lease_as_a_failed_attempt() {
    struct Case {
        name: &'static str,
        max_attempts: i64,
        want: &'static str,
    }
    let table = [
        Case {
            name: "attempts left",
            max_attempts: 3,
            want: "retrying",
        },
        Case {
            name: "attempts exhausted",
            max_attempts: 1,
            want: "failed",
        },
    ];
    for c in table {
        let mut k = Kit::new().await;
        let l = k
            .running(
                PreparedTask {
                    timeout_ms: 30_000,
                    max_attempts: c.max_attempts,
                    ..task("q")
                },
                "n1",
            )
            .await;
        let id = l.task.id.clone();
        let before = k.snapshot();
        assert!(
            k.store.expire("q", 10).await.unwrap().is_empty(),
            "{}: expired early",
            c.name
        );
        assert_eq!(k.snapshot(), before, "{}", c.name);

        k.make_overdue("q", &id);
        let events = k.xlen("q");
        let out = k.store.expire("q", 10).await.unwrap();
        assert_eq!(
            out,
            [(id.clone(), "n1".to_string(), c.want.to_string())],
            "{}",
            c.name
        );
        let h = k.hash("q", &id);
        assert_eq!(h["state"], c.want, "{}", c.name);
        assert_eq!(h["error"], "lease expired", "{}", c.name);
        assert_eq!(h["attempts"], "1", "{}", c.name);
        assert_eq!(k.indexes("q", &id), [c.want], "{}", c.name);
        assert!(k.load("q").is_empty(), "{}", c.name);
        assert_eq!(k.xlen("q"), events + 1, "{}", c.name);
        // The node's report comes too late.
        assert_conflict(
            k.store.complete(&id, Some("n1"), &l.token, "1").await,
            c.want,
            c.name,
        );
        assert!(
            k.store.expire("q", 10).await.unwrap().is_empty(),
            "{}: expired twice",
            c.name
        );
        k.assert_doctor_clean(&["q"]).await;
    }
}

// ----- cancel -----

#[tokio::test]
async fn cancel_of_a_task_that_is_not_running_cancels_it_at_once() {
    #[derive(Clone, Copy, Debug)]
    enum Seed {
        Pending,
        Scheduled,
        Assigned,
        Retrying,
    }
    let mut k = Kit::new().await;
    for seed in [
        Seed::Pending,
        Seed::Scheduled,
        Seed::Assigned,
        Seed::Retrying,
    ] {
        // A task on another node keeps the load hash non-empty, so we see it decrease.
        let id = match seed {
            Seed::Pending => k.submit_one(task("q")).await,
            Seed::Scheduled => {
                k.submit_one(PreparedTask {
                    delay_ms: Some(60_000),
                    ..task("q")
                })
                .await
            }
            Seed::Assigned => {
                let id = k.submit_one(task("q")).await;
                k.dispatch_to("q", "n1", 1).await;
                id
            }
            Seed::Retrying => {
                let l = k.running(task("q"), "n1").await;
                k.store
                    .fail(&l.task.id, Some("n1"), &l.token, "x", true)
                    .await
                    .unwrap();
                l.task.id
            }
        };
        let state = k.field("q", &id, "state");
        let load_before = k.load("q").get("n1").copied().unwrap_or(0);
        let (cancelled, events) = (k.stat("q", "cancelled"), k.xlen("q"));
        assert_eq!(
            k.store.cancel(&id).await.unwrap(),
            Cancelled::Done,
            "{seed:?}"
        );
        let h = k.hash("q", &id);
        assert_eq!(h["state"], "cancelled", "{seed:?}");
        assert_eq!(k.indexes("q", &id), ["cancelled"], "{seed:?} (was {state})");
        assert_eq!(
            k.score("q", "cancelled", &id),
            Some(h["finished_at"].parse().unwrap()),
            "{seed:?}"
        );
        let load_after = k.load("q").get("n1").copied().unwrap_or(0);
        let want_drop = if matches!(seed, Seed::Assigned) { 1 } else { 0 };
        assert_eq!(load_before - load_after, want_drop, "{seed:?}: load");
        if matches!(seed, Seed::Assigned) {
            assert!(
                !k.inbox("q", "n1").contains(&id),
                "{seed:?}: still in the inbox"
            );
        }
        assert!(k.cancels("q", "n1").is_empty(), "{seed:?}");
        assert_eq!(k.stat("q", "cancelled"), cancelled + 1, "{seed:?}");
        assert_eq!(k.xlen("q"), events + 1, "{seed:?}");

        // Cancelling again answers Done and writes nothing.
        let snap = k.snapshot();
        assert_eq!(
            k.store.cancel(&id).await.unwrap(),
            Cancelled::Done,
            "{seed:?}: again"
        );
        assert_eq!(k.snapshot(), snap, "{seed:?}: a repeat wrote keys");
    }
    assert!(
        k.lease("q", "n1", 5).await.is_empty(),
        "nothing left to lease"
    );
    k.assert_doctor_clean(&["q"]).await;
}

#[tokio::test]
async fn cancel_of_a_running_task_asks_its_node_and_the_task_ends_cancelled_when_the_node_reports()
{
    #[derive(Clone, Copy, Debug)]
    enum End {
        NodeFails,
        NodeCompletes,
        LeaseExpires,
    }
    let mut k = Kit::new().await;
    let n1 = machine("n1", &["q", "other"]);
    for end in [End::NodeFails, End::NodeCompletes, End::LeaseExpires] {
        let l = k
            .running(
                PreparedTask {
                    timeout_ms: 30_000,
                    ..task("q")
                },
                "n1",
            )
            .await;
        let id = l.task.id.clone();
        let events = k.xlen("q");
        assert_eq!(
            k.store.cancel(&id).await.unwrap(),
            Cancelled::Requested,
            "{end:?}"
        );
        let h = k.hash("q", &id);
        assert_eq!(
            h["state"], "running",
            "{end:?}: still running until the node stops"
        );
        assert_eq!(h["cancel_requested"], "1", "{end:?}");
        assert_eq!(k.indexes("q", &id), ["running"], "{end:?}");
        assert_eq!(k.cancels("q", "n1"), std::slice::from_ref(&id), "{end:?}");
        assert_eq!(
            k.store.node_cancels(&n1).await.unwrap(),
            std::slice::from_ref(&id),
            "{end:?}"
        );
        assert_eq!(k.load("q").get("n1"), Some(&1), "{end:?}");
        assert_eq!(k.xlen("q"), events + 1, "{end:?}");
        // The node learns it on extend too.
        assert!(
            k.store
                .extend(&id, Some("n1"), &l.token, None)
                .await
                .unwrap()
                .cancel_requested,
            "{end:?}"
        );

        let state = match end {
            End::NodeFails => {
                k.store
                    .fail(&id, Some("n1"), &l.token, "stopped", true)
                    .await
                    .unwrap()
                    .state
            }
            End::NodeCompletes => {
                k.store
                    .complete(&id, Some("n1"), &l.token, "\"done anyway\"")
                    .await
                    .unwrap()
                    .state
            }
            End::LeaseExpires => {
                k.make_overdue("q", &id);
                let out = k.store.expire("q", 10).await.unwrap();
                assert_eq!(out.len(), 1, "{end:?}");
                TaskState::parse(&out[0].2).unwrap()
            }
        };
        assert_eq!(state, TaskState::Cancelled, "{end:?}");
        assert_eq!(k.field("q", &id, "state"), "cancelled", "{end:?}");
        assert_eq!(k.indexes("q", &id), ["cancelled"], "{end:?}");
        assert!(
            k.cancels("q", "n1").is_empty(),
            "{end:?}: cancels set not cleared"
        );
        assert!(
            k.store.node_cancels(&n1).await.unwrap().is_empty(),
            "{end:?}"
        );
        assert!(k.load("q").is_empty(), "{end:?}: load");

        // The node's report repeated answers the same and writes nothing; after an
        // expired lease the node's report was never accepted: a conflict.
        let snap = k.snapshot();
        match end {
            End::NodeFails => {
                let r = k
                    .store
                    .fail(&id, Some("n1"), &l.token, "stopped", true)
                    .await
                    .unwrap();
                assert_eq!(
                    (r.state, r.node),
                    (TaskState::Cancelled, None),
                    "{end:?}: repeat"
                );
            }
            End::NodeCompletes => {
                let r = k
                    .store
                    .complete(&id, Some("n1"), &l.token, "\"done anyway\"")
                    .await;
                let r = r.unwrap_or_else(|e| {
                    panic!("{end:?}: a repeated accepted completion was refused: {e}")
                });
                assert_eq!(
                    (r.state, r.node),
                    (TaskState::Cancelled, None),
                    "{end:?}: repeat"
                );
            }
            End::LeaseExpires => {
                assert_conflict(
                    k.store.complete(&id, Some("n1"), &l.token, "1").await,
                    "cancelled",
                    "late complete",
                );
            }
        }
        assert_eq!(k.snapshot(), snap, "{end:?}: a repeat wrote keys");
    }
    k.assert_doctor_clean(&["q"]).await;
}

// ----- retry, delete -----

#[tokio::test]
async fn retry_sends_a_failed_or_cancelled_task_back_to_pending_with_attempts_reset() {
    let mut k = Kit::new().await;
    let failed = k
        .running(
            PreparedTask {
                max_attempts: 1,
                retention_ms: 60_000,
                ..task("q")
            },
            "n1",
        )
        .await;
    k.store
        .fail(&failed.task.id, Some("n1"), &failed.token, "x", true)
        .await
        .unwrap();
    let cancelled = k.running(task("q"), "n1").await;
    k.store.cancel(&cancelled.task.id).await.unwrap();
    k.store
        .complete(&cancelled.task.id, Some("n1"), &cancelled.token, "1")
        .await
        .unwrap();

    for (id, from) in [
        (failed.task.id.clone(), "failed"),
        (cancelled.task.id.clone(), "cancelled"),
    ] {
        assert_eq!(k.field("q", &id, "state"), from);
        let events = k.xlen("q");
        k.store.retry(&id).await.unwrap();
        let h = k.hash("q", &id);
        assert_eq!(h["state"], "pending", "{from}");
        assert_eq!(h["attempts"], "0", "{from}");
        assert_eq!(h["cancel_requested"], "0", "{from}");
        for gone in ["finished_at", "error", "result"] {
            assert!(!h.contains_key(gone), "{from}: {gone} kept");
        }
        assert_eq!(k.indexes("q", &id), ["pending"], "{from}");
        let ttl: i64 = k.r.pttl(k.store.keys.task("q", &id)).unwrap();
        assert_eq!(ttl, -1, "{from}: the retention expiry must be lifted");
        assert_eq!(k.xlen("q"), events + 1, "{from}");
        // The fence keeps counting, so old tokens stay stale.
        let l = k.lease_again("q", &id, "n2").await;
        assert_eq!((l.task.fence, l.task.attempts), (2, 1), "{from}");
        k.store
            .complete(&id, Some("n2"), &l.token, "2")
            .await
            .unwrap();
    }
    k.assert_doctor_clean(&["q"]).await;
}

/// What an operator transition does from one state, and every key it writes:
/// `task`, `stats`, `events`, `seq`, `cancels:n1` or a state index by name.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// Done: the task ends in this state ("" = deleted); exactly these keys change.
    To(&'static str, &'static [&'static str]),
    /// `IllegalTransition { from }`; nothing is written.
    Illegal,
    /// Accepted, nothing to do: nothing is written.
    Unchanged,
}

/// The operator transitions `cancel`, `retry` and `delete` from every state a task can
/// be in outside an inbox, each from a seeded state in a namespace of its own (as
/// asynq's `rdb_test.go` tables): the reply, the task's state and indexes, the event,
/// and the exact set of keys written; then the invariant checker. Replaces
/// `cancel_of_a_succeeded_or_failed_task_is_an_illegal_transition`,
/// `retry_of_a_task_that_has_not_ended_in_failure_is_an_illegal_transition` and
/// `delete_removes_only_finished_tasks`, which checked fewer states and keys.
#[tokio::test]
async fn operator_transitions_from_every_state_write_exactly_their_keys() {
    use Want::{Illegal, To, Unchanged};
    let cases: &[(&str, &str, Want)] = &[
        (
            "cancel",
            "pending",
            To(
                "cancelled",
                &["task", "pending", "cancelled", "stats", "events"],
            ),
        ),
        (
            "cancel",
            "scheduled",
            To(
                "cancelled",
                &["task", "scheduled", "cancelled", "stats", "events"],
            ),
        ),
        (
            "cancel",
            "retrying",
            To(
                "cancelled",
                &["task", "retrying", "cancelled", "stats", "events"],
            ),
        ),
        (
            "cancel",
            "running",
            To("running", &["task", "cancels:n1", "events"]),
        ),
        ("cancel", "succeeded", Illegal),
        ("cancel", "failed", Illegal),
        ("cancel", "cancelled", Unchanged),
        ("retry", "pending", Illegal),
        ("retry", "scheduled", Illegal),
        ("retry", "retrying", Illegal),
        ("retry", "running", Illegal),
        ("retry", "succeeded", Illegal),
        (
            "retry",
            "failed",
            To("pending", &["task", "failed", "pending", "seq", "events"]),
        ),
        (
            "retry",
            "cancelled",
            To(
                "pending",
                &["task", "cancelled", "pending", "seq", "events"],
            ),
        ),
        ("delete", "pending", Illegal),
        ("delete", "scheduled", Illegal),
        ("delete", "retrying", Illegal),
        ("delete", "running", Illegal),
        (
            "delete",
            "succeeded",
            To("", &["task", "succeeded", "events"]),
        ),
        ("delete", "failed", To("", &["task", "failed", "events"])),
        (
            "delete",
            "cancelled",
            To("", &["task", "cancelled", "events"]),
        ),
    ];
    for &(op, from, want) in cases {
        let case = format!("{op} from {from}");
        let mut k = Kit::new().await;
        let id = if from == "running" {
            k.running(task("q"), "n1").await.task.id
        } else {
            k.seed(task("q"), from).await
        };
        let keys = k.store.keys.clone();
        let key = |name: &str| match name {
            "task" => keys.task("q", &id),
            "stats" => keys.stats("q"),
            "events" => keys.events("q"),
            "seq" => keys.seq("q"),
            "cancels:n1" => keys.cancels("q", "n1"),
            index => keys.state_index("q", index),
        };
        let (before, events, stat) = (k.snapshot(), k.xlen("q"), k.stat("q", "cancelled"));
        let r = match op {
            "cancel" => k.store.cancel(&id).await.map(|c| format!("{c:?}")),
            "retry" => k.store.retry(&id).await.map(|()| String::new()),
            _ => k.store.delete(&id).await.map(|()| String::new()),
        };
        let after = k.snapshot();
        match want {
            Illegal => {
                assert_illegal(r, from, &case);
                assert_eq!(after, before, "{case}: keys changed");
            }
            Unchanged => {
                assert_eq!(r.expect(&case), "Done", "{case}");
                assert_eq!(after, before, "{case}: keys changed");
            }
            To(to, written) => {
                let reply = r.unwrap_or_else(|e| panic!("{case}: {e:?}"));
                let mut want_keys: Vec<String> = written.iter().map(|n| key(n)).collect();
                want_keys.sort();
                assert_eq!(
                    Kit::changed(&before, &after),
                    want_keys,
                    "{case}: keys written"
                );
                assert_eq!(k.xlen("q"), events + 1, "{case}: one event");
                match to {
                    "" => {
                        assert!(k.hash("q", &id).is_empty(), "{case}: hash kept");
                        assert!(k.indexes("q", &id).is_empty(), "{case}: still indexed");
                        assert!(
                            matches!(k.store.delete(&id).await, Err(StoreError::NotFound { .. })),
                            "{case}: twice"
                        );
                        assert!(
                            matches!(k.store.task(&id).await, Err(StoreError::NotFound { .. })),
                            "{case}: still readable"
                        );
                    }
                    "running" => {
                        assert_eq!(reply, "Requested", "{case}");
                        assert_eq!(k.field("q", &id, "cancel_requested"), "1", "{case}");
                        assert_eq!(k.cancels("q", "n1"), std::slice::from_ref(&id), "{case}");
                        assert_eq!(k.indexes("q", &id), ["running"], "{case}");
                    }
                    to => {
                        let h = k.hash("q", &id);
                        assert_eq!(h["state"], to, "{case}");
                        assert_eq!(k.indexes("q", &id), [to], "{case}");
                        if to == "cancelled" {
                            assert_eq!(reply, "Done", "{case}");
                            assert_eq!(k.stat("q", "cancelled"), stat + 1, "{case}: stat");
                            assert!(!h["finished_at"].is_empty(), "{case}: finished_at");
                        } else {
                            assert_eq!(h["attempts"], "0", "{case}");
                            assert_eq!(h["cancel_requested"], "0", "{case}");
                            for gone in ["finished_at", "error", "result"] {
                                assert!(!h.contains_key(gone), "{case}: {gone} kept");
                            }
                        }
                    }
                }
            }
        }
        k.assert_doctor_clean(&["q"]).await;
    }
    // An id of no task, and a malformed one.
    let k = Kit::new().await;
    for id in [new_task_id("q"), "not-an-id".to_string()] {
        for r in [
            k.store.cancel(&id).await.map(drop),
            k.store.retry(&id).await,
            k.store.delete(&id).await,
        ] {
            assert!(matches!(r, Err(StoreError::NotFound { .. })), "{id}: {r:?}");
        }
    }
}

// ----- requeue_inbox -----

#[tokio::test]
async fn requeue_inbox_returns_assigned_tasks_to_pending_without_counting_an_attempt() {
    let mut k = Kit::new().await;
    let running = k.running(task("q"), "n1").await;
    // One task ran once already (attempts 1), then was assigned again.
    let earlier = k
        .running(
            PreparedTask {
                backoff: Backoff {
                    initial_ms: 1,
                    max_ms: 1,
                },
                priority: 3,
                ..task("q")
            },
            "n1",
        )
        .await;
    k.store
        .fail(&earlier.task.id, Some("n1"), &earlier.token, "x", true)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    k.store.promote("q", 10).await.unwrap();
    let fresh: Vec<String> = [k.submit_one(task("q")).await, k.submit_one(task("q")).await].into();
    assert_eq!(k.dispatch_to("q", "n1", 10).await, 3);
    let other = k.submit_one(task("q")).await;
    k.dispatch_to("q", "n2", 1).await;
    assert_eq!(
        k.load("q"),
        HashMap::from([("n1".to_string(), 4), ("n2".to_string(), 1)])
    );

    let events = k.xlen("q");
    assert_eq!(k.store.requeue_inbox("q", "n1").await.unwrap(), 3);
    assert!(!k.inbox_exists("q", "n1"), "inbox key deleted");
    assert_eq!(
        k.load("q"),
        HashMap::from([("n1".to_string(), 1), ("n2".to_string(), 1)]),
        "only the running task counts"
    );
    for (id, attempts) in [(&earlier.task.id, "1"), (&fresh[0], "0"), (&fresh[1], "0")] {
        let h = k.hash("q", id);
        assert_eq!(h["state"], "pending");
        let got = h.get("attempts").map_or("0", String::as_str); // 0 is not stored
        assert_eq!(got, attempts, "requeue is not an attempt");
        assert!(!h.contains_key("node"), "node kept");
        assert_eq!(k.indexes("q", id), ["pending"]);
    }
    assert_eq!(k.xlen("q"), events + 3);
    assert_eq!(
        k.indexes("q", &running.task.id),
        ["running"],
        "a running task is not requeued"
    );
    assert_eq!(
        k.indexes("q", &other),
        ["inbox:n2"],
        "another node's inbox is untouched"
    );
    // Priority survives the requeue.
    let ids: Vec<String> =
        k.r.zrange(k.store.keys.state_index("q", "pending"), 0, -1)
            .unwrap();
    assert_eq!(
        ids,
        [earlier.task.id.clone(), fresh[0].clone(), fresh[1].clone()]
    );
    k.assert_doctor_clean(&["q"]).await;
}

// ----- doctor -----

#[tokio::test]
async fn doctor_reports_every_kind_of_corruption() {
    type Corrupt = fn(&mut Kit, &str, &str);
    let table: [(&str, Corrupt, &str); 7] = [
        (
            "a bogus id in pending",
            |k, _, _| {
                let _: () =
                    k.r.zadd(
                        k.store.keys.state_index("q", "pending"),
                        "01ARZ3NDEKTSV4RRFFQ69G5FAV.q",
                        1,
                    )
                    .unwrap();
            },
            "no task hash",
        ),
        (
            "a running state without a lease",
            |k, p, _| {
                let _: () =
                    k.r.hset(k.store.keys.task("q", p), "state", "running")
                        .unwrap();
            },
            "without a lease",
        ),
        (
            "a pending task also in running",
            |k, p, _| {
                let _: () =
                    k.r.zadd(k.store.keys.state_index("q", "running"), p, 1)
                        .unwrap();
            },
            "indexed in",
        ),
        (
            "a pending task in no index",
            |k, p, _| {
                let _: () =
                    k.r.zrem(k.store.keys.state_index("q", "pending"), p)
                        .unwrap();
            },
            "indexed in",
        ),
        (
            "a load counter off by one",
            |k, _, _| {
                let _: () = k.r.hincr(k.store.keys.load("q"), "n1", 1).unwrap();
            },
            "load of node n1",
        ),
        (
            "an inbox entry without a hash",
            |k, _, _| {
                let _: () =
                    k.r.rpush(
                        k.store.keys.inbox("q", "n9"),
                        "01ARZ3NDEKTSV4RRFFQ69G5FAV.q",
                    )
                    .unwrap();
            },
            "no task hash",
        ),
        (
            "a finished task still running",
            |k, _, d| {
                let _: () =
                    k.r.zadd(k.store.keys.state_index("q", "running"), d, 1)
                        .unwrap();
            },
            "still indexed",
        ),
    ];
    for (name, corrupt, want) in table {
        let mut k = Kit::new().await;
        let done = k.running(task("q"), "n1").await;
        k.store
            .complete(&done.task.id, Some("n1"), &done.token, "1")
            .await
            .unwrap();
        k.running(task("q"), "n1").await;
        let pending = k.submit_one(task("q")).await;
        k.assert_doctor_clean(&["q"]).await;
        corrupt(&mut k, &pending, &done.task.id);
        let report = k.store.doctor().await.unwrap();
        assert!(
            report.violations.iter().any(|v| v.contains(want)),
            "{name}: expected a violation mentioning {want:?}, got {:#?}",
            report.violations
        );
    }
}

/// Schema 1 stored every field (and the id and sequence number); a server refuses that
/// keyspace naming `muster migrate`, which converts it in place without changing a task.
#[tokio::test]
async fn a_schema_1_keyspace_is_refused_until_muster_migrate_converts_it_and_its_tasks_read_the_same()
 {
    let ns = unique_ns();
    let store = store_on(&shared_redis().url(), &ns).await;
    let keys = store.keys.clone();
    let mut r = shared_redis().conn();
    let id = new_task_id("old");
    let tkey = keys.task("old", &id);
    let v1: Vec<(&str, String)> = vec![
        ("id", id.clone()),
        ("kind", "echo".into()),
        ("payload", r#"{"n":1}"#.into()),
        ("priority", "0".into()),
        ("state", "pending".into()),
        ("attempts", "0".into()),
        ("max_attempts", "3".into()),
        ("timeout_ms", "30000".into()),
        ("backoff_initial", "1000".into()),
        ("backoff_max", "300000".into()),
        ("requires", "".into()),
        ("retention_ms", "604800000".into()),
        ("fence", "0".into()),
        ("created_at", "1764547200000".into()),
        ("run_at", "1764547200000".into()),
        ("seq", "7".into()),
        ("max_run_ms", "".into()),
    ];
    let () = redis::pipe()
        .set(keys.schema(), "1")
        .sadd(keys.queues(), "old")
        .hset_multiple(&tkey, &v1)
        .zadd(
            keys.state_index("old", "pending"),
            &id,
            90_000_000_000_000_i64 + 7,
        )
        .query(&mut r)
        .unwrap();
    let before = store.task(&id).await.expect("schema 1 tasks read");

    let err = store
        .prepare()
        .await
        .expect_err("schema 1 refused")
        .to_string();
    assert!(err.contains("muster migrate"), "{err}");

    let done = store.migrate(|_, _| {}).await.expect("migrate");
    assert_eq!((done.from.as_deref(), done.tasks), (Some("1"), 1));
    assert_eq!(done.fields_removed, 13, "{done:?}");
    let mut fields: Vec<String> = r.hkeys(&tkey).unwrap();
    fields.sort();
    assert_eq!(fields, ["created_at", "kind", "payload", "state"]);
    assert_eq!(store.task(&id).await.unwrap(), before);
    store.prepare().await.expect("schema 2 accepted");
    // Twice is harmless.
    assert_eq!(store.migrate(|_, _| {}).await.unwrap().tasks, 0);
}

/// A Redis at the default `hash-max-listpack-value` (64) gets advice naming the setting,
/// and is not changed; one set as muster's private Redis is gets none.
#[tokio::test]
async fn tuning_advice_names_a_small_hash_max_listpack_value_and_changes_nothing() {
    let r = crate::support::RedisGuard::start_with(&["--hash-max-ziplist-value", "64"]);
    let s = store_on(&r.url(), &unique_ns()).await;
    let advice = s.tuning_advice().await.expect("advice");
    assert_eq!(advice.len(), 1, "{advice:?}");
    assert!(advice[0].contains("hash-max-listpack-value"), "{advice:?}");
    let mut c = r.conn();
    let v: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("hash-max-listpack-value")
        .query(&mut c)
        .unwrap();
    assert_eq!(v[1], "64", "advice only: the setting is not changed");
    let r2 = crate::support::RedisGuard::start_with(&muster::store::tuning::PRIVATE_REDIS_ARGS);
    let s2 = store_on(&r2.url(), &unique_ns()).await;
    assert_eq!(s2.tuning_advice().await.unwrap(), Vec::<String>::new());
}

// ----- report batches: their wake-ups -----

/// The `done` wake-ups read within `wait`, sorted.
async fn done_wakeups(msgs: &mut redis::aio::PubSubStream, wait: Duration) -> Vec<String> {
    use futures::StreamExt;
    let mut out = Vec::new();
    let end = tokio::time::Instant::now() + wait;
    while let Ok(Some(m)) = tokio::time::timeout_at(end, msgs.next()).await {
        let s: String = m.get_payload().expect("text");
        if s.starts_with("done ") {
            out.push(s);
        }
    }
    out.sort();
    out
}

/// The `done` wake-ups `report_many_echoed` says its scripts published are exactly those
/// that came over pub/sub (the API skips their echo, so a wrong one would hide another
/// replica's wake-up or leave this one's acted on twice): one per queue and node, with
/// the ids accepted in order; nothing for a repeat or a stale token.
#[tokio::test]
async fn report_many_names_the_done_wakeups_exactly_as_its_scripts_publish_them() {
    use muster::store::reports::{Outcome, Report};
    let k = Kit::new().await;
    let a = k.running(task("q1"), "n1").await;
    let b = k.running(task("q1"), "n1").await;
    let c = k.running(task("q2"), "n1").await;
    let stale = k.running(task("q2"), "n1").await;
    let mut ps = k.store.pubsub().await.expect("pubsub");
    ps.subscribe(k.store.keys.wake_channel())
        .await
        .expect("subscribe");
    let mut msgs = ps.into_on_message();
    let stale_token = format!("{}.x", stale.task.fence);
    let reports = [
        Report {
            id: &a.task.id,
            token: &a.token,
            outcome: Outcome::Succeeded("1"),
        },
        Report {
            id: &c.task.id,
            token: &c.token,
            outcome: Outcome::Succeeded("2"),
        },
        Report {
            id: &stale.task.id,
            token: &stale_token,
            outcome: Outcome::Succeeded("3"),
        },
        Report {
            id: &b.task.id,
            token: &b.token,
            outcome: Outcome::Failed {
                error: "boom",
                retryable: true,
            },
        },
    ];
    let (results, mut echoes) = k
        .store
        .report_many_echoed(Some("n1"), &reports)
        .await
        .expect("reports");
    assert!(results[2].is_err(), "{results:?}");
    echoes.sort();
    let p1 = k.store.keys.queue_prefix("q1");
    let p2 = k.store.keys.queue_prefix("q2");
    let mut want = vec![
        format!("done {p1} n1 {} {}", a.task.id, b.task.id),
        format!("done {p2} n1 {}", c.task.id),
    ];
    want.sort();
    assert_eq!(echoes, want);
    assert_eq!(
        done_wakeups(&mut msgs, Duration::from_millis(1500)).await,
        want
    );

    // The same reports again: repeats (and the stale one) publish nothing.
    let (again, echoes) = k
        .store
        .report_many_echoed(Some("n1"), &reports)
        .await
        .expect("reports");
    assert!(again[0].is_ok() && again[3].is_ok(), "{again:?}");
    assert_eq!(echoes, Vec::<String>::new());
    assert_eq!(
        done_wakeups(&mut msgs, Duration::from_millis(300)).await,
        Vec::<String>::new()
    );
    k.assert_doctor_clean(&["q1", "q2"]).await;
}

/// While a node's report call leases for it (`Hub::pulling`), this process's dispatcher
/// assigns it nothing: the slots its reports free are its own to fill, in the same
/// call, without a trip through its inbox. Once the guard is gone, it assigns again.
#[tokio::test]
async fn the_dispatcher_leaves_a_node_alone_while_its_report_call_leases_for_it() {
    use muster::service::directory::Directory;
    use muster::service::hub::Hub;
    use muster::workers::dispatcher::Dispatcher;
    let mut k = Kit::new().await;
    let node = machine("n1", &["q"]);
    k.store
        .register_node(&node, "sha", "")
        .await
        .expect("register");
    for _ in 0..3 {
        k.submit_one(task("q")).await;
    }
    let hub = Hub::new();
    let d = Dispatcher::new(
        k.store.clone(),
        hub.clone(),
        std::sync::Arc::new(Directory::new(Duration::from_millis(10))),
        Duration::from_secs(5),
    );
    let guard = hub.pulling("n1");
    let again = hub.pulling("n1");
    assert!(hub.is_pulling("n1"));
    assert_eq!(d.dispatch_once("q").await.expect("dispatch"), 0);
    assert!(k.inbox("q", "n1").is_empty());
    drop(guard);
    assert!(hub.is_pulling("n1"), "two calls out: still pulling");
    assert_eq!(d.dispatch_once("q").await.expect("dispatch"), 0);
    drop(again);
    assert!(!hub.is_pulling("n1"));
    assert_eq!(d.dispatch_once("q").await.expect("dispatch"), 3);
    assert_eq!(k.inbox("q", "n1").len(), 3);
    k.assert_doctor_clean(&["q"]).await;
}

/// The finished indexes are trimmed past the entries still alive and beyond one window:
/// 2,550 expired entries between 50 alive ones and 10 more go in one round (one window
/// of 1,000 a round left the index of a busy queue growing for good).
#[tokio::test]
async fn trim_finished_removes_every_expired_entry_past_the_alive_ones_in_one_round() {
    let mut k = Kit::new().await;
    let key = k.store.keys.state_index("q", "succeeded");
    let mut alive = Vec::new();
    let mut members = Vec::new();
    for i in 0..2_610u64 {
        let id = new_task_id("q");
        // The 50 oldest and the 10 newest still have their hash; the rest expired.
        if !(50..2_600).contains(&i) {
            let () =
                k.r.hset(k.store.keys.task("q", &id), "state", "succeeded")
                    .expect("seed hash");
            alive.push(id.clone());
        }
        members.push((1_000 + i, id));
    }
    let _: i64 = k.r.zadd_multiple(&key, &members).expect("seed index");

    // One window allowed (per index, or for the whole round): the first (100 entries,
    // 50 of them expired), then it stops.
    assert_eq!(k.store.trim_finished("q", 1).await.expect("trim"), 50);
    let queues = vec!["q".to_string()];
    let mut members = Vec::new();
    for i in 0..100u64 {
        members.push((i, new_task_id("q")));
    }
    // 100 more expired entries, older than every other: a round of one window takes
    // them and nothing else.
    let _: i64 = k.r.zadd_multiple(&key, &members).expect("seed older");
    assert_eq!(
        k.store
            .trim_finished_many(&queues, 100, 1, false)
            .await
            .expect("trim"),
        100
    );
    // The rest in one round, past the alive head.
    assert_eq!(k.store.trim_finished("q", 100).await.expect("trim"), 2_500);
    let mut left: Vec<String> = k.r.zrange(&key, 0, -1).unwrap();
    left.sort();
    alive.sort();
    assert_eq!(left, alive, "only the entries whose task is alive are left");
    assert_eq!(k.store.trim_finished("q", 100).await.expect("trim"), 0);
}

/// Entries expired behind a window of tasks still alive (finished first, with a longer
/// retention) stop the plain trim; a probing round reads from a random place behind
/// them and removes some.
#[tokio::test]
async fn a_probing_trim_finds_expired_entries_behind_alive_oldest_ones() {
    let mut k = Kit::new().await;
    let key = k.store.keys.state_index("q", "succeeded");
    let mut members = Vec::new();
    for i in 0..650u64 {
        let id = new_task_id("q");
        // The 150 oldest are alive (more than the first window); the 500 after expired.
        if i < 150 {
            let () =
                k.r.hset(k.store.keys.task("q", &id), "state", "succeeded")
                    .expect("seed hash");
        }
        members.push((1_000 + i, id));
    }
    let _: i64 = k.r.zadd_multiple(&key, &members).expect("seed index");
    let queues = vec!["q".to_string()];
    assert_eq!(
        k.store
            .trim_finished_many(&queues, 100, 1000, false)
            .await
            .expect("trim"),
        0,
        "the plain trim stops at the alive oldest entries"
    );
    let removed = k
        .store
        .trim_finished_many(&queues, 100, 1000, true)
        .await
        .expect("trim");
    assert!((1..=500).contains(&removed), "probe removed {removed}");
    let left: usize = k.r.zcard(&key).unwrap();
    assert_eq!(left, 650 - removed);
}

/// A private redis-server holding one pending task of `queue` (its id), a store on it
/// with a 500 ms timeout, and the server SIGSTOPped: a call made now waits in its socket.
async fn paused_with_one_pending(queue: &str) -> (crate::support::RedisGuard, Store, String) {
    let redis = crate::support::RedisGuard::start();
    let store = Store::connect(&redis.url(), &unique_ns(), Duration::from_millis(500))
        .await
        .expect("store");
    store.prepare().await.expect("prepare");
    let t = task(queue);
    let id = t.id.clone();
    store.submit(&[t], None, 0).await.expect("submit");
    crate::support::signal("STOP", &redis.pid().to_string());
    (redis, store, id)
}

/// A lease that Redis runs only after the command timeout (here: paused meanwhile,
/// the script waiting in its socket) is not lost with the timeout error: the call
/// answers `Unavailable` in time, and when Redis resumes and runs the script, the
/// leases it granted reach the `late` handler (the server's hub keeps them for the
/// node's next call), the very lease Redis holds, instead of staying `running` unseen
/// until their TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_redis_grants_after_the_timeout_reaches_the_late_handler() {
    let (redis, store, id) = paused_with_one_pending("late").await;
    let pid = redis.pid().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<Leased>>();
    let started = std::time::Instant::now();
    let answer = store
        .lease_in_time(
            "leasing",
            |s| async move { s.lease("late", "n1", 4, true, "").await },
            move |late| {
                let _ = tx.send(late);
            },
        )
        .await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    crate::support::signal("CONT", &pid);
    assert!(
        matches!(answer, Err(StoreError::Unavailable(_))),
        "{answer:?}"
    );
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    let late = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("the late leases came")
        .expect("handed on");
    assert_eq!(late.len(), 1, "{late:?}");
    let now = store.task(&id).await.expect("task");
    assert_eq!(late[0].task.id, id);
    assert_eq!(now.state, TaskState::Running, "{now:?}");
    assert_eq!(now.node.as_deref(), Some("n1"));
    assert_eq!(late[0].task.fence, now.fence, "the lease Redis holds");
    assert_eq!(now.attempts, 1);
}

/// The same when the caller stops waiting first (its future dropped, as a long-poll's
/// when its client goes away): the leases Redis grants reach the late handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_whose_caller_left_reaches_the_late_handler() {
    let (redis, store, id) = paused_with_one_pending("left").await;
    let pid = redis.pid().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<Leased>>();
    let call = store.lease_in_time(
        "leasing",
        |s| async move { s.lease("left", "n1", 4, true, "").await },
        move |late| {
            let _ = tx.send(late);
        },
    );
    // The caller gives up after 100 ms, long before the store's timeout.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), call)
            .await
            .is_err()
    );
    crate::support::signal("CONT", &pid);
    let late = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("the late leases came")
        .expect("handed on");
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(late[0].task.id, id);
    assert_eq!(
        store.task(&id).await.expect("task").state,
        TaskState::Running
    );
}
