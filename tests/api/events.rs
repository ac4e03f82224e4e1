//! `GET /v1/events` (RELIABILITY.md R7, light): an SSE consumer killed and resumed with
//! `Last-Event-ID` while tasks complete misses no completion; and `/metrics` counts them.

use crate::support::{SecApp, e2e_target, on_cluster, shared_redis, spawn_sec_app};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One server-sent event.
#[derive(Debug, Clone)]
struct SseEvent {
    id: String,
    event: String,
    data: String,
}

/// Incremental HTTP/1.1 + SSE parser over a raw byte stream.
#[derive(Default)]
struct SseParser {
    raw: Vec<u8>,
    head: Option<(u16, bool)>,
    body: Vec<u8>,
    chunk_left: usize,
    cur: (Option<String>, Option<String>, Vec<String>),
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) {
        self.raw.extend_from_slice(bytes);
        if self.head.is_none() {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return;
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).to_ascii_lowercase();
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let chunked = head.contains("transfer-encoding: chunked");
            self.head = Some((status, chunked));
            self.raw.drain(..end + 4);
        }
        let chunked = self.head.is_some_and(|h| h.1);
        if chunked {
            loop {
                if self.chunk_left > 0 {
                    let n = self.chunk_left.min(self.raw.len());
                    self.body.extend(self.raw.drain(..n));
                    self.chunk_left -= n;
                    if self.chunk_left > 0 {
                        break;
                    }
                }
                // Next: CRLF ending a chunk (if any), then "<size>\r\n".
                while self.raw.starts_with(b"\r\n") {
                    self.raw.drain(..2);
                }
                let Some(p) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                    break;
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&self.raw[..p]).trim(), 16)
                        .unwrap_or(0);
                self.raw.drain(..p + 2);
                if size == 0 {
                    break;
                }
                self.chunk_left = size;
            }
        } else {
            self.body.append(&mut self.raw);
        }
        // SSE lines.
        while let Some(p) = self.body.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.body.drain(..=p).collect();
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            if line.is_empty() {
                let (id, event, data) = std::mem::take(&mut self.cur);
                if !data.is_empty() {
                    out.push(SseEvent {
                        id: id.unwrap_or_default(),
                        event: event.unwrap_or_else(|| "message".into()),
                        data: data.join("\n"),
                    });
                }
            } else if let Some(v) = line.strip_prefix("id:") {
                self.cur.0 = Some(v.trim_start().to_string());
            } else if let Some(v) = line.strip_prefix("event:") {
                self.cur.1 = Some(v.trim_start().to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                self.cur.2.push(v.trim_start().to_string());
            }
        }
    }
}

/// One consumer session: connects (resuming after `last_id`), reads for `dur`, then
/// drops the connection mid-stream. Returns the events it saw, in order.
async fn sse_session(
    addr: SocketAddr,
    token: &str,
    queue: &str,
    last_id: Option<&str>,
    dur: Duration,
) -> Vec<SseEvent> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "GET /v1/events?queue={queue} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
    );
    if let Some(id) = last_id {
        req.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut p = SseParser::default();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + dur;
    // The answer's head may take longer than `dur` on a slow machine (or Cluster): it
    // gets ten seconds of its own.
    let head_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let until = if p.head.is_some() {
            deadline
        } else {
            deadline.max(head_deadline)
        };
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => panic!("the server ended the event stream"),
            Ok(Ok(n)) => p.feed(&buf[..n], &mut out),
            Ok(Err(e)) => panic!("event stream read: {e}"),
        }
        if let Some((status, _)) = p.head {
            assert_eq!(status, 200, "GET /v1/events answered {status}");
        }
    }
    assert!(
        p.head.is_some(),
        "no answer head from /v1/events within 10 s"
    );
    out
}

/// A node that leases and completes everything in `queue` until `stop`.
async fn agent_loop(
    app: Arc<SecApp>,
    queue: String,
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<HashSet<String>>>,
) {
    let (node, token) = app.register_node("sse-agent", &[queue.as_str()]).await;
    loop {
        let leases = app
            .lease_n(&node, &token, 20, Duration::from_millis(300))
            .await;
        if leases.is_empty() && stop.load(Ordering::Relaxed) {
            return;
        }
        for (id, lease) in leases {
            let r = app
                .http
                .post(app.url(&format!("/v1/tasks/{id}/complete")))
                .bearer_auth(&token)
                .json(&json!({"lease_token": lease, "result": {"ok": true}}))
                .send()
                .await
                .expect("complete");
            assert_eq!(r.status().as_u16(), 200, "complete {id}");
            done.lock().unwrap().insert(id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_consumer_resumed_with_last_event_id_misses_no_completion() {
    // On the shared server, or the shared Cluster with MUSTER_TEST_BACKEND=cluster.
    let app = Arc::new(
        spawn_sec_app(&shared_redis().url(), |c| {
            if on_cluster() {
                c.redis_target = Some(e2e_target());
            }
        })
        .await,
    );
    let q = "sse-q".to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(Mutex::new(HashSet::new()));

    // The first session starts before anything happens, so it may start "now".
    let mut seen: Vec<SseEvent> = Vec::new();
    let mut sessions = 0;
    seen.extend(sse_session(app.addr, &app.read, &q, None, Duration::from_millis(300)).await);
    sessions += 1;

    let agent = tokio::spawn(agent_loop(
        app.clone(),
        q.clone(),
        stop.clone(),
        done.clone(),
    ));
    let mut producer = Some({
        let app = app.clone();
        let q = q.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..40 {
                let tasks: Vec<Value> = (0..10)
                    .map(|i| json!({"kind": "sse", "queue": q, "payload": i}))
                    .collect();
                let r = app
                    .http
                    .post(app.url("/v1/tasks/batch"))
                    .bearer_auth(&app.submit)
                    .json(&json!({"tasks": tasks}))
                    .send()
                    .await
                    .expect("batch");
                assert_eq!(r.status().as_u16(), 201);
                let v: Value = r.json().await.expect("json");
                ids.extend(
                    v["ids"]
                        .as_array()
                        .expect("ids")
                        .iter()
                        .map(|i| i.as_str().expect("id").to_string()),
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ids
        })
    });

    // Kill and resume the consumer while tasks complete, then until every completion is seen.
    let pattern = [250u64, 420, 330, 610, 180, 500, 370, 290, 700, 450];
    let t0 = Instant::now();
    let mut submitted: Option<Vec<String>> = None;
    // Resumes from the event of an entry listing several tasks (`<sid>.<n>@<queue>`):
    // that entry is read again and its events up to n are skipped.
    let mut mid_entry_resumes = 0;
    loop {
        let last = seen.last().map(|e| e.id.clone());
        if last.as_deref().is_some_and(|id| id.contains('.')) {
            mid_entry_resumes += 1;
        }
        let dur = Duration::from_millis(pattern[sessions % pattern.len()]);
        seen.extend(sse_session(app.addr, &app.read, &q, last.as_deref(), dur).await);
        sessions += 1;
        if producer.as_ref().is_some_and(|h| h.is_finished()) {
            submitted = Some(producer.take().expect("producer").await.expect("producer"));
        }
        if let Some(sub) = &submitted {
            let completed = done.lock().unwrap().len();
            let succeeded: HashSet<&str> = seen
                .iter()
                .filter(|e| e.event == "task.succeeded")
                .map(|e| e.id.as_str())
                .collect();
            if completed == sub.len() && succeeded.len() >= sub.len() && sessions >= 6 {
                break;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "timed out: {sessions} sessions, {} events",
            seen.len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    agent.await.expect("agent");
    let submitted = submitted.expect("submitted");
    let done: HashSet<String> = done.lock().unwrap().clone();
    assert_eq!(done.len(), submitted.len(), "every task completed once");
    assert_eq!(done, submitted.iter().cloned().collect::<HashSet<_>>());

    // Dedup by event id; each completed task has exactly one task.succeeded.
    let raw = seen.len();
    let mut unique: BTreeMap<String, SseEvent> = BTreeMap::new();
    let mut conflicting = 0;
    for e in &seen {
        assert!(!e.id.is_empty(), "an event without an id: {e:?}");
        assert!(
            e.id.ends_with(&format!("@{q}")),
            "id {} does not name the queue",
            e.id
        );
        if let Some(prev) = unique.insert(e.id.clone(), e.clone())
            && prev.data != e.data
        {
            conflicting += 1;
        }
    }
    assert_eq!(conflicting, 0, "one id carried two different events");
    // Resuming inside an entry listing several tasks (`<sid>.<n>@<queue>`, here the
    // submission of a batch): the rest of that entry comes, what was before does not.
    let first = unique
        .keys()
        .find(|id| id.contains(".0@") && unique.contains_key(&id.replace(".0@", ".1@")))
        .expect("a multi-task entry (a batch's task.submitted)")
        .clone();
    let second = first.replace(".0@", ".1@");
    let again = sse_session(
        app.addr,
        &app.read,
        &q,
        Some(&first),
        Duration::from_millis(500),
    )
    .await;
    let ids: Vec<&str> = again.iter().map(|e| e.id.as_str()).collect();
    assert!(
        ids.contains(&second.as_str()),
        "{second} not resent after {first}: {ids:?}"
    );
    assert!(
        !ids.contains(&first.as_str()),
        "{first} resent after itself"
    );
    eprintln!("sse resume: {mid_entry_resumes} sessions resumed inside a multi-task entry");
    let duplicates = raw - unique.len();
    let mut per_task: HashMap<String, usize> = HashMap::new();
    for e in unique.values() {
        let d: Value = serde_json::from_str(&e.data).expect("data is JSON");
        assert_eq!(
            d["id"].as_str(),
            Some(e.id.as_str()),
            "data.id matches the SSE id"
        );
        assert_eq!(
            d["type"].as_str(),
            Some(e.event.as_str()),
            "data.type matches the SSE event"
        );
        assert_eq!(d["queue"].as_str(), Some(q.as_str()));
        if e.event == "task.succeeded" {
            assert_eq!(d["state"], "succeeded");
            *per_task
                .entry(d["task"].as_str().expect("task").to_string())
                .or_default() += 1;
        }
    }
    let missed: Vec<&String> = done
        .iter()
        .filter(|id| !per_task.contains_key(*id))
        .collect();
    assert!(
        missed.is_empty(),
        "{} completions missed after {sessions} sessions: {:?}",
        missed.len(),
        missed.iter().take(5).collect::<Vec<_>>()
    );
    let doubled: Vec<(&String, &usize)> = per_task.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        doubled.is_empty(),
        "tasks with more than one task.succeeded event: {doubled:?}"
    );
    assert_eq!(
        per_task.len(),
        done.len(),
        "task.succeeded for a task nobody completed"
    );
    eprintln!(
        "sse resume: {sessions} sessions ({} resumes), {} tasks, {raw} events received, {} unique, {duplicates} raw duplicates",
        sessions - 1,
        done.len(),
        unique.len()
    );
    assert!(sessions >= 6, "at least 5 resumes");

    // /metrics agrees.
    let r = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(&app.read)
        .send()
        .await
        .expect("metrics");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/plain"), "content type {ct}");
    let text = r.text().await.expect("text");
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
    };
    let n = submitted.len() as f64;
    assert_eq!(
        value(&format!("muster_tasks_succeeded_total{{queue=\"{q}\"}} ")),
        Some(n),
        "succeeded counter"
    );
    assert_eq!(
        value(&format!("muster_tasks_submitted_total{{queue=\"{q}\"}} ")),
        Some(n),
        "submitted counter"
    );
    assert_eq!(
        value(&format!("muster_tasks_failed_total{{queue=\"{q}\"}} ")),
        Some(0.0),
        "failed counter"
    );
    assert_eq!(
        value(&format!(
            "muster_queue_tasks{{queue=\"{q}\",state=\"succeeded\"}} "
        )),
        Some(n),
        "succeeded depth"
    );
    assert!(text.contains("# TYPE muster_tasks_succeeded_total counter"));
    let http_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("muster_http_request_duration_seconds"))
        .collect();
    assert!(
        !http_lines.is_empty(),
        "no muster_http_request_duration_seconds lines"
    );
    assert!(
        http_lines
            .iter()
            .any(|l| l.contains("/v1/tasks/batch") && l.contains("_count")),
        "no HTTP duration for the batch route: {:?}",
        &http_lines[..http_lines.len().min(5)]
    );
    // Every sample line parses as `name{labels} value`.
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let v = l.rsplit_once(' ').map(|(_, v)| v).unwrap_or("");
        assert!(
            v.parse::<f64>().is_ok() || v == "+Inf",
            "not a Prometheus sample: {l}"
        );
    }
}
