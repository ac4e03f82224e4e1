//! `GET /v1/events`: server-sent events (`task.*`) read from the queues' capped event
//! streams. At-least-once and resumable: each event's id is `<stream id>@<queue>`;
//! with `Last-Event-ID` the stream of that queue resumes right after it and every other
//! queue one second before it (Redis's clock is shared), so a reconnecting client misses
//! nothing and drops duplicates by id.
//!
//! One shared reader per process ([`EventFeed`]) holds the only blocking Redis
//! connection, whatever the number of clients; a client resuming from `Last-Event-ID`
//! (or fallen behind the reader's ring) catches up on the shared connection, a batch at
//! a time, within a budget of events in flight for the whole process
//! ([`REPLAY_IN_FLIGHT`]).

use super::AppState;
use super::auth::{Principal, Role};
use super::error::{ApiError, ApiResult};
use crate::domain::{Problem, validate};
use crate::store::Store;
use crate::store::events::{self, StreamEvent};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, broadcast, watch};

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
    /// `<stream id>@<queue>`; also the SSE `id:`.
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

impl From<&StreamEvent> for TaskEvent {
    fn from(e: &StreamEvent) -> TaskEvent {
        TaskEvent {
            id: e.id(),
            type_: e.type_.clone(),
            // A shard's stream (`q~k`) shows its queue; the id keeps the shard.
            queue: validate::split_shard(&e.queue).0.to_string(),
            task: e.task.clone(),
            node: e.node.clone(),
            state: e.state.clone(),
            ts: e.ts,
        }
    }
}

/// Events the shared reader keeps for its subscribers (one ring for all of them); a
/// subscriber that falls further behind catches up from Redis instead.
pub const FEED_CAPACITY: usize = 4096;
/// Most events one catching-up client reads from Redis at a time.
pub const REPLAY_BATCH: usize = 256;
/// Most events all catching-up clients of this process hold at once (a replay from
/// `Last-Event-ID: 0-0@` over many queues waits for its turn instead of buffering).
pub const REPLAY_IN_FLIGHT: usize = 8192;
/// Most streams one catch-up read names.
const REPLAY_STREAMS: usize = 64;
// A catch-up read asks each stream for at least two entries: the one it re-reads (its
// client may have seen part of it) and one more, so that a round always moves on.
const _: () = assert!(REPLAY_BATCH / REPLAY_STREAMS >= 2);
/// Longest a blocking read of the shared reader waits: what a queue first named by a
/// subscriber waits at most before it is read too.
const FEED_BLOCK: Duration = Duration::from_millis(250);
/// Most queues named by subscribers and not yet listed, held at once.
const MAX_WANTED: usize = 1024;
/// Longest wait for the shared reader to start before a client gets 503.
const ARM_TIMEOUT: Duration = Duration::from_secs(3);

/// One event as the shared reader hands it out, serialized once for every client.
#[derive(Debug)]
pub struct FeedEvent {
    ev: StreamEvent,
    pos: events::Pos,
    json: String,
}

impl FeedEvent {
    fn new(ev: StreamEvent) -> FeedEvent {
        let json = serde_json::to_string(&TaskEvent::from(&ev)).unwrap_or_default();
        FeedEvent {
            pos: ev.pos(),
            ev,
            json,
        }
    }
}

/// The shared reader of the event streams: one blocking XREAD connection per process,
/// whatever the number of `/v1/events` clients, fanned out through one broadcast ring.
///
/// Gap-free hand-over: a client subscribes first, then waits until the reader is
/// *armed* (its cursors are at or before the arming time and only move forward by
/// reading), then catches up on its own from Redis on the shared connection. Any event
/// the reader reads after the subscription reaches the client through the ring; any
/// event appended before it is found by the catch-up; duplicates are dropped by id.
/// The reader disarms (forgets its cursors, drops its connection, reads nothing) only
/// when nobody is subscribed, checked under the same lock a subscription takes.
pub struct EventFeed {
    store: Store,
    tx: broadcast::Sender<Arc<FeedEvent>>,
    armed: watch::Sender<bool>,
    /// Taken by [`EventFeed::subscribe`] and by the reader's disarm check.
    gate: Mutex<()>,
    wake: Notify,
    /// Queues a subscriber asked for by name, read before the queue set lists them.
    wanted: Mutex<std::collections::HashSet<String>>,
    started: std::sync::Once,
    replay: Arc<Semaphore>,
}

impl std::fmt::Debug for EventFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFeed")
            .field("subscribers", &self.tx.receiver_count())
            .finish()
    }
}

impl EventFeed {
    /// A reader on `store`, started by the first subscriber.
    pub fn new(store: Store) -> Arc<EventFeed> {
        Arc::new(EventFeed {
            store,
            tx: broadcast::channel(FEED_CAPACITY).0,
            armed: watch::channel(false).0,
            gate: Mutex::new(()),
            wake: Notify::new(),
            wanted: Mutex::new(std::collections::HashSet::new()),
            started: std::sync::Once::new(),
            replay: Arc::new(Semaphore::new(REPLAY_IN_FLIGHT)),
        })
    }

    /// Open `/v1/events` streams of this process.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Events held by catching-up clients right now (at most [`REPLAY_IN_FLIGHT`]).
    pub fn replay_in_flight(&self) -> usize {
        REPLAY_IN_FLIGHT - self.replay.available_permits()
    }

    /// Subscribes and waits until the reader is armed.
    ///
    /// # Errors
    /// 503 when the reader cannot start (Redis down).
    async fn subscribe(
        self: &Arc<Self>,
        queue: Option<&str>,
    ) -> ApiResult<broadcast::Receiver<Arc<FeedEvent>>> {
        self.started.call_once(|| {
            let weak = Arc::downgrade(self);
            tokio::spawn(read_loop(weak));
        });
        if let Some(q) = queue {
            // Read at once, not from the next listing of the queue set: the queue may be
            // new (its first task not yet submitted).
            let mut w = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
            if w.len() < MAX_WANTED {
                w.insert(q.to_string());
            }
        }
        let (rx, armed) = {
            let _g = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            (self.tx.subscribe(), *self.armed.borrow())
        };
        if !armed {
            self.wake.notify_one();
            let mut w = self.armed.subscribe();
            tokio::time::timeout(ARM_TIMEOUT, w.wait_for(|a| *a))
                .await
                .map_err(|_| ApiError::Overloaded {
                    code: "events_unavailable",
                    detail: "the event reader could not start (redis unreachable?); retry".into(),
                })?
                .map_err(|e| ApiError::Internal(anyhow::anyhow!("event reader gone: {e}")))?;
        }
        Ok(rx)
    }
}

/// The reader: while anyone is subscribed, XREAD (blocking, on its own connection)
/// every queue's stream after its cursor and broadcast what comes. Ends when the feed
/// is dropped (the server stopped and every stream closed).
async fn read_loop(weak: std::sync::Weak<EventFeed>) {
    let mut conn: Option<crate::store::Conn> = None;
    let mut cursors: HashMap<String, String> = HashMap::new();
    let mut arm_id = String::new();
    let mut listed: Option<std::time::Instant> = None;
    let mut wanted_at: HashMap<String, std::time::Instant> = HashMap::new();
    loop {
        let Some(feed) = weak.upgrade() else { return };
        let idle = {
            let _g = feed.gate.lock().unwrap_or_else(|e| e.into_inner());
            let idle = feed.tx.receiver_count() == 0;
            if idle {
                feed.armed.send_replace(false);
            }
            idle
        };
        if idle {
            conn = None;
            cursors.clear();
            wanted_at.clear();
            listed = None;
            let _ = tokio::time::timeout(Duration::from_secs(1), feed.wake.notified()).await;
            continue;
        }
        if !*feed.armed.borrow() {
            match feed.store.now_ms().await {
                Ok(now) => {
                    // Entries come after the id given: one ms back covers this one.
                    arm_id = format!("{}-0", now.saturating_sub(1));
                    feed.armed.send_replace(true);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "event reader cannot arm; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        if listed.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            match feed.store.queues().await {
                Ok(qs) => {
                    listed = Some(std::time::Instant::now());
                    let keep: std::collections::HashSet<&String> = qs.iter().collect();
                    // A queue gone from the set stops being read; one a subscriber named
                    // stays a while (it may be about to get its first task).
                    wanted_at.retain(|_, at: &mut std::time::Instant| {
                        at.elapsed() < Duration::from_secs(60)
                    });
                    cursors.retain(|q, _| keep.contains(q) || wanted_at.contains_key(q));
                    for q in qs {
                        cursors.entry(q).or_insert_with(|| arm_id.clone());
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "event reader cannot list queues; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        {
            let mut w = feed.wanted.lock().unwrap_or_else(|e| e.into_inner());
            for q in w.drain() {
                cursors.entry(q.clone()).or_insert_with(|| arm_id.clone());
                wanted_at.insert(q, std::time::Instant::now());
            }
        }
        if cursors.is_empty() {
            drop(feed);
            tokio::time::sleep(FEED_BLOCK).await;
            continue;
        }
        if conn.is_none() {
            match events::blocking_connection(&feed.store).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "event reader cannot connect; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        let after: Vec<(String, String)> = cursors
            .iter()
            .map(|(q, id)| (q.clone(), id.clone()))
            .collect();
        let store = feed.store.clone();
        let tx = feed.tx.clone();
        // Not holding the feed while blocked: dropping the server ends the loop.
        drop(feed);
        match store
            .read_events(conn.as_mut(), &after, 500, Some(FEED_BLOCK))
            .await
        {
            Ok(evs) => {
                for e in evs {
                    cursors.insert(e.queue.clone(), e.sid.clone());
                    let _ = tx.send(Arc::new(FeedEvent::new(e)));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "event reader read failed; retrying");
                conn = None;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Events handed from a client's cursor task to its response body at once.
const HANDOFF: usize = 32;
/// A client that takes no event for this long is cut off.
pub const SLOW_CLIENT: Duration = Duration::from_secs(30);

/// Feeds one client until it goes away, falls [`SLOW_CLIENT`] behind, or the feed ends.
async fn run_cursor(mut c: Cursor, out: tokio::sync::mpsc::Sender<Event>) {
    loop {
        let next = tokio::select! {
            n = c.next() => n,
            _ = out.closed() => return,
        };
        match next {
            Next::Send(e) => {
                let ev = Event::default()
                    .id(e.ev.id())
                    .event(e.ev.type_.clone())
                    .data(e.json.clone());
                if out.send_timeout(ev, SLOW_CLIENT).await.is_err() {
                    tracing::debug!("event stream client too slow or gone; closing");
                    return;
                }
            }
            Next::Retry => {}
            Next::End => return,
        }
    }
}

/// One client's position.
struct Cursor {
    feed: Arc<EventFeed>,
    rx: broadcast::Receiver<Arc<FeedEvent>>,
    fixed_queue: Option<String>,
    task: Option<String>,
    /// Last event seen per queue.
    seen: HashMap<String, events::Pos>,
    /// Queues not in `seen` start after this.
    floor: events::Pos,
    /// Reading from Redis (a replay, or after falling behind the ring) until every
    /// queue is at its end.
    catching_up: bool,
    /// Queues of the catch-up round under way, not yet at their end.
    pending: Option<Vec<String>>,
    buf: VecDeque<Arc<FeedEvent>>,
    /// This client's share of [`REPLAY_IN_FLIGHT`], held while `buf` holds a replay.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

enum Next {
    Send(Arc<FeedEvent>),
    Retry,
    End,
}

impl Cursor {
    fn after(&self, queue: &str) -> events::Pos {
        self.seen.get(queue).copied().unwrap_or(self.floor)
    }

    /// Records `e` as seen; whether this client should get it.
    fn take(&mut self, e: &FeedEvent) -> bool {
        if self
            .fixed_queue
            .as_ref()
            .is_some_and(|q| *q != validate::split_shard(&e.ev.queue).0)
        {
            return false;
        }
        if e.pos <= self.after(&e.ev.queue) {
            return false;
        }
        self.seen.insert(e.ev.queue.clone(), e.pos);
        self.task.as_ref().is_none_or(|t| *t == e.ev.task)
    }

    async fn next(&mut self) -> Next {
        if let Some(e) = self.buf.pop_front() {
            return Next::Send(e);
        }
        self.permit = None;
        if self.catching_up {
            return match self.catch_up().await {
                Ok(()) => Next::Retry,
                Err(err) => {
                    tracing::debug!(error = %err, "event catch-up failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Next::Retry
                }
            };
        }
        match self.rx.recv().await {
            Ok(e) if self.take(&e) => Next::Send(e),
            Ok(_) => Next::Retry,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                self.catching_up = true;
                Next::Retry
            }
            Err(broadcast::error::RecvError::Closed) => Next::End,
        }
    }

    /// Catching up: reads every queue from where this client is to its end,
    /// [`REPLAY_BATCH`] events at a time; each batch is sent before the next is read.
    async fn catch_up(&mut self) -> Result<(), crate::store::StoreError> {
        if self.pending.is_none() {
            self.pending = Some(match &self.fixed_queue {
                Some(q) => self.feed.store.shards_of(q).await?,
                None => self.feed.store.queues().await?,
            });
        }
        while let Some(pending) = self.pending.as_ref().filter(|p| !p.is_empty()) {
            let n = pending.len().min(REPLAY_STREAMS);
            let count = (REPLAY_BATCH / n).max(1);
            let after: Vec<(String, String)> = pending[..n]
                .iter()
                // The entry at the position comes again (only part of it may have been
                // seen); `take` drops what was.
                .map(|q| (q.clone(), events::read_after(self.after(q))))
                .collect();
            let permit = self
                .feed
                .replay
                .clone()
                .acquire_many_owned((count * n) as u32)
                .await
                .map_err(|e| crate::store::StoreError::Unfit(format!("replay gate closed: {e}")))?;
            let evs = self
                .feed
                .store
                .read_events(None, &after, count, None)
                .await?;
            // Entries, not events, per queue: COUNT counts entries, and one lists many.
            let mut per_queue: HashMap<&str, usize> = HashMap::new();
            for e in evs.iter().filter(|e| e.index == 0) {
                *per_queue.entry(e.queue.as_str()).or_default() += 1;
            }
            // A queue that gave a full batch may have more: it goes to the back.
            let full: Vec<String> = after
                .iter()
                .map(|(q, _)| q)
                .filter(|q| per_queue.get(q.as_str()).copied().unwrap_or(0) >= count)
                .cloned()
                .collect();
            let got: Vec<Arc<FeedEvent>> = evs
                .into_iter()
                .map(|e| Arc::new(FeedEvent::new(e)))
                .collect();
            for e in got {
                if self.take(&e) {
                    self.buf.push_back(e);
                }
            }
            if let Some(p) = self.pending.as_mut() {
                p.drain(..n);
                p.extend(full);
            }
            if !self.buf.is_empty() {
                // Entries listing several tasks bring more events than entries: their
                // share of the budget too (held until they are sent).
                let mut permit = permit;
                let over = self
                    .buf
                    .len()
                    .saturating_sub(count * n)
                    .min(REPLAY_IN_FLIGHT);
                if over > 0
                    && let Ok(more) = self
                        .feed
                        .replay
                        .clone()
                        .acquire_many_owned(over as u32)
                        .await
                {
                    permit.merge(more);
                }
                self.permit = Some(permit);
                return Ok(());
            }
        }
        self.pending = None;
        self.catching_up = false;
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
        (status = 429, body = Problem, content_type = "application/problem+json", description = "The caller has as many streams open as it may (code too_many_streams); retry after Retry-After"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "Redis unavailable, or the server has as many streams open as it may; retry after Retry-After")
    )
)]
/// `GET /v1/events?queue=&task=`.
///
/// # Errors
/// 400 bad filter or Last-Event-ID, 503 Redis down.
pub async fn events(
    State(st): State<AppState>,
    who: Principal,
    caller: super::auth::Caller,
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
    match &fixed_queue {
        Some(fq) => caller.allow(fq)?,
        None if caller.scoped() => {
            return Err(ApiError::Forbidden(
                "this token is limited to some queues: name one with queue= or task=".into(),
            ));
        }
        None => {}
    }
    let feed = st.events.clone();
    // Subscribe before reading the clock or catching up: see [`EventFeed`].
    let rx = feed.subscribe(fixed_queue.as_deref()).await?;
    let mut seen = HashMap::new();
    let (floor, catching_up) = match headers.get("last-event-id") {
        Some(last) => {
            let last = last.to_str().unwrap_or("");
            let (pos, queue) = events::parse_event_id(last).ok_or_else(|| {
                ApiError::bad(
                    "bad_last_event_id",
                    "Last-Event-ID must be an id this server sent (<ms>-<seq>[.<n>]@<queue>)",
                )
            })?;
            if validate::queue_name(validate::split_shard(&queue).0).is_ok() {
                seen.insert(queue, pos);
            }
            ((pos.0.saturating_sub(1000), 0, 0), true)
        }
        None => {
            let now = st.store.now_ms().await?.max(1) as u64;
            ((now - 1, u64::MAX, u64::MAX), false)
        }
    };
    let cursor = Cursor {
        feed,
        rx,
        fixed_queue,
        task: q.task,
        seen,
        floor,
        catching_up,
        pending: None,
        buf: VecDeque::new(),
        permit: None,
    };
    // The cursor runs in a task of its own and hands events over a short channel: a
    // client that stops reading for [`SLOW_CLIENT`] is cut off, so that it does not
    // hold its share of the replay budget (and a subscription) for ever; it resumes
    // with `Last-Event-ID`.
    let (out, rx_out) = tokio::sync::mpsc::channel::<Event>(HANDOFF);
    tokio::spawn(run_cursor(cursor, out));
    let stream = futures::stream::unfold(rx_out, |mut rx| async move {
        rx.recv().await.map(|ev| (Ok(ev), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
