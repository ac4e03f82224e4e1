//! The Redis store: the key schema ([`keys`]), the Lua scripts ([`scripts`]) and one
//! async method per transition, grouped by resource. No code outside this module
//! writes task state.
//!
//! - [`tasks`]: submit, read, cancel, retry, delete; [`dispatch`]: promote, dispatch,
//!   lease, extend, expire, requeue; [`reports`]: complete and fail, one or many;
//! - [`nodes`], [`queues`], [`listing`] (task pages), [`dependencies`] (and the
//!   follow-ups that resolve them), [`batches`], [`schedules`], [`locks`];
//! - [`doctor`]: the invariant checker; [`wakeups`]: the pub/sub hints scripts publish;
//!   [`error`] and `reply`: errors and reply decoding.

pub mod batches;
pub mod connection;
pub mod coord;
pub mod dependencies;
pub mod dispatch;
pub mod doctor;
pub mod error;
pub mod events;
pub mod keys;
pub mod listing;
pub mod locks;
pub mod migrate;
pub mod nodes;
pub mod queues;
pub mod quota;
mod reply;
pub mod reports;
pub mod schedules;
pub mod scripts;
pub mod shards;
pub mod tasks;
mod tokens;
pub mod tuning;
pub mod wakeups;

pub use batches::{BatchBegin, BatchCheck};
pub use connection::{Conn, RedisTarget};
pub use dispatch::{Dispatched, Extended, Leased, parse_lease_token};
pub use error::{Missing, Result, StoreError};
pub use nodes::NodeRecord;
pub use reports::Reported;
pub use tasks::{Cancelled, PreparedTask, Submitted, task_from_hash};
pub use tokens::token_sha;
pub use wakeups::Wakeup;

use keys::{Keys, SCHEMA_VERSION};
use redis::AsyncCommands;
use reply::{Code, array, coded, flat_map, int, int_unless, ok, ok_unless, state_of, text};
use scripts::Scripts;
use std::sync::Arc;
use std::time::Duration;

/// Handle on the muster keyspace of one Redis (a server, a Cluster or the primary of a
/// Sentinel set: [`connection`]).
#[derive(Clone)]
pub struct Store {
    /// The key schema.
    pub keys: Keys,
    conn: Conn,
    /// For scripts over thousands of tasks (a 10,000-task submission): ten times the
    /// timeout, so a busy Redis does not turn a long script into a 503.
    bulk: Conn,
    backend: Arc<connection::Backend>,
    scripts: Arc<Scripts>,
    /// Cached shard counts and the shard rotation ([`shards`]).
    shards: Arc<shards::ShardTable>,
    /// Queues this process's submissions put in the `queues` set lately ([`queues`]).
    listed: Arc<queues::Listed>,
    timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("ns", &self.keys.ns())
            .field("redis", &self.backend.target.describe())
            .finish()
    }
}

/// [`Store::lease_in_time`]'s call still running when its caller stopped waiting: on
/// drop, a task waits for it and gives its result to `late`.
struct LateGuard<T: Send + 'static> {
    job: Option<tokio::task::JoinHandle<Result<T>>>,
    late: Option<Box<dyn FnOnce(T) + Send>>,
}

impl<T: Send + 'static> Drop for LateGuard<T> {
    fn drop(&mut self) {
        let (Some(job), Some(late)) = (self.job.take(), self.late.take()) else {
            return;
        };
        // No runtime (the process is ending): the leases expire and are retried.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(Ok(v)) = job.await {
                    late(v);
                }
            });
        }
    }
}

impl Store {
    /// Connects to one server at `url`, with every command bounded by `timeout` (past
    /// it: [`StoreError::Unavailable`]).
    ///
    /// # Errors
    /// A bad URL or an unreachable Redis.
    pub async fn connect(url: &str, namespace: &str, timeout: Duration) -> Result<Store> {
        Store::connect_to(
            &RedisTarget::Standalone(url.to_string()),
            namespace,
            timeout,
        )
        .await
    }

    /// Connects to `target` (a server, a Cluster or Sentinels), with every command
    /// bounded by `timeout`.
    ///
    /// # Errors
    /// A bad URL or an unreachable Redis.
    pub async fn connect_to(
        target: &RedisTarget,
        namespace: &str,
        timeout: Duration,
    ) -> Result<Store> {
        let t = connection::Timeouts {
            response: timeout,
            connect: timeout,
        };
        let (backend, conn, bulk) = connection::Backend::connect(target, t, timeout * 10).await?;
        Ok(Store {
            keys: Keys::new(namespace),
            conn,
            bulk,
            backend: Arc::new(backend),
            scripts: Arc::new(Scripts::new()),
            shards: Arc::default(),
            listed: Arc::default(),
            timeout,
        })
    }

    /// This store with every script call waiting for `n` replicas (`WAIT n`, up to the
    /// command timeout); 0 waits for none.
    pub fn with_replica_acks(mut self, n: u32) -> Store {
        self.conn = self.conn.with_acks(n, self.timeout);
        self.bulk = self.bulk.with_acks(n, self.timeout * 10);
        self
    }

    /// Replicas connected to the primary this store writes to (`INFO replication`; on
    /// a Cluster, one primary's). `None` when Redis does not say.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn connected_replicas(&self) -> Result<Option<u32>> {
        let mut c = self.conn();
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("connected_slaves:"))
            .and_then(|v| v.trim().parse().ok()))
    }

    /// Where this store's Redis is.
    pub fn target(&self) -> &RedisTarget {
        &self.backend.target
    }

    /// Whether the keyspace is on a Redis Cluster (commands over several queues are
    /// split per slot).
    pub fn is_cluster(&self) -> bool {
        self.backend.target.is_cluster()
    }

    /// A client for each primary holding the keyspace (one unless on a Cluster), for
    /// probes that read each server's `INFO` or `MONITOR`.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn primaries(&self) -> Result<Vec<redis::Client>> {
        self.backend.primaries().await
    }

    /// A pub/sub connection of its own.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub> {
        self.backend.pubsub().await
    }

    /// A connection of its own (for blocking commands), answers awaited up to `response`.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn own_connection(&self, response: Duration) -> Result<Conn> {
        self.backend.own(response).await
    }

    /// A clone of the shared multiplexed connection.
    pub fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// The connection for a call touching `n` tasks: the bulk one (longer timeout)
    /// past a few hundred.
    pub(crate) fn conn_for(&self, n: usize) -> Conn {
        if n > 200 {
            self.bulk.clone()
        } else {
            self.conn.clone()
        }
    }

    /// The configured command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs a call that hands out leases so that a slow Redis cannot lose them: `call`
    /// gets this store on the bulk connection (ten times the timeout) and runs as a task
    /// of its own, while this answers within the timeout as any call does. When Redis
    /// only answers later (paused, or busy past the timeout), the script has leased the
    /// tasks all the same; its result then goes to `late` (the hub keeps the leases for
    /// the node's next call) instead of being dropped with the 503, which would leave
    /// those tasks running unseen until their lease TTL and charge them an attempt. The
    /// same when the caller stops waiting (its future dropped: a long-poll whose client
    /// went away while the script ran).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] past the timeout; `call`'s own errors.
    pub async fn lease_in_time<T, Fut>(
        &self,
        what: &'static str,
        call: impl FnOnce(Store) -> Fut,
        late: impl FnOnce(T) + Send + 'static,
    ) -> Result<T>
    where
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let mut patient = self.clone();
        patient.conn = self.bulk.clone();
        // Also when the caller is dropped while it waits (a long-poll whose client left):
        // the guard passes the outcome on.
        let mut guard = LateGuard {
            job: Some(tokio::spawn(call(patient))),
            late: Some(Box::new(late)),
        };
        let job = guard.job.as_mut().expect("set above");
        match tokio::time::timeout(self.timeout, job).await {
            Ok(joined) => {
                guard.job = None;
                match joined {
                    Ok(r) => r,
                    Err(e) => Err(StoreError::Protocol(format!("{what}: {e}"))),
                }
            }
            Err(_) => Err(StoreError::timed_out(what)),
        }
    }

    /// Checks the schema version (writing it on an empty keyspace), refuses an evicting
    /// `maxmemory-policy`, loads the scripts (checking each SHA1), and reports whether
    /// persistence is on.
    ///
    /// # Errors
    /// [`StoreError::Unfit`] for an unknown schema or an evicting policy.
    pub async fn prepare(&self) -> Result<bool> {
        let mut c = self.conn();
        let key = self.keys.schema();
        let _: bool = c.set_nx(&key, SCHEMA_VERSION).await?;
        let v: Option<String> = c.get(&key).await?;
        if v.as_deref() != Some(SCHEMA_VERSION) {
            let ns = self.keys.ns();
            let how = match v.as_deref() {
                Some(old) if old < SCHEMA_VERSION => format!(
                    "stop every muster of this namespace and run `muster migrate --redis-url <url> \
                     --namespace {ns}` (converts it in place), or drain it with the muster that \
                     wrote it (stop submitting, let the tasks end) and start on a new --namespace"
                ),
                _ => "use the muster that wrote it, or another --namespace".to_string(),
            };
            return Err(StoreError::Unfit(format!(
                "the keyspace under '{ns}' has schema version {}, this muster uses {SCHEMA_VERSION}: {how}",
                v.as_deref().unwrap_or("?")
            )));
        }
        self.check_eviction().await?;
        self.scripts.load(&mut c).await?;
        let aof = self.config_get("appendonly").await.unwrap_or_default();
        let save = self.config_get("save").await.unwrap_or_default();
        Ok(aof == "yes" || !save.trim().is_empty())
    }

    /// Refuses every evicting `maxmemory-policy`: `allkeys-*` evicts tasks, `volatile-*`
    /// evicts keys with a TTL (held locks, idempotency keys, unique keys), both silently.
    /// Checked at start-up, by `/readyz` and periodically (a `CONFIG SET` at run time).
    /// A Redis that forbids `CONFIG` (a managed service) is not refused.
    ///
    /// # Errors
    /// [`StoreError::Unfit`] naming the policy and the fix.
    pub async fn check_eviction(&self) -> Result<()> {
        let policy = self
            .config_get("maxmemory-policy")
            .await
            .unwrap_or_default();
        if policy.starts_with("allkeys") || policy.starts_with("volatile") {
            return Err(StoreError::Unfit(format!(
                "redis maxmemory-policy is '{policy}': it may evict tasks, locks or idempotency keys; \
                 set it to noeviction (CONFIG SET maxmemory-policy noeviction)"
            )));
        }
        Ok(())
    }

    /// `CONFIG GET name` (empty when Redis does not know it).
    pub(crate) async fn config_get(&self, name: &str) -> Result<String> {
        let mut c = self.conn();
        let v: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut c)
            .await?;
        Ok(v.get(1).cloned().unwrap_or_default())
    }

    /// PING.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.conn();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Redis clock in ms.
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn now_ms(&self) -> Result<i64> {
        let mut c = self.conn();
        let (s, us): (i64, i64) = redis::cmd("TIME").query_async(&mut c).await?;
        Ok(s * 1000 + us / 1000)
    }

    /// One command per queue in one pipeline (`add` appends it), the answers in order;
    /// no round trip for no queues (an empty pipeline is an error in redis-rs).
    async fn per_queue<T: redis::FromRedisValue>(
        &self,
        queues: &[String],
        mut add: impl FnMut(&mut redis::Pipeline, &str),
    ) -> Result<Vec<T>> {
        if queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for q in queues {
            add(&mut pipe, q);
        }
        let mut c = self.conn();
        Ok(pipe.query_async(&mut c).await?)
    }

    fn channel(&self) -> String {
        self.keys.wake_channel()
    }
}
