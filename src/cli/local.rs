//! Pieces of a private local stack, shared by `muster dev`, `muster demo` and
//! `muster bench`: a private `redis-server` on a free loopback port, child processes
//! that die with muster ([`die_with_muster`]), admin tokens, the in-process control
//! plane ([`LocalPlane`]) and the removal of a key namespace.

use crate::config::Config;
use crate::startup::Application;
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The one-line error when `redis-server` is not on PATH.
pub const NO_REDIS_SERVER: &str = "redis-server not found on PATH: install it (Debian/Ubuntu: sudo apt-get install -y redis-server) or pass --redis-url redis://HOST:PORT to use a running Redis";

/// How long a fresh redis-server gets to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a stopping redis-server gets before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Persistence arguments for a development Redis: AOF, fsync every second.
pub const AOF_EVERYSEC: &[&str] = &["--appendonly", "yes", "--appendfsync", "everysec"];

/// Finds an executable named `name` on PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// A free loopback port (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
    Ok(l.local_addr()?.port())
}

/// 32 random hex characters (128 bits), for admin tokens.
pub fn random_hex_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// Reads the admin token stored in `path`, or creates one there (mode 0600).
///
/// # Errors
/// The file cannot be read or written.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let token = random_hex_token();
    write_private(path, &format!("{token}\n"))?;
    Ok(token)
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// True when a process with this pid exists and its command line contains `needle`.
pub fn process_matches(pid: u32, needle: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(needle))
        .unwrap_or(false)
}

/// Sends `signal` (a name such as `TERM` or `INT`) to `pid` with the `kill` command.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Makes the child that `cmd` spawns receive `signal` when muster dies, however it
/// dies (`kill -9` included, when no destructor runs): `prctl(PR_SET_PDEATHSIG)` in
/// the child between fork and exec. Linux only; elsewhere a no-op.
///
/// The signal fires when the *thread* that spawned the child exits, so spawn from a
/// thread that lives as long as muster: the main thread or a runtime worker (as
/// every command does), never from `spawn_blocking`.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn die_with_muster(cmd: &mut Command, signal: libc::c_int) {
    let parent = std::process::id();
    let pdeathsig = libc::c_ulong::try_from(signal).unwrap_or(libc::SIGKILL as libc::c_ulong);
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: prctl(2) and getppid(2) are, and the
    // closure neither allocates nor takes locks (`last_os_error` and
    // `from_raw_os_error` only wrap an errno).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, pdeathsig, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Muster may have died between fork and prctl: then no signal would come.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// See the Linux version; other systems have no parent-death signal.
#[cfg(not(target_os = "linux"))]
pub fn die_with_muster(_cmd: &mut Command, _signal: i32) {}

/// A private `redis-server` child process on a free loopback port.
pub struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    pid: u32,
    dir: PathBuf,
}

impl PrivateRedis {
    /// Starts `redis-server` from PATH on a free loopback port with its data in `dir`
    /// (created when missing), `extra` arguments (persistence), its log in
    /// `dir/redis.log`, and its pid and port written to `dir/redis.pid` and
    /// `dir/redis.port`; waits until it answers PING.
    ///
    /// # Errors
    /// redis-server missing, or it did not come up.
    pub async fn start(dir: &Path, extra: &[&str]) -> anyhow::Result<PrivateRedis> {
        let bin = find_on_path("redis-server").ok_or_else(|| anyhow::anyhow!(NO_REDIS_SERVER))?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir =
            std::path::absolute(dir).with_context(|| format!("bad directory {}", dir.display()))?;
        let mut last_err = None;
        // The port is free when picked but may be taken before redis binds it: retry.
        for _ in 0..3 {
            match Self::start_once(&bin, &dir, extra).await {
                Ok(r) => return Ok(r),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    async fn start_once(bin: &Path, dir: &Path, extra: &[&str]) -> anyhow::Result<PrivateRedis> {
        let port = free_port()?;
        let log = dir.join("redis.log");
        let mut cmd = Command::new(bin);
        // SIGTERM: redis writes its AOF out and exits, even when muster was killed hard
        // (a redis that cannot write it refuses to exit; `muster dev` kills it on its
        // next start).
        die_with_muster(&mut cmd, libc::SIGTERM);
        let mut child = cmd
            .arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .arg("--daemonize")
            .arg("no")
            .args(crate::store::tuning::PRIVATE_REDIS_ARGS)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Ctrl-C in the terminal reaches muster only, and
            // muster shuts redis down after the control plane.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().unwrap_or(0);
        let mut redis = PrivateRedis {
            child: None,
            port,
            pid,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "redis-server exited at start ({status}): {}",
                    last_log_line(&log).unwrap_or_else(|| "see its log".into())
                );
            }
            if ping(&redis.url()).await {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.start_kill();
                let _ = child.wait().await;
                anyhow::bail!(
                    "redis-server on port {port} did not answer PING within {READY_TIMEOUT:?}; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        redis.child = Some(child);
        let _ = std::fs::write(dir.join("redis.pid"), format!("{pid}\n"));
        let _ = std::fs::write(dir.join("redis.port"), format!("{port}\n"));
        Ok(redis)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Shuts redis down (SHUTDOWN, which writes the AOF out; SIGTERM, then SIGKILL if
    /// it lingers), waits for the process and removes the pid file.
    pub async fn stop(mut self) {
        self.stop_inner().await;
    }

    async fn stop_inner(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            let asked = shutdown_cmd(&self.url()).await;
            if !asked {
                send_signal(self.pid, "TERM");
            }
            match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        pid = self.pid,
                        "redis-server did not stop in time; killing it"
                    );
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
        }
        let _ = std::fs::remove_file(self.dir.join("redis.pid"));
        let _ = std::fs::remove_file(self.dir.join("redis.port"));
    }
}

/// True when the Redis at `url` answers PING.
pub async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let fut = async {
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut c).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), fut).await,
        Ok(Some(_))
    )
}

/// Sends SHUTDOWN; true when it was sent (the connection closes, which is the answer).
async fn shutdown_cmd(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let fut = async {
        let mut c = client.get_multiplexed_async_connection().await.ok()?;
        // SHUTDOWN answers nothing when it works: the server closes the connection.
        let _ = redis::cmd("SHUTDOWN").query_async::<()>(&mut c).await;
        Some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(3), fut).await,
        Ok(Some(()))
    )
}

fn last_log_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

/// A control plane run in this process, as `muster demo` and `muster bench` run it:
/// on a private redis-server, or on a fresh key namespace of a given Redis (removed
/// again by [`LocalPlane::shutdown`]).
#[derive(Default)]
pub struct LocalPlane {
    /// The private redis-server, when one was started.
    pub redis: Option<PrivateRedis>,
    /// The servers (each primary) and namespace to remove at shutdown (only with a
    /// given Redis).
    cleanup_ns: Option<(Vec<redis::Client>, String)>,
    stop: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl LocalPlane {
    /// The Redis to use: `redis_url` with a fresh namespace `<prefix>-<random>`, else a
    /// private redis-server in `dir` started with `persistence` arguments and the
    /// namespace `muster`. Returns the URL and the namespace.
    ///
    /// # Errors
    /// The private redis-server did not start.
    pub async fn redis(
        &mut self,
        redis_url: Option<&str>,
        prefix: &str,
        dir: &Path,
        persistence: &[&str],
    ) -> anyhow::Result<(String, String)> {
        match redis_url {
            Some(url) => {
                let ns = self.fresh_namespace(vec![redis::Client::open(url)?], prefix);
                Ok((url.to_string(), ns))
            }
            None => {
                let r = PrivateRedis::start(dir, persistence).await?;
                let url = r.url();
                self.redis = Some(r);
                Ok((url, crate::config::DEFAULT_NAMESPACE.to_string()))
            }
        }
    }

    /// A fresh namespace `<prefix>-<random>` on a given Redis whose primaries are
    /// `primaries` (one, or each of a Cluster's), removed from each at shutdown.
    pub fn fresh_namespace(&mut self, primaries: Vec<redis::Client>, prefix: &str) -> String {
        let ns = format!("{prefix}-{}", &random_hex_token()[..12]);
        self.cleanup_ns = Some((primaries, ns.clone()));
        ns
    }

    /// Builds the control plane from `cfg` and runs it in the background; returns
    /// its URL.
    ///
    /// # Errors
    /// See [`Application::build`].
    pub async fn serve(&mut self, cfg: Config) -> anyhow::Result<String> {
        let app = Application::build(cfg).await?;
        let url = format!("http://{}", app.local_addr());
        self.server = Some(tokio::spawn(app.run(self.stop.clone())));
        Ok(url)
    }

    /// Stops the control plane (15 s, then it is aborted), removes the namespace and
    /// stops the private redis-server; `what` names the command in a warning.
    pub async fn shutdown(&mut self, what: &str) {
        self.stop.cancel();
        if let Some(mut h) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(15), &mut h)
                .await
                .is_err()
        {
            h.abort();
        }
        if let Some((primaries, ns)) = self.cleanup_ns.take() {
            for p in &primaries {
                if let Err(e) = delete_namespace(p, &ns).await {
                    tracing::warn!(error = %e, namespace = %ns, "could not remove the {what}'s keys");
                }
            }
        }
        if let Some(r) = self.redis.take() {
            r.stop().await;
        }
    }
}

/// Deletes every key under `ns` on one server (best effort): what `muster demo` and
/// `muster bench` leave in a Redis they were given. One key per `UNLINK`, pipelined,
/// so a Cluster primary's keys of different slots go too.
///
/// # Errors
/// Redis unreachable or failing.
pub async fn delete_namespace(server: &redis::Client, ns: &str) -> anyhow::Result<()> {
    let mut c = server.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{ns}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await?;
        if !keys.is_empty() {
            let mut p = redis::pipe();
            for k in &keys {
                p.cmd("UNLINK").arg(k).ignore();
            }
            let () = p.query_async(&mut c).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A running child process of muster (an agent), killed on drop.
pub struct ChildProc {
    /// The process.
    pub child: Child,
    /// Its pid.
    pub pid: u32,
    /// A display name.
    pub name: String,
}

impl ChildProc {
    /// SIGTERM, wait up to `grace`, then SIGKILL and reap.
    pub async fn terminate(&mut self, grace: Duration) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        send_signal(self.pid, "TERM");
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
