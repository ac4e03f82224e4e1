//! `/healthz`, `/readyz` and the fallbacks.

use super::AppState;
use super::error::ApiError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::atomic::Ordering;

/// `GET /healthz`: the process is up.
pub async fn healthz() -> impl IntoResponse {
    axum::Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: Redis reachable and scripts loaded; shows whether Redis persists.
pub async fn readyz(State(st): State<AppState>) -> Response {
    let persistence = st.persistence.load(Ordering::Relaxed);
    match st.store.ping().await {
        Ok(()) => axum::Json(json!({
            "status": "ready",
            "redis": "ok",
            "persistence": persistence,
            "warnings": if persistence { vec![] } else {
                vec!["redis persistence is off: a redis restart loses every task (enable appendonly)"]
            },
        }))
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
