//! The agent side of the HTTP protocol: typed calls for register, heartbeat, lease,
//! extend, reports and deregister, with fail-over between control-plane URLs and
//! `application/problem+json` errors.

use crate::domain::{
    ExtendReply, ExtendRequest, HeartbeatReply, LeaseReply, LeaseRequest, NodeRegistered, Problem,
    RegisterNode, ReportBatch, ReportBatchReply,
};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Timeout of every call except the lease long-poll.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Extra time the HTTP client gives a lease long-poll beyond its `wait_ms`.
pub const LONG_POLL_SLACK: Duration = Duration::from_secs(10);

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No server could be reached, or the connection broke or timed out.
    #[error("cannot reach {url}: {message}")]
    Transport {
        /// URL that was tried last.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The server answered with an error status.
    #[error("{method} {path} answered {status}: {detail}")]
    Status {
        /// Method of the call.
        method: String,
        /// Path of the call.
        path: String,
        /// HTTP status.
        status: u16,
        /// Stable `code` of the problem+json body, if any.
        code: Option<String>,
        /// `detail` of the problem, or the body text.
        detail: String,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// A 2xx answer whose body is not the expected JSON.
    #[error("{path}: unexpected answer: {message}")]
    Decode {
        /// Path of the call.
        path: String,
        /// What went wrong.
        message: String,
    },
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for errors worth retrying later: transport errors, 5xx, 408 and 429.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            ClientError::Decode { .. } => false,
        }
    }

    /// The server's `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// HTTP client of the agent protocol.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    servers: Vec<String>,
    current: AtomicUsize,
}

impl Client {
    /// A client for `servers` (base URLs, tried in turn on connection errors).
    ///
    /// # Errors
    /// No server given, or the HTTP client cannot be built.
    pub fn new(servers: &[String]) -> anyhow::Result<Self> {
        let servers: Vec<String> = servers
            .iter()
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            anyhow::bail!("no control-plane URL given (--server)");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()?;
        Ok(Client {
            http,
            servers,
            current: AtomicUsize::new(0),
        })
    }

    /// The URL calls go to now.
    pub fn current_server(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.servers.len();
        &self.servers[i]
    }

    /// `POST /v1/nodes` with the admin token.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn register(
        &self,
        admin_token: Option<&str>,
        body: &RegisterNode,
    ) -> Result<NodeRegistered, ClientError> {
        self.call(
            Method::POST,
            "/v1/nodes".into(),
            admin_token,
            Some(body),
            CALL_TIMEOUT,
        )
        .await
    }

    /// `POST /v1/nodes/{id}/heartbeat`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn heartbeat(
        &self,
        node_id: &str,
        token: &str,
    ) -> Result<HeartbeatReply, ClientError> {
        let path = format!("/v1/nodes/{node_id}/heartbeat");
        self.call(
            Method::POST,
            path,
            Some(token),
            Some(&serde_json::json!({})),
            CALL_TIMEOUT,
        )
        .await
    }

    /// `POST /v1/nodes/{id}/lease`, long-polling up to `wait_ms`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn lease(
        &self,
        node_id: &str,
        token: &str,
        max: u32,
        wait_ms: u64,
    ) -> Result<LeaseReply, ClientError> {
        let path = format!("/v1/nodes/{node_id}/lease");
        let body = LeaseRequest {
            max: Some(i64::from(max)),
            wait_ms: Some(i64::try_from(wait_ms).unwrap_or(i64::MAX)),
        };
        let timeout = Duration::from_millis(wait_ms) + LONG_POLL_SLACK;
        self.call(Method::POST, path, Some(token), Some(&body), timeout)
            .await
    }

    /// `POST /v1/tasks/{id}/extend`.
    ///
    /// # Errors
    /// See [`ClientError`]; 409 and 404 mean the lease is lost.
    pub async fn extend(
        &self,
        task_id: &str,
        token: &str,
        body: &ExtendRequest,
    ) -> Result<ExtendReply, ClientError> {
        let path = format!("/v1/tasks/{task_id}/extend");
        self.call(Method::POST, path, Some(token), Some(body), CALL_TIMEOUT)
            .await
    }

    /// `POST /v1/nodes/{id}/reports`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn reports(
        &self,
        node_id: &str,
        token: &str,
        body: &ReportBatch,
    ) -> Result<ReportBatchReply, ClientError> {
        let path = format!("/v1/nodes/{node_id}/reports");
        self.call(Method::POST, path, Some(token), Some(body), CALL_TIMEOUT)
            .await
    }

    /// `DELETE /v1/nodes/{id}`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn deregister(&self, node_id: &str, token: &str) -> Result<(), ClientError> {
        let path = format!("/v1/nodes/{node_id}");
        self.call::<(), serde::de::IgnoredAny>(
            Method::DELETE,
            path,
            Some(token),
            None,
            CALL_TIMEOUT,
        )
        .await
        .map(|_| ())
    }

    /// One call, moving on to the next server on connection errors (each server is
    /// tried at most once per call).
    async fn call<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method: Method,
        path: String,
        token: Option<&str>,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<R, ClientError> {
        let n = self.servers.len();
        let mut last = None;
        for _ in 0..n {
            let idx = self.current.load(Ordering::Relaxed) % n;
            let url = format!("{}{}", self.servers[idx], path);
            let mut req = self.http.request(method.clone(), &url).timeout(timeout);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => return decode(&method, &path, resp).await,
                Err(e) => {
                    let err = ClientError::Transport {
                        url: url.clone(),
                        message: error_chain(&e),
                    };
                    if e.is_connect() && n > 1 {
                        // Fail over; a concurrent call may already have moved on.
                        let _ = self.current.compare_exchange(
                            idx,
                            (idx + 1) % n,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                        tracing::warn!(url, "control plane unreachable, trying the next one");
                        last = Some(err);
                        continue;
                    }
                    return Err(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Transport {
            url: path,
            message: "no server".into(),
        }))
    }
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

async fn decode<R: DeserializeOwned>(
    method: &Method,
    path: &str,
    resp: reqwest::Response,
) -> Result<R, ClientError> {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return Err(ClientError::Transport {
                url: path.to_string(),
                message: error_chain(&e),
            });
        }
    };
    if status.is_success() {
        let bytes: &[u8] = if bytes.is_empty() || status == StatusCode::NO_CONTENT {
            b"null"
        } else {
            &bytes
        };
        return serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            path: path.to_string(),
            message: e.to_string(),
        });
    }
    let (code, detail) = match serde_json::from_slice::<Problem>(&bytes) {
        Ok(p) => (
            Some(p.code),
            if p.detail.is_empty() {
                p.title
            } else {
                p.detail
            },
        ),
        Err(_) => {
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim();
            let detail = if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text.chars().take(300).collect()
            };
            (None, detail)
        }
    };
    Err(ClientError::Status {
        method: method.to_string(),
        path: path.to_string(),
        status: status.as_u16(),
        code,
        detail,
        retry_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_a_server() {
        assert!(Client::new(&[]).is_err());
        assert!(Client::new(&[" ".into()]).is_err());
        let c = Client::new(&["http://a:1/".into(), "http://b:2".into()]).expect("client");
        assert_eq!(c.current_server(), "http://a:1");
    }

    #[tokio::test]
    async fn connection_errors_fail_over_to_the_next_server() {
        // Two ports nothing listens on: both are tried, the error is a transport one.
        let c = Client::new(&["http://127.0.0.1:9".into(), "http://127.0.0.1:1".into()])
            .expect("client");
        let e = c.heartbeat("n", "t").await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert_eq!(c.current_server(), "http://127.0.0.1:9");
    }

    #[test]
    fn transient_statuses() {
        let st = |status| ClientError::Status {
            method: "POST".into(),
            path: "/".into(),
            status,
            code: None,
            detail: String::new(),
            retry_after: None,
        };
        assert!(st(503).is_transient());
        assert!(st(429).is_transient());
        assert!(!st(409).is_transient());
        assert!(!st(401).is_transient());
        assert_eq!(st(404).status(), Some(404));
    }
}
