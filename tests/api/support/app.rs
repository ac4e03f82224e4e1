//! In-process control planes: [`spawn_app`] (one admin token, an [`Http`] client),
//! [`spawn_sec_app`] (a token per role, for the security and events suites) and
//! nodes registered by hand ([`register_node`]).

use super::http::Http;
use super::{ADMIN_TOKEN, HEARTBEAT_MS, REAPER_MS, e2e_target, unique_ns};
use std::time::{Duration, Instant};

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

/// Starts a control plane on [`e2e_target`] (the shared server, or the shared Cluster)
/// under a fresh namespace, with short timers (heartbeat 500 ms, reaper 250 ms).
pub async fn spawn_app() -> TestApp {
    spawn_app_target(e2e_target(), &unique_ns(), 0).await
}

/// Starts a control plane on `redis_url` under `ns`.
pub async fn spawn_app_on(redis_url: &str, ns: &str) -> TestApp {
    spawn_app_target(
        muster::store::RedisTarget::Standalone(redis_url.to_string()),
        ns,
        0,
    )
    .await
}

/// Starts a control plane on `target` under `ns`, its writes waiting for
/// `replica_acks` replicas.
pub async fn spawn_app_target(
    target: muster::store::RedisTarget,
    ns: &str,
    replica_acks: u32,
) -> TestApp {
    let redis_url = match &target {
        muster::store::RedisTarget::Standalone(u) => u.clone(),
        other => other.describe(),
    };
    let redis_url = redis_url.as_str();
    let mut cfg = muster::config::Config::new("127.0.0.1:0", redis_url);
    if !matches!(target, muster::store::RedisTarget::Standalone(_)) {
        cfg.redis_target = Some(target);
    }
    cfg.replica_acks = replica_acks;
    cfg.namespace = ns.to_string();
    cfg.admin_token = Some(ADMIN_TOKEN.to_string());
    cfg.heartbeat_interval = Duration::from_millis(HEARTBEAT_MS);
    cfg.reaper_interval = Duration::from_millis(REAPER_MS);
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
    cfg.reaper_interval = Duration::from_millis(REAPER_MS);
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
