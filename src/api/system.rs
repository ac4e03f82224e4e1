//! `/healthz`, `/readyz` and the fallbacks.

use super::AppState;
use super::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use crate::domain::Problem;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use std::sync::atomic::Ordering;

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    summary = "Liveness",
    security(()),
    responses(
        (status = 200, body = Health, description = "Up")
    )
)]
/// `GET /healthz`: the process is up.
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok".into() })
}

/// Answer of `/healthz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Answer of `/readyz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// `ready`.
    pub status: String,
    /// `ok`.
    pub redis: String,
    /// Redis persists data (AOF or RDB).
    pub persistence: bool,
    /// Things an operator should fix.
    pub warnings: Vec<String>,
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "system",
    summary = "Readiness: Redis reachable, scripts loaded",
    security(()),
    responses(
        (status = 200, body = Ready, description = "Ready"),
        (status = 503, body = Problem, description = "Redis unavailable; retry after Retry-After", content_type = "application/problem+json")
    )
)]
/// `GET /readyz`: Redis reachable and scripts loaded; shows whether Redis persists.
pub async fn readyz(State(st): State<AppState>) -> Response {
    let persistence = st.persistence.load(Ordering::Relaxed);
    match st.store.ping().await {
        Ok(()) => axum::Json(Ready {
            status: "ready".into(),
            redis: "ok".into(),
            persistence,
            warnings: if persistence {
                vec![]
            } else {
                vec!["redis persistence is off: a redis restart loses every task (enable appendonly)".into()]
            },
        })
        .into_response(),
        Err(e) => ApiError::Unavailable(e).into_response(),
    }
}

/// Unknown route.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see /openapi.json".into())
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> Response {
    let mut r = ApiError::bad("method_not_allowed", "this method is not allowed on this route").into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    if let Ok(v) = serde_json::to_vec(&crate::domain::Problem {
        type_: "https://muster.dev/problems/method_not_allowed".into(),
        title: "Method Not Allowed".into(),
        status: 405,
        detail: "this method is not allowed on this route".into(),
        code: "method_not_allowed".into(),
    }) {
        *r.body_mut() = axum::body::Body::from(v);
    }
    r
}

/// A handler panicked: answer an opaque 500 (the panic is logged by the layer).
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::Internal(anyhow::anyhow!("panic")).into_response()
}
