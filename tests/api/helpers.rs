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
            if let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
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
        redis::Client::open(self.url())
            .expect("url")
            .get_connection()
            .expect("connection")
    }
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shared redis-server of this test binary (one per binary; it dies with the
/// binary, see [`WatchedRedis`]).
pub fn shared_redis() -> &'static WatchedRedis {
    e2e_redis()
}

/// A namespace no other test uses.
pub fn unique_ns() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Path of the built `muster` binary.
pub fn muster_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_muster"))
}

/// A store on the shared Redis under a fresh namespace.
pub async fn store() -> muster::store::Store {
    let s =
        muster::store::Store::connect(&shared_redis().url(), &unique_ns(), Duration::from_secs(2))
            .await
            .expect("connect");
    s.prepare().await.expect("prepare");
    s
}

// ---------------------------------------------------------------------------------
// End-to-end helpers: an in-process control plane, `muster serve` / `muster agent`
// processes killed on drop, an HTTP client, polling and the invariant checker.
// ---------------------------------------------------------------------------------

/// The admin token every test server is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// An in-process control plane (`Application`) on `127.0.0.1:0`, stopped on drop.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// The namespace it serves.
    pub ns: String,
    /// The Redis URL it uses.
    #[allow(dead_code)]
    pub redis_url: String,
    /// Its store (for assertions and `doctor`).
    pub store: muster::store::Store,
    /// An admin HTTP client for it.
    pub api: Http,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    /// An HTTP client with another token (or none).
    pub fn client(&self, token: Option<&str>) -> Http {
        Http::new(&self.url, token)
    }
}

/// Starts a control plane on [`e2e_redis`] under a fresh namespace, with short
/// timers (heartbeat 500 ms, reaper 250 ms).
pub async fn spawn_app() -> TestApp {
    spawn_app_on(&e2e_redis().url(), &unique_ns()).await
}

/// Starts a control plane on `redis_url` under `ns`.
pub async fn spawn_app_on(redis_url: &str, ns: &str) -> TestApp {
    let mut cfg = muster::config::Config::new("127.0.0.1:0", redis_url);
    cfg.namespace = ns.to_string();
    cfg.admin_token = Some(ADMIN_TOKEN.to_string());
    cfg.heartbeat_interval = Duration::from_millis(500);
    cfg.reaper_interval = Duration::from_millis(250);
    cfg.dispatchers = 2;
    let app = muster::startup::Application::build(cfg)
        .await
        .expect("control plane starts");
    let url = format!("http://{}", app.local_addr());
    let store = app.state().store.clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = app.run(sd).await {
            eprintln!("test app stopped: {e:#}");
        }
    });
    TestApp {
        api: Http::new(&url, Some(ADMIN_TOKEN)),
        url,
        ns: ns.to_string(),
        redis_url: redis_url.to_string(),
        store,
        shutdown,
    }
}

/// One HTTP answer, body parsed as JSON when it is JSON (else `Value::Null`).
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body as JSON, or `Null`.
    pub body: serde_json::Value,
    /// Body as text.
    pub text: String,
}

impl Resp {
    /// The body as `T`, panicking with the body on a mismatch.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.body.clone()).unwrap_or_else(|e| {
            panic!(
                "unexpected body ({e}) for status {}: {}",
                self.status, self.text
            )
        })
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Resp {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts a problem+json error with this status and a non-empty `code`; returns the code.
    #[track_caller]
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        let ct = self.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/problem+json"),
            "content-type {ct:?}, body {}",
            self.text
        );
        let p: muster::domain::Problem = self.json();
        assert_eq!(p.status, status, "problem.status");
        assert!(!p.code.is_empty(), "problem without a code: {}", self.text);
        p.code
    }
}

/// A small JSON HTTP client bound to one server and one bearer token.
#[derive(Clone, Debug)]
pub struct Http {
    client: reqwest::Client,
    /// Base URL.
    pub base: String,
    token: Option<String>,
}

impl Http {
    /// A client for `base` sending `token` (if any).
    pub fn new(base: &str, token: Option<&str>) -> Http {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build()
            .expect("http client");
        Http {
            client,
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
        }
    }

    /// The same server with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Http {
        Http {
            client: self.client.clone(),
            base: self.base.clone(),
            token: token.map(str::to_string),
        }
    }

    /// A request builder with the token set.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.expect("HTTP request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("HTTP body");
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    /// POST a JSON body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Resp {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    /// POST a raw body as `application/json`.
    pub async fn post_raw(&self, path: &str, body: impl Into<String>) -> Resp {
        let rb = self
            .req(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body.into());
        self.send(rb).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    /// `POST /v1/tasks`, expecting 201.
    pub async fn submit(&self, task: serde_json::Value) -> muster::domain::Task {
        self.post("/v1/tasks", &task).await.expect(201).json()
    }

    /// `POST /v1/tasks/batch`, expecting 201; the ids.
    pub async fn submit_batch(&self, tasks: Vec<serde_json::Value>) -> Vec<String> {
        let r = self
            .post("/v1/tasks/batch", &serde_json::json!({ "tasks": tasks }))
            .await
            .expect(201);
        r.json::<muster::domain::BatchCreated>().ids
    }

    /// `GET /v1/tasks/{id}`, expecting 200.
    pub async fn task(&self, id: &str) -> muster::domain::Task {
        self.get(&format!("/v1/tasks/{id}"))
            .await
            .expect(200)
            .json()
    }

    /// `GET /v1/nodes`, expecting 200.
    pub async fn nodes(&self) -> Vec<muster::domain::Node> {
        self.get("/v1/nodes")
            .await
            .expect(200)
            .json::<muster::domain::NodeList>()
            .items
    }

    /// Every task of `queue` (optionally in `state`), following cursors.
    pub async fn all_tasks(&self, queue: &str, state: Option<&str>) -> Vec<muster::domain::Task> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/tasks?queue={queue}&limit=1000");
            if let Some(s) = state {
                path.push_str(&format!("&state={s}"));
            }
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            // A busy debug-build server may time out on Redis (503): retry like a client.
            let mut tries = 0;
            let r = loop {
                let r = self.get(&path).await;
                tries += 1;
                if r.status != 503 || tries >= 10 {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let page: muster::domain::TaskPage = r.expect(200).json();
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return out,
            }
        }
    }

    /// `GET /v1/queues/{name}`: the queue's counts per state (cheap to poll).
    pub async fn queue_counts(&self, queue: &str) -> muster::domain::QueueCounts {
        let r = self.get(&format!("/v1/queues/{queue}")).await;
        if r.status == 503 {
            return muster::domain::QueueCounts::default();
        }
        r.expect(200).json::<muster::domain::QueueInfo>().counts
    }

    /// Waits until the task is terminal (polling), panicking after `timeout`.
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> muster::domain::Task {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.task(id).await;
            if t.state.is_terminal() {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not terminal after {timeout:?}: {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls `f` every 50 ms until it gives `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
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
        tokio::time::sleep(Duration::from_millis(50)).await;
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

/// Asserts `muster doctor --redis-url URL --namespace NS` exits 0.
pub fn assert_doctor_cli_clean(redis_url: &str, ns: &str) {
    let out = Command::new(muster_bin())
        .args(["doctor", "--redis-url", redis_url, "--namespace", ns])
        .output()
        .expect("run muster doctor");
    assert!(
        out.status.success(),
        "muster doctor failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every key under `<ns>:` (SCAN), sorted.
pub fn ns_keys(conn: &mut redis::Connection, ns: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(format!("{ns}:*"))
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter::<String>(conn)
        .expect("scan")
        .collect::<Result<Vec<_>, _>>()
        .expect("scan");
    keys.sort();
    keys.dedup();
    keys
}

/// Events of a queue's stream as `(type, task, node)`, oldest first (XRANGE - +).
pub fn stream_events(
    conn: &mut redis::Connection,
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
    reply.ids.iter().map(event_fields).collect()
}

/// `(type, task, node)` of one stream entry.
pub fn event_fields(e: &redis::streams::StreamId) -> (String, String, String) {
    let f = |k: &str| e.get::<String>(k).unwrap_or_default();
    (f("type"), f("task"), f("node"))
}

/// A child process (serve or agent) killed with SIGKILL on drop; its stdout and stderr
/// go to a log file shown by [`Proc::log`].
pub struct Proc {
    child: Child,
    /// What it is, for messages.
    pub name: String,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proc {
    /// Spawns `muster <args>` with its output in a log file.
    pub fn spawn(name: &str, args: &[String]) -> Proc {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_path = dir.path().join("log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(muster_bin())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("MUSTER_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("MUSTER_TOKEN")
            .env_remove("MUSTER_SERVER")
            .env_remove("MUSTER_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn muster");
        Proc {
            child,
            name: name.to_string(),
            log_path,
            _dir: dir,
        }
    }

    /// The process id.
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last 8 KiB (or `MUSTER_TEST_LOG_BYTES`) of its output.
    pub fn log(&self) -> String {
        let s = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let keep = std::env::var("MUSTER_TEST_LOG_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(8192);
        let start = s.len().saturating_sub(keep);
        let start = (start..s.len())
            .find(|i| s.is_char_boundary(*i))
            .unwrap_or(s.len());
        format!("--- {} log ---\n{}", self.name, &s[start..])
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("MUSTER_TEST_SHOW_LOGS").is_some() {
            eprintln!("{}", self.log());
        }
    }
}

/// A `muster serve` process.
pub struct ServeProc {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

/// Starts `muster serve` on a free port against `redis_url` / `ns` with the admin
/// token, heartbeat 500 ms and reaper 250 ms; returns once `/healthz` answers.
pub async fn spawn_serve_process(redis_url: &str, ns: &str) -> ServeProc {
    for _ in 0..3 {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let args: Vec<String> = [
            "serve",
            "--listen",
            &listen,
            "--redis-url",
            redis_url,
            "--admin-token",
            ADMIN_TOKEN,
            "--namespace",
            ns,
            "--heartbeat-interval-ms",
            "500",
            "--reaper-interval-ms",
            "250",
            "--dispatchers",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut proc = Proc::spawn(&format!("serve {listen}"), &args);
        let url = format!("http://{listen}");
        let http = Http::new(&url, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if !proc.running() {
                break;
            }
            if let Ok(r) = http.req(reqwest::Method::GET, "/healthz").send().await
                && r.status().is_success()
            {
                return ServeProc { proc, url };
            }
            assert!(
                Instant::now() < deadline,
                "muster serve did not come up\n{}",
                proc.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // It exited (most likely the port was taken meanwhile): try another port.
        eprintln!("muster serve exited early, retrying\n{}", proc.log());
    }
    panic!("muster serve did not start in 3 tries");
}

/// Starts `muster agent --server <servers> --token <admin> <extra...>`
/// (e.g. `["--builtin", "--capacity", "8"]`).
pub fn spawn_agent_process(servers: &[&str], extra: &[&str]) -> Proc {
    let mut args: Vec<String> = vec!["agent".into()];
    for s in servers {
        args.push("--server".into());
        args.push((*s).to_string());
    }
    args.push("--token".into());
    args.push(ADMIN_TOKEN.into());
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn(&format!("agent {}", extra.join(" ")), &args)
}

/// A node registered by hand over HTTP, kept alive by a heartbeat task until dropped.
pub struct ManualNode {
    /// Node id.
    pub id: String,
    /// Node token.
    #[allow(dead_code)]
    pub token: String,
    /// A client sending the node token.
    pub api: Http,
    beat: tokio::task::JoinHandle<()>,
}

impl Drop for ManualNode {
    fn drop(&mut self) {
        self.beat.abort();
    }
}

/// Registers a machine node serving `queues` (capacity `capacity`) with the admin
/// client `admin`, and heartbeats for it every 200 ms.
pub async fn register_node(admin: &Http, name: &str, queues: &[&str], capacity: i64) -> ManualNode {
    let reg: muster::domain::NodeRegistered = admin
        .post(
            "/v1/nodes",
            &serde_json::json!({ "name": name, "queues": queues, "capacity": capacity }),
        )
        .await
        .expect(201)
        .json();
    let api = admin.with_token(Some(&reg.token));
    let beat_api = api.clone();
    let path = format!("/v1/nodes/{}/heartbeat", reg.id);
    let beat = tokio::spawn(async move {
        loop {
            let _ = beat_api.req(reqwest::Method::POST, &path).send().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    ManualNode {
        id: reg.id,
        token: reg.token,
        api,
        beat,
    }
}

impl ManualNode {
    /// `POST /v1/nodes/{id}/lease`; the leases granted.
    pub async fn lease(&self, max: i64, wait_ms: i64) -> Vec<muster::domain::Lease> {
        self.api
            .post(
                &format!("/v1/nodes/{}/lease", self.id),
                &serde_json::json!({ "max": max, "wait_ms": wait_ms }),
            )
            .await
            .expect(200)
            .json::<muster::domain::LeaseReply>()
            .leases
    }
}

/// A redis-server that cannot outlive the test binary: it runs under a `sh` that
/// kills it as soon as its stdin (a pipe held by this process) closes, which the
/// kernel does when the test binary exits for any reason. A `static` is never
/// dropped, so [`shared_redis`]'s server stays behind after every run; this one does not.
pub struct WatchedRedis {
    _sh: Child,
    /// The port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl WatchedRedis {
    fn start() -> WatchedRedis {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let sh = Command::new("sh")
            .arg("-c")
            .arg("redis-server \"$@\" & pid=$!; read -r _; kill -9 $pid; wait $pid")
            .arg("sh")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh and redis-server on PATH");
        let r = WatchedRedis {
            _sh: sh,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(r.url()).expect("url");
        loop {
            if let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A blocking connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("url")
            .get_connection()
            .expect("connection")
    }
}

/// The redis-server the end-to-end tests share (one per test binary, gone with it).
pub fn e2e_redis() -> &'static WatchedRedis {
    static R: OnceLock<WatchedRedis> = OnceLock::new();
    R.get_or_init(WatchedRedis::start)
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
        redis::Client::open(self.redis_url.as_str())
            .expect("url")
            .get_connection()
            .expect("connection")
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
        (
            v["id"].as_str().expect("id").to_string(),
            v["token"].as_str().expect("token").to_string(),
        )
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
    pub async fn lease_n(
        &self,
        node: &str,
        token: &str,
        n: usize,
        within: Duration,
    ) -> Vec<(String, String)> {
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
        let r = self
            .http
            .get(self.url(&format!("/v1/tasks/{id}")))
            .bearer_auth(&self.admin)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 200, "get task {id}");
        r.json().await.expect("json")
    }
}

/// Builds and runs a control plane on `redis_url` under a fresh namespace with admin,
/// read, submit and agent tokens; `tweak` adjusts the config first.
pub async fn spawn_sec_app(
    redis_url: &str,
    tweak: impl FnOnce(&mut muster::config::Config),
) -> SecApp {
    let ns = unique_ns();
    let mut cfg = muster::config::Config::new("127.0.0.1:0", redis_url);
    let tag = format!("{ns}-0123456789abcdef");
    let (admin, read, submit, agent) = (
        format!("admin-{tag}"),
        format!("read-{tag}"),
        format!("submit-{tag}"),
        format!("agent-{tag}"),
    );
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
    let app = muster::startup::Application::build(cfg)
        .await
        .expect("build application");
    let addr = app.local_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        let _ = app.run(sd).await;
    });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");
    let base = format!("http://{addr}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "the app did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    SecApp {
        base,
        addr,
        admin,
        read,
        submit,
        agent,
        ns,
        redis_url: redis_url.to_string(),
        http,
        shutdown,
    }
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
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
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
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..p]).ok()?.trim(), 16).ok()?;
            if size == 0 || rest.len() < p + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[p + 2..p + 2 + size]);
            rest = &rest[(p + 4 + size).min(rest.len())..];
        }
        body = out;
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
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
pub async fn raw_request(
    addr: std::net::SocketAddr,
    req: &[u8],
    timeout: Duration,
) -> std::io::Result<RawResponse> {
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
// ===================== end of security / events helpers ===========================
