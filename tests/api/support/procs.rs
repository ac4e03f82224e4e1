//! Child processes of the tests: `muster serve` / `muster agent` / `muster doctor`
//! runs with their output in a log file, killed on drop; signals and the process table.

use super::http::Http;
use super::{ADMIN_TOKEN, HEARTBEAT_MS, REAPER_MS, muster_bin};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Sends a signal with kill(1): `kill -s SIG -- target` (target a pid, or `-pgid`).
pub fn signal(sig: &str, target: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, "--", target])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("kill(1)");
}

/// One line of the process table (from `/proc/<pid>/stat`).
#[derive(Clone, Debug)]
pub struct ProcStat {
    /// Process id.
    pub pid: u32,
    /// State letter (`R`, `S`, `T`, `Z`, ...).
    pub state: String,
    /// Parent pid.
    pub ppid: u32,
    /// Process group.
    pub pgrp: u32,
}

/// Every process visible in `/proc`.
pub fn proc_table() -> Vec<ProcStat> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|x| x.1) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let num = |s: &str| s.parse::<u32>().unwrap_or(0);
        out.push(ProcStat {
            pid,
            state: f[0].to_string(),
            ppid: num(f[1]),
            pgrp: num(f[2]),
        });
    }
    out
}

/// Direct children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    proc_table()
        .into_iter()
        .filter(|p| p.ppid == pid)
        .map(|p| p.pid)
        .collect()
}

/// True while any process of the process group `pgid` exists (zombies aside).
pub fn group_alive(pgid: u32) -> bool {
    proc_table()
        .iter()
        .any(|p| p.state != "Z" && p.pgrp == pgid)
}

/// A `muster` child process with its output in a log file; SIGKILLed on drop
/// (continued first if stopped), its log printed when the test panics.
pub struct Proc {
    child: Child,
    /// What it is, for messages.
    pub name: String,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
    stopped: bool,
}

impl Proc {
    /// Spawns `muster <args>` with `RUST_LOG` from `MUSTER_TEST_LOG` (default `info`).
    pub fn spawn(name: &str, args: &[String]) -> Proc {
        let log = std::env::var("MUSTER_TEST_LOG").unwrap_or_else(|_| "info".into());
        Self::spawn_logged(name, args, &log)
    }

    /// Spawns `muster <args>` with `RUST_LOG=<log>`.
    pub fn spawn_logged(name: &str, args: &[String], log: &str) -> Proc {
        let dir = tempfile::tempdir().expect("temp dir");
        let log_path = dir.path().join("log");
        let f = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(muster_bin())
            .args(args)
            .env("RUST_LOG", log)
            .env_remove("MUSTER_TOKEN")
            .env_remove("MUSTER_SERVER")
            .env_remove("MUSTER_ADMIN_TOKEN")
            .env_remove("MUSTER_TOKENS")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log fd"))
            .stderr(f)
            .spawn()
            .expect("spawn muster");
        Proc {
            child,
            name: name.to_string(),
            log_path,
            _dir: dir,
            stopped: false,
        }
    }

    /// The process id.
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

    /// SIGSTOP the process, and with `group` the process groups of its children too
    /// (an agent runs each `--exec` handler in a process group of its own). Returns
    /// the groups stopped.
    pub fn stop(&mut self, group: bool) -> Vec<u32> {
        signal("STOP", &self.pid().to_string());
        self.stopped = true;
        let mut groups = Vec::new();
        if group {
            for c in children_of(self.pid()) {
                signal("STOP", &format!("-{c}"));
                groups.push(c);
            }
        }
        groups
    }

    /// SIGCONT the process and the given groups.
    pub fn cont(&mut self, groups: &[u32]) {
        for g in groups {
            signal("CONT", &format!("-{g}"));
        }
        signal("CONT", &self.pid().to_string());
        self.stopped = false;
    }

    /// Its whole output.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last 8 KiB (or `MUSTER_TEST_LOG_BYTES`) of its output, titled.
    pub fn log(&self) -> String {
        let s = self.output();
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
        if self.stopped {
            signal("CONT", &self.pid().to_string());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("MUSTER_TEST_SHOW_LOGS").is_some() {
            eprintln!("{}", self.log());
        }
    }
}

/// `muster serve` arguments: `listen`, the admin token, the suite's short timers.
fn serve_args(listen: &str, redis_url: &str, ns: &str) -> Vec<String> {
    [
        "serve",
        "--listen",
        listen,
        "--redis-url",
        redis_url,
        "--admin-token",
        ADMIN_TOKEN,
        "--namespace",
        ns,
        "--heartbeat-interval-ms",
        &HEARTBEAT_MS.to_string(),
        "--reaper-interval-ms",
        &REAPER_MS.to_string(),
        "--dispatchers",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A `muster serve` replica on a fixed port (so it can be restarted in place).
pub struct Serve {
    /// The process (None while killed).
    pub proc: Option<Proc>,
    /// Its port.
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    redis_url: String,
    ns: String,
}

impl Serve {
    /// A replica on `port`, not started yet.
    fn new(port: u16, redis_url: &str, ns: &str) -> Serve {
        Serve {
            proc: None,
            port,
            url: format!("http://127.0.0.1:{port}"),
            redis_url: redis_url.to_string(),
            ns: ns.to_string(),
        }
    }

    /// Starts a replica on a free port and waits until `/readyz` answers 200.
    pub async fn start(redis_url: &str, ns: &str) -> Serve {
        let mut s = Serve::new(super::free_port(), redis_url, ns);
        s.spawn();
        s.wait_ready(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        s
    }

    /// Spawns the process (does not wait).
    pub fn spawn(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let args = serve_args(&listen, &self.redis_url, &self.ns);
        self.proc = Some(Proc::spawn_logged(
            &format!("serve {listen}"),
            &args,
            "info",
        ));
    }

    /// Waits until `/readyz` answers 200; the time it took.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, String> {
        self.wait_ok("/readyz", timeout).await
    }

    /// Waits until `path` answers 2xx; the time it took, or why not (the process
    /// exited, or `timeout` passed).
    async fn wait_ok(&mut self, path: &str, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let http = Http::new(&self.url, None);
        loop {
            if let Some(p) = self.proc.as_mut()
                && !p.running()
            {
                return Err(format!("muster serve exited\n{}", p.log()));
            }
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(2),
                http.req(reqwest::Method::GET, path).send(),
            )
            .await
                && r.status().is_success()
            {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err("muster serve not ready in time".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// An admin client.
    pub fn api(&self) -> Http {
        Http::new(&self.url, Some(ADMIN_TOKEN))
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
        let mut s = Serve::new(super::free_port(), redis_url, ns);
        s.proc = Some(Proc::spawn(
            &format!("serve 127.0.0.1:{}", s.port),
            &serve_args(&format!("127.0.0.1:{}", s.port), redis_url, ns),
        ));
        match s.wait_ok("/healthz", Duration::from_secs(30)).await {
            Ok(_) => {
                return ServeProc {
                    proc: s.proc.take().expect("spawned"),
                    url: s.url,
                };
            }
            // It exited (most likely the port was taken meanwhile): try another port.
            Err(e) if e.starts_with("muster serve exited") => {
                eprintln!("muster serve exited early, retrying\n{e}");
            }
            Err(_) => panic!(
                "muster serve did not come up\n{}",
                s.proc.as_ref().map(Proc::log).unwrap_or_default()
            ),
        }
    }
    panic!("muster serve did not start in 3 tries");
}

/// `agent --server <servers>... --token <admin> <extra...>`.
pub fn agent_args(servers: &[&str], extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["agent".into()];
    for s in servers {
        args.push("--server".into());
        args.push((*s).to_string());
    }
    args.push("--token".into());
    args.push(ADMIN_TOKEN.into());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts `muster agent --server <servers> --token <admin> <extra...>`
/// (e.g. `["--builtin", "--capacity", "8"]`).
pub fn spawn_agent_process(servers: &[&str], extra: &[&str]) -> Proc {
    Proc::spawn(
        &format!("agent {}", extra.join(" ")),
        &agent_args(servers, extra),
    )
}

/// `muster doctor` (the CLI) on `redis_url` / `ns`: exit status and output.
pub fn doctor_cli(redis_url: &str, ns: &str) -> (bool, String) {
    let out = Command::new(muster_bin())
        .args(["doctor", "--redis-url", redis_url, "--namespace", ns])
        .output()
        .expect("run muster doctor");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Asserts `muster doctor` on the end-to-end Redis (server or Cluster) exits 0 for `ns`.
#[track_caller]
pub fn assert_doctor_cli_clean_e2e(ns: &str) {
    let out = Command::new(muster_bin())
        .arg("doctor")
        .args(super::e2e_redis_flags())
        .args(["--namespace", ns])
        .output()
        .expect("run muster doctor");
    assert!(
        out.status.success(),
        "muster doctor found violations:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts `muster doctor --redis-url URL --namespace NS` exits 0.
#[track_caller]
pub fn assert_doctor_cli_clean(redis_url: &str, ns: &str) {
    let (ok, out) = doctor_cli(redis_url, ns);
    assert!(ok, "muster doctor found violations:\n{out}");
}
