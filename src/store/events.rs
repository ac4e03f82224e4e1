//! The queues' event streams (`keys::events(queue)`, capped Redis Streams the scripts
//! append to): reading them with XREAD and decoding their entries. The entry format is
//! known here and nowhere else ([`parse_xread`] is the one decoder): written by
//! `lua/lib.lua` (`emit`, `flush_events`), fields `type`, `node`, `state` and either
//! `task` (one task) or `tasks` (several, ids separated by one space: one entry per
//! script call and kind of event). Each task of an entry is one event; its id is
//! `<stream id>@<queue>` when the entry holds one task, `<stream id>.<index>@<queue>`
//! when it holds more. A task of the stream's own queue (or shard) is stored as its
//! ULID alone (`<ulid>.<queue>` less `.<queue>`: a third of the bytes a batch's entry
//! holds); [`parse_xread`] puts the queue back, and an id with a `.` is taken whole
//! (entries written before, or a task of another queue).

use super::{Conn, Result, Store};
use redis::Value;
use std::collections::HashMap;
use std::time::Duration;

/// One event of a queue's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    /// The stream entry id (`<ms>-<seq>`).
    pub sid: String,
    /// Its place among the entry's tasks (from 0) ...
    pub index: usize,
    /// ... and how many the entry lists.
    pub of: usize,
    /// The queue whose stream holds it.
    pub queue: String,
    /// `task.submitted`, `task.succeeded`, …
    pub type_: String,
    /// Task id.
    pub task: String,
    /// Node involved, if any.
    pub node: Option<String>,
    /// Task state after the event.
    pub state: String,
    /// Event time (ms since the epoch, Redis clock: the stream id's time part).
    pub ts: i64,
}

/// An event's position: stream id `(ms, seq)` and its index within the entry.
pub type Pos = (u64, u64, u64);

impl StreamEvent {
    /// The position, for ordering and comparison.
    pub fn pos(&self) -> Pos {
        let (ms, seq) = parse_stream_id(&self.sid).unwrap_or((0, 0));
        (ms, seq, self.index as u64)
    }

    /// The event id (SSE `id:`, `Last-Event-ID`).
    pub fn id(&self) -> String {
        if self.of == 1 {
            format!("{}@{}", self.sid, self.queue)
        } else {
            format!("{}.{}@{}", self.sid, self.index, self.queue)
        }
    }
}

/// An event id as (its position, queue); `None` when malformed. An id without an index
/// (`<sid>@<queue>`, or a bare time `<ms>-0@`) stands for its whole entry.
pub fn parse_event_id(id: &str) -> Option<(Pos, String)> {
    let (at, queue) = id.split_once('@').unwrap_or((id, ""));
    let (sid, index) = match at.split_once('.') {
        Some((sid, i)) => (sid, i.parse().ok()?),
        None => (at, u64::MAX),
    };
    let (ms, seq) = parse_stream_id(sid)?;
    Some(((ms, seq, index), queue.to_string()))
}

/// The stream id to read after so that the entry at `pos` comes again (a client may
/// have seen only part of it).
pub fn read_after(pos: Pos) -> String {
    match (pos.0, pos.1) {
        (0, 0) => "0-0".to_string(),
        (ms, 0) => format!("{}-{}", ms - 1, u64::MAX),
        (ms, seq) => format!("{ms}-{}", seq - 1),
    }
}

/// The tasks of an entry of `queue`'s stream, in order, with their queue (removes
/// `task`/`tasks` from `fields`).
fn entry_tasks(fields: &mut HashMap<String, String>, queue: &str) -> Vec<String> {
    let whole = |t: &str| {
        if t.contains('.') {
            t.to_string()
        } else {
            format!("{t}.{queue}")
        }
    };
    if let Some(t) = fields.remove("task") {
        return vec![whole(&t)];
    }
    fields
        .remove("tasks")
        .map(|ts| ts.split(' ').filter(|t| !t.is_empty()).map(whole).collect())
        .unwrap_or_default()
}

/// `<ms>-<seq>` as numbers.
pub fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Decodes an XREAD reply. `keys` maps each stream key read to its queue; entries of
/// other keys, and malformed entries, are skipped. The events come out in one order
/// across queues: by stream id (the ids share Redis's clock).
pub fn parse_xread(v: Value, keys: &HashMap<String, String>) -> Vec<StreamEvent> {
    let mut out = Vec::new();
    let Value::Array(streams) = v else { return out };
    for s in streams {
        let Value::Array(pair) = s else { continue };
        let (Some(key), Some(Value::Array(entries))) =
            (pair.first().and_then(text), pair.get(1).cloned())
        else {
            continue;
        };
        let Some(queue) = keys.get(&key) else {
            continue;
        };
        for e in entries {
            let Value::Array(e) = e else { continue };
            let (Some(sid), Some(Value::Array(fields))) = (e.first().and_then(text), e.get(1))
            else {
                continue;
            };
            let mut f: HashMap<String, String> = HashMap::new();
            let mut it = fields.iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let (Some(k), Some(v)) = (text(k), text(v)) {
                    f.insert(k, v);
                }
            }
            let ts = parse_stream_id(&sid).map(|(ms, _)| ms as i64).unwrap_or(0);
            let tasks = entry_tasks(&mut f, queue);
            let type_ = f.remove("type").unwrap_or_default();
            let node = f.remove("node").filter(|n| !n.is_empty());
            let state = f.remove("state").unwrap_or_default();
            let of = tasks.len();
            for (index, task) in tasks.into_iter().enumerate() {
                out.push(StreamEvent {
                    sid: sid.clone(),
                    index,
                    of,
                    queue: queue.clone(),
                    type_: type_.clone(),
                    task,
                    node: node.clone(),
                    state: state.clone(),
                    ts,
                });
            }
        }
    }
    out.sort_by_key(StreamEvent::pos);
    out
}

/// A connection of its own for blocking reads ([`Store::read_events`] with `block`):
/// a blocked XREAD holds its whole connection, so it must not be the shared one.
///
/// # Errors
/// Redis unreachable.
pub async fn blocking_connection(store: &Store) -> Result<Conn> {
    store
        .own_connection(Duration::from_secs(5) + store.timeout())
        .await
}

/// On a Cluster, how often the streams are polled instead of a blocking XREAD (the
/// streams of several queues are in several slots: one XREAD cannot name them all):
/// at first every [`CLUSTER_POLL`], then, while nothing comes, twice as long each time
/// up to [`CLUSTER_POLL_MAX`] (an idle feed costs each queue 4 XREADs a second).
const CLUSTER_POLL: Duration = Duration::from_millis(50);
const CLUSTER_POLL_MAX: Duration = Duration::from_millis(250);

impl Store {
    /// Reads up to `count` events per queue after each given stream id (`(queue, id)`),
    /// waiting up to `block` for the first one when given (then `conn` must be a
    /// connection of its own, see [`blocking_connection`]); without `block` on the
    /// shared connection. On a Cluster: one XREAD per queue at once, polled every
    /// [`CLUSTER_POLL`] while `block` lasts.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn read_events(
        &self,
        conn: Option<&mut Conn>,
        after: &[(String, String)],
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<StreamEvent>> {
        if after.is_empty() {
            return Ok(Vec::new());
        }
        if self.is_cluster() {
            let until = block.map(|b| std::time::Instant::now() + b);
            let mut pause = CLUSTER_POLL;
            loop {
                let reads = after
                    .iter()
                    .map(|one| self.read_events_once(None, std::slice::from_ref(one), count, None));
                let mut out: Vec<StreamEvent> = futures::future::try_join_all(reads)
                    .await?
                    .into_iter()
                    .flatten()
                    .collect();
                let waited = until.is_none_or(|u| std::time::Instant::now() >= u);
                if !out.is_empty() || waited {
                    out.sort_by_key(StreamEvent::pos);
                    return Ok(out);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(CLUSTER_POLL_MAX);
            }
        }
        self.read_events_once(conn, after, count, block).await
    }

    async fn read_events_once(
        &self,
        conn: Option<&mut Conn>,
        after: &[(String, String)],
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<StreamEvent>> {
        let mut keys = HashMap::new();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count.max(1));
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis() as u64);
        }
        cmd.arg("STREAMS");
        for (q, _) in after {
            let k = self.keys.events(q);
            cmd.arg(&k);
            keys.insert(k, q.clone());
        }
        for (_, id) in after {
            cmd.arg(id.as_str());
        }
        let v: Value = match conn {
            Some(c) => cmd.query_async(c).await?,
            None => cmd.query_async(&mut self.conn()).await?,
        };
        Ok(parse_xread(v, &keys))
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn xread_entries_decode_in_stream_id_order_across_queues() {
        let entry = |id: &str, task: &str| {
            Value::Array(vec![
                bulk(id),
                Value::Array(vec![
                    bulk("type"),
                    bulk("task.succeeded"),
                    bulk("task"),
                    bulk(task),
                    bulk("node"),
                    bulk(""),
                    bulk("state"),
                    bulk("succeeded"),
                ]),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![bulk("ka"), Value::Array(vec![entry("5-0", "a")])]),
            Value::Array(vec![bulk("kb"), Value::Array(vec![entry("3-1", "b")])]),
            Value::Array(vec![bulk("unknown"), Value::Array(vec![entry("1-0", "x")])]),
        ]);
        let keys: HashMap<String, String> = [("ka", "qa"), ("kb", "qb")]
            .into_iter()
            .map(|(k, q)| (k.to_string(), q.to_string()))
            .collect();
        let evs = parse_xread(reply, &keys);
        assert_eq!(evs.len(), 2);
        assert_eq!((evs[0].sid.as_str(), evs[0].queue.as_str()), ("3-1", "qb"));
        assert_eq!(evs[0].ts, 3);
        assert_eq!(evs[0].node, None);
        assert_eq!(evs[1].task, "a.qa");
        assert_eq!(parse_xread(Value::Nil, &keys), vec![]);
    }

    #[test]
    fn an_entry_listing_several_tasks_is_one_event_each_with_numbered_ids() {
        let entry = Value::Array(vec![
            bulk("7-2"),
            Value::Array(vec![
                bulk("type"),
                bulk("task.running"),
                bulk("tasks"),
                bulk("a.q b c.other"),
                bulk("node"),
                bulk("n1"),
                bulk("state"),
                bulk("running"),
            ]),
        ]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("k"),
            Value::Array(vec![entry]),
        ])]);
        let keys = HashMap::from([("k".to_string(), "q".to_string())]);
        let evs = parse_xread(reply, &keys);
        let ids: Vec<String> = evs.iter().map(StreamEvent::id).collect();
        assert_eq!(ids, ["7-2.0@q", "7-2.1@q", "7-2.2@q"]);
        // A bare id is of the stream's queue; one with a queue is taken whole.
        assert_eq!(evs[0].task, "a.q");
        assert_eq!(evs[1].task, "b.q");
        assert_eq!(evs[2].task, "c.other");
        assert_eq!(evs[1].node.as_deref(), Some("n1"));
        assert_eq!(evs[1].pos(), (7, 2, 1));
        assert_eq!(parse_event_id("7-2.1@q"), Some(((7, 2, 1), "q".into())));
        assert_eq!(
            parse_event_id("7-2@q"),
            Some(((7, 2, u64::MAX), "q".into()))
        );
        assert_eq!(parse_event_id("7-2.x@q"), None);
        assert_eq!(parse_event_id("nope@q"), None);
        assert_eq!(read_after((7, 2, 1)), "7-1");
        assert_eq!(read_after((7, 0, 0)), format!("6-{}", u64::MAX));
    }
}
