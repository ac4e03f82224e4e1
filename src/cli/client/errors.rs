//! How the client commands word a failed call: one line, with what to do about it.

use crate::client::{ClientError, DecodeKind, TransportKind};
use crate::domain::Problem;
use reqwest::StatusCode;

/// Words a failed call for the command line (see [`explain`]).
pub(crate) trait Explain<T> {
    /// The result with its error as a one-line message.
    fn explain(self) -> anyhow::Result<T>;
}

impl<T> Explain<T> for Result<T, ClientError> {
    fn explain(self) -> anyhow::Result<T> {
        self.map_err(explain)
    }
}

/// One line for a failed call: an unreachable server names the URL and how to start
/// one, an error answer becomes `409 conflict (code): detail`.
pub fn explain(e: ClientError) -> anyhow::Error {
    let msg = match &e {
        ClientError::Transport {
            what,
            server,
            kind,
            cause,
            ..
        } => match kind {
            TransportKind::Connect => unreachable_message(server, cause),
            TransportKind::ConnectTimeout => unreachable_message(
                server,
                &format!(
                    "connect timed out after {}s",
                    crate::client::CONNECT_TIMEOUT.as_secs()
                ),
            ),
            TransportKind::Timeout => {
                format!("{what} to the muster server at {server} timed out")
            }
            TransportKind::Other => {
                format!("{what} to the muster server at {server} failed: {cause}")
            }
        },
        ClientError::Status {
            status,
            problem,
            body,
            ..
        } => format_answer(*status, problem.as_deref(), body),
        ClientError::Decode {
            what,
            kind,
            message,
        } => match kind {
            DecodeKind::Empty => format!("the server answered {what} with an empty body"),
            DecodeKind::NotJson => {
                format!("the server answered {what} with a body that is not JSON: {message}")
            }
            DecodeKind::Shape => format!("unexpected answer from the server to {what}: {message}"),
        },
        ClientError::Url(_) | ClientError::Build(_) | ClientError::Encode { .. } => e.to_string(),
    };
    anyhow::anyhow!(msg)
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
    let problem = serde_json::from_slice::<Problem>(body).ok();
    format_answer(status, problem.as_ref(), body)
}

/// [`format_error_answer`] with the problem already decoded.
fn format_answer(status: u16, problem: Option<&Problem>, body: &[u8]) -> String {
    let mut msg = match problem {
        Some(p) => {
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
        None => {
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
pub(super) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
