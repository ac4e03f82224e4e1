//! [`ClientError`]: what can go wrong in one call, with the server's problem+json
//! answer decoded so that callers decide on its status and `code`, not on text.

use crate::domain::Problem;
use std::time::Duration;

/// Most bytes of an error answer kept in [`ClientError::Status`].
pub const ERROR_BODY_LIMIT: usize = 4096;

/// A failed call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// A server URL that cannot be used.
    #[error("{0}")]
    Url(#[from] UrlError),
    /// No server could be reached, or the connection broke or timed out.
    #[error("cannot reach {url}: {chain}")]
    Transport {
        /// `METHOD /path` of the call.
        what: String,
        /// Base URL of the server tried last.
        server: String,
        /// Full URL tried last.
        url: String,
        /// Which part of the exchange failed.
        kind: TransportKind,
        /// The innermost cause, on one line (e.g. `Connection refused (os error 111)`).
        cause: String,
        /// The whole error chain.
        chain: String,
    },
    /// The server answered with an error status.
    #[error("{what} answered {status}: {}", status_detail(.status, .problem, .body))]
    Status {
        /// `METHOD /path` of the call.
        what: String,
        /// HTTP status.
        status: u16,
        /// The problem+json body, when the answer was one.
        problem: Option<Box<Problem>>,
        /// The body (at most [`ERROR_BODY_LIMIT`] bytes).
        body: Vec<u8>,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// The HTTP client could not be set up.
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
    /// The request body could not be encoded.
    #[error("{what}: cannot encode the request: {message}")]
    Encode {
        /// `METHOD /path` of the call.
        what: String,
        /// The encoder's message.
        message: String,
    },
    /// A 2xx answer whose body is not the expected JSON.
    #[error("{what}: unexpected answer: {message}")]
    Decode {
        /// `METHOD /path` of the call.
        what: String,
        /// What was wrong with the body.
        kind: DecodeKind,
        /// The decoder's message.
        message: String,
    },
}

/// Which part of an exchange failed in a [`ClientError::Transport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The connection could not be made.
    Connect,
    /// The connection could not be made in time.
    ConnectTimeout,
    /// The whole call took longer than its timeout.
    Timeout,
    /// The connection broke, or the request could not be sent.
    Other,
}

/// What was wrong with a 2xx body in a [`ClientError::Decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeKind {
    /// No body where one was needed.
    Empty,
    /// Not JSON.
    NotJson,
    /// JSON, but not of the expected shape.
    Shape,
}

/// A server URL that cannot be used. The messages name `--server`, the flag every
/// command takes it from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// No URL at all.
    #[error("no control-plane URL given (--server)")]
    None,
    /// An empty URL.
    #[error("--server is empty; pass a URL like http://127.0.0.1:8080")]
    Empty,
    /// Not a URL.
    #[error("--server {url:?} is not a valid URL: {reason}")]
    Invalid {
        /// As given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// Not an `http` or `https` base URL.
    #[error("--server {0:?} must be an http:// or https:// URL")]
    NotHttp(String),
    /// A base URL that cannot take a path.
    #[error("the server URL {0} cannot take a path")]
    NotABase(String),
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The problem's stable `code`, when the server answered with problem+json.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Status {
                problem: Some(p), ..
            } => Some(&p.code),
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
            ClientError::Url(_)
            | ClientError::Build(_)
            | ClientError::Encode { .. }
            | ClientError::Decode { .. } => false,
        }
    }

    /// The server's `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// For an error answer: the problem's `detail` (its `title` when empty), else the
    /// body text (at most 300 characters), else the status's reason phrase. Other
    /// errors: their message.
    pub fn detail(&self) -> String {
        match self {
            ClientError::Status {
                status,
                problem,
                body,
                ..
            } => status_detail(status, problem, body),
            other => other.to_string(),
        }
    }
}

/// See [`ClientError::detail`].
fn status_detail(status: &u16, problem: &Option<Box<Problem>>, body: &[u8]) -> String {
    match problem {
        Some(p) if p.detail.is_empty() => p.title.clone(),
        Some(p) => p.detail.clone(),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                reqwest::StatusCode::from_u16(*status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error")
                    .to_string()
            } else {
                text.chars().take(300).collect()
            }
        }
    }
}

/// The whole chain of an error, `: `-separated.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The innermost cause of an error on one line, e.g. `Connection refused (os error 111)`.
pub(super) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The transport error of a failed exchange with `server`.
pub(super) fn transport(what: &str, server: &str, url: &str, e: &reqwest::Error) -> ClientError {
    let kind = match (e.is_connect(), e.is_timeout()) {
        (true, true) => TransportKind::ConnectTimeout,
        (true, false) => TransportKind::Connect,
        (false, true) => TransportKind::Timeout,
        (false, false) => TransportKind::Other,
    };
    ClientError::Transport {
        what: what.to_string(),
        server: server.to_string(),
        url: url.to_string(),
        kind,
        cause: root_cause(e),
        chain: error_chain(e),
    }
}

/// The error of a non-2xx answer.
pub(super) fn status(
    what: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ClientError {
    ClientError::Status {
        what: what.to_string(),
        status,
        problem: serde_json::from_slice::<Problem>(body).ok().map(Box::new),
        body: body[..body.len().min(ERROR_BODY_LIMIT)].to_vec(),
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: u16, body: &str) -> ClientError {
        status("POST /v1/x", code, body.as_bytes(), None)
    }

    #[test]
    fn transient_statuses() {
        assert!(answer(503, "").is_transient());
        assert!(answer(429, "").is_transient());
        assert!(answer(408, "").is_transient());
        assert!(!answer(409, "").is_transient());
        assert!(!answer(401, "").is_transient());
        assert_eq!(answer(404, "").status(), Some(404));
        assert!(!ClientError::Url(UrlError::None).is_transient());
    }

    #[test]
    fn problem_answers_are_decoded() {
        let e = answer(
            409,
            r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"stale lease","code":"lease_conflict"}"#,
        );
        assert_eq!(e.code(), Some("lease_conflict"));
        assert_eq!(e.to_string(), "POST /v1/x answered 409: stale lease");
        let e = answer(
            409,
            r#"{"type":"about:blank","title":"Conflict","status":409,"detail":"","code":"c"}"#,
        );
        assert_eq!(e.detail(), "Conflict");
    }

    #[test]
    fn other_answers_show_their_text_or_reason() {
        assert_eq!(answer(502, " bad gateway \n").detail(), "bad gateway");
        assert_eq!(answer(404, "").detail(), "Not Found");
        assert_eq!(answer(500, &"x".repeat(1000)).detail().len(), 300);
        assert_eq!(answer(500, "").code(), None);
    }
}
