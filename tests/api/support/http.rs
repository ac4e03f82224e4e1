//! HTTP for tests: [`Http`], a JSON client bound to one server and token, its
//! [`Resp`], and a raw HTTP/1.1 client for what reqwest cannot do (chunked bodies,
//! slow clients, SSE).

use std::time::{Duration, Instant};

/// One HTTP answer, body parsed as JSON when it is JSON (else `Value::Null`).
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body as JSON, or `Null`.
    pub body: serde_json::Value,
    /// Body as text.
    pub text: String,
}

impl Resp {
    /// The body as `T`, panicking with the body on a mismatch.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_value(self.body.clone()).unwrap_or_else(|e| {
            panic!(
                "unexpected body ({e}) for status {}: {}",
                self.status, self.text
            )
        })
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Resp {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts a problem+json error with this status and a non-empty `code`; returns the code.
    #[track_caller]
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        let ct = self.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/problem+json"),
            "content-type {ct:?}, body {}",
            self.text
        );
        let p: muster::domain::Problem = self.json();
        assert_eq!(p.status, status, "problem.status");
        assert!(!p.code.is_empty(), "problem without a code: {}", self.text);
        p.code
    }
}

/// A small JSON HTTP client bound to one server and one bearer token.
#[derive(Clone, Debug)]
pub struct Http {
    client: reqwest::Client,
    /// Base URL.
    pub base: String,
    token: Option<String>,
}

impl Http {
    /// A client for `base` sending `token` (if any).
    pub fn new(base: &str, token: Option<&str>) -> Http {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build()
            .expect("http client");
        Http {
            client,
            base: base.trim_end_matches('/').to_string(),
            token: token.map(str::to_string),
        }
    }

    /// The same server with another token (or none).
    pub fn with_token(&self, token: Option<&str>) -> Http {
        Http {
            client: self.client.clone(),
            base: self.base.clone(),
            token: token.map(str::to_string),
        }
    }

    /// A request builder with the token set.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a request and reads the whole answer.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.expect("HTTP request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("HTTP body");
        let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    /// POST a JSON body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Resp {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    /// POST a raw body as `application/json`.
    pub async fn post_raw(&self, path: &str, body: impl Into<String>) -> Resp {
        let rb = self
            .req(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body.into());
        self.send(rb).await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    /// `POST /v1/tasks`, expecting 201.
    pub async fn submit(&self, task: serde_json::Value) -> muster::domain::Task {
        self.post("/v1/tasks", &task).await.expect(201).json()
    }

    /// `POST /v1/tasks/batch`, expecting 201; the ids.
    pub async fn submit_batch(&self, tasks: Vec<serde_json::Value>) -> Vec<String> {
        let r = self
            .post("/v1/tasks/batch", &serde_json::json!({ "tasks": tasks }))
            .await
            .expect(201);
        r.json::<muster::domain::BatchCreated>().ids
    }

    /// `GET /v1/tasks/{id}`, expecting 200.
    pub async fn task(&self, id: &str) -> muster::domain::Task {
        self.get(&format!("/v1/tasks/{id}"))
            .await
            .expect(200)
            .json()
    }

    /// `GET /v1/nodes`, expecting 200.
    pub async fn nodes(&self) -> Vec<muster::domain::Node> {
        self.get("/v1/nodes")
            .await
            .expect(200)
            .json::<muster::domain::NodeList>()
            .items
    }

    /// Every task of `queue` (optionally in `state`), following cursors.
    pub async fn all_tasks(&self, queue: &str, state: Option<&str>) -> Vec<muster::domain::Task> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/v1/tasks?queue={queue}&limit=1000");
            if let Some(s) = state {
                path.push_str(&format!("&state={s}"));
            }
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            // A busy debug-build server may time out on Redis (503): retry like a client.
            let mut tries = 0;
            let r = loop {
                let r = self.get(&path).await;
                tries += 1;
                if r.status != 503 || tries >= 10 {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            let page: muster::domain::TaskPage = r.expect(200).json();
            out.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return out,
            }
        }
    }

    /// `GET /v1/queues/{name}`: the queue's counts per state (cheap to poll).
    pub async fn queue_counts(&self, queue: &str) -> muster::domain::QueueCounts {
        let r = self.get(&format!("/v1/queues/{queue}")).await;
        if r.status == 503 {
            return muster::domain::QueueCounts::default();
        }
        r.expect(200).json::<muster::domain::QueueInfo>().counts
    }

    /// Waits until the task is terminal (polling), panicking after `timeout`.
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> muster::domain::Task {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.task(id).await;
            if t.state.is_terminal() {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} not terminal after {timeout:?}: {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A raw HTTP/1.1 answer.
#[allow(dead_code)]
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body bytes (de-chunked when chunked).
    pub body: Vec<u8>,
}

#[allow(dead_code)]
impl RawResponse {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a full HTTP/1.1 response (read until close).
pub fn parse_raw_response(raw: &[u8]) -> Option<RawResponse> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(p) = rest.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..p]).ok()?.trim(), 16).ok()?;
            if size == 0 || rest.len() < p + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[p + 2..p + 2 + size]);
            rest = &rest[(p + 4 + size).min(rest.len())..];
        }
        body = out;
    }
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Sends `head` (without the blank line's trailing body) and `body` in chunks of
/// `chunk` bytes with `Transfer-Encoding: chunked`, reads the answer until close.
pub async fn raw_chunked_post(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    body: &[u8],
    chunk: usize,
) -> std::io::Result<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    let mut write_err = None;
    for c in body.chunks(chunk) {
        let mut frame = format!("{:x}\r\n", c.len()).into_bytes();
        frame.extend_from_slice(c);
        frame.extend_from_slice(b"\r\n");
        if let Err(e) = s.write_all(&frame).await {
            // The server may answer (413) and stop reading early.
            write_err = Some(e);
            break;
        }
    }
    if write_err.is_none() {
        let _ = s.write_all(b"0\r\n\r\n").await;
    }
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw)).await;
    parse_raw_response(&raw).ok_or_else(|| {
        std::io::Error::other(format!(
            "no HTTP answer (write error: {write_err:?}); got {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)])
        ))
    })
}

/// Sends raw request bytes and reads until close (or `timeout`).
pub async fn raw_request(
    addr: std::net::SocketAddr,
    req: &[u8],
    timeout: Duration,
) -> std::io::Result<RawResponse> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let _ = s.write_all(req).await;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => {
                if raw.is_empty() {
                    return Err(e);
                }
                break;
            }
        }
    }
    parse_raw_response(&raw).ok_or_else(|| std::io::Error::other("no HTTP answer"))
}
