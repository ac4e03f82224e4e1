//! Client commands against a running server: submit, task, queues, nodes.

use crate::domain::{NewTask, Node, NodeList, Problem, QueueInfo, QueueList, Task, TaskState};
use anyhow::Context as _;
use comfy_table::{CellAlignment, Table};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Connection flags shared by client commands.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// Control-plane URL.
    #[arg(long, env = "MUSTER_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token.
    #[arg(long, env = "MUSTER_TOKEN")]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `muster submit`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Handler name.
    #[arg(long)]
    pub kind: String,
    /// Queue.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Payload JSON (`-` reads stdin).
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// File holding the payload JSON.
    #[arg(long)]
    pub payload_file: Option<std::path::PathBuf>,
    /// 0..=9, higher first.
    #[arg(long)]
    pub priority: Option<i64>,
    /// Run no sooner than this many ms from now.
    #[arg(long)]
    pub delay_ms: Option<i64>,
    /// Attempts allowed.
    #[arg(long)]
    pub max_attempts: Option<i64>,
    /// Lease TTL.
    #[arg(long)]
    pub timeout_ms: Option<i64>,
    /// Idempotency-Key header.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait for the task to finish and print its result.
    #[arg(long)]
    pub wait: bool,
    /// With `--wait`: give up after this long (exit 1); waits forever when absent.
    #[arg(long, requires = "wait")]
    pub wait_timeout_ms: Option<u64>,
}

/// Flags of `muster task`.
#[derive(Debug, Clone, clap::Args)]
pub struct TaskArgs {
    #[command(subcommand)]
    pub action: TaskAction,
}

/// `muster task` actions.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TaskAction {
    /// Show a task.
    Get {
        /// Task id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Wait until a task is terminal and show it.
    Wait {
        /// Task id.
        id: String,
        /// Give up after this long (the task is shown as it stands).
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel a task.
    Cancel {
        /// Task id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Retry a failed or cancelled task.
    Retry {
        /// Task id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Flags of `muster queues` and `muster nodes`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// Longest single long-poll of `GET /v1/tasks/{id}/wait`.
const WAIT_CHUNK_MS: u64 = 30_000;
/// Connect timeout of every request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request timeout of ordinary (non long-polling) requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// `muster submit`.
///
/// # Errors
/// Bad flags, an unreachable server, or an error answer.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let payload = read_payload(
        args.payload.as_deref(),
        args.payload_file.as_deref(),
        std::io::stdin(),
    )?;
    let client = ApiClient::new(&args.conn)?;
    let new = NewTask {
        kind: args.kind.clone(),
        queue: Some(args.queue.clone()),
        payload,
        priority: args.priority,
        delay_ms: args.delay_ms,
        max_attempts: args.max_attempts,
        timeout_ms: args.timeout_ms,
        ..NewTask::default()
    };
    let created = client
        .create_task(&new, args.idempotency_key.as_deref())
        .await?;
    if !args.wait {
        if args.conn.json {
            print_json(&created.raw)?;
        } else {
            println!("{}", created.value.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let id = created.value.id.clone();
    let done = client
        .wait_until_terminal(&id, args.wait_timeout_ms.map(Duration::from_millis))
        .await?;
    let task = &done.value;
    if !task.state.is_terminal() {
        if args.conn.json {
            print_json(&done.raw)?;
        }
        anyhow::bail!(
            "task {id} still {} after {}",
            task.state,
            humanize_ms(i64::try_from(args.wait_timeout_ms.unwrap_or(0)).unwrap_or(i64::MAX))
        );
    }
    if args.conn.json {
        print_json(&done.raw)?;
    } else if task.state == TaskState::Succeeded {
        print_json(task.result.as_ref().unwrap_or(&Value::Null))?;
    }
    if task.state == TaskState::Succeeded {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{}", terminal_failure_line(task));
        Ok(ExitCode::from(1))
    }
}

/// `muster task …`.
///
/// # Errors
/// An unreachable server or an error answer.
pub async fn task(args: TaskArgs) -> anyhow::Result<ExitCode> {
    let (conn, answer) = match &args.action {
        TaskAction::Get { id, conn } => (conn, ApiClient::new(conn)?.get_task(id).await?),
        TaskAction::Wait {
            id,
            timeout_ms,
            conn,
        } => {
            let answer = ApiClient::new(conn)?
                .wait_until_terminal(id, Some(Duration::from_millis(*timeout_ms)))
                .await?;
            if !answer.value.state.is_terminal() {
                eprintln!(
                    "task {} still {} after {}",
                    answer.value.id,
                    answer.value.state,
                    humanize_ms(i64::try_from(*timeout_ms).unwrap_or(i64::MAX))
                );
            }
            (conn, answer)
        }
        TaskAction::Cancel { id, conn } => (conn, ApiClient::new(conn)?.cancel_task(id).await?),
        TaskAction::Retry { id, conn } => (conn, ApiClient::new(conn)?.retry_task(id).await?),
    };
    if conn.json {
        print_json(&answer.raw)?;
    } else {
        print!("{}", render_task(&answer.value));
    }
    Ok(ExitCode::SUCCESS)
}

/// `muster queues`.
///
/// # Errors
/// An unreachable server or an error answer.
pub async fn queues(args: ListArgs) -> anyhow::Result<ExitCode> {
    let answer = ApiClient::new(&args.conn)?.queues().await?;
    if args.conn.json {
        print_json(&answer.raw)?;
    } else {
        println!("{}", render_queues(&answer.value));
    }
    Ok(ExitCode::SUCCESS)
}

/// `muster schedules`.
///
/// # Errors
/// An unreachable server or an error answer.
pub async fn schedules(args: ListArgs) -> anyhow::Result<ExitCode> {
    let answer: Answer<crate::domain::coord::ScheduleList> = ApiClient::new(&args.conn)?
        .call(Method::GET, &["v1", "schedules"], &[], None, &[], None)
        .await?;
    if args.conn.json {
        print_json(&answer.raw)?;
    } else {
        println!("{}", render_schedules(&answer.value));
    }
    Ok(ExitCode::SUCCESS)
}

/// The `muster schedules` table: one row per schedule with its next and last fire.
pub fn render_schedules(list: &crate::domain::coord::ScheduleList) -> String {
    let header = [
        "SCHEDULE",
        "CRON",
        "TIMEZONE",
        "PAUSED",
        "NEXT FIRE",
        "LAST FIRE",
        "FIRED",
        "SKIPPED",
        "MISSED",
    ];
    let mut table = new_table(&header, &[6, 7, 8]);
    for s in &list.items {
        let last = s
            .last_fires
            .first()
            .map(|f| format!("{} {:?}", f.tick_at, f.outcome).to_lowercase())
            .unwrap_or_else(|| "-".into());
        table.add_row(vec![
            s.name.clone(),
            s.cron.clone(),
            s.timezone.clone(),
            if s.paused { "yes" } else { "no" }.to_owned(),
            s.next_fire_at.clone().unwrap_or_else(|| "-".into()),
            last,
            s.fired.to_string(),
            s.skipped.to_string(),
            s.missed.to_string(),
        ]);
    }
    finish_table(&table)
}

/// `muster nodes`.
///
/// # Errors
/// An unreachable server or an error answer.
pub async fn nodes(args: ListArgs) -> anyhow::Result<ExitCode> {
    let answer = ApiClient::new(&args.conn)?.nodes().await?;
    if args.conn.json {
        print_json(&answer.raw)?;
    } else {
        println!("{}", render_nodes(&answer.value, now_ms()));
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------

/// A decoded answer together with the JSON exactly as the server sent it (for `--json`).
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The body as received.
    pub raw: Value,
    /// The body decoded into its contract type.
    pub value: T,
}

/// A small typed client of the muster HTTP API (DESIGN.md "HTTP API v1").
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl ApiClient {
    /// Builds a client from the connection flags: base URL (a trailing `/` is ignored,
    /// `http://` is assumed when no scheme is given), optional bearer token, 5 s connect
    /// timeout.
    ///
    /// # Errors
    /// An invalid `--server` URL or an HTTP client that cannot be built.
    pub fn new(conn: &Conn) -> anyhow::Result<Self> {
        let base = parse_base_url(&conn.server)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("muster-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {}", root_cause(&e)))?;
        let token = conn
            .token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        Ok(ApiClient { base, token, http })
    }

    /// The base URL requests are made against.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// `POST /v1/tasks`, with an `Idempotency-Key` header when given.
    ///
    /// # Errors
    /// An unreachable server, an error answer or an unexpected body.
    pub async fn create_task(
        &self,
        new: &NewTask,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Answer<Task>> {
        let body = serde_json::to_value(new).context("cannot encode the task")?;
        let headers: Vec<(&str, &str)> = idempotency_key
            .map(|k| vec![("Idempotency-Key", k)])
            .unwrap_or_default();
        self.call(
            Method::POST,
            &["v1", "tasks"],
            &[],
            Some(&body),
            &headers,
            None,
        )
        .await
    }

    /// `GET /v1/tasks/{id}`.
    ///
    /// # Errors
    /// An unreachable server, an error answer or an unexpected body.
    pub async fn get_task(&self, id: &str) -> anyhow::Result<Answer<Task>> {
        self.call(Method::GET, &["v1", "tasks", id], &[], None, &[], None)
            .await
    }

    /// `GET /v1/tasks/{id}/wait?timeout_ms=`: one long-poll; the task once terminal or as
    /// it stands at the timeout.
    ///
    /// # Errors
    /// An unreachable server, an error answer or an unexpected body.
    pub async fn wait_task(&self, id: &str, timeout_ms: u64) -> anyhow::Result<Answer<Task>> {
        let t = timeout_ms.to_string();
        // Leave the server room to answer at its own timeout before ours fires.
        let deadline = Duration::from_millis(timeout_ms) + REQUEST_TIMEOUT;
        self.call(
            Method::GET,
            &["v1", "tasks", id, "wait"],
            &[("timeout_ms", t.as_str())],
            None,
            &[],
            Some(deadline),
        )
        .await
    }

    /// Long-polls in chunks of at most 30 s until the task is terminal or `total` has
    /// passed (`None`: no limit); returns the task as it last stood.
    ///
    /// # Errors
    /// An unreachable server, an error answer or an unexpected body.
    pub async fn wait_until_terminal(
        &self,
        id: &str,
        total: Option<Duration>,
    ) -> anyhow::Result<Answer<Task>> {
        let start = Instant::now();
        loop {
            let chunk = match total {
                None => WAIT_CHUNK_MS,
                Some(total) => {
                    let left = total.saturating_sub(start.elapsed());
                    u64::try_from(left.as_millis())
                        .unwrap_or(u64::MAX)
                        .min(WAIT_CHUNK_MS)
                }
            };
            let asked = Instant::now();
            let answer = self.wait_task(id, chunk).await?;
            if answer.value.state.is_terminal() || chunk == 0 {
                return Ok(answer);
            }
            if total.is_some_and(|t| start.elapsed() >= t) {
                return Ok(answer);
            }
            // Guard against a server that answers early without a terminal state.
            if asked.elapsed() < Duration::from_millis(100) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// `POST /v1/tasks/{id}/cancel`; the task as it stands after the cancel.
    ///
    /// # Errors
    /// An unreachable server, an error answer or an unexpected body.
    pub async fn cancel_task(&self, id: &str) -> anyhow::Result<Answer<Task>> {
        self.act_on_task(id, "cancel").await
    }

    /// `POST /v1/tasks/{id}/retry`; the task as it stands after the retry.
    ///
    /// # Errors
    /// An unreachable server, an error answer or an unexpected body.
    pub async fn retry_task(&self, id: &str) -> anyhow::Result<Answer<Task>> {
        self.act_on_task(id, "retry").await
    }

    /// `GET /v1/queues`.
    ///
    /// # Errors
    /// An unreachable server, an error answer or an unexpected body.
    pub async fn queues(&self) -> anyhow::Result<Answer<QueueList>> {
        self.call(Method::GET, &["v1", "queues"], &[], None, &[], None)
            .await
    }

    /// `GET /v1/nodes`.
    ///
    /// # Errors
    /// An unreachable server, an error answer or an unexpected body.
    pub async fn nodes(&self) -> anyhow::Result<Answer<NodeList>> {
        self.call(Method::GET, &["v1", "nodes"], &[], None, &[], None)
            .await
    }

    /// POSTs `{}` to `/v1/tasks/{id}/{action}`. A body-less success (e.g. 202/204) is
    /// followed by a `GET` so that the task can still be shown.
    async fn act_on_task(&self, id: &str, action: &str) -> anyhow::Result<Answer<Task>> {
        let empty = Value::Object(serde_json::Map::new());
        let raw = self
            .request(
                Method::POST,
                &["v1", "tasks", id, action],
                &[],
                Some(&empty),
                &[],
                None,
            )
            .await?;
        match raw {
            Some(raw) => decode(raw, &format!("POST /v1/tasks/{{id}}/{action}")),
            None => self.get_task(id).await,
        }
    }

    /// Sends one request and decodes the JSON answer into `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> anyhow::Result<Answer<T>> {
        let what = format!("{method} /{}", segments.join("/"));
        let raw = self
            .request(method, segments, query, body, headers, timeout)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the server answered {what} with an empty body"))?;
        decode(raw, &what)
    }

    /// Sends one request. `Ok(None)`: a success without a body.
    async fn request(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> anyhow::Result<Option<Value>> {
        let url = build_url(&self.base, segments, query)?;
        let mut req = self
            .http
            .request(method.clone(), url)
            .timeout(timeout.unwrap_or(REQUEST_TIMEOUT))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let what = format!("{method} /{}", segments.join("/"));
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(&e, &what))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e, &what))?;
        if !status.is_success() {
            anyhow::bail!("{}", format_error_answer(status.as_u16(), &bytes));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let raw = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!("the server answered {what} with a body that is not JSON: {e}")
        })?;
        Ok(Some(raw))
    }

    /// One line for a failed exchange: unreachable server, timeout, or broken connection.
    fn transport_error(&self, e: &reqwest::Error, what: &str) -> anyhow::Error {
        if e.is_connect() {
            let cause = if e.is_timeout() {
                format!("connect timed out after {}s", CONNECT_TIMEOUT.as_secs())
            } else {
                root_cause(e)
            };
            anyhow::anyhow!("{}", unreachable_message(self.base.as_str(), &cause))
        } else if e.is_timeout() {
            anyhow::anyhow!(
                "{what} to the muster server at {} timed out",
                self.base.as_str().trim_end_matches('/')
            )
        } else {
            anyhow::anyhow!(
                "{what} to the muster server at {} failed: {}",
                self.base.as_str().trim_end_matches('/'),
                root_cause(e)
            )
        }
    }
}

/// Decodes a JSON answer into its contract type, keeping the raw JSON.
fn decode<T: DeserializeOwned>(raw: Value, what: &str) -> anyhow::Result<Answer<T>> {
    let value = serde_json::from_value(raw.clone())
        .map_err(|e| anyhow::anyhow!("unexpected answer from the server to {what}: {e}"))?;
    Ok(Answer { raw, value })
}

/// Parses `--server`: trims a trailing `/`, assumes `http://` when no scheme is given.
fn parse_base_url(server: &str) -> anyhow::Result<Url> {
    let s = server.trim().trim_end_matches('/');
    if s.is_empty() {
        anyhow::bail!("--server is empty; pass a URL like http://127.0.0.1:8080");
    }
    let with_scheme = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let url = Url::parse(&with_scheme)
        .map_err(|e| anyhow::anyhow!("--server {server:?} is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        anyhow::bail!("--server {server:?} must be an http:// or https:// URL");
    }
    Ok(url)
}

/// Appends percent-encoded path segments and query pairs to the base URL.
fn build_url(base: &Url, segments: &[&str], query: &[(&str, &str)]) -> anyhow::Result<Url> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("the server URL {base} cannot take a path"))?
        .pop_if_empty()
        .extend(segments);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}

/// The innermost cause of an error, e.g. `Connection refused (os error 111)`.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    one_line(&cur.to_string())
}

/// The message for a server that cannot be reached.
fn unreachable_message(base: &str, cause: &str) -> String {
    format!(
        "cannot reach the muster server at {}: {cause}; start one with 'muster dev' or pass --server / MUSTER_SERVER",
        base.trim_end_matches('/')
    )
}

/// One line for an error answer: `409 conflict (lease_conflict): <detail>` from a
/// problem+json body, `<status> <reason>: <body>` otherwise; a 401 adds how to pass a
/// token.
pub fn format_error_answer(status: u16, body: &[u8]) -> String {
    let mut msg = match serde_json::from_slice::<Problem>(body) {
        Ok(p) => {
            let title = one_line(&p.title).to_lowercase();
            let title = if title.is_empty() {
                reason(status)
            } else {
                title
            };
            let mut m = format!("{status} {title}");
            if !p.code.is_empty() {
                m.push_str(&format!(" ({})", one_line(&p.code)));
            }
            let detail = one_line(&p.detail);
            if !detail.is_empty() {
                m.push_str(&format!(": {detail}"));
            }
            m
        }
        Err(_) => {
            let text = one_line(&String::from_utf8_lossy(body));
            let text: String = text.chars().take(200).collect();
            if text.is_empty() {
                format!("{status} {}", reason(status))
            } else {
                format!("{status} {}: {text}", reason(status))
            }
        }
    };
    if status == 401 {
        msg.push_str("; pass --token or set MUSTER_TOKEN");
    }
    msg
}

/// Lower-case reason phrase of a status code.
fn reason(status: u16) -> String {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
        .to_lowercase()
}

/// Collapses whitespace runs (newlines included) into single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------
// Payload
// ---------------------------------------------------------------------------------------

/// Reads and validates the payload of `muster submit`: `--payload JSON`, `--payload -`
/// (stdin), `--payload-file F` (`-` is stdin too), or none (`Ok(None)`, no `payload`
/// field is sent).
///
/// # Errors
/// An unreadable source, or text that is not JSON; the message names the source.
pub fn read_payload(
    payload: Option<&str>,
    payload_file: Option<&Path>,
    mut stdin: impl Read,
) -> anyhow::Result<Option<Value>> {
    let (text, source) = match (payload, payload_file) {
        (Some(_), Some(_)) => anyhow::bail!("pass either --payload or --payload-file, not both"),
        (None, None) => return Ok(None),
        (Some("-"), None) => (read_stdin(&mut stdin)?, "stdin (--payload -)".to_owned()),
        (Some(arg), None) => (arg.to_owned(), "--payload".to_owned()),
        (None, Some(path)) if path == Path::new("-") => (
            read_stdin(&mut stdin)?,
            "stdin (--payload-file -)".to_owned(),
        ),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read --payload-file {}: {e}", path.display())
            })?;
            (text, format!("--payload-file {}", path.display()))
        }
    };
    parse_payload(&text, &source).map(Some)
}

/// Parses payload text; `source` names where it came from in the error.
fn parse_payload(text: &str, source: &str) -> anyhow::Result<Value> {
    if text.trim().is_empty() {
        anyhow::bail!("{source} is empty; pass JSON such as '{{}}' or 'null'");
    }
    serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{source} is not valid JSON: {e}"))
}

/// Reads all of stdin as UTF-8.
fn read_stdin(stdin: &mut impl Read) -> anyhow::Result<String> {
    let mut s = String::new();
    stdin
        .read_to_string(&mut s)
        .map_err(|e| anyhow::anyhow!("cannot read the payload from stdin: {e}"))?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------

/// Prints JSON, pretty, on stdout.
fn print_json(v: &Value) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("cannot encode JSON")?
    );
    Ok(())
}

/// `task <id> <state>: <error>` for a task that ended without success.
fn terminal_failure_line(task: &Task) -> String {
    match task.error.as_deref().map(one_line) {
        Some(err) if !err.is_empty() => format!("task {} {}: {err}", task.id, task.state),
        _ => format!("task {} {}", task.id, task.state),
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

/// A duration in ms for people: `850ms`, `3.2s`, `4m05s`, `2h03m`, `3d04h`.
pub fn humanize_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        // Tenths, rounded down so that 59_999 stays below a minute.
        return format!("{}.{}s", ms / 1_000, (ms % 1_000) / 100);
    }
    let secs = ms / 1_000;
    if secs < 3_600 {
        return format!("{}m{:02}s", secs / 60, secs % 60);
    }
    if secs < 86_400 {
        return format!("{}h{:02}m", secs / 3_600, (secs % 3_600) / 60);
    }
    format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3_600)
}

/// A JSON value for a key/value line: compact when short, indented pretty otherwise.
fn json_field(v: &Value) -> String {
    let compact = v.to_string();
    if compact.len() <= 100 {
        return compact;
    }
    serde_json::to_string_pretty(v).unwrap_or(compact)
}

/// The human view of a task: one `key: value` line per field that is set.
pub fn render_task(t: &Task) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("id", t.id.clone()),
        ("queue", t.queue.clone()),
        ("kind", t.kind.clone()),
        (
            "state",
            if t.cancel_requested && !t.state.is_terminal() {
                format!("{} (cancel requested)", t.state)
            } else {
                t.state.to_string()
            },
        ),
        ("priority", t.priority.to_string()),
        ("attempts", format!("{}/{}", t.attempts, t.max_attempts)),
    ];
    let optional = [
        ("node", t.node.clone()),
        ("created", Some(t.created_at.clone())),
        ("run at", t.run_at.clone()),
        ("started", t.started_at.clone()),
        ("finished", t.finished_at.clone()),
        ("lease until", t.lease_expires_at.clone()),
        ("error", t.error.as_deref().map(one_line)),
        ("result", t.result.as_ref().map(json_field)),
        ("progress", t.progress.as_ref().map(json_field)),
    ];
    rows.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    // Fixed key width (the longest key, `lease until:`) so the layout never shifts.
    let width = "lease until:".len();
    let mut out = String::new();
    for (k, v) in rows {
        // Multi-line values (pretty JSON) continue under the value column.
        let v = v.replace('\n', &format!("\n{:width$} ", ""));
        out.push_str(&format!("{:<width$} {v}\n", format!("{k}:")));
    }
    out
}

/// A borderless table independent of the terminal width; `right` lists the columns
/// (by index) aligned right.
fn new_table(header: &[&str], right: &[usize]) -> Table {
    let mut table = Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .force_no_tty()
        .set_header(header.to_vec());
    for (i, col) in table.column_iter_mut().enumerate() {
        col.set_padding((0, 2));
        if right.contains(&i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Renders a table with trailing spaces trimmed from every line.
fn finish_table(table: &Table) -> String {
    table
        .lines()
        .map(|l| l.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `muster queues` table.
pub fn render_queues(list: &QueueList) -> String {
    let header = [
        "QUEUE",
        "PAUSED",
        "PENDING",
        "SCHEDULED",
        "ASSIGNED",
        "RUNNING",
        "RETRYING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "OLDEST PENDING",
    ];
    let mut table = new_table(&header, &[2, 3, 4, 5, 6, 7, 8, 9, 10]);
    for q in &list.items {
        table.add_row(queue_row(q));
    }
    finish_table(&table)
}

/// One row of the queues table.
fn queue_row(q: &QueueInfo) -> Vec<String> {
    let c = &q.counts;
    vec![
        q.name.clone(),
        if q.paused { "yes" } else { "no" }.to_owned(),
        c.pending.to_string(),
        c.scheduled.to_string(),
        c.assigned.to_string(),
        c.running.to_string(),
        c.retrying.to_string(),
        c.succeeded.to_string(),
        c.failed.to_string(),
        c.cancelled.to_string(),
        q.oldest_pending_age_ms
            .map_or_else(|| "-".to_owned(), humanize_ms),
    ]
}

/// The `muster nodes` table; `now_ms` dates the LAST SEEN ages.
pub fn render_nodes(list: &NodeList, now_ms: i64) -> String {
    let header = [
        "ID",
        "NAME",
        "KIND",
        "STATUS",
        "QUEUES",
        "CAPACITY",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "MEAN RUN",
        "LAST SEEN",
    ];
    let mut table = new_table(&header, &[5, 6, 7, 8, 9, 10]);
    for n in &list.items {
        table.add_row(node_row(n, now_ms));
    }
    finish_table(&table)
}

/// One row of the nodes table.
fn node_row(n: &Node, now_ms: i64) -> Vec<String> {
    let last_seen = match crate::domain::parse_rfc3339_ms(&n.last_seen_at) {
        Some(at) => format!("{} ago", humanize_ms(now_ms.saturating_sub(at))),
        None => n.last_seen_at.clone(),
    };
    let mean = n
        .mean_run_ms
        .filter(|m| m.is_finite())
        .map_or_else(|| "-".to_owned(), |m| humanize_ms(m.round() as i64));
    vec![
        n.id.clone(),
        n.name.clone(),
        n.kind.as_str().to_owned(),
        n.status.as_str().to_owned(),
        if n.queues.is_empty() {
            "-".to_owned()
        } else {
            n.queues.join(",")
        },
        n.capacity.to_string(),
        n.running.to_string(),
        n.succeeded.to_string(),
        n.failed.to_string(),
        mean,
        last_seen,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NodeKind, NodeStatus, QueueCounts};
    use serde_json::json;

    fn no_stdin() -> &'static [u8] {
        b""
    }

    #[test]
    fn payload_from_the_argument_is_parsed() {
        let v = read_payload(Some(r#"{"n": 3, "s": "x"}"#), None, no_stdin()).ok();
        assert_eq!(v, Some(Some(json!({"n": 3, "s": "x"}))));
    }

    #[test]
    fn no_payload_means_no_field() {
        assert_eq!(read_payload(None, None, no_stdin()).ok(), Some(None));
        let body = serde_json::to_value(NewTask {
            kind: "echo".into(),
            ..NewTask::default()
        })
        .ok();
        assert_eq!(body, Some(json!({"kind": "echo"})));
    }

    #[test]
    fn payload_dash_reads_stdin() {
        let v = read_payload(Some("-"), None, &b"[1, 2]\n"[..]).ok();
        assert_eq!(v, Some(Some(json!([1, 2]))));
        let v = read_payload(None, Some(Path::new("-")), &b"\"s\""[..]).ok();
        assert_eq!(v, Some(Some(json!("s"))));
    }

    #[test]
    fn invalid_payload_names_its_source() {
        let err = read_payload(Some("{nope"), None, no_stdin())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("--payload is not valid JSON: "), "{err}");
        assert!(!err.contains('\n'));

        let err = read_payload(Some("-"), None, &b"{"[..])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("stdin (--payload -) is not valid JSON: "),
            "{err}"
        );

        let err = read_payload(Some(""), None, no_stdin())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("--payload is empty"), "{err}");
    }

    #[test]
    fn payload_file_is_read_and_checked() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"a": [true]}"#)?;
        assert_eq!(
            read_payload(None, Some(&good), no_stdin())?,
            Some(json!({"a": [true]}))
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "not json")?;
        let err = read_payload(None, Some(&bad), no_stdin())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with(&format!(
                "--payload-file {} is not valid JSON: ",
                bad.display()
            )),
            "{err}"
        );
        let missing = dir.path().join("missing.json");
        let err = read_payload(None, Some(&missing), no_stdin())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("cannot read --payload-file "), "{err}");
        Ok(())
    }

    #[test]
    fn problem_json_becomes_one_line() {
        let body = json!({
            "type": "https://muster.dev/problems/lease_conflict",
            "title": "Conflict",
            "status": 409,
            "detail": "the lease token is stale:\nanother node holds the task",
            "code": "lease_conflict"
        })
        .to_string();
        assert_eq!(
            format_error_answer(409, body.as_bytes()),
            "409 conflict (lease_conflict): the lease token is stale: another node holds the task"
        );
    }

    #[test]
    fn unauthorized_says_how_to_pass_a_token() {
        let body = json!({
            "type": "about:blank",
            "title": "Unauthorized",
            "status": 401,
            "detail": "missing bearer token",
            "code": "unauthorized"
        })
        .to_string();
        assert_eq!(
            format_error_answer(401, body.as_bytes()),
            "401 unauthorized (unauthorized): missing bearer token; pass --token or set MUSTER_TOKEN"
        );
        assert_eq!(
            format_error_answer(401, b""),
            "401 unauthorized; pass --token or set MUSTER_TOKEN"
        );
    }

    #[test]
    fn non_problem_error_bodies_are_shown_briefly() {
        assert_eq!(
            format_error_answer(502, b"<html>\n bad gateway </html>"),
            "502 bad gateway: <html> bad gateway </html>"
        );
        assert_eq!(format_error_answer(404, b""), "404 not found");
        let long = "x".repeat(1_000);
        assert_eq!(
            format_error_answer(500, long.as_bytes()).len(),
            "500 internal server error: ".len() + 200
        );
    }

    #[test]
    fn unreachable_message_names_url_and_fix() {
        assert_eq!(
            unreachable_message("http://127.0.0.1:9/", "Connection refused (os error 111)"),
            "cannot reach the muster server at http://127.0.0.1:9: Connection refused (os error 111); start one with 'muster dev' or pass --server / MUSTER_SERVER"
        );
    }

    #[test]
    fn urls_are_built_from_the_base_with_encoded_segments() -> anyhow::Result<()> {
        let base = parse_base_url("http://127.0.0.1:8080/")?;
        let u = build_url(
            &base,
            &["v1", "tasks", "01AB.my queue/x", "wait"],
            &[("timeout_ms", "30000")],
        )?;
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:8080/v1/tasks/01AB.my%20queue%2Fx/wait?timeout_ms=30000"
        );
        let base = parse_base_url("https://example.com/muster//")?;
        assert_eq!(
            build_url(&base, &["v1", "queues"], &[])?.as_str(),
            "https://example.com/muster/v1/queues"
        );
        let base = parse_base_url("localhost:8080")?;
        assert_eq!(
            build_url(&base, &["v1", "nodes"], &[])?.as_str(),
            "http://localhost:8080/v1/nodes"
        );
        assert!(parse_base_url("").is_err());
        assert!(parse_base_url("ftp://x").is_err());
        Ok(())
    }

    #[test]
    fn durations_are_humanized() {
        assert_eq!(humanize_ms(-5), "0ms");
        assert_eq!(humanize_ms(0), "0ms");
        assert_eq!(humanize_ms(850), "850ms");
        assert_eq!(humanize_ms(1_000), "1.0s");
        assert_eq!(humanize_ms(3_240), "3.2s");
        assert_eq!(humanize_ms(59_999), "59.9s");
        assert_eq!(humanize_ms(60_000), "1m00s");
        assert_eq!(humanize_ms(245_000), "4m05s");
        assert_eq!(humanize_ms(7_380_000), "2h03m");
        assert_eq!(humanize_ms(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
    }

    fn queue_fixture() -> QueueList {
        QueueList {
            items: vec![
                QueueInfo {
                    name: "default".into(),
                    paused: false,
                    weight: 1,
                    human_only: false,
                    counts: QueueCounts {
                        pending: 12,
                        scheduled: 3,
                        assigned: 2,
                        running: 4,
                        retrying: 1,
                        succeeded: 1234,
                        failed: 5,
                        cancelled: 6,
                        ..QueueCounts::default()
                    },
                    max_running: None,
                    rate_limit: None,
                    oldest_pending_age_ms: Some(3_200),
                },
                QueueInfo {
                    name: "emails".into(),
                    paused: true,
                    weight: 2,
                    human_only: false,
                    counts: QueueCounts::default(),
                    max_running: None,
                    rate_limit: None,
                    oldest_pending_age_ms: None,
                },
            ],
        }
    }

    fn cells(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    #[test]
    fn queues_table_shows_counts() {
        let out = render_queues(&queue_fixture());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("QUEUE"), "{out}");
        assert!(lines[0].ends_with("OLDEST PENDING"), "{out}");
        assert_eq!(
            cells(lines[1]),
            [
                "default", "no", "12", "3", "2", "4", "1", "1234", "5", "6", "3.2s"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            ["emails", "yes", "0", "0", "0", "0", "0", "0", "0", "0", "-"]
        );
        assert!(out.lines().all(|l| l == l.trim_end()));
        // Columns line up: every line has the same width up to the last column.
        let empty = render_queues(&QueueList { items: vec![] });
        assert_eq!(empty.lines().count(), 1);
    }

    #[test]
    fn nodes_table_shows_nodes() {
        let now = crate::domain::parse_rfc3339_ms("2030-01-01T00:00:10.000Z").unwrap_or(0);
        let list = NodeList {
            items: vec![
                Node {
                    id: "01HZNODEAAAA".into(),
                    name: "worker-1".into(),
                    kind: NodeKind::Machine,
                    status: NodeStatus::Active,
                    queues: vec!["default".into(), "emails".into()],
                    tags: vec!["gpu".into()],
                    capacity: 8,
                    running: 3,
                    succeeded: 120,
                    failed: 2,
                    mean_run_ms: Some(1_540.4),
                    registered_at: "2030-01-01T00:00:00.000Z".into(),
                    last_seen_at: "2030-01-01T00:00:08.500Z".into(),
                },
                Node {
                    id: "01HZNODEBBBB".into(),
                    name: "alice".into(),
                    kind: NodeKind::Human,
                    status: NodeStatus::Offline,
                    queues: vec![],
                    tags: vec![],
                    capacity: 1,
                    running: 0,
                    succeeded: 0,
                    failed: 0,
                    mean_run_ms: None,
                    registered_at: "2030-01-01T00:00:00.000Z".into(),
                    last_seen_at: "2029-12-31T23:55:00.000Z".into(),
                },
            ],
        };
        let out = render_nodes(&list, now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(
            cells(lines[0]),
            [
                "ID",
                "NAME",
                "KIND",
                "STATUS",
                "QUEUES",
                "CAPACITY",
                "RUNNING",
                "SUCCEEDED",
                "FAILED",
                "MEAN",
                "RUN",
                "LAST",
                "SEEN"
            ]
        );
        assert_eq!(
            cells(lines[1]),
            [
                "01HZNODEAAAA",
                "worker-1",
                "machine",
                "active",
                "default,emails",
                "8",
                "3",
                "120",
                "2",
                "1.5s",
                "1.5s",
                "ago"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            [
                "01HZNODEBBBB",
                "alice",
                "human",
                "offline",
                "-",
                "1",
                "0",
                "0",
                "0",
                "-",
                "5m10s",
                "ago"
            ]
        );
    }

    #[test]
    fn task_block_lists_the_set_fields() -> anyhow::Result<()> {
        let task: Task = serde_json::from_value(json!({
            "id": "01HZTASK.default",
            "queue": "default",
            "kind": "echo",
            "payload": {"x": 1},
            "priority": 5,
            "state": "failed",
            "attempts": 3,
            "max_attempts": 3,
            "timeout_ms": 30000,
            "requires": [],
            "node": "01HZNODE",
            "result": null,
            "error": "boom\nat line 2",
            "progress": {"done": 7},
            "fence": 3,
            "created_at": "2030-01-01T00:00:00.000Z",
            "run_at": null,
            "started_at": "2030-01-01T00:00:01.000Z",
            "finished_at": "2030-01-01T00:00:02.000Z",
            "lease_expires_at": null
        }))?;
        let out = render_task(&task);
        let want = "\
id:          01HZTASK.default
queue:       default
kind:        echo
state:       failed
priority:    5
attempts:    3/3
node:        01HZNODE
created:     2030-01-01T00:00:00.000Z
started:     2030-01-01T00:00:01.000Z
finished:    2030-01-01T00:00:02.000Z
error:       boom at line 2
progress:    {\"done\":7}
";
        assert_eq!(out, want);
        assert_eq!(
            terminal_failure_line(&task),
            "task 01HZTASK.default failed: boom at line 2"
        );
        Ok(())
    }
}
