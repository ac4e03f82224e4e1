//! [`ApiError`], the only `IntoResponse` error: RFC 7807 problem+json with a stable
//! `code`. 4xx bodies explain; 5xx bodies stay opaque and the cause is logged.

use crate::domain::{Problem, SpecError};
use crate::service::submit::SubmitError;
use crate::store::StoreError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{detail}")]
    BadRequest {
        /// Stable code.
        code: &'static str,
        /// What is wrong and how to fix it.
        detail: String,
    },
    /// 422: well-formed but invalid.
    #[error("{detail}")]
    Invalid {
        /// Stable code.
        code: &'static str,
        /// What is wrong and how to fix it.
        detail: String,
    },
    /// 401: no or unknown token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the token may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 409: conflicts with the current state (stale lease, illegal transition).
    #[error("{detail}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// What conflicts.
        detail: String,
    },
    /// 413.
    #[error("{0}")]
    TooLarge(String),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 429 with Retry-After (seconds): the caller is over its rate limit.
    #[error("this token is over its rate limit; retry after {0} s")]
    RateLimited(u64),
    /// 429 with Retry-After (seconds): the caller holds as much as it may at once (open
    /// streams, a quota).
    #[error("{detail}")]
    TooMany {
        /// Stable code.
        code: &'static str,
        /// What the limit is and how to stay under it.
        detail: String,
        /// Seconds to wait.
        retry_after: u64,
    },
    /// 503 with Retry-After: this server is at one of its capacity limits (not Redis).
    #[error("{detail}")]
    Overloaded {
        /// Stable code.
        code: &'static str,
        /// Which limit.
        detail: String,
    },
    /// 503 with Retry-After: Redis unreachable.
    #[error("redis is unavailable")]
    Unavailable(#[source] StoreError),
    /// 500: a bug or an unexpected Redis answer; logged, never shown.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// 400 shorthand.
    pub fn bad(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            detail: detail.into(),
        }
    }
    /// 422 shorthand.
    pub fn invalid(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            code,
            detail: detail.into(),
        }
    }
    /// 409 shorthand.
    pub fn conflict(code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError::Conflict {
            code,
            detail: detail.into(),
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, "Bad Request", code),
            ApiError::Invalid { code, .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "Unprocessable Content",
                code,
            ),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized", "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden", "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "Not Found", "not_found"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, "Conflict", code),
            ApiError::TooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Content Too Large",
                "too_large",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Unsupported Media Type",
                "unsupported_media_type",
            ),
            ApiError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                "rate_limited",
            ),
            ApiError::TooMany { code, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests", code)
            }
            ApiError::Overloaded { code, .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", code)
            }
            ApiError::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "unavailable",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                "internal",
            ),
        }
    }

    /// The problem body this error answers with.
    pub fn problem(&self) -> Problem {
        let (status, title, code) = self.parts();
        let detail = match self {
            ApiError::Unavailable(_) => {
                "redis is unreachable; retry after the time in Retry-After".to_string()
            }
            ApiError::Internal(_) => "an internal error occurred; it has been logged".to_string(),
            other => other.to_string(),
        };
        Problem {
            type_: format!("https://muster.dev/problems/{code}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail,
            code: code.to_string(),
        }
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        match e {
            SpecError::Invalid { code, detail } => Self::invalid(code, detail),
            SpecError::TooLarge(detail) => Self::TooLarge(detail),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            // 409, not 404 (the route exists) nor 422 (the body is valid): it conflicts
            // with what is stored now. A malformed id is a 422 from `TaskSpec::parse`.
            e @ SubmitError::UnknownDependency { .. } => {
                Self::conflict("unknown_dependency", e.to_string())
            }
            SubmitError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what } => ApiError::NotFound(format!("no such {what}")),
            StoreError::LeaseConflict { state } => ApiError::conflict(
                "lease_conflict",
                format!(
                    "the lease token is not the task's current lease (task is {state}): \
                     the lease expired or belongs to another node; stop working on it"
                ),
            ),
            StoreError::IllegalTransition { from } => ApiError::conflict(
                "illegal_transition",
                format!("not allowed while the task is {from}"),
            ),
            e @ StoreError::Unavailable(_) => ApiError::Unavailable(e),
            e @ StoreError::ShardsShrink { .. } => ApiError::conflict(
                "shards_shrink",
                format!(
                    "{e}: a task id names its shard, so a shard cannot be taken away;                      keep the count, or move the work to a new queue"
                ),
            ),
            StoreError::IdempotencyReused { by_another_caller } => ApiError::invalid(
                "idempotency_key_reused",
                if by_another_caller {
                    "this Idempotency-Key was used by another caller; use a key of your own \
                     (a fresh random one per logical submission)"
                } else {
                    "this Idempotency-Key was used with a different body; a repeat must send \
                     the same body, a new submission a new key"
                },
            ),
            other => ApiError::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        match &self {
            ApiError::Internal(e) => tracing::error!(error = ?e, "internal error"),
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "redis unavailable"),
            _ => {}
        }
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut res = (status, body).into_response();
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match self {
            ApiError::Unavailable(_) | ApiError::Overloaded { .. } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited(secs)
            | ApiError::TooMany {
                retry_after: secs, ..
            } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            ApiError::Unauthorized(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"muster\""),
                );
            }
            _ => {}
        }
        res
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Missing;

    #[test]
    fn a_missing_batch_answers_not_found_naming_the_batch() {
        for (what, detail) in [
            (Missing::Task, "no such task"),
            (Missing::Batch, "no such batch"),
        ] {
            let p = ApiError::from(StoreError::NotFound { what }).problem();
            assert_eq!((p.status, p.code.as_str()), (404, "not_found"));
            assert_eq!(p.detail, detail);
        }
    }
}
