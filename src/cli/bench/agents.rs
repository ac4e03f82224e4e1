//! The bench's HTTP side: the admin client (through [`crate::client`], retrying
//! 503/429 as a client would) and the *bench agents*, lean in-process nodes that
//! long-poll leases and report every leased task as succeeded in one call per batch.

use super::{BenchArgs, Stack};
use crate::cli::client::explain;
use crate::client::Client;
use anyhow::Context as _;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Deserialize)]
struct Registered {
    id: String,
    token: String,
}

#[derive(Deserialize)]
struct LeaseReplyLean {
    leases: Vec<LeaseLean>,
}

#[derive(Deserialize)]
struct LeaseLean {
    task: TaskLean,
    lease_token: String,
}

#[derive(Deserialize)]
struct TaskLean {
    id: String,
    #[serde(default)]
    payload: Value,
}

#[derive(Serialize)]
struct ReportOut<'a> {
    task_id: &'a str,
    lease_token: &'a str,
    outcome: &'static str,
    result: Option<()>,
}

#[derive(Serialize)]
struct ReportsOut<'a> {
    reports: Vec<ReportOut<'a>>,
    /// The slots these reports free, asked back in the same call (as the SDK workers
    /// and `muster agent` do).
    lease_max: usize,
}

#[derive(Deserialize)]
struct ReportsReply {
    results: Vec<ReportStatus>,
    #[serde(default)]
    leases: Vec<LeaseLean>,
}

#[derive(Deserialize)]
struct ReportStatus {
    status: u16,
}

/// Counters shared by the bench agents of one phase.
pub(super) struct Counters {
    /// Reference instant of the latency payloads (`ts_ns` is ns since it).
    pub(super) base: Instant,
    pub(super) started: Instant,
    pub(super) leased: AtomicU64,
    pub(super) done: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) first_lease: Mutex<Option<Instant>>,
    pub(super) last_done: Mutex<Option<Instant>>,
    pub(super) record_latency: AtomicBool,
    /// (sequence number, start - submit in ns).
    pub(super) latency: Mutex<Vec<(u64, u64)>>,
    /// Round trips (ns) of the lease calls that brought tasks: the claim latency.
    pub(super) claims: Mutex<Vec<u64>>,
}

impl Counters {
    pub(super) fn new(base: Instant) -> Arc<Counters> {
        Arc::new(Counters {
            base,
            started: Instant::now(),
            leased: AtomicU64::new(0),
            done: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_lease: Mutex::new(None),
            last_done: Mutex::new(None),
            record_latency: AtomicBool::new(false),
            latency: Mutex::new(Vec::new()),
            claims: Mutex::new(Vec::new()),
        })
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bench's client of the control plane, with the admin token.
#[derive(Clone)]
pub(super) struct Api {
    pub(super) client: Arc<Client>,
    admin: String,
    /// Requests answered 503/429 and retried.
    pub(super) retries: Arc<AtomicU64>,
}

impl Api {
    /// A client of `base` with a large connection pool (hundreds of long-polls).
    pub(super) fn new(base: &str, admin: &str) -> anyhow::Result<Api> {
        let client = Client::builder(&[base])
            .token(Some(admin))
            .pool_max_idle_per_host(1024)
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(explain)?;
        Ok(Api {
            client: Arc::new(client),
            admin: admin.to_string(),
            retries: Arc::new(AtomicU64::new(0)),
        })
    }

    /// POSTs JSON and parses the answer. A 503 or 429 (Redis slower than the server's
    /// timeout, typically on a busy machine or in a debug build) is retried after a short
    /// pause, as a client would, and counted in `http_retries`.
    pub(super) async fn post_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &[&str],
        token: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = self
                .client
                .request(Method::POST, path)
                .token(Some(token))
                .json_bytes(body.clone())
                .fetch::<T>()
                .await;
            match res {
                Ok(v) => return Ok(v),
                Err(e) if matches!(e.status(), Some(503 | 429)) && attempt < 20 => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    let wait = e.retry_after().map_or(Duration::from_millis(100), |d| {
                        d.min(Duration::from_millis(500))
                    });
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(explain(e)),
            }
        }
    }

    /// POSTs JSON with the admin token (see [`Api::post_json`]).
    pub(super) async fn post_admin<T: serde::de::DeserializeOwned>(
        &self,
        path: &[&str],
        body: Vec<u8>,
    ) -> anyhow::Result<T> {
        self.post_json(path, &self.admin, body).await
    }

    /// The `counts` of `GET /v1/queues/{queue}`, as sent.
    pub(super) async fn queue_counts(&self, queue: &str) -> anyhow::Result<Value> {
        let v = self.client.queues_get(queue).await.map_err(explain)?.raw;
        Ok(v.get("counts").cloned().unwrap_or(Value::Null))
    }
}

/// A group of bench agents serving one queue.
pub(super) struct Agents {
    stop: CancellationToken,
    loops: tokio::task::JoinSet<()>,
    nodes: Vec<Registered>,
}

impl Agents {
    /// Registers `k` nodes on `queue` and starts `loops` lease loops on each.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start(
        api: &Api,
        queue: &str,
        k: usize,
        loops: usize,
        max: i64,
        wait_ms: i64,
        c: &Arc<Counters>,
        stack: &mut Stack,
    ) -> anyhow::Result<Agents> {
        let stop = CancellationToken::new();
        stack.agents_stop.push(stop.clone());
        let capacity = (max * loops as i64).clamp(1, 10_000);
        let regs = (0..k).map(|i| {
            let body = json!({"name": format!("bench-{queue}-{i}"), "queues": [queue], "capacity": capacity});
            let api = api.clone();
            async move { api.post_admin::<Registered>(&["v1", "nodes"], serde_json::to_vec(&body)?).await }
        });
        let nodes = futures::future::try_join_all(regs)
            .await
            .context("cannot register the bench agents")?;
        let mut set = tokio::task::JoinSet::new();
        let lease_body = serde_json::to_vec(&json!({"max": max, "wait_ms": wait_ms}))?;
        for n in &nodes {
            for _ in 0..loops {
                set.spawn(lease_loop(
                    api.clone(),
                    n.id.clone(),
                    n.token.clone(),
                    lease_body.clone(),
                    c.clone(),
                    stop.clone(),
                ));
            }
        }
        Ok(Agents {
            stop,
            loops: set,
            nodes,
        })
    }

    /// Registers `--agents` nodes on `queue` with fresh counters, each with `--loops`
    /// lease loops of `--lease-max` and `--wait-ms`.
    pub(super) async fn start_phase(
        api: &Api,
        queue: &str,
        args: &BenchArgs,
        t_base: Instant,
        stack: &mut Stack,
    ) -> anyhow::Result<(Arc<Counters>, Agents)> {
        let c = Counters::new(t_base);
        let agents = Agents::start(
            api,
            queue,
            args.agents,
            args.loops,
            args.lease_max,
            args.wait_ms,
            &c,
            stack,
        )
        .await?;
        Ok((c, agents))
    }

    /// Stops the loops and deregisters the nodes.
    pub(super) async fn stop(mut self, api: &Api) {
        self.stop.cancel();
        while self.loops.join_next().await.is_some() {}
        let dels = self
            .nodes
            .iter()
            .map(|n| api.client.nodes_deregister(&n.id, &n.token));
        let _ = futures::future::join_all(dels).await;
    }
}

/// One lease loop of a bench agent: lease, "run" (nothing), report all in one call that
/// also asks for as many next tasks (`lease_max`); the long-poll only when that call
/// brought none.
async fn lease_loop(
    api: Api,
    id: String,
    token: String,
    body: Vec<u8>,
    c: Arc<Counters>,
    stop: CancellationToken,
) {
    let lease_path = ["v1", "nodes", id.as_str(), "lease"];
    let report_path = ["v1", "nodes", id.as_str(), "reports"];
    let mut next: Vec<LeaseLean> = Vec::new();
    loop {
        let mut reply = LeaseReplyLean {
            leases: std::mem::take(&mut next),
        };
        if reply.leases.is_empty() {
            // What the report call brought back is run even while stopping (its leases
            // are granted); a new long-poll is not.
            let asked = Instant::now();
            let r = tokio::select! {
                _ = stop.cancelled() => return,
                r = api.post_json::<LeaseReplyLean>(&lease_path, &token, body.clone()) => r,
            };
            reply = match r {
                Ok(r) => r,
                Err(e) => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "bench agent: lease failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            };
            if reply.leases.is_empty() {
                continue;
            }
            lock(&c.claims).push(asked.elapsed().as_nanos() as u64);
        }
        let now = Instant::now();
        lock(&c.first_lease).get_or_insert(now);
        c.leased
            .fetch_add(reply.leases.len() as u64, Ordering::Relaxed);
        if c.record_latency.load(Ordering::Relaxed) {
            let since = now.duration_since(c.base).as_nanos() as u64;
            let mut lat = lock(&c.latency);
            for l in &reply.leases {
                let seq = l.task.payload.get("i").and_then(Value::as_u64);
                let ts = l.task.payload.get("ts_ns").and_then(Value::as_u64);
                if let (Some(seq), Some(ts)) = (seq, ts) {
                    lat.push((seq, since.saturating_sub(ts)));
                }
            }
        }
        let reports = ReportsOut {
            reports: reply
                .leases
                .iter()
                .map(|l| ReportOut {
                    task_id: &l.task.id,
                    lease_token: &l.lease_token,
                    outcome: "succeeded",
                    result: None,
                })
                .collect(),
            lease_max: if stop.is_cancelled() {
                0
            } else {
                reply.leases.len()
            },
        };
        let Ok(bytes) = serde_json::to_vec(&reports) else {
            continue;
        };
        // Reports must not be lost: retry a few times, even while stopping.
        for attempt in 0..5 {
            let asked = Instant::now();
            match api
                .post_json::<ReportsReply>(&report_path, &token, bytes.clone())
                .await
            {
                Ok(r) => {
                    let ok = r.results.iter().filter(|s| s.status == 200).count() as u64;
                    let bad = r.results.len() as u64 - ok;
                    *lock(&c.last_done) = Some(Instant::now());
                    c.done.fetch_add(ok, Ordering::Relaxed);
                    c.rejected.fetch_add(bad, Ordering::Relaxed);
                    if !r.leases.is_empty() {
                        // A call that brought tasks is a claim too (its round trip).
                        lock(&c.claims).push(asked.elapsed().as_nanos() as u64);
                    }
                    next = r.leases;
                    break;
                }
                Err(e) => {
                    c.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, attempt, "bench agent: reports failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
