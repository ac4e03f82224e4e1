//! `muster dev` and `muster demo`, driven through the real binary.

use crate::support::{free_port, muster_bin};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A `muster dev` child process: stdout lines arrive on a channel; killed on drop.
struct Dev {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr_path: std::path::PathBuf,
}

impl Dev {
    fn start(listen: &str, data_dir: &Path, agents: u32, stderr_path: &Path) -> Dev {
        let stderr = std::fs::File::create(stderr_path).expect("stderr file");
        let mut child = Command::new(muster_bin())
            .args(["dev", "--listen", listen, "--agents", &agents.to_string()])
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("MUSTER_REDIS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start muster dev");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Dev {
            child,
            lines,
            seen: Vec::new(),
            stderr_path: stderr_path.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the `token: <admin token>` line and returns the token.
    fn wait_token(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let token = line.strip_prefix("token: ").map(|t| t.trim().to_string());
                    self.seen.push(line);
                    if let Some(t) = token {
                        return t;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        panic!(
                            "muster dev exited ({status}) before printing its token: {}",
                            self.diagnostics()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().expect("wait");
                    panic!(
                        "muster dev closed stdout ({status}): {}",
                        self.diagnostics()
                    );
                }
            }
        }
        panic!("no token line within 60s: {}", self.diagnostics());
    }

    fn diagnostics(&self) -> String {
        format!(
            "stdout so far: {:?}; stderr: {}",
            self.seen,
            std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
        )
    }

    /// Sends `signal` and waits for the exit; panics after `limit`.
    fn stop(&mut self, signal: &str, limit: Duration) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} failed");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "muster dev did not exit within {limit:?} of SIG{signal}: {}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pids of the processes whose parent is `ppid`, with their command lines.
fn children_of(ppid: u32) -> Vec<(u32, String)> {
    crate::support::children_of(ppid)
        .into_iter()
        .map(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            (pid, cmd)
        })
        .collect()
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run muster")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn dev_runs_tasks_and_ctrl_c_leaves_no_process_behind() {
    let data = tempfile::tempdir().expect("temp dir");
    let logs = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let server = format!("http://{listen}");
    let mut dev = Dev::start(&listen, data.path(), 2, &logs.path().join("dev1.err"));
    let token = dev.wait_token();
    assert_eq!(token.len(), 32, "token {token:?}");
    assert!(
        token.chars().all(|c| c.is_ascii_hexdigit()),
        "token {token:?}"
    );
    let banner = dev.seen.join("\n");
    assert!(banner.contains(&format!("{server}/docs")), "{banner}");
    assert!(banner.contains(&server), "{banner}");
    // The token is kept in the data directory, with the private redis's port.
    let stored = std::fs::read_to_string(data.path().join("admin-token")).expect("admin-token");
    assert_eq!(stored.trim(), token);
    let redis_port: u16 = std::fs::read_to_string(data.path().join("redis.port"))
        .expect("redis.port")
        .trim()
        .parse()
        .expect("a port");
    assert!(
        TcpStream::connect(("127.0.0.1", redis_port)).is_ok(),
        "private redis is up"
    );

    // A task runs on the local agents.
    let out = run(Command::new(muster_bin()).args([
        "submit",
        "--server",
        &server,
        "--token",
        &token,
        "--kind",
        "echo",
        "--payload",
        r#"{"x":1}"#,
        "--wait",
        "--wait-timeout-ms",
        "30000",
        "--json",
    ]));
    assert!(
        out.status.success(),
        "submit: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let task: Value = serde_json::from_slice(&out.stdout).expect("task JSON");
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(task["result"], json!({"x": 1}), "{task}");
    let task_id = task["id"].as_str().expect("id").to_string();
    // Plain `--wait` prints the result.
    let out = run(Command::new(muster_bin()).args([
        "submit",
        "--server",
        &server,
        "--token",
        &token,
        "--kind",
        "echo",
        "--payload",
        r#"{"x":1}"#,
        "--wait",
    ]));
    assert!(out.status.success(), "submit: {}", text(&out.stderr));
    let result: Value = serde_json::from_slice(&out.stdout).expect("result JSON");
    assert_eq!(result, json!({"x": 1}));

    // Its children: at least the private redis-server.
    let children = children_of(dev.pid());
    assert!(
        children.iter().any(|(_, cmd)| cmd.contains("redis-server")),
        "no redis-server child: {children:?}"
    );

    // Ctrl-C stops everything.
    let status = dev.stop("INT", Duration::from_secs(60));
    assert!(
        status.success(),
        "muster dev exited with {status}: {}",
        dev.diagnostics()
    );
    for (pid, cmd) in &children {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "child {pid} ({cmd}) outlived muster dev"
        );
    }
    assert!(children_of(dev.pid()).is_empty());
    assert!(
        TcpStream::connect(("127.0.0.1", redis_port)).is_err(),
        "the private redis-server still listens on {redis_port}"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the API still listens on {port}"
    );

    // A restart reuses the token and the data: the task survived.
    let mut dev2 = Dev::start(&listen, data.path(), 0, &logs.path().join("dev2.err"));
    let token2 = dev2.wait_token();
    assert_eq!(token2, token, "the admin token is reused");
    let out = run(Command::new(muster_bin()).args([
        "task", "get", &task_id, "--server", &server, "--token", &token, "--json",
    ]));
    assert!(out.status.success(), "task get: {}", text(&out.stderr));
    let again: Value = serde_json::from_slice(&out.stdout).expect("task JSON");
    assert_eq!(again["state"], "succeeded", "{again}");
    assert_eq!(again["result"], json!({"x": 1}));
    let redis_port2: u16 = std::fs::read_to_string(data.path().join("redis.port"))
        .expect("redis.port")
        .trim()
        .parse()
        .expect("a port");
    let status = dev2.stop("TERM", Duration::from_secs(60));
    assert!(
        status.success(),
        "muster dev exited with {status}: {}",
        dev2.diagnostics()
    );
    assert!(TcpStream::connect(("127.0.0.1", redis_port2)).is_err());
}

/// True while `pid` runs (a zombie, not yet reaped by init, does not count).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

#[test]
fn dev_killed_with_sigkill_takes_its_redis_server_with_it() {
    let data = tempfile::tempdir().expect("temp dir");
    let logs = tempfile::tempdir().expect("temp dir");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut dev = Dev::start(&listen, data.path(), 1, &logs.path().join("dev1.err"));
    dev.wait_token();
    let read = |name: &str| -> u32 {
        std::fs::read_to_string(data.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let redis_pid = read("redis.pid");
    let redis_port = u16::try_from(read("redis.port")).expect("a port");
    assert!(running(redis_pid), "the private redis-server runs");
    // No watchdog process: the kernel signals redis-server when muster dies.
    let children = children_of(dev.pid());
    assert!(
        children.iter().all(|(_, cmd)| cmd.contains("redis-server")),
        "muster dev has children besides redis-server: {children:?}"
    );

    let status = dev.stop("KILL", Duration::from_secs(10));
    assert!(!status.success(), "{status}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while running(redis_pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !running(redis_pid),
        "redis-server (pid {redis_pid}) outlived muster dev killed with SIGKILL"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", redis_port)).is_err(),
        "the private redis-server still listens on {redis_port}"
    );

    // The data directory is usable again at once.
    let mut dev2 = Dev::start(&listen, data.path(), 0, &logs.path().join("dev2.err"));
    dev2.wait_token();
    let status = dev2.stop("INT", Duration::from_secs(60));
    assert!(status.success(), "{status}: {}", dev2.diagnostics());
}

#[test]
fn dev_and_demo_without_redis_server_say_how_to_get_it() {
    let empty = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    for args in [
        vec![
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.path().to_str().expect("utf-8"),
        ],
        vec!["demo", "--size-mb", "1"],
    ] {
        let out = run(Command::new(muster_bin())
            .args(&args)
            .env("PATH", empty.path())
            .env_remove("MUSTER_REDIS_URL"));
        assert!(
            !out.status.success(),
            "{args:?} succeeded without redis-server"
        );
        let err = text(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line expected, got {err:?}");
        let line = lines[0];
        assert!(line.contains("redis-server"), "{line}");
        assert!(line.contains("apt-get install -y redis-server"), "{line}");
        assert!(line.contains("--redis-url"), "{line}");
        assert!(
            text(&out.stdout).trim().is_empty(),
            "{args:?}: stdout {:?}",
            text(&out.stdout)
        );
    }
}

/// Counts words the way the `wordcount` kind does (split on every non-alphanumeric
/// character, lower-cased), written independently for an ASCII corpus.
fn count_ascii_words(bytes: &[u8]) -> (HashMap<Vec<u8>, u64>, u64) {
    let mut words: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut total = 0;
    let mut cur = Vec::with_capacity(32);
    for &b in bytes.iter().chain(std::iter::once(&b' ')) {
        assert!(b.is_ascii(), "the corpus is ASCII");
        if b.is_ascii_alphanumeric() {
            cur.push(b.to_ascii_lowercase());
        } else if !cur.is_empty() {
            total += 1;
            match words.get_mut(cur.as_slice()) {
                Some(c) => *c += 1,
                None => {
                    words.insert(cur.clone(), 1);
                }
            }
            cur.clear();
        }
    }
    (words, total)
}

#[test]
fn demo_counts_50_mb_of_words_right_despite_a_killed_agent_and_a_failure() {
    let corpus = tempfile::tempdir().expect("temp dir");
    let started = Instant::now();
    let out = run(Command::new(muster_bin())
        .args(["demo", "--size-mb", "50", "--json", "--corpus-dir"])
        .arg(corpus.path())
        .env("RUST_LOG", "warn")
        .env_remove("MUSTER_REDIS_URL"));
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "demo failed: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    eprintln!("demo took {took:?}: {v}");

    assert_eq!(v["verified"], true, "{v}");
    let tasks = v["tasks"].as_u64().expect("tasks");
    // 50 MiB in ~256 KiB chunks.
    assert!((190..=210).contains(&tasks), "{v}");
    assert_eq!(v["succeeded"].as_u64(), Some(tasks), "{v}");
    // The fail_once chunk and the killed agent's leases each cost at least one retry.
    assert!(v["retries"].as_u64().expect("retries") >= 2, "{v}");
    assert!(
        v["killed_agent"]
            .as_str()
            .is_some_and(|n| n.starts_with("demo-agent-")),
        "{v}"
    );
    assert!(
        v["corpus_bytes"].as_u64().expect("bytes") >= 50 * 1024 * 1024,
        "{v}"
    );

    // Recompute the answer from the corpus the demo kept.
    let path = v["corpus"].as_str().expect("corpus path");
    assert!(Path::new(path).starts_with(corpus.path()), "{path}");
    let bytes = std::fs::read(path).expect("read the corpus");
    assert_eq!(
        bytes.len() as u64,
        v["corpus_bytes"].as_u64().expect("bytes")
    );
    let (words, total) = count_ascii_words(&bytes);
    assert_eq!(v["total_words"].as_u64(), Some(total), "{v}");
    assert_eq!(
        v["distinct_words"].as_u64(),
        Some(words.len() as u64),
        "{v}"
    );
    let mut top: Vec<(String, u64)> = words
        .into_iter()
        .map(|(w, c)| (String::from_utf8(w).expect("ascii"), c))
        .collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    top.truncate(10);
    let expected: Vec<Value> = top.iter().map(|(w, c)| json!([w, c])).collect();
    assert_eq!(v["top"], Value::Array(expected), "{v}");
}
