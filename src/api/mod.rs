//! The HTTP API v1 (DESIGN.md): the router, its state, and one module per resource.

pub mod auth;
pub mod batches;
pub mod error;
pub mod events;
pub mod limit;
pub mod locks;
pub mod nodes;
pub mod openapi;
pub mod queues;
pub mod quota;
pub mod schedules;
pub mod system;
pub mod tasks;
pub mod ui;

use crate::config::Config;
use crate::service::directory::Directory;
use crate::service::hub::Hub;
use crate::store::Store;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::routing::{get, post};
use error::ApiError;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Largest request body (a batch of tasks).
pub const MAX_BODY: usize = 32 * 1024 * 1024;
/// Largest payload of one task (serialized JSON).
pub use crate::domain::spec::MAX_PAYLOAD;
/// Largest request head (request line and headers) in bytes; the server's read buffer.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most tasks in one batch, reports in one report batch.
pub const MAX_BATCH: usize = 10_000;
/// Longest long-poll.
pub use crate::domain::limits::MAX_WAIT_MS;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Redis.
    pub store: Store,
    /// Settings.
    pub config: Arc<Config>,
    /// SHA-256 (hex) of the admin token.
    pub admin_sha: Option<String>,
    /// Role tokens: (SHA-256 hex, role).
    pub tokens: Arc<Vec<(String, auth::Role)>>,
    /// Queue limits of role tokens, by SHA-256 hex (tokens absent reach every queue).
    pub token_queues: Arc<std::collections::HashMap<String, Arc<auth::QueueScope>>>,
    /// Quotas of role tokens, by SHA-256 hex (tokens absent have none).
    pub token_quotas: Arc<std::collections::HashMap<String, crate::domain::roles::TokenQuotas>>,
    /// Authentication off (loopback only).
    pub no_auth: bool,
    /// Per-token rate limit, when configured.
    pub limiter: Option<Arc<limit::RateLimiter>>,
    /// Wake-ups.
    pub hub: Arc<Hub>,
    /// Node records cache.
    pub directory: Arc<Directory>,
    /// Redis persists data (AOF or RDB); shown by `/readyz`.
    pub persistence: Arc<AtomicBool>,
    /// The shared reader of the event streams (`/v1/events`).
    pub events: Arc<events::EventFeed>,
    /// Open event streams and long-polls.
    pub streams: Arc<limit::StreamLimits>,
    /// Whether Redis may evict keys now (writes refused while it may).
    pub fitness: Arc<crate::service::fitness::Fitness>,
}

/// `axum::Json` whose rejections come out as problem+json.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned + Send + 'static,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime_type::Essence>().ok())
            .is_some_and(|m| m.is_json());
        if !json_type {
            return Err(ApiError::UnsupportedMediaType(
                "send the body as JSON with 'Content-Type: application/json'".into(),
            ));
        }
        let read = tokio::time::timeout(
            BODY_READ_TIMEOUT,
            axum::body::Bytes::from_request(req, state),
        );
        let bytes = read
            .await
            .map_err(|_| {
                ApiError::bad(
                    "body_timeout",
                    format!(
                        "the request body did not arrive within {} s; send it at once",
                        BODY_READ_TIMEOUT.as_secs()
                    ),
                )
            })?
            .map_err(|e| {
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge(format!("the request body exceeds {MAX_BODY} bytes"))
                } else {
                    ApiError::bad("unreadable_body", e.body_text())
                }
            })?;
        // Small bodies parse here; large ones on the blocking pool, a few at a time, so
        // that a burst of big or deeply nested bodies cannot stall the async workers.
        if bytes.len() <= PARSE_INLINE {
            return parse_body(&bytes);
        }
        let _permit = LARGE_PARSES
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("parse gate closed: {e}")))?;
        tokio::task::spawn_blocking(move || parse_body(&bytes))
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("body parse task: {e}")))?
    }
}

/// Longest wait for a request's body once its head arrived: a client trickling one
/// byte a second cannot hold a connection and a worker open.
pub const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Bodies up to this size are parsed on the async worker that read them.
pub const PARSE_INLINE: usize = 256 * 1024;
/// Large bodies parsed at once (the rest wait their turn).
static LARGE_PARSES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// A JSON object body into `T`. Every body of this API is an object, and serde would
/// otherwise also read a struct from an array of its fields: a body starting with `{`
/// is read straight into `T` (one parse, the hot path of submits and reports). Any other
/// body, and one that this refuses, goes through a `Value` first: the answer is then
/// exactly as if there were no fast path (malformed JSON is told from a wrong field
/// whatever comes first).
fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<Json<T>, ApiError> {
    let body_error = |e: serde_json::Error| {
        if e.is_data() {
            ApiError::invalid("invalid_body", e.to_string())
        } else {
            ApiError::bad("malformed_json", format!("the body is not valid JSON: {e}"))
        }
    };
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && let Ok(t) = serde_json::from_slice(bytes)
    {
        return Ok(Json(t));
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(body_error)?;
    if !v.is_object() {
        return Err(ApiError::invalid(
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_value(v)
        .map(Json)
        .map_err(|e| ApiError::invalid("invalid_body", e.to_string()))
}

/// `Content-Type` essence check: `application/json` or `application/<x>+json`.
mod mime_type {
    pub struct Essence(String);
    impl std::str::FromStr for Essence {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let essence = s
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            Ok(Essence(essence))
        }
    }
    impl Essence {
        pub fn is_json(&self) -> bool {
            self.0 == "application/json"
                || (self.0.starts_with("application/") && self.0.ends_with("+json"))
        }
    }
}

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(system::healthz))
        .route("/readyz", get(system::readyz))
        .route("/metrics", get(system::metrics))
        .route(
            "/v1/tasks",
            post(tasks::tasks_create).get(tasks::tasks_list),
        )
        .route("/v1/tasks/batch", post(tasks::tasks_batch))
        .route(
            "/v1/tasks/{id}",
            get(tasks::tasks_get).delete(tasks::tasks_delete),
        )
        .route("/v1/tasks/{id}/wait", get(tasks::tasks_wait))
        .route("/v1/tasks/{id}/cancel", post(tasks::tasks_cancel))
        .route("/v1/tasks/{id}/retry", post(tasks::tasks_retry))
        .route("/v1/tasks/{id}/extend", post(tasks::tasks_extend))
        .route("/v1/tasks/{id}/complete", post(tasks::tasks_complete))
        .route("/v1/tasks/{id}/fail", post(tasks::tasks_fail))
        .route(
            "/v1/nodes",
            post(nodes::nodes_register).get(nodes::nodes_list),
        )
        .route(
            "/v1/nodes/{id}",
            get(nodes::nodes_get).delete(nodes::nodes_delete),
        )
        .route("/v1/nodes/{id}/heartbeat", post(nodes::nodes_heartbeat))
        .route("/v1/nodes/{id}/drain", post(nodes::nodes_drain))
        .route("/v1/nodes/{id}/lease", post(nodes::nodes_lease))
        .route("/v1/nodes/{id}/reports", post(nodes::nodes_reports))
        .route("/v1/nodes/{id}/extend", post(nodes::nodes_extend))
        .route("/v1/events", get(events::events))
        .route("/v1/batches", post(batches::batches_create))
        .route("/v1/batches/{id}", get(batches::batches_get))
        .route("/v1/batches/{id}/results", get(batches::batches_results))
        .route("/v1/batches/{id}/tasks", post(batches::batches_add))
        .route("/v1/queues", get(queues::queues_list))
        .route(
            "/v1/queues/{name}",
            get(queues::queues_get).put(queues::queues_put),
        )
        .route("/v1/queues/{name}/pause", post(queues::queues_pause))
        .route("/v1/queues/{name}/resume", post(queues::queues_resume))
        .route(
            "/v1/schedules",
            post(schedules::schedules_create).get(schedules::schedules_list),
        )
        .route(
            "/v1/schedules/{name}",
            get(schedules::schedules_get).delete(schedules::schedules_delete),
        )
        .route(
            "/v1/schedules/{name}/pause",
            post(schedules::schedules_pause),
        )
        .route(
            "/v1/schedules/{name}/resume",
            post(schedules::schedules_resume),
        )
        .route(
            "/v1/locks/{name}",
            post(locks::locks_acquire).delete(locks::locks_release),
        )
        .route("/v1/locks/{name}/extend", post(locks::locks_extend))
        .merge(ui::routes())
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url(
            "/openapi.json",
            <openapi::ApiDoc as utoipa::OpenApi>::openapi(),
        ))
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            system::fit_redis,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::stream_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit::rate_limit,
        ))
        .layer(axum::middleware::from_fn(auth::role_header))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            system::loopback_only,
        ))
        .layer(axum::middleware::from_fn(system::utf8_path))
        .layer(axum::middleware::from_fn(ui::docs_headers))
        .route_layer(axum::middleware::from_fn(system::track_http))
        .layer(axum::middleware::from_fn(system::limit_head))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            system::panic_response,
        ))
        .with_state(state)
}
