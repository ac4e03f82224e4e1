//! Executors: how one leased task runs. A shell command (`sh -c`, payload on stdin,
//! result on stdout), an HTTP webhook, the built-in handlers, or any
//! [`Handler`](super::Handler). `timeout_ms` is the lease TTL, renewed while the
//! handler runs; the handler itself is only bounded by the task's optional
//! `max_run_ms` (killed past it, a retryable failure).

use super::Executor;
use super::builtin::run_builtin;
use super::handler::{ExecError, TaskContext};
use crate::domain::Lease;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// How much of stderr (or of an HTTP error body) goes into the error message.
pub const ERROR_TAIL_BYTES: usize = 2048;

/// Run-time bound when a task carries no `max_run_ms`: in effect, none.
pub const UNBOUNDED_MS: u64 = 365 * 24 * 3600 * 1000;

/// The lease TTL (`timeout_ms`), 30 s when it is not positive.
pub fn lease_ttl(lease: &Lease) -> Duration {
    let ms = u64::try_from(lease.task.timeout_ms)
        .ok()
        .filter(|ms| *ms > 0)
        .unwrap_or(30_000);
    Duration::from_millis(ms)
}

/// How long one attempt may run: the task's `max_run_ms`, else [`UNBOUNDED_MS`].
pub fn task_timeout(lease: &Lease) -> Duration {
    let ms = lease
        .task
        .max_run_ms
        .and_then(|ms| u64::try_from(ms).ok())
        .filter(|ms| *ms > 0)
        .unwrap_or(UNBOUNDED_MS);
    Duration::from_millis(ms)
}

/// Runs executors; holds the HTTP client of the webhook executor.
#[derive(Debug, Clone)]
pub struct Runner {
    executor: Executor,
    http: reqwest::Client,
}

impl Runner {
    /// A runner for `executor`.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(executor: Executor) -> anyhow::Result<Self> {
        // The built-in kinds are a registry like any SDK worker's: one engine.
        let executor = match executor {
            Executor::Builtin => Executor::Handler(std::sync::Arc::new(super::builtin::registry())),
            other => other,
        };
        // No redirects: a 3xx would re-send the payload and the X-Muster-* headers to
        // wherever the handler points (issue 16 item 11); it is answered as a failure.
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Runner { executor, http })
    }

    /// Runs the leased task to its outcome. Dropping the future stops the work (a
    /// shell command's whole process group is killed).
    ///
    /// # Errors
    /// The attempt failed (including "timed out after N ms").
    pub async fn run(&self, lease: &Lease) -> Result<Value, ExecError> {
        self.run_with(lease, TaskContext::detached(lease)).await
    }

    /// Runs the leased task with `ctx` (what in-process handlers see).
    ///
    /// # Errors
    /// The attempt failed (including "timed out after N ms").
    pub async fn run_with(&self, lease: &Lease, ctx: TaskContext) -> Result<Value, ExecError> {
        match &self.executor {
            Executor::Exec(cmd) => run_command(cmd, lease).await,
            Executor::Http(url) => run_http(&self.http, url, lease).await,
            Executor::Builtin => {
                let task = &lease.task;
                bounded(lease, run_builtin(&task.kind, &task.payload, task.attempts)).await
            }
            Executor::Handler(h) => bounded(lease, h.run(lease, ctx)).await,
        }
    }

    /// True for in-process executors, which may take a moment to see a stop request.
    pub fn in_process(&self) -> bool {
        matches!(self.executor, Executor::Builtin | Executor::Handler(_))
    }
}

/// Runs an in-process handler within the task's run-time bound.
async fn bounded(
    lease: &Lease,
    work: impl Future<Output = Result<Value, ExecError>>,
) -> Result<Value, ExecError> {
    let timeout = task_timeout(lease);
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(timeout)),
    }
}

fn timed_out(timeout: Duration) -> ExecError {
    ExecError::retryable(format!("timed out after {} ms", timeout.as_millis()))
}

/// Parses an output as the result: JSON if it is JSON, else the trimmed text as a JSON
/// string; empty output is `null`.
pub fn parse_output(bytes: &[u8]) -> Value {
    let text = String::from_utf8_lossy(bytes);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(trimmed).unwrap_or_else(|_| Value::String(trimmed.to_string()))
}

/// The last `max` bytes of `bytes` as text (cut at a character boundary), trimmed.
fn tail_text(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    let text = String::from_utf8_lossy(&bytes[start..]);
    // A cut through a multi-byte character leaves U+FFFD at the front: drop it.
    text.trim_start_matches('\u{FFFD}').trim().to_string()
}

/// Kills a process group when dropped, so that nothing a command started outlives
/// its task (or the agent).
struct GroupKiller(Option<u32>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
            kill_group(pgid);
        }
    }
}

/// Sends SIGKILL to the process group `pgid`. The crate denies `unsafe`, so this goes
/// through kill(1) rather than `libc::kill`.
fn kill_group(pgid: u32) {
    if pgid <= 1 {
        return;
    }
    let res = std::process::Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(e) = res {
        tracing::warn!(pgid, error = %e, "cannot run kill(1) on the process group");
    }
}

/// Reads everything, keeping only the last `keep` bytes.
async fn read_tail<R: AsyncRead + Unpin>(mut r: R, keep: usize) -> Vec<u8> {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * keep {
                    kept.drain(..kept.len() - keep);
                }
            }
        }
    }
    let start = kept.len().saturating_sub(keep);
    kept.split_off(start)
}

async fn read_all<R: AsyncRead + Unpin>(mut r: R) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    Ok(out)
}

/// Variables a command handler inherits from the agent: these, and what
/// [`pass_env`] adds (`muster agent --env NAME`).
pub const BASE_ENV: [&str; 7] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER"];

static PASSED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Also passes these variables of the agent's environment on to command handlers
/// (once per process, before the agent runs; later calls are ignored).
pub fn pass_env(names: Vec<String>) {
    let _ = PASSED.set(names);
}

/// The environment a command handler starts with (besides the `MUSTER_TASK_*` ones).
pub fn passed_env() -> Vec<(String, String)> {
    let extra = PASSED.get().map(Vec::as_slice).unwrap_or_default();
    BASE_ENV
        .iter()
        .map(|s| s.to_string())
        .chain(extra.iter().cloned())
        .filter_map(|name| std::env::var(&name).ok().map(|v| (name, v)))
        .collect()
}

/// Runs `sh -c cmd` for the task (see the module docs).
async fn run_command(cmd: &str, lease: &Lease) -> Result<Value, ExecError> {
    let timeout = task_timeout(lease);
    let task = &lease.task;
    let payload = serde_json::to_vec(&task.payload)
        .map_err(|e| ExecError::retryable(format!("cannot encode the payload: {e}")))?;
    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        // A minimal environment: the agent's own (its MUSTER_TOKEN above all) stays out
        // of the handler, which could return it in a result that any read token sees.
        .env_clear()
        .envs(passed_env())
        .env("MUSTER_TASK_ID", &task.id)
        .env("MUSTER_TASK_KIND", &task.kind)
        .env("MUSTER_ATTEMPT", task.attempts.to_string())
        .env("MUSTER_FENCE", lease.fence.to_string())
        .env("MUSTER_QUEUE", &task.queue)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| ExecError::retryable(format!("cannot start sh: {e}")))?;
    // Dropped last: kills whatever the command left behind, on every path.
    let _group = GroupKiller(child.id());

    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its stdin closes the pipe: that is fine.
            let _ = stdin.write_all(&payload).await;
            let _ = stdin.shutdown().await;
        }
    };
    let out = async move {
        match stdout {
            Some(s) => read_all(s).await,
            None => Ok(Vec::new()),
        }
    };
    let err = async move {
        match stderr {
            Some(s) => read_tail(s, ERROR_TAIL_BYTES).await,
            None => Vec::new(),
        }
    };
    let work = async {
        let ((), out, err, status) = tokio::join!(feed, out, err, child.wait());
        (out, err, status)
    };
    let (out, err, status) = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => return Err(timed_out(timeout)),
    };
    let status = status.map_err(|e| ExecError::retryable(format!("cannot wait for sh: {e}")))?;
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let what = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "abnormal exit".to_string(),
        };
        return Err(ExecError::retryable(format!(
            "{what}: {}",
            tail_text(&err, ERROR_TAIL_BYTES)
        )));
    }
    let out = out.map_err(|e| ExecError::retryable(format!("cannot read stdout: {e}")))?;
    Ok(parse_output(&out))
}

/// POSTs the payload to `url` (see the module docs).
async fn run_http(http: &reqwest::Client, url: &str, lease: &Lease) -> Result<Value, ExecError> {
    let timeout = task_timeout(lease);
    let task = &lease.task;
    let req = http
        .post(url)
        .timeout(timeout)
        .header("X-Muster-Task-Id", &task.id)
        .header("X-Muster-Kind", &task.kind)
        .header("X-Muster-Attempt", task.attempts.to_string())
        .header("X-Muster-Fence", lease.fence.to_string())
        .json(&task.payload);
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Err(timed_out(timeout)),
        Err(e) => return Err(ExecError::retryable(format!("HTTP request failed: {e}"))),
    };
    let status = resp.status();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) if e.is_timeout() => return Err(timed_out(timeout)),
        Err(e) => return Err(ExecError::retryable(format!("HTTP body unreadable: {e}"))),
    };
    if status.is_success() {
        return Ok(parse_output(&body));
    }
    // A 4xx other than 408/429 says the request itself is wrong: retrying will not help.
    let code = status.as_u16();
    let retryable = !status.is_client_error() || code == 408 || code == 429;
    Err(ExecError {
        message: format!("HTTP {code}: {}", tail_text(&body, ERROR_TAIL_BYTES)),
        retryable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lease(kind: &str, payload: Value, timeout_ms: i64) -> Lease {
        crate::agent::tests::lease("01TEST.default", kind, payload, timeout_ms, 2, 7)
    }

    fn exec(cmd: &str) -> Runner {
        Runner::new(Executor::Exec(cmd.into())).expect("runner")
    }

    #[tokio::test]
    async fn cat_returns_the_payload() {
        let p = json!({"a": 1, "b": ["x", null]});
        assert_eq!(exec("cat").run(&lease("k", p.clone(), 5000)).await, Ok(p));
    }

    #[tokio::test]
    async fn env_carries_the_task() {
        let r = exec(r#"printf '%s %s %s %s %s' "$MUSTER_TASK_ID" "$MUSTER_TASK_KIND" "$MUSTER_ATTEMPT" "$MUSTER_FENCE" "$MUSTER_QUEUE""#)
            .run(&lease("resize", Value::Null, 5000))
            .await;
        assert_eq!(r, Ok(json!("01TEST.default resize 2 7 default")));
    }

    #[tokio::test]
    async fn non_zero_exit_fails_with_stderr_tail() {
        let e = exec("echo oops >&2; exit 3")
            .run(&lease("k", Value::Null, 5000))
            .await
            .unwrap_err();
        assert_eq!(e.message, "exit status 3: oops");
        assert!(e.retryable);
    }

    #[tokio::test]
    async fn long_stderr_is_cut_to_its_tail() {
        let e = exec("i=0; while [ $i -lt 3000 ]; do echo line$i >&2; i=$((i+1)); done; exit 1")
            .run(&lease("k", Value::Null, 10_000))
            .await
            .unwrap_err();
        assert!(e.message.starts_with("exit status 1: "));
        assert!(e.message.ends_with("line2999"));
        assert!(e.message.len() <= ERROR_TAIL_BYTES + 20);
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let marker = tempfile::NamedTempFile::new().expect("temp file");
        let path = marker.path().to_str().expect("utf-8").to_string();
        // A background grandchild that would write the marker if it survived.
        let cmd = format!("(sleep 1; echo alive > {path}) & sleep 5");
        let t = std::time::Instant::now();
        let e = exec(&cmd)
            .run(&lease("k", Value::Null, 200))
            .await
            .unwrap_err();
        assert_eq!(e.message, "timed out after 200 ms");
        assert!(e.retryable);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let written = std::fs::read_to_string(&path).expect("read marker");
        assert_eq!(written, "", "a grandchild outlived the timeout");
    }

    #[tokio::test]
    async fn non_json_stdout_is_a_string_and_empty_is_null() {
        let r = exec("echo '  hello world  '")
            .run(&lease("k", Value::Null, 5000))
            .await;
        assert_eq!(r, Ok(json!("hello world")));
        let r = exec("true").run(&lease("k", Value::Null, 5000)).await;
        assert_eq!(r, Ok(Value::Null));
        let r = exec("echo 42").run(&lease("k", Value::Null, 5000)).await;
        assert_eq!(r, Ok(json!(42)));
    }

    #[tokio::test]
    async fn a_command_ignoring_a_large_stdin_still_succeeds() {
        let big = Value::String("x".repeat(1 << 20));
        let r = exec("echo '{\"ok\":true}'")
            .run(&lease("k", big, 5000))
            .await;
        assert_eq!(r, Ok(json!({"ok": true})));
    }

    #[tokio::test]
    async fn builtin_runs_in_process_with_the_timeout() {
        let r = Runner::new(Executor::Builtin).expect("runner");
        assert_eq!(
            r.run(&lease("echo", json!({"x": 1}), 1000)).await,
            Ok(json!({"x": 1}))
        );
        let e = r
            .run(&lease("sleep", json!({"ms": 5000}), 100))
            .await
            .unwrap_err();
        assert_eq!(e.message, "timed out after 100 ms");
        let e = r.run(&lease("nope", Value::Null, 1000)).await.unwrap_err();
        assert!(!e.retryable);
    }

    /// An in-process handler as the SDK will plug in: doubles `n`, or sleeps on `nap`.
    struct Doubler;

    impl crate::agent::Handler for Doubler {
        fn run<'a>(
            &'a self,
            lease: &'a Lease,
            _ctx: TaskContext,
        ) -> futures::future::BoxFuture<'a, Result<Value, ExecError>> {
            Box::pin(async move {
                if lease.task.kind == "nap" {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                let n = lease.task.payload["n"]
                    .as_i64()
                    .ok_or_else(|| ExecError::fatal("no n"))?;
                Ok(json!(n * 2))
            })
        }
    }

    #[tokio::test]
    async fn a_custom_handler_runs_within_the_task_bound() {
        let r = Runner::new(Executor::Handler(std::sync::Arc::new(Doubler))).expect("runner");
        assert_eq!(
            r.run(&lease("k", json!({"n": 21}), 1000)).await,
            Ok(json!(42))
        );
        let e = r.run(&lease("k", Value::Null, 1000)).await.unwrap_err();
        assert_eq!(e, ExecError::fatal("no n"));
        let e = r
            .run(&lease("nap", json!({"n": 1}), 100))
            .await
            .unwrap_err();
        assert_eq!(e.message, "timed out after 100 ms");
        assert!(e.retryable);
    }

    #[test]
    fn tail_text_keeps_the_end() {
        assert_eq!(tail_text(b"  abc  ", 100), "abc");
        assert_eq!(tail_text(b"0123456789", 4), "6789");
        assert_eq!(tail_text("ééé".as_bytes(), 3), "é");
    }
}
