//! Waiting and looking: [`eventually`], the invariant checker, and what a namespace
//! holds in Redis (keys, streams, a text dump of every key).

use std::time::{Duration, Instant};

/// Polls `f` every 50 ms until it gives `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_every(timeout, Duration::from_millis(50), what, f).await
}

/// Polls `f` every `every` until it gives `Some`, panicking with `what` after `timeout`.
pub async fn eventually_every<T, F, Fut>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut f: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// Asserts the invariant checker finds nothing under the store's namespace.
pub async fn assert_doctor_clean(store: &muster::store::Store) {
    let report = store.doctor().await.expect("doctor runs");
    assert!(
        report.violations.is_empty(),
        "doctor found violations: {:#?}",
        report.violations
    );
}

/// Every key under `<ns>:` (SCAN; on a Cluster over every primary), sorted.
pub fn ns_keys(conn: &mut impl super::Keyspace, ns: &str) -> Vec<String> {
    conn.keys_matching(&format!("{ns}:*"))
}

/// Events of a queue's stream as `(type, task, node)`, oldest first (XRANGE - +).
pub fn stream_events(
    conn: &mut impl redis::ConnectionLike,
    ns: &str,
    queue: &str,
) -> Vec<(String, String, String)> {
    let key = format!("{ns}:{{{queue}}}:events");
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query(conn)
        .expect("xrange");
    reply
        .ids
        .iter()
        .flat_map(|e| event_fields(e, queue))
        .collect()
}

/// `(type, task, node)` of each task of one entry of `queue`'s stream: `task` (one) or
/// `tasks` (several, separated by a space); a task of the stream's own queue is stored
/// as its ULID alone and comes back as `<ulid>.<queue>`.
pub fn event_fields(e: &redis::streams::StreamId, queue: &str) -> Vec<(String, String, String)> {
    let f = |k: &str| e.get::<String>(k).unwrap_or_default();
    let tasks = match e.get::<String>("task") {
        Some(t) => vec![t],
        None => f("tasks").split(' ').map(str::to_string).collect(),
    };
    tasks
        .into_iter()
        .map(|t| {
            let t = if t.contains('.') {
                t
            } else {
                format!("{t}.{queue}")
            };
            (f("type"), t, f("node"))
        })
        .collect()
}

/// Every key under `ns:` with its content rendered as text (type-aware), for audits.
pub fn dump_namespace(conn: &mut impl super::Keyspace, ns: &str) -> Vec<(String, String)> {
    let keys = ns_keys(conn, ns);
    let mut out = Vec::new();
    for k in keys {
        let t: String = redis::cmd("TYPE").arg(&k).query(conn).expect("type");
        let v: redis::Value = match t.as_str() {
            "string" => redis::cmd("GET").arg(&k).query(conn),
            "hash" => redis::cmd("HGETALL").arg(&k).query(conn),
            "list" => redis::cmd("LRANGE").arg(&k).arg(0).arg(-1).query(conn),
            "set" => redis::cmd("SMEMBERS").arg(&k).query(conn),
            "zset" => redis::cmd("ZRANGE")
                .arg(&k)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query(conn),
            "stream" => redis::cmd("XRANGE").arg(&k).arg("-").arg("+").query(conn),
            _ => Ok(redis::Value::Nil),
        }
        .expect("read key");
        out.push((k, format!("{t} {}", value_text(&v))));
    }
    out
}

/// A Redis value flattened to text (bulk strings lossily as UTF-8).
pub fn value_text(v: &redis::Value) -> String {
    match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        redis::Value::SimpleString(s) => s.clone(),
        redis::Value::Int(i) => i.to_string(),
        redis::Value::Double(d) => d.to_string(),
        redis::Value::Array(a) | redis::Value::Set(a) => {
            a.iter().map(value_text).collect::<Vec<_>>().join(" ")
        }
        redis::Value::Map(m) => m
            .iter()
            .map(|(k, v)| format!("{} {}", value_text(k), value_text(v)))
            .collect::<Vec<_>>()
            .join(" "),
        redis::Value::Nil => String::new(),
        other => format!("{other:?}"),
    }
}
