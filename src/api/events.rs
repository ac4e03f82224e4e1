//! `GET /v1/events`: server-sent events (`task.*`) read from the queues' capped event
//! streams. At-least-once and resumable: each event's id is `<stream id>@<queue>` (or
//! `<stream id>.<n>@<queue>`, see `store::event_entry`); with `Last-Event-ID` the stream
//! of that queue resumes right after it and every other
//! queue one second before it (Redis's clock is shared), so a reconnecting client misses
//! nothing and drops duplicates by id. Memory is bounded: one batch in flight per client.

use super::AppState;
use super::auth::{Principal, Role};
use super::error::{ApiError, ApiResult};
use crate::domain::{Problem, validate};
use crate::store::event_entry::{before, entry_tasks, event_id, parse_event_id, parse_stream_id};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use redis::Value;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this queue.
    #[param(pattern = r"^(?!\.{1,2}$)[A-Za-z0-9._:-]{1,128}$")]
    queue: Option<String>,
    /// Only this task (implies its queue).
    #[param(pattern = r"^[0-9A-HJKMNP-TV-Z]{26}\.[A-Za-z0-9._:-]{1,128}$")]
    task: Option<String>,
}

/// One event as sent in `data:`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct TaskEvent {
    /// `<stream id>@<queue>`, or `<stream id>.<n>@<queue>` for the n-th task (from 0) of a
    /// stream entry listing several (one script call's events of one kind); also the
    /// SSE `id:`.
    pub id: String,
    /// `task.submitted`, `task.assigned`, `task.running`, `task.succeeded`, `task.failed`,
    /// `task.retrying`, `task.cancelled`, …; also the SSE `event:`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Queue.
    pub queue: String,
    /// Task id.
    pub task: String,
    /// Node involved, if any.
    pub node: Option<String>,
    /// Task state after the event.
    pub state: String,
    /// Event time (ms since the epoch, Redis clock).
    pub ts: i64,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Parses an XREAD reply into events.
fn parse_xread(v: Value, keys: &HashMap<String, String>) -> Vec<TaskEvent> {
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
            let tasks = entry_tasks(&mut f);
            let (type_, state) = (
                f.remove("type").unwrap_or_default(),
                f.remove("state").unwrap_or_default(),
            );
            let node = f.remove("node").filter(|n| !n.is_empty());
            for (i, task) in tasks.iter().enumerate() {
                out.push(TaskEvent {
                    id: event_id(&sid, i, tasks.len(), queue),
                    type_: type_.clone(),
                    queue: queue.clone(),
                    task: task.clone(),
                    node: node.clone(),
                    state: state.clone(),
                    ts,
                });
            }
        }
    }
    // One order across queues: by stream id (shared Redis clock).
    // Stable: the events of one entry keep their order.
    out.sort_by_key(|e| position(&e.id).0);
    out
}

/// An event id's stream position and index within its entry.
fn position(id: &str) -> ((u64, u64), usize) {
    parse_event_id(id)
        .and_then(|(sid, i, _)| Some((parse_stream_id(&sid)?, i.unwrap_or(0))))
        .unwrap_or(((0, 0), 0))
}

struct Cursor {
    st: AppState,
    conn: Option<redis::aio::MultiplexedConnection>,
    fixed_queue: Option<String>,
    task: Option<String>,
    /// Last id read per queue.
    ids: HashMap<String, String>,
    /// Where queues first seen later start.
    start_id: String,
    /// Per queue, an entry resumed in its middle: its events up to this index were sent.
    skip: HashMap<String, (String, usize)>,
    buf: VecDeque<TaskEvent>,
}

impl Cursor {
    async fn fill(&mut self) -> Result<(), redis::RedisError> {
        if self.conn.is_none() {
            let cfg = redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(5)));
            self.conn = Some(
                self.st
                    .store
                    .client()
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await?,
            );
        }
        let queues = match &self.fixed_queue {
            Some(q) => vec![q.clone()],
            None => self.st.store.queues().await.map_err(|e| match e {
                crate::store::StoreError::Unavailable(e) | crate::store::StoreError::Redis(e) => e,
                other => {
                    redis::RedisError::from((redis::ErrorKind::Client, "store", other.to_string()))
                }
            })?,
        };
        if queues.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return Ok(());
        }
        let mut keys = HashMap::new();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(500)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS");
        for q in &queues {
            let k = self.st.store.keys.events(q);
            cmd.arg(&k);
            keys.insert(k, q.clone());
        }
        for q in &queues {
            let id = self
                .ids
                .entry(q.clone())
                .or_insert_with(|| self.start_id.clone());
            cmd.arg(id.as_str());
        }
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| redis::RedisError::from((redis::ErrorKind::Client, "no connection")))?;
        let v: Value = cmd.query_async(conn).await?;
        for e in parse_xread(v, &keys) {
            let Some((sid, index, _)) = parse_event_id(&e.id) else {
                continue;
            };
            if let Some((skip_sid, upto)) = self.skip.get(&e.queue) {
                if *skip_sid == sid && index.unwrap_or(0) <= *upto {
                    continue;
                }
                if parse_stream_id(&sid) > parse_stream_id(skip_sid) {
                    self.skip.remove(&e.queue);
                }
            }
            self.ids.insert(e.queue.clone(), sid);
            if self.task.as_ref().is_none_or(|t| *t == e.task) {
                self.buf.push_back(e);
            }
        }
        Ok(())
    }
}

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    summary = "Server-sent task events, resumable with Last-Event-ID",
    params(EventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses(
        (status = 200, body = TaskEvent, content_type = "text/event-stream", description = "A stream of events; `data:` holds one TaskEvent"),
        (status = 400, body = Problem, content_type = "application/problem+json", description = "Malformed request"),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No or unknown token"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "The token may not do this"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "Redis unavailable; retry after Retry-After")
    )
)]
/// `GET /v1/events?queue=&task=`.
///
/// # Errors
/// 400 bad filter or Last-Event-ID, 503 Redis down.
pub async fn events(
    State(st): State<AppState>,
    who: Principal,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    who.require(Role::Read)?;
    let Query(q) = q.map_err(|e| ApiError::bad("bad_query", e.body_text()))?;
    if let Some(queue) = &q.queue {
        validate::queue_name(queue).map_err(|e| ApiError::bad("bad_query", e))?;
    }
    let mut fixed_queue = q.queue.clone();
    if let Some(t) = &q.task {
        let tq = validate::task_queue(t)
            .ok_or_else(|| ApiError::bad("bad_query", "task is not a task id"))?;
        if fixed_queue.as_deref().is_some_and(|fq| fq != tq) {
            return Err(ApiError::bad("bad_query", "that task is not in that queue"));
        }
        fixed_queue = Some(tq.to_string());
    }
    let mut ids = HashMap::new();
    let mut skip = HashMap::new();
    let start_id = match headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or(""))
    {
        Some(last) => {
            let bad = || {
                ApiError::bad(
                    "bad_last_event_id",
                    "Last-Event-ID must be an id this server sent (<ms>-<seq>[.<n>]@<queue>)",
                )
            };
            let (sid, index, queue) = if last.contains('@') {
                parse_event_id(last).ok_or_else(bad)?
            } else {
                parse_stream_id(last).ok_or_else(bad)?;
                (last.to_string(), None, String::new())
            };
            let (ms, _) = parse_stream_id(&sid).ok_or_else(bad)?;
            if validate::queue_name(&queue).is_ok() {
                match index {
                    // In the middle of an entry: read it again, skip what was sent.
                    Some(i) => {
                        ids.insert(queue.clone(), before(&sid).ok_or_else(bad)?);
                        skip.insert(queue, (sid.clone(), i));
                    }
                    None => {
                        ids.insert(queue, sid.clone());
                    }
                }
            }
            format!("{}-0", ms.saturating_sub(1000))
        }
        None => format!("{}-0", st.store.now_ms().await?),
    };
    let cursor = Cursor {
        st,
        conn: None,
        fixed_queue,
        task: q.task,
        ids,
        start_id,
        skip,
        buf: VecDeque::new(),
    };
    let stream = futures::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(e) = c.buf.pop_front() {
                let ev = Event::default()
                    .id(e.id.clone())
                    .event(e.type_.clone())
                    .data(serde_json::to_string(&e).unwrap_or_default());
                return Some((Ok(ev), c));
            }
            if let Err(err) = c.fill().await {
                tracing::debug!(error = %err, "event stream read failed; retrying");
                c.conn = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
