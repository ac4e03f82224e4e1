//! Real Redis Clusters and Sentinel sets for tests: [`TestCluster`] (`redis-server
//! --cluster-enabled yes` nodes joined by `redis-cli --cluster create`), [`shared_cluster`]
//! (the one a test binary shares, for the suites run with `MUSTER_TEST_BACKEND=cluster`)
//! and [`TestSentinels`] (a primary, its replica and three `redis-server --sentinel`).
//! Every node is a child process that a test may kill -9.

use super::redis_server::free_port;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Which Redis the end-to-end suites run on: `MUSTER_TEST_BACKEND=cluster` puts them
/// on [`shared_cluster`] (3 primaries, 3 replicas); anything else on one server.
pub fn on_cluster() -> bool {
    std::env::var("MUSTER_TEST_BACKEND").is_ok_and(|v| v == "cluster")
}

/// One redis-server of a test topology.
pub struct Node {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    _dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Node {
    /// Starts one on a port that is free with its Cluster bus port (port + 10000); a
    /// node that exits at once (a port taken between the check and the bind) is
    /// started again on another.
    pub fn start(extra: &[String]) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        for _ in 0..5 {
            let port = node_port();
            let mut child = Self::spawn(&dir, port, extra);
            if wait_up(&mut child, port) {
                return Node {
                    child: Some(child),
                    port,
                    _dir: dir,
                    args: extra.to_vec(),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start on five free ports in a row");
    }

    /// Starts a killed node again on its port with its data dir (a Cluster node
    /// rejoins from its nodes.conf; a Sentinel-watched one is made a replica).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a killed node only");
        self.child = Some(Self::spawn(&self._dir, self.port, &self.args));
        wait_ping(self.port);
    }

    fn spawn(dir: &tempfile::TempDir, port: u16, extra: &[String]) -> Child {
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &dir.path().display().to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)")
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// kill -9 (and reap).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it was killed.
    pub fn killed(&self) -> bool {
        self.child.is_none()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A port for a node: below the kernel's ephemeral range (32768 and up here, so no
/// outgoing connection takes it meanwhile) with its bus port (port + 10000) free too.
/// A cluster node whose bus port is taken exits at start.
pub fn node_port() -> u16 {
    loop {
        let port: u16 = rand::random_range(20_000..22_700);
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// Waits for `child` to answer PING on `port`; false if it exited first.
fn wait_up(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut c) = client.get_connection() {
            let answered = match redis::cmd("PING").query::<String>(&mut c) {
                Ok(_) => true,
                Err(e) => e.code() == Some("NOAUTH"),
            };
            if answered {
                // The answer may have come from another test's node that won the
                // port; ours then exits on its failed bind.
                std::thread::sleep(Duration::from_millis(50));
                return matches!(child.try_wait(), Ok(None));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not answer PING on port {port} in 10 s");
}

fn wait_ping(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    while Instant::now() < deadline {
        if let Ok(mut c) = client.get_connection() {
            match redis::cmd("PING").query::<String>(&mut c) {
                // Up, and asking for the password it was started with.
                Ok(_) => return,
                Err(e) if e.code() == Some("NOAUTH") => return,
                Err(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not answer PING on port {port}");
}

/// `redis-cli -p <port> <args…>` (its stdout).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Cluster of `primaries` primaries with `replicas` replicas each.
pub struct TestCluster {
    /// Every node (primaries first as created; roles change on failover).
    pub nodes: Vec<Node>,
    password: Option<String>,
}

impl TestCluster {
    /// Starts the nodes and joins them with `redis-cli --cluster create`; returns once
    /// every node reports `cluster_state:ok`.
    pub fn start(primaries: usize, replicas: usize) -> TestCluster {
        Self::start_with(primaries, replicas, &[], None)
    }

    /// [`TestCluster::start`] with more redis-server arguments, and the password the
    /// nodes require (for `redis-cli`).
    pub fn start_with(
        primaries: usize,
        replicas: usize,
        more: &[String],
        password: Option<&str>,
    ) -> TestCluster {
        let mut extra: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1500",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        extra.extend(more.iter().cloned());
        let nodes: Vec<Node> = (0..primaries * (1 + replicas))
            .map(|_| Node::start(&extra))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create = Command::new("redis-cli");
        if let Some(p) = password {
            create.args(["-a", p, "--no-auth-warning"]);
        }
        let out = create
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = TestCluster {
            nodes,
            password: password.map(str::to_string),
        };
        c.wait_ok(Duration::from_secs(30));
        c
    }

    /// Waits until every live node says `cluster_state:ok` and knows every slot.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().filter(|n| !n.killed()).all(|n| {
                let info = match &self.password {
                    Some(p) => cli(n.port, &["-a", p, "--no-auth-warning", "cluster", "info"]),
                    None => cli(n.port, &["cluster", "info"]),
                };
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The muster target of this cluster.
    pub fn target(&self) -> muster::store::RedisTarget {
        muster::store::RedisTarget::Cluster(self.nodes.iter().map(Node::url).collect())
    }

    /// The index of the node serving `key`'s slot as primary.
    pub fn primary_of(&self, key: &str) -> usize {
        let live = self
            .nodes
            .iter()
            .find(|n| !n.killed())
            .expect("a live node");
        let slot: u16 = cli(live.port, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("a slot");
        let shards = cli(live.port, &["cluster", "nodes"]);
        for line in shards.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let port: u16 = f[1]
                .split('@')
                .next()
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse().ok())
                .expect("a port");
            let serves = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    let (a, b): (u16, u16) = (a.parse().unwrap_or(1), b.parse().unwrap_or(0));
                    (a..=b).contains(&slot)
                }
                None => r.parse::<u16>().ok() == Some(slot),
            });
            if serves {
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("a known node");
            }
        }
        panic!("no primary serves slot {slot}");
    }
}

/// The Cluster the end-to-end suites share under `MUSTER_TEST_BACKEND=cluster` (one
/// per test binary, gone with it: see [`WatchedCluster`]).
pub fn shared_cluster() -> &'static WatchedCluster {
    static C: OnceLock<WatchedCluster> = OnceLock::new();
    C.get_or_init(WatchedCluster::start)
}

/// A 3-primary/3-replica cluster run under one `sh` that kills every node when its
/// stdin (a pipe this test binary holds) closes, so it cannot outlive the binary.
pub struct WatchedCluster {
    _sh: Child,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl WatchedCluster {
    fn start() -> WatchedCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 6 {
            let p = node_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let mut script = String::new();
        for p in &ports {
            let d = dir.path().join(p.to_string());
            std::fs::create_dir_all(&d).expect("node dir");
            script.push_str(&format!(
                "redis-server --port {p} --bind 127.0.0.1 --dir {} --save '' --appendonly no \
                 --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1500 & \
                 pids=\"$pids $!\"; ",
                d.display()
            ));
        }
        script.push_str("read -r _; kill -9 $pids; wait");
        let sh = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh and redis-server on PATH");
        for p in &ports {
            wait_ping(*p);
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli on PATH");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ports.iter().all(|p| {
            let i = cli(*p, &["cluster", "info"]);
            i.contains("cluster_state:ok") && i.contains("cluster_slots_ok:16384")
        }) {
            assert!(
                Instant::now() < deadline,
                "the shared cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        WatchedCluster {
            _sh: sh,
            ports,
            _dir: dir,
        }
    }

    /// The muster target.
    pub fn target(&self) -> muster::store::RedisTarget {
        muster::store::RedisTarget::Cluster(
            self.ports
                .iter()
                .map(|p| format!("redis://127.0.0.1:{p}"))
                .collect(),
        )
    }

    /// Seed URLs, comma-separated (`--redis-cluster`).
    pub fn seeds(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A primary, one replica and three Sentinels watching it under the name `mymaster`.
pub struct TestSentinels {
    /// The primary as started (index 0) and its replica (index 1).
    pub data: Vec<Node>,
    /// The Sentinels.
    pub sentinels: Vec<Node>,
}

impl TestSentinels {
    /// Starts them and waits until every Sentinel knows the replica.
    pub fn start() -> TestSentinels {
        let primary = Node::start(&[]);
        let replica = Node::start(&[
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port.to_string(),
        ]);
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let conf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor mymaster 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds mymaster 1000\n\
                     sentinel failover-timeout mymaster 5000\n\
                     sentinel parallel-syncs mymaster 1\n",
                    dir.path().display(),
                    primary.port
                ),
            )
            .expect("sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server on PATH");
            wait_ping(port);
            sentinels.push(Node {
                child: Some(child),
                port,
                _dir: dir,
                args: Vec::new(),
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sentinels.iter().all(|s| {
            let r = cli(s.port, &["sentinel", "replicas", "mymaster"]);
            r.contains(&replica.port.to_string())
        }) {
            assert!(Instant::now() < deadline, "sentinels never saw the replica");
            std::thread::sleep(Duration::from_millis(100));
        }
        TestSentinels {
            data: vec![primary, replica],
            sentinels,
        }
    }

    /// The muster target.
    pub fn target(&self) -> muster::store::RedisTarget {
        muster::store::RedisTarget::Sentinel {
            sentinels: self.sentinels.iter().map(Node::url).collect(),
            master: "mymaster".into(),
        }
    }

    /// The port the Sentinels name as primary now.
    pub fn primary_port(&self) -> Option<u16> {
        let s = self.sentinels.iter().find(|s| !s.killed())?;
        let out = cli(s.port, &["sentinel", "get-master-addr-by-name", "mymaster"]);
        out.lines().nth(1)?.trim().parse().ok()
    }
}

/// A blocking connection to the end-to-end Redis, for assertions: the shared server,
/// or the shared Cluster (commands routed by slot) under `MUSTER_TEST_BACKEND=cluster`.
pub enum E2eConn {
    /// One server.
    One(redis::Connection),
    /// The Cluster, with its nodes' ports (for scans over every primary).
    Cluster(Box<redis::cluster::ClusterConnection>, Vec<u16>),
}

/// The end-to-end Redis' blocking connection ([`E2eConn`]).
pub fn e2e_conn() -> E2eConn {
    if on_cluster() {
        let c = shared_cluster();
        let conn = redis::cluster::ClusterClient::new(RedisCluster::urls(c))
            .expect("cluster client")
            .get_connection()
            .expect("cluster connection");
        E2eConn::Cluster(Box::new(conn), c.ports.clone())
    } else {
        E2eConn::One(super::redis_server::e2e_redis().conn())
    }
}

/// Flags naming the end-to-end Redis for a `muster` child process.
pub fn e2e_redis_flags() -> Vec<String> {
    if on_cluster() {
        vec!["--redis-cluster".into(), shared_cluster().seeds()]
    } else {
        vec!["--redis-url".into(), super::redis_server::e2e_redis().url()]
    }
}

struct RedisCluster;
impl RedisCluster {
    fn urls(c: &WatchedCluster) -> Vec<String> {
        c.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }
}

impl redis::ConnectionLike for E2eConn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> redis::RedisResult<redis::Value> {
        match self {
            E2eConn::One(c) => c.req_packed_command(cmd),
            E2eConn::Cluster(c, _) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<redis::Value>> {
        match self {
            E2eConn::One(c) => c.req_packed_commands(cmd, offset, count),
            E2eConn::Cluster(c, _) => c.req_packed_commands(cmd, offset, count),
        }
    }
    fn req_command(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match self {
            E2eConn::One(c) => c.req_command(cmd),
            E2eConn::Cluster(c, _) => c.req_command(cmd),
        }
    }
    fn get_db(&self) -> i64 {
        0
    }
    fn supports_pipelining(&self) -> bool {
        match self {
            E2eConn::One(c) => c.supports_pipelining(),
            E2eConn::Cluster(c, _) => c.supports_pipelining(),
        }
    }
    fn check_connection(&mut self) -> bool {
        match self {
            E2eConn::One(c) => c.check_connection(),
            E2eConn::Cluster(c, _) => c.check_connection(),
        }
    }
    fn is_open(&self) -> bool {
        match self {
            E2eConn::One(c) => c.is_open(),
            E2eConn::Cluster(c, _) => c.is_open(),
        }
    }
}

/// Key listing over whatever a connection reaches: one server, or every primary.
pub trait Keyspace: redis::ConnectionLike {
    /// Every key matching `pattern`, sorted, without duplicates.
    fn keys_matching(&mut self, pattern: &str) -> Vec<String>;
}

fn scan_one(conn: &mut impl redis::ConnectionLike, pattern: &str) -> Vec<String> {
    redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter::<String>(conn)
        .expect("scan")
        .collect::<Result<Vec<_>, _>>()
        .expect("scan")
}

impl Keyspace for redis::Connection {
    fn keys_matching(&mut self, pattern: &str) -> Vec<String> {
        let mut keys = scan_one(self, pattern);
        keys.sort();
        keys.dedup();
        keys
    }
}

impl Keyspace for E2eConn {
    fn keys_matching(&mut self, pattern: &str) -> Vec<String> {
        let mut keys = match self {
            E2eConn::One(c) => scan_one(c, pattern),
            E2eConn::Cluster(_, ports) => ports
                .iter()
                .filter(|p| cli(**p, &["role"]).starts_with("master"))
                .flat_map(|p| {
                    let mut c = redis::Client::open(format!("redis://127.0.0.1:{p}"))
                        .expect("url")
                        .get_connection()
                        .expect("node connection");
                    scan_one(&mut c, pattern)
                })
                .collect(),
        };
        keys.sort();
        keys.dedup();
        keys
    }
}
