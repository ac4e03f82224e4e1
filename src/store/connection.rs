//! How muster reaches Redis: one server ([`RedisTarget::Standalone`]), a Redis Cluster
//! from seed nodes ([`RedisTarget::Cluster`], redis-rs' cluster-async: slots, `MOVED`
//! and `ASK` are followed by it), or the primary a set of Sentinels names
//! ([`RedisTarget::Sentinel`], re-asked after a connection error or a `READONLY`
//! answer, so a failover is followed without a restart).
//!
//! [`Conn`] is the one connection type the store uses; it hides the three. A pipeline
//! whose commands fall in several Cluster slots (one command per queue, say) is split
//! by hash tag into one pipeline per tag, sent at once, and its answers put back in
//! order: the store's code is the same on all three.
//!
//! Users and passwords come in the URLs (`redis://user:pass@host:port`), TLS with
//! `rediss://`. Behind Sentinels the primary is reached with the user, password and
//! TLS of the first Sentinel URL.

use super::{Result, StoreError};
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where the keyspace lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server (`redis://` or `rediss://`).
    Standalone(String),
    /// A Redis Cluster, reached through any of these seed nodes.
    Cluster(Vec<String>),
    /// The primary that these Sentinels name `master`.
    Sentinel {
        /// Sentinel URLs (`redis://host:26379`).
        sentinels: Vec<String>,
        /// The monitored primary's name (`sentinel monitor <name> …`).
        master: String,
    },
}

impl RedisTarget {
    /// Splits a comma-separated URL list (`--redis-cluster a,b,c`), dropping blanks.
    pub fn list(urls: &str) -> Vec<String> {
        urls.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Checks every URL parses and a list is not empty.
    ///
    /// # Errors
    /// A one-line message naming the bad URL.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let urls: Vec<&String> = match self {
            RedisTarget::Standalone(u) => vec![u],
            RedisTarget::Cluster(us) | RedisTarget::Sentinel { sentinels: us, .. } => {
                us.iter().collect()
            }
        };
        if urls.is_empty() {
            return Err("no Redis URL given: name at least one seed node".into());
        }
        for u in urls {
            u.as_str()
                .into_connection_info()
                .map_err(|e| format!("bad Redis URL '{}': {e}", redact(u)))?;
        }
        if let RedisTarget::Sentinel { master, .. } = self
            && master.trim().is_empty()
        {
            return Err("--sentinel-master is required with --redis-sentinel".into());
        }
        Ok(())
    }

    /// Human description without passwords, for logs and errors.
    pub fn describe(&self) -> String {
        match self {
            RedisTarget::Standalone(u) => redact(u),
            RedisTarget::Cluster(us) => format!(
                "redis cluster via {}",
                us.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",")
            ),
            RedisTarget::Sentinel { sentinels, master } => format!(
                "redis primary '{master}' via sentinels {}",
                sentinels
                    .iter()
                    .map(|u| redact(u))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster(_))
    }
}

/// A URL with its password (or a lone credential) replaced by `<redacted>`.
pub fn redact(url: &str) -> String {
    const REDACTED: &str = "<redacted>";
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let user = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => REDACTED.to_string(),
    };
    format!("{scheme}://{user}{}", &rest[at..])
}

/// Timeouts for every connection of a store.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub response: Duration,
    pub connect: Duration,
}

/// The store's connection: cheap to clone, multiplexed, reconnecting. With
/// `replica_acks` > 0 every script call (every task transition) is followed, on the
/// same connection and so the same primary, by `WAIT replica_acks`: its answer comes
/// only once that many replicas have the write; fewer in time is an error
/// ([`StoreError::Unavailable`], a 503: the write may or may not survive a failover).
#[derive(Clone)]
pub struct Conn {
    link: Link,
    acks: u32,
    ack_timeout_ms: u64,
}

#[derive(Clone)]
enum Link {
    /// One server, through redis-rs' reconnecting manager.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
    /// The primary named by Sentinels.
    Sentinel(Arc<SentinelConn>),
    /// A plain connection of its own (blocking reads).
    Plain(MultiplexedConnection),
}

impl Conn {
    fn new(link: Link) -> Conn {
        Conn {
            link,
            acks: 0,
            ack_timeout_ms: 0,
        }
    }

    /// This connection, its script calls waiting for `n` replicas (up to `timeout`).
    pub(crate) fn with_acks(mut self, n: u32, timeout: Duration) -> Conn {
        self.acks = n;
        self.ack_timeout_ms = timeout.as_millis().max(1) as u64;
        self
    }

    /// Whether this is a Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let guarded = match &self.link {
            Link::Cluster(_) => guarded(cmd),
            _ => None,
        };
        if self.acks > 0 && is_script(cmd) {
            let (acks, timeout) = (self.acks, self.ack_timeout_ms);
            let mut link = self.link.clone();
            return Box::pin(async move {
                let mut p = redis::pipe();
                p.add_command(guarded.unwrap_or_else(|| cmd.clone()));
                p.cmd("WAIT").arg(acks).arg(timeout);
                let mut vals = link.req_packed_commands(&p, 0, 2).await?.into_iter();
                let reply = vals.next().unwrap_or(Value::Nil);
                if let Value::ServerError(e) = reply {
                    return Err(e.into());
                }
                let got: i64 = match vals.next() {
                    Some(Value::Int(n)) => n,
                    Some(Value::ServerError(e)) => return Err(e.into()),
                    _ => 0,
                };
                if got < i64::from(acks) {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "not replicated",
                        format!(
                            "{got} of {acks} replicas acknowledged the write within {timeout} ms"
                        ),
                    )));
                }
                Ok(reply)
            });
        }
        if let Link::Cluster(c) = &mut self.link
            && let Some(g) = guarded
        {
            let mut c = c.clone();
            return Box::pin(async move { c.req_packed_command(&g).await });
        }
        self.link.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.link.req_packed_commands(pipeline, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.link.get_db()
    }
}

/// A script call on a Cluster with one more declared key, `<KEYS[1]>~guard`, which
/// never exists and shares KEYS[1]'s hash tag (no script reads it: none looks past the
/// keys it names). The scripts build most of their keys from their queue's prefix
/// instead of declaring them, so Redis could not tell a script that its slot is being
/// moved and would run it against whichever keys have moved. With two declared keys
/// of which one is always missing, Redis answers `TRYAGAIN` to every call on a slot
/// that is migrating (or `ASK`, then `TRYAGAIN` from the importing node): muster
/// answers 503 and the caller retries until the move is done. On a stable slot the
/// missing key changes nothing. `None` for anything else (or a first key without a
/// hash tag).
fn guarded(cmd: &Cmd) -> Option<Cmd> {
    let args = simple_args(cmd);
    let name = args.first()?;
    if !(name.eq_ignore_ascii_case(b"EVALSHA") || name.eq_ignore_ascii_case(b"EVAL")) {
        return None;
    }
    let n: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
    let first = *args.get(3)?;
    if n == 0 || args.len() < 3 + n || hash_tag(first).len() == first.len() {
        return None;
    }
    let mut guard = first.to_vec();
    guard.extend_from_slice(b"~guard");
    let mut g = redis::cmd(std::str::from_utf8(name).ok()?);
    g.arg(args[1]).arg(n + 1);
    for k in &args[3..3 + n] {
        g.arg(*k);
    }
    g.arg(guard);
    for a in &args[3 + n..] {
        g.arg(*a);
    }
    Some(g)
}

/// A command's arguments, its name first (cursor placeholders left out).
fn simple_args(cmd: &Cmd) -> Vec<&[u8]> {
    cmd.args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            _ => None,
        })
        .collect()
}

/// `EVAL`/`EVALSHA`: a script call, a write of muster's.
fn is_script(cmd: &Cmd) -> bool {
    cmd.args_iter()
        .next()
        .is_some_and(|a| matches!(a, redis::Arg::Simple(b) if b.eq_ignore_ascii_case(b"EVALSHA") || b.eq_ignore_ascii_case(b"EVAL")))
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
            Link::Plain(c) => c.req_packed_command(cmd),
            Link::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let mut c = s.current();
                    let r = c.req_packed_command(cmd).await;
                    if let Err(e) = &r {
                        s.after_error(e);
                    }
                    r
                })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => {
                if offset != 0 || single_tag(pipeline) {
                    // One slot (or an atomic MULTI block, which must stay whole).
                    c.req_packed_commands(pipeline, offset, count)
                } else {
                    let c = c.clone();
                    Box::pin(split_by_tag(c, pipeline))
                }
            }
            Link::Sentinel(s) => {
                let s = s.clone();
                Box::pin(async move {
                    let mut c = s.current();
                    let r = c.req_packed_commands(pipeline, offset, count).await;
                    if let Err(e) = &r {
                        s.after_error(e);
                    }
                    r
                })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(_) => 0,
            Link::Plain(c) => c.get_db(),
            Link::Sentinel(s) => s.current().get_db(),
        }
    }
}

impl Conn {
    /// Every key matching `pattern` (SCAN; a key written meanwhile may be missed). On a
    /// Cluster a pattern with a fixed hash tag (`<ns>:{q}:t:*`) is scanned on the primary
    /// of that slot, any other on every primary.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn scan_match(&mut self, pattern: &str) -> Result<Vec<String>> {
        let Link::Cluster(c) = &self.link else {
            return scan_on(self, pattern, None).await;
        };
        let tag = hash_tag(pattern.as_bytes());
        let fixed = tag.len() < pattern.len() && !tag.iter().any(|b| b"*?[\\".contains(b));
        if fixed {
            let route = redis::cluster_routing::Route::with_key(
                tag,
                redis::cluster_routing::SlotAddr::Master,
            );
            let r = redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(route);
            return scan_on(self, pattern, Some(r)).await;
        }
        let mut c = c.clone();
        let nodes: String = c
            .route_command(
                redis::cmd("CLUSTER").arg("NODES").clone(),
                redis::cluster_routing::RoutingInfo::SingleNode(
                    redis::cluster_routing::SingleNodeRoutingInfo::Random,
                ),
            )
            .await
            .and_then(|v| redis::from_redis_value(v).map_err(Into::into))?;
        let mut out = Vec::new();
        for slot in primaries(&nodes) {
            // Routed by one slot the primary serves (its connection is in the pool).
            let route =
                redis::cluster_routing::Route::new(slot, redis::cluster_routing::SlotAddr::Master);
            let r = redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(route);
            out.extend(scan_on(self, pattern, Some(r)).await?);
        }
        Ok(out)
    }
}

/// One slot of each primary serving slots in a `CLUSTER NODES` answer (the first of
/// its ranges).
fn primaries(nodes: &str) -> Vec<u16> {
    nodes
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = f.get(2)?;
            if !flags.contains("master") || flags.contains("fail") {
                return None;
            }
            // Ranges `a-b` or single slots; `[…]` entries are slots being moved.
            f.get(8..)?
                .iter()
                .find(|r| !r.starts_with('['))
                .and_then(|r| r.split('-').next()?.parse().ok())
        })
        .collect()
}

/// The address (`host`, `port`) of each primary serving slots in a `CLUSTER NODES`
/// answer (`ip:port@cport[,hostname]`).
fn primary_addrs(nodes: &str) -> Vec<(String, u16)> {
    nodes
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let flags = f.get(2)?;
            if !flags.contains("master") || flags.contains("fail") || f.len() < 9 {
                return None;
            }
            let hostport = f.get(1)?.split(['@', ',']).next()?;
            let (host, port) = hostport.rsplit_once(':')?;
            Some((host.to_string(), port.parse().ok()?))
        })
        .collect()
}

async fn scan_on(
    c: &mut Conn,
    pattern: &str,
    route: Option<redis::cluster_routing::SingleNodeRoutingInfo>,
) -> Result<Vec<String>> {
    let mut cursor: u64 = 0;
    let mut out = Vec::new();
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000);
        let v: Value = match (&route, &mut c.link) {
            (Some(r), Link::Cluster(cc)) => {
                cc.route_command(
                    cmd,
                    redis::cluster_routing::RoutingInfo::SingleNode(r.clone()),
                )
                .await?
            }
            _ => cmd.query_async(&mut *c).await?,
        };
        let (next, keys): (u64, Vec<String>) = redis::from_redis_value(v)?;
        out.extend(keys);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// The part of `key` Redis Cluster hashes: the first non-empty `{…}`, else all of it.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The hash tag of a command's first key, as far as muster's commands go: `EVAL`/
/// `EVALSHA` name it after the key count, `XREAD` after `STREAMS`, the rest first.
/// `None` for a command without a key (it may go anywhere).
fn cmd_tag(cmd: &Cmd) -> Option<Vec<u8>> {
    let args = simple_args(cmd);
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" => {
            let n: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if n == 0 {
                return None;
            }
            args.get(3)?
        }
        b"XREAD" | b"XREADGROUP" => {
            let at = args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(at + 1)?
        }
        b"PING" | b"TIME" | b"INFO" | b"SCRIPT" | b"CONFIG" | b"PUBLISH" | b"MULTI" | b"EXEC"
        | b"WAIT" => return None,
        _ => args.get(1)?,
    };
    Some(hash_tag(key).to_vec())
}

/// Whether every keyed command of `pipeline` shares one hash tag (or it is atomic).
fn single_tag(pipeline: &Pipeline) -> bool {
    let mut seen: Option<Vec<u8>> = None;
    for cmd in pipeline.cmd_iter() {
        match (cmd_tag(cmd), &seen) {
            (None, _) => {}
            (Some(t), None) => seen = Some(t),
            (Some(t), Some(s)) if &t == s => {}
            _ => return false,
        }
    }
    true
}

/// Runs a non-atomic pipeline over several slots: one sub-pipeline per hash tag, all
/// at once, the answers put back in the pipeline's order. (A keyless command joins the
/// first group.) An error inside one command comes back in its place, as it would from
/// one server; a failed sub-pipeline fails the whole.
async fn split_by_tag(c: ClusterConnection, pipeline: &Pipeline) -> redis::RedisResult<Vec<Value>> {
    let mut groups: Vec<(Option<Vec<u8>>, Vec<usize>)> = Vec::new();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    for (i, cmd) in pipeline.cmd_iter().enumerate() {
        match cmd_tag(cmd) {
            Some(t) => {
                let g = *index.entry(t.clone()).or_insert_with(|| {
                    groups.push((Some(t), Vec::new()));
                    groups.len() - 1
                });
                groups[g].1.push(i);
            }
            None => {
                if groups.is_empty() {
                    groups.push((None, Vec::new()));
                }
                groups[0].1.push(i);
            }
        }
    }
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let runs = groups.iter().map(|(_, members)| {
        let mut c = c.clone();
        let mut p = redis::pipe();
        for &i in members {
            p.add_command(cmds[i].clone());
        }
        async move {
            let n = members.len();
            c.req_packed_commands(&p, 0, n).await
        }
    });
    let answers = futures::future::try_join_all(runs).await?;
    let mut out: Vec<Option<Value>> = vec![None; cmds.len()];
    for ((_, members), vals) in groups.iter().zip(answers) {
        for (&i, v) in members.iter().zip(vals) {
            out[i] = Some(v);
        }
    }
    Ok(out.into_iter().map(|v| v.unwrap_or(Value::Nil)).collect())
}

/// How often the Sentinels are asked which primary they name.
const SENTINEL_POLL: Duration = Duration::from_millis(500);

/// The primary behind Sentinels: a reconnecting connection to the address they name,
/// replaced when a command fails in a way that says the primary moved, or when the
/// Sentinels name another one ([`SENTINEL_POLL`]).
pub struct SentinelConn {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    current: RwLock<(ConnectionManager, redis::Client)>,
    refreshing: AtomicBool,
    timeouts: Timeouts,
    this: std::sync::Weak<SentinelConn>,
}

impl SentinelConn {
    fn current(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    fn client(&self) -> redis::Client {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// After a failed command: a lost connection or a `READONLY` primary (demoted) means
    /// the Sentinels may name another one; ask them in the background (once at a time).
    fn after_error(&self, e: &redis::RedisError) {
        let moved = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            || e.to_string().contains("READONLY");
        if !moved || self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(this) = self.this.upgrade() else {
            return;
        };
        tokio::spawn(async move {
            match this.resolve().await {
                Ok((m, c)) => {
                    let addr = c.get_connection_info().addr().to_string();
                    *this.current.write().unwrap_or_else(|e| e.into_inner()) = (m, c);
                    tracing::warn!(primary = %addr, "sentinel: connected to the primary");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sentinel: no primary reachable yet; retrying on the next error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// Asks the Sentinels every [`SENTINEL_POLL`] which primary they name and moves to
    /// it when it changed: a planned failover leaves the old primary alive (as a replica
    /// soon), so no error would tell. Stops when the connection is dropped.
    fn watch(conn: &Arc<SentinelConn>) {
        let weak = Arc::downgrade(conn);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SENTINEL_POLL).await;
                let Some(this) = weak.upgrade() else { return };
                if this.refreshing.load(Ordering::Acquire) {
                    continue;
                }
                let named = {
                    let mut s = this.sentinel.lock().await;
                    tokio::time::timeout(this.timeouts.connect, s.async_get_client()).await
                };
                let Ok(Ok(client)) = named else { continue };
                let now = client.get_connection_info().addr().to_string();
                if now == this.client().get_connection_info().addr().to_string() {
                    continue;
                }
                if this.refreshing.swap(true, Ordering::AcqRel) {
                    continue;
                }
                match manager(client.clone(), this.timeouts, this.timeouts.response).await {
                    Ok(m) => {
                        *this.current.write().unwrap_or_else(|e| e.into_inner()) = (m, client);
                        tracing::warn!(primary = %now, "sentinel: the primary moved; connected to it");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, primary = %now, "sentinel: cannot reach the new primary yet")
                    }
                }
                this.refreshing.store(false, Ordering::Release);
            }
        });
    }

    async fn resolve(&self) -> Result<(ConnectionManager, redis::Client)> {
        let client = {
            let mut s = self.sentinel.lock().await;
            tokio::time::timeout(self.timeouts.connect * 2, s.async_get_client())
                .await
                .map_err(|_| StoreError::timed_out("asking the sentinels for the primary"))??
        };
        let m = manager(client.clone(), self.timeouts, self.timeouts.response).await?;
        Ok((m, client))
    }
}

async fn manager(
    client: redis::Client,
    t: Timeouts,
    response: Duration,
) -> Result<ConnectionManager> {
    let cfg = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(response))
        .set_connection_timeout(Some(t.connect))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    Ok(ConnectionManager::new_with_config(client, cfg).await?)
}

/// What a store holds to make connections: the shared ones and new ones of its own
/// (pub/sub, blocking reads).
pub(crate) struct Backend {
    pub target: RedisTarget,
    timeouts: Timeouts,
    /// Standalone: the client; Cluster: one client per seed node (pub/sub on any node
    /// sees every message); Sentinel: unused (the current primary's is asked for).
    clients: Vec<redis::Client>,
    sentinel: Option<Arc<SentinelConn>>,
}

impl Backend {
    /// Connects to `target`: returns the backend and the shared connections (normal and
    /// bulk, the latter with `bulk_timeout`).
    pub async fn connect(
        target: &RedisTarget,
        t: Timeouts,
        bulk_timeout: Duration,
    ) -> Result<(Backend, Conn, Conn)> {
        target.validate().map_err(StoreError::Unfit)?;
        match target {
            RedisTarget::Standalone(url) => {
                let client = redis::Client::open(url.as_str())?;
                let conn = manager(client.clone(), t, t.response).await?;
                let bulk = manager(client.clone(), t, bulk_timeout).await?;
                Ok((
                    Backend {
                        target: target.clone(),
                        timeouts: t,
                        clients: vec![client],
                        sentinel: None,
                    },
                    Conn::new(Link::Single(conn)),
                    Conn::new(Link::Single(bulk)),
                ))
            }
            RedisTarget::Cluster(seeds) => {
                let clients = seeds
                    .iter()
                    .map(|u| redis::Client::open(u.as_str()))
                    .collect::<redis::RedisResult<Vec<_>>>()?;
                let build = |response: Duration| {
                    redis::cluster::ClusterClientBuilder::new(seeds.iter().map(String::as_str))
                        .connection_timeout(t.connect)
                        .response_timeout(response)
                        .retries(3)
                        .build()
                };
                let conn = build(t.response)?.get_async_connection().await?;
                let bulk = build(bulk_timeout)?.get_async_connection().await?;
                Ok((
                    Backend {
                        target: target.clone(),
                        timeouts: t,
                        clients,
                        sentinel: None,
                    },
                    Conn::new(Link::Cluster(conn)),
                    Conn::new(Link::Cluster(bulk)),
                ))
            }
            RedisTarget::Sentinel { sentinels, master } => {
                let first = sentinels[0].as_str().into_connection_info()?;
                let mut node = SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(first.redis_settings().clone());
                if let redis::ConnectionAddr::TcpTls { insecure, .. } = first.addr() {
                    node = node.set_tls_mode(if *insecure {
                        redis::TlsMode::Insecure
                    } else {
                        redis::TlsMode::Secure
                    });
                }
                let build = || {
                    SentinelClient::build(
                        sentinels.iter().map(String::as_str).collect(),
                        master.clone(),
                        Some(node.clone()),
                        SentinelServerType::Master,
                    )
                };
                let make = |sc: SentinelClient, response: Duration| async move {
                    let mut sc = sc;
                    let client = tokio::time::timeout(t.connect * 2, sc.async_get_client())
                        .await
                        .map_err(|_| {
                            StoreError::timed_out("asking the sentinels for the primary")
                        })??;
                    let m = manager(client.clone(), t, response).await?;
                    Ok::<_, StoreError>(Arc::new_cyclic(|this| SentinelConn {
                        sentinel: tokio::sync::Mutex::new(sc),
                        current: RwLock::new((m, client)),
                        refreshing: AtomicBool::new(false),
                        timeouts: Timeouts { response, ..t },
                        this: this.clone(),
                    }))
                };
                let conn = make(build()?, t.response).await?;
                let bulk = make(build()?, bulk_timeout).await?;
                SentinelConn::watch(&conn);
                SentinelConn::watch(&bulk);
                Ok((
                    Backend {
                        target: target.clone(),
                        timeouts: t,
                        clients: Vec::new(),
                        sentinel: Some(conn.clone()),
                    },
                    Conn::new(Link::Sentinel(conn)),
                    Conn::new(Link::Sentinel(bulk)),
                ))
            }
        }
    }

    /// A client for a connection of its own: the server, the Sentinels' current
    /// primary, or (Cluster) the first seed node that answers.
    pub async fn client(&self) -> Result<redis::Client> {
        if let Some(s) = &self.sentinel {
            return Ok(s.client());
        }
        let mut last = None;
        for c in &self.clients {
            match tokio::time::timeout(self.timeouts.connect, c.get_multiplexed_async_connection())
                .await
            {
                Ok(Ok(_)) => return Ok(c.clone()),
                Ok(Err(e)) => last = Some(StoreError::Redis(e)),
                Err(_) => last = Some(StoreError::timed_out("connecting to redis")),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::timed_out("no redis node to connect to")))
    }

    /// A pub/sub connection. On a Cluster, classic `PUBLISH` reaches every node, so
    /// any one will do; when it dies the subscriber reconnects to another.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub> {
        Ok(self.client().await?.get_async_pubsub().await?)
    }

    /// A client for each primary holding the keyspace, for probes that read one server
    /// at a time (`INFO`, `MONITOR`: `muster bench`): the server, the Sentinels' current
    /// primary, or each Cluster primary serving slots (`CLUSTER NODES` of a seed node),
    /// reached with that seed's user, password and TLS.
    pub async fn primaries(&self) -> Result<Vec<redis::Client>> {
        let seed = self.client().await?;
        if !self.target.is_cluster() {
            return Ok(vec![seed]);
        }
        let mut c = tokio::time::timeout(
            self.timeouts.connect,
            seed.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| StoreError::timed_out("connecting to a cluster seed node"))??;
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut c)
            .await?;
        let info = seed.get_connection_info().clone();
        primary_addrs(&nodes)
            .into_iter()
            .map(|(host, port)| {
                let addr = match info.addr() {
                    redis::ConnectionAddr::TcpTls {
                        insecure,
                        tls_params,
                        ..
                    } => redis::ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: *insecure,
                        tls_params: tls_params.clone(),
                    },
                    _ => redis::ConnectionAddr::Tcp(host, port),
                };
                Ok(redis::Client::open(info.clone().set_addr(addr))?)
            })
            .collect()
    }

    /// A plain connection of its own, for a blocking command.
    pub async fn own(&self, response: Duration) -> Result<Conn> {
        let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(Some(response));
        Ok(Conn::new(Link::Plain(
            self.client()
                .await?
                .get_multiplexed_async_connection_with_config(&cfg)
                .await?,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_redis_cluster_rules() {
        assert_eq!(hash_tag(b"muster:{q1}:t:x"), b"q1");
        assert_eq!(hash_tag(b"muster:queues"), b"muster:queues");
        assert_eq!(hash_tag(b"a{}b{c}"), b"a{}b{c}");
        assert_eq!(hash_tag(b"{~nodes}:all"), b"~nodes");
    }

    #[test]
    fn cluster_script_calls_declare_a_guard_key_after_their_own() {
        let mut e = redis::cmd("EVALSHA");
        e.arg("abc")
            .arg(2)
            .arg("m:{q}:")
            .arg("m:{q}:x")
            .arg("a1")
            .arg("a2");
        let g = guarded(&e).expect("guarded");
        let args: Vec<Vec<u8>> = g
            .args_iter()
            .filter_map(|a| match a {
                redis::Arg::Simple(b) => Some(b.to_vec()),
                _ => None,
            })
            .collect();
        let want: Vec<&[u8]> = vec![
            b"EVALSHA",
            b"abc",
            b"3",
            b"m:{q}:",
            b"m:{q}:x",
            b"m:{q}:~guard",
            b"a1",
            b"a2",
        ];
        assert_eq!(args, want);
        assert_eq!(cmd_tag(&g), cmd_tag(&e), "same slot");
        let mut untagged = redis::cmd("EVALSHA");
        untagged.arg("abc").arg(1).arg("plain").arg("a");
        assert!(guarded(&untagged).is_none());
        let mut keyless = redis::cmd("EVAL");
        keyless.arg("return 1").arg(0);
        assert!(guarded(&keyless).is_none());
        assert!(guarded(&redis::cmd("PING")).is_none());
    }

    #[test]
    fn every_primary_serving_slots_is_named_by_one_of_its_slots() {
        let nodes = "a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n\
                     b 127.0.0.1:7001@17001 master - 0 0 2 connected [93->-c] 5461-10922\n\
                     c 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383\n\
                     d 127.0.0.1:7003@17003 slave a 0 0 1 connected\n\
                     e 127.0.0.1:7004@17004 master - 0 0 4 connected\n";
        assert_eq!(primaries(nodes), vec![0, 5461]);
        assert_eq!(
            primary_addrs(nodes),
            vec![
                ("127.0.0.1".to_string(), 7000),
                ("127.0.0.1".to_string(), 7001)
            ]
        );
    }

    #[test]
    fn command_tags_name_the_first_key() {
        let mut e = redis::cmd("EVALSHA");
        e.arg("abc").arg(1).arg("muster:{q}:").arg("x");
        assert_eq!(cmd_tag(&e).as_deref(), Some(&b"q"[..]));
        let mut x = redis::cmd("XREAD");
        x.arg("COUNT")
            .arg(5)
            .arg("STREAMS")
            .arg("m:{a}:events")
            .arg("0");
        assert_eq!(cmd_tag(&x).as_deref(), Some(&b"a"[..]));
        let mut h = redis::cmd("HGET");
        h.arg("m:{z}:t:1").arg("state");
        assert_eq!(cmd_tag(&h).as_deref(), Some(&b"z"[..]));
        assert_eq!(cmd_tag(&redis::cmd("PING")), None);
        let mut p = redis::pipe();
        p.cmd("HGET").arg("m:{a}:x").arg("f");
        p.cmd("HGET").arg("m:{a}:y").arg("f");
        assert!(single_tag(&p));
        p.cmd("HGET").arg("m:{b}:y").arg("f");
        assert!(!single_tag(&p));
    }

    #[test]
    fn bad_targets_are_refused() {
        assert!(
            RedisTarget::Sentinel {
                sentinels: vec!["redis://h:26379".into()],
                master: " ".into()
            }
            .validate()
            .is_err()
        );
        assert!(RedisTarget::Cluster(vec![]).validate().is_err());
        assert!(
            RedisTarget::Standalone("nope://x".into())
                .validate()
                .is_err()
        );
    }
}
