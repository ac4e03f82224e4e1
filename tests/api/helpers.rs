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
