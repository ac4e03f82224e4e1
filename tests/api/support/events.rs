//! A tail of a queue's event stream (`XREAD` from `0-0` while it grows), for the
//! checkers of the cluster and fault suites.

use super::event_fields;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One stream entry.
#[derive(Debug, Clone)]
pub struct Ev {
    /// Stream-id time (Redis clock, ms).
    pub ms: i64,
    /// `task.running`, `task.succeeded`, ...
    pub typ: String,
    /// Task id.
    pub task: String,
    /// Node id.
    pub node: String,
}

/// Tails queues' event streams from `0-0` with XREAD while they grow (a thread that
/// reconnects across Redis restarts), so that the capped stream never drops an event
/// before it is counted.
pub struct EventTail {
    events: Arc<Mutex<Vec<Ev>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EventTail {
    /// Starts tailing `<ns>:{<queue>}:events` on `redis_url`.
    pub fn start(redis_url: &str, ns: &str, queue: &str) -> EventTail {
        let events: Arc<Mutex<Vec<Ev>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let key = format!("{ns}:{{{queue}}}:events");
        let queue = queue.to_string();
        let client = redis::Client::open(redis_url).expect("url");
        let (ev, st) = (events.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut last = "0-0".to_string();
            let mut conn: Option<redis::Connection> = None;
            // After `stop`, read on until a round brings nothing: every event written
            // before the stop is in.
            loop {
                let stopping = st.load(Ordering::Relaxed);
                if conn.is_none() {
                    match client.get_connection_with_timeout(Duration::from_secs(1)) {
                        Ok(c) => {
                            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                            conn = Some(c);
                        }
                        Err(_) if stopping => return,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    }
                }
                let c = conn.as_mut().unwrap();
                let r: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                    redis::cmd("XREAD")
                        .arg("COUNT")
                        .arg(2000)
                        .arg("BLOCK")
                        .arg(100)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(&last)
                        .query(c);
                let mut got = 0;
                match r {
                    Ok(Some(reply)) => {
                        let mut out = ev.lock().unwrap();
                        for k in reply.keys {
                            for e in k.ids {
                                let ms =
                                    e.id.split('-')
                                        .next()
                                        .and_then(|v| v.parse().ok())
                                        .unwrap_or(0);
                                for (typ, task, node) in event_fields(&e, &queue) {
                                    out.push(Ev {
                                        ms,
                                        typ,
                                        task,
                                        node,
                                    });
                                    got += 1;
                                }
                                last = e.id.clone();
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(_) => {
                        conn = None;
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                if stopping && got == 0 {
                    return;
                }
            }
        });
        EventTail {
            events,
            stop,
            thread: Some(thread),
        }
    }

    /// The events so far.
    pub fn events(&self) -> Vec<Ev> {
        self.events.lock().unwrap().clone()
    }

    /// Stops the tail once it has read every event written so far; all events.
    pub fn finish(mut self) -> Vec<Ev> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.events()
    }

    /// Waits until the tail has caught up with events up to now (one more read round).
    pub async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

impl Drop for EventTail {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
