//! Shared test helpers: a throwaway redis-server per test binary (or per test where
//! Redis is killed), a key namespace per test, and `spawn_app`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A redis-server on a free loopback port, killed on drop.
pub struct RedisGuard {
    child: Child,
    /// The port.
    pub port: u16,
    /// Its data directory.
    pub dir: tempfile::TempDir,
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisGuard {
    /// Starts redis-server with persistence off.
    pub fn start() -> RedisGuard {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts redis-server with extra arguments, in a fresh temp dir.
    pub fn start_with(extra: &[&str]) -> RedisGuard {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        Self::start_in(dir, port, extra)
    }

    /// Starts redis-server on `port` with data in `dir` (used to restart one).
    pub fn start_in(dir: tempfile::TempDir, port: u16, extra: &[&str]) -> RedisGuard {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        let g = RedisGuard { child, port, dir };
        g.wait_ready();
        g
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).expect("url");
        while Instant::now() < deadline {
            if let Ok(mut c) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9 and wait; returns the data dir for a restart.
    pub fn kill(mut self) -> (tempfile::TempDir, u16) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let port = self.port;
        // Move the dir out without running Drop's kill again.
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        (dir, port)
    }

    /// A blocking connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url()).expect("url").get_connection().expect("connection")
    }
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shared redis-server of this test binary.
pub fn shared_redis() -> &'static RedisGuard {
    static R: OnceLock<RedisGuard> = OnceLock::new();
    R.get_or_init(RedisGuard::start)
}

/// A namespace no other test uses.
pub fn unique_ns() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("t{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Path of the built `muster` binary.
pub fn muster_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_muster"))
}

/// A store on the shared Redis under a fresh namespace.
pub async fn store() -> muster::store::Store {
    let s = muster::store::Store::connect(&shared_redis().url(), &unique_ns(), Duration::from_secs(2))
        .await
        .expect("connect");
    s.prepare().await.expect("prepare");
    s
}

// ===================================================================================
// Security / events helpers (branch `sec`): `spawn_sec_app`, token fixtures and a raw
// HTTP/1.1 client for what reqwest cannot do (chunked bodies, slow clients, SSE).
// ===================================================================================

/// A control plane serving in this process, stopped on drop.
#[allow(dead_code)]
pub struct SecApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The bound address.
    pub addr: std::net::SocketAddr,
    /// Admin token.
    pub admin: String,
    /// `read` role token.
    pub read: String,
    /// `submit` role token.
    pub submit: String,
    /// `agent` role token.
    pub agent: String,
    /// Key namespace.
    pub ns: String,
    /// Redis URL.
    pub redis_url: String,
    /// A client without a default token.
    pub http: reqwest::Client,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for SecApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[allow(dead_code)]
impl SecApp {
    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A blocking Redis connection.
    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(self.redis_url.as_str()).expect("url").get_connection().expect("connection")
    }

    /// Registers a node serving `queues` (agent token); returns (id, token).
    pub async fn register_node(&self, name: &str, queues: &[&str]) -> (String, String) {
        let r = self
            .http
            .post(self.url("/v1/nodes"))
            .bearer_auth(&self.agent)
            .json(&serde_json::json!({"name": name, "queues": queues, "capacity": 100}))
            .send()
            .await
            .expect("register");
        assert_eq!(r.status().as_u16(), 201, "register node");
        let v: serde_json::Value = r.json().await.expect("json");
        (v["id"].as_str().expect("id").to_string(), v["token"].as_str().expect("token").to_string())
    }

    /// Submits one task (admin token); returns its id.
    pub async fn submit_task(&self, queue: &str, payload: serde_json::Value) -> String {
        let r = self
            .http
            .post(self.url("/v1/tasks"))
            .bearer_auth(&self.admin)
            .json(&serde_json::json!({"kind": "sec", "queue": queue, "payload": payload}))
            .send()
            .await
            .expect("submit");
        assert_eq!(r.status().as_u16(), 201, "submit task");
        let v: serde_json::Value = r.json().await.expect("json");
        v["id"].as_str().expect("id").to_string()
    }

    /// Leases until `n` leases are held or `within` passes; returns (task id, lease token).
    pub async fn lease_n(&self, node: &str, token: &str, n: usize, within: Duration) -> Vec<(String, String)> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            let r = self
                .http
                .post(self.url(&format!("/v1/nodes/{node}/lease")))
                .bearer_auth(token)
                .json(&serde_json::json!({"max": n - out.len(), "wait_ms": 500}))
                .send()
                .await
                .expect("lease");
            assert_eq!(r.status().as_u16(), 200, "lease");
            let v: serde_json::Value = r.json().await.expect("json");
            for l in v["leases"].as_array().expect("leases") {
                out.push((
                    l["task"]["id"].as_str().expect("task id").to_string(),
                    l["lease_token"].as_str().expect("lease token").to_string(),
                ));
            }
        }
        out
    }

    /// GET a task as JSON (admin).
    pub async fn task(&self, id: &str) -> serde_json::Value {
        let r = self.http.get(self.url(&format!("/v1/tasks/{id}"))).bearer_auth(&self.admin).send().await.expect("get");
        assert_eq!(r.status().as_u16(), 200, "get task {id}");
        r.json().await.expect("json")
    }
}

/// Builds and runs a control plane on `redis_url` under a fresh namespace with admin,
/// read, submit and agent tokens; `tweak` adjusts the config first.
pub async fn spawn_sec_app(redis_url: &str, tweak: impl FnOnce(&mut muster::config::Config)) -> SecApp {
    let ns = unique_ns();
    let mut cfg = muster::config::Config::new("127.0.0.1:0", redis_url);
    let tag = format!("{ns}-0123456789abcdef");
    let (admin, read, submit, agent) =
        (format!("admin-{tag}"), format!("read-{tag}"), format!("submit-{tag}"), format!("agent-{tag}"));
    cfg.namespace = ns.clone();
    cfg.admin_token = Some(admin.clone());
    cfg.tokens = vec![
        (muster::api::auth::Role::Read, read.clone()),
        (muster::api::auth::Role::Submit, submit.clone()),
        (muster::api::auth::Role::Agent, agent.clone()),
    ];
    cfg.dispatchers = 1;
    cfg.reaper_interval = Duration::from_millis(250);
    tweak(&mut cfg);
    let app = muster::startup::Application::build(cfg).await.expect("build application");
    let addr = app.local_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        let _ = app.run(sd).await;
    });
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("client");
    let base = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the app did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    SecApp { base, addr, admin, read, submit, agent, ns, redis_url: redis_url.to_string(), http, shutdown }
}

/// A raw HTTP/1.1 answer.
#[allow(dead_code)]
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes (de-chunked when chunked).
    pub body: Vec<u8>,
}

#[allow(dead_code)]
impl RawResponse {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses a full HTTP/1.1 response (read until close).
pub fn parse_raw_response(raw: &[u8]) -> Option<RawResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..p]).ok()?.trim(), 16).ok()?;
            if size == 0 || rest.len() < p + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[p + 2..p + 2 + size]);
            rest = &rest[(p + 4 + size).min(rest.len())..];
        }
        body = out;
    }
    Some(RawResponse { status, headers, body })
}

/// Sends `head` (without the blank line's trailing body) and `body` in chunks of
/// `chunk` bytes with `Transfer-Encoding: chunked`, reads the answer until close.
pub async fn raw_chunked_post(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    body: &[u8],
    chunk: usize,
) -> std::io::Result<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    let mut write_err = None;
    for c in body.chunks(chunk) {
        let mut frame = format!("{:x}\r\n", c.len()).into_bytes();
        frame.extend_from_slice(c);
        frame.extend_from_slice(b"\r\n");
        if let Err(e) = s.write_all(&frame).await {
            // The server may answer (413) and stop reading early.
            write_err = Some(e);
            break;
        }
    }
    if write_err.is_none() {
        let _ = s.write_all(b"0\r\n\r\n").await;
    }
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw)).await;
    parse_raw_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!(
            "no HTTP answer (write error: {write_err:?}); got {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)])
        ))
    })
}

/// Sends raw request bytes and reads until close (or `timeout`).
pub async fn raw_request(addr: std::net::SocketAddr, req: &[u8], timeout: Duration) -> std::io::Result<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let _ = s.write_all(req).await;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => {
                if raw.is_empty() {
                    return Err(e);
                }
                break;
            }
        }
    }
    parse_raw_response(&raw).ok_or_else(|| std::io::Error::other("no HTTP answer"))
}

/// Every key under `ns:` with its content rendered as text (type-aware), for audits.
pub fn dump_namespace(conn: &mut redis::Connection, ns: &str) -> Vec<(String, String)> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{ns}:*"))
            .arg("COUNT")
            .arg(1000)
            .query(conn)
            .expect("scan");
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for k in keys {
        let t: String = redis::cmd("TYPE").arg(&k).query(conn).expect("type");
        let v: redis::Value = match t.as_str() {
            "string" => redis::cmd("GET").arg(&k).query(conn),
            "hash" => redis::cmd("HGETALL").arg(&k).query(conn),
            "list" => redis::cmd("LRANGE").arg(&k).arg(0).arg(-1).query(conn),
            "set" => redis::cmd("SMEMBERS").arg(&k).query(conn),
            "zset" => redis::cmd("ZRANGE").arg(&k).arg(0).arg(-1).arg("WITHSCORES").query(conn),
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
        redis::Value::Array(a) | redis::Value::Set(a) => a.iter().map(value_text).collect::<Vec<_>>().join(" "),
        redis::Value::Map(m) => m.iter().map(|(k, v)| format!("{} {}", value_text(k), value_text(v))).collect::<Vec<_>>().join(" "),
        redis::Value::Nil => String::new(),
        other => format!("{other:?}"),
    }
}
// ===================== end of security / events helpers ===========================
