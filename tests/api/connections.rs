//! Issue 16 item 2, connection exhaustion: event streams share the Redis connections,
//! a replay from `Last-Event-ID` is bounded by the events in flight, streams are held to
//! limits per caller and in all, and idle sockets of strangers cannot starve
//! authenticated traffic.

use crate::support::{
    ADMIN_TOKEN, RedisGuard, free_port, muster_bin, shared_redis, spawn_sec_app,
    spawn_serve_process, store_on, unique_ns,
};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens `GET path` with `token` (and `Last-Event-ID`), reads the answer's head; returns
/// the status and the stream, positioned after the head.
async fn open_stream(
    addr: SocketAddr,
    path: &str,
    token: &str,
    last_event_id: Option<&str>,
) -> (u16, TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n");
    if let Some(id) = last_event_id {
        req.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        assert!(Instant::now() < deadline, "no answer head");
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("head in time")
            .expect("read");
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, s, text)
}

/// Reads from `s` until `needle` shows up (or `within` passes); whether it did.
async fn read_until(s: &mut TcpStream, mut seen: String, needle: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 8192];
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => return false,
        }
    }
    true
}

fn connected_clients(conn: &mut redis::Connection) -> i64 {
    let info: String = redis::cmd("INFO").arg("clients").query(conn).expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("connected_clients")
}

/// Each `/v1/events` client had its own Redis connection: 300 clients, 304 Redis
/// clients. Now one shared reader serves them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_event_streams_share_a_few_redis_connections() {
    let redis = RedisGuard::start();
    let app = spawn_sec_app(&redis.url(), |c| c.max_streams_per_caller = 2_000).await;
    let mut streams = Vec::new();
    for i in 0..1_000 {
        let (status, s, head) = open_stream(app.addr, "/v1/events", &app.read, None).await;
        assert_eq!(status, 200, "stream {i}: {head}");
        streams.push((s, head));
    }
    let mut conn = redis.conn();
    let clients = connected_clients(&mut conn);
    assert!(
        clients <= 20,
        "{clients} redis clients for 1,000 event streams"
    );
    // Other routes are served, and an event reaches the streams.
    let t0 = Instant::now();
    let r = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "/healthz took {:?}",
        t0.elapsed()
    );
    let id = app.submit_task("wide", serde_json::json!({})).await;
    for (s, head) in streams.iter_mut().step_by(97) {
        assert!(
            read_until(s, std::mem::take(head), &id, Duration::from_secs(10)).await,
            "a stream did not get the event of {id}"
        );
    }
    let clients = connected_clients(&mut conn);
    assert!(clients <= 20, "{clients} redis clients after the event");
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// A replay from `Last-Event-ID: 0-0@` buffered 500 events per queue per client (20
/// clients over 50 queues: RSS 53 → 297 MiB). Now all catching-up clients together
/// hold a bounded number of events ([`muster::api::events::REPLAY_IN_FLIGHT`]), and a
/// client that reads is not held up by those that do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_from_the_start_is_bounded_by_the_events_in_flight() {
    let url = shared_redis().url();
    let ns = unique_ns();
    let store = store_on(&url, &ns).await;
    let mut conn = shared_redis().conn();
    let (queues, per_queue) = (50, 600);
    let mut pipe = redis::pipe();
    for q in 0..queues {
        let queue = format!("replay-{q:02}");
        pipe.sadd(store.keys.queues(), &queue).ignore();
        for i in 0..per_queue {
            pipe.cmd("XADD")
                .arg(store.keys.events(&queue))
                .arg("*")
                .arg("type")
                .arg("task.submitted")
                .arg("task")
                .arg(format!("t{q}-{i}-{}", "x".repeat(40)))
                .arg("node")
                .arg("")
                .arg("state")
                .arg("pending")
                .ignore();
        }
    }
    let () = pipe.query(&mut conn).expect("seed events");
    let serve = spawn_serve_process(&url, &ns).await;
    let addr: SocketAddr = serve
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let before = rss_kib(serve.proc.pid());
    // Twenty clients that ask for everything and read nothing.
    let mut idle = Vec::new();
    for _ in 0..20 {
        let (status, s, _) = open_stream(addr, "/v1/events", ADMIN_TOKEN, Some("0-0@")).await;
        assert_eq!(status, 200);
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = rss_kib(serve.proc.pid());
    assert!(
        during < before + 40 * 1024,
        "RSS went from {before} KiB to {during} KiB with 20 replays in flight"
    );
    // Meanwhile a client that reads gets every event of a queue, once.
    let mut r = reqwest::Client::new()
        .get(format!("{}/v1/events?queue=replay-07", serve.url))
        .bearer_auth(ADMIN_TOKEN)
        .header("Last-Event-ID", "0-0@")
        .send()
        .await
        .expect("events");
    assert_eq!(r.status(), 200);
    let mut seen = std::collections::HashSet::new();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < per_queue {
        let chunk = tokio::time::timeout_at(deadline, r.chunk())
            .await
            .unwrap_or_else(|_| panic!("only {} events within 30 s", seen.len()))
            .expect("read")
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        // Only whole lines.
        let cut = text.rfind('\n').map_or(0, |i| i + 1);
        for line in text[..cut].lines() {
            if let Some(id) = line.strip_prefix("id:") {
                let id = id.trim();
                assert!(
                    id.ends_with("@replay-07"),
                    "{id} is not of the queue asked for"
                );
                assert!(seen.insert(id.to_string()), "event {id} came twice");
            }
        }
        text.drain(..cut);
    }
    drop(idle);
}

/// Streams (events, long-polls) were unlimited. Now a caller past its limit gets 429,
/// and past the server's total everyone gets 503, both problem+json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_limited_per_caller_and_in_all() {
    let app = spawn_sec_app(&shared_redis().url(), |c| {
        c.max_streams = 4;
        c.max_streams_per_caller = 2;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let (status, s, _) = open_stream(app.addr, "/v1/events", &app.read, None).await;
        assert_eq!(status, 200);
        held.push(s);
    }
    let (status, _, head) = open_stream(app.addr, "/v1/events", &app.read, None).await;
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("application/problem+json"), "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    // Another caller has its own share, up to the total.
    for _ in 0..2 {
        let (status, s, _) = open_stream(app.addr, "/v1/events", &app.submit, None).await;
        assert_eq!(status, 200);
        held.push(s);
    }
    let (status, _, head) = open_stream(app.addr, "/v1/events", &app.admin, None).await;
    assert_eq!(status, 503, "{head}");
    assert!(
        head.contains("too_many_streams") || head.contains("problem+json"),
        "{head}"
    );
    // A closed stream frees its place.
    drop(held.remove(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, s, _) = open_stream(app.addr, "/v1/events", &app.read, None).await;
        if status == 200 {
            held.push(s);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Under `ulimit -n 256`, 260 idle unauthenticated sockets made `accept` fail and every
/// route time out. Now the connection cap fits the limit and a new connection takes the
/// place of a stranger's idle one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_strangers_do_not_starve_authenticated_traffic() {
    let url = shared_redis().url();
    let ns = unique_ns();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" \"$@\"")
        .arg(muster_bin())
        .args([
            "serve",
            "--listen",
            &listen,
            "--redis-url",
            &url,
            "--namespace",
            &ns,
            "--admin-token",
            ADMIN_TOKEN,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn muster serve");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(child.try_wait().expect("wait").is_none(), "serve exited");
        assert!(Instant::now() < deadline, "serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _guard = Kill(child);
    let addr: SocketAddr = listen.parse().expect("addr");
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        let t0 = Instant::now();
        let r = http
            .get(format!("{base}/v1/queues"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} failed with 300 idle sockets open: {e}"));
        assert_eq!(r.status(), 200);
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "request {i} took {:?}",
            t0.elapsed()
        );
    }
    drop(idle);
}

/// The connection and stream accounting wraps every answer's body: the answers keep
/// their `Content-Length` (not chunked), streams stay streams.
#[tokio::test]
async fn counted_answers_keep_their_content_length() {
    let app = spawn_sec_app(&shared_redis().url(), |_| {}).await;
    let r = app
        .http
        .get(app.url("/v1/queues"))
        .bearer_auth(&app.read)
        .send()
        .await
        .expect("queues");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().contains_key("content-length"),
        "{:?}",
        r.headers()
    );
    let (status, _, head) = open_stream(app.addr, "/v1/events", &app.read, None).await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("text/event-stream"),
        "{head}"
    );
}
