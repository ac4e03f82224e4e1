//! redis-server processes for tests: [`RedisGuard`] (one per test that kills or restarts
//! Redis), [`WatchedRedis`] (the one server a test binary shares) and free ports.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `redis://127.0.0.1:<port>`.
fn url_of(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

/// A blocking connection to `url`.
pub fn connect(url: &str) -> redis::Connection {
    redis::Client::open(url)
        .expect("url")
        .get_connection()
        .expect("connection")
}

/// Calls of the commands `names` (lower case, as `INFO commandstats` names them: `lpop`,
/// `evalsha`) the server has run, summed.
pub fn command_calls(conn: &mut redis::Connection, names: &[&str]) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(conn)
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            if !names.contains(&name) {
                return None;
            }
            rest.strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Blocks until the server on `port` answers PING (10 s at most).
fn wait_for_ping(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = redis::Client::open(url_of(port)).expect("url");
    while Instant::now() < deadline {
        if let Ok(mut c) = client.get_connection()
            && redis::cmd("PING").query::<String>(&mut c).is_ok()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not answer PING on port {port}");
}

/// The arguments every test redis-server gets: loopback only, on `port`, data in `dir`.
fn base_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    vec![
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--dir".into(),
        dir.display().to_string(),
    ]
}

/// A redis-server on a free loopback port, killed on drop.
pub struct RedisGuard {
    child: Child,
    /// The port.
    pub port: u16,
    /// Its data directory.
    pub dir: tempfile::TempDir,
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
            .args(base_args(port, dir.path()))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server)");
        let g = RedisGuard { child, port, dir };
        wait_for_ping(port);
        g
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        url_of(self.port)
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
        connect(&self.url())
    }
}

impl Drop for RedisGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A redis-server that cannot outlive the test binary: it runs under a `sh` that
/// kills it as soon as its stdin (a pipe held by this process) closes, which the
/// kernel does when the test binary exits for any reason. A `static` is never
/// dropped, so a plain [`RedisGuard`] in one would stay behind after every run.
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
            .args(base_args(port, dir.path()))
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh and redis-server on PATH");
        wait_for_ping(port);
        WatchedRedis {
            _sh: sh,
            port,
            _dir: dir,
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        url_of(self.port)
    }

    /// A blocking connection for assertions.
    pub fn conn(&self) -> redis::Connection {
        connect(&self.url())
    }
}

/// The redis-server the end-to-end tests share (one per test binary, gone with it).
pub fn e2e_redis() -> &'static WatchedRedis {
    static R: OnceLock<WatchedRedis> = OnceLock::new();
    R.get_or_init(WatchedRedis::start)
}

/// The shared redis-server of this test binary (the same as [`e2e_redis`]).
pub fn shared_redis() -> &'static WatchedRedis {
    e2e_redis()
}
