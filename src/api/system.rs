//! `/healthz`, `/readyz` and the fallbacks.

use super::AppState;
use super::error::ApiError;
use crate::domain::Problem;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use utoipa::ToSchema;

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
    axum::Json(Health {
        status: "ok".into(),
    })
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
    let ping = st.store.ping().await;
    let unfit = if ping.is_ok() {
        match st.store.check_eviction().await {
            Err(crate::store::StoreError::Unfit(why)) => Some(why),
            Ok(()) => None,
            // Cannot tell (a timeout): what the periodic recheck saw last.
            Err(_) => st.fitness.unfit(),
        }
    } else {
        None
    };
    if ping.is_ok() {
        st.fitness.record(unfit.clone());
    }
    if let Some(why) = unfit {
        let mut r =
            ApiError::Unavailable(crate::store::StoreError::Unfit(why.clone())).into_response();
        if let Ok(v) = serde_json::to_vec(&Problem {
            type_: "https://muster.dev/problems/unfit_redis".into(),
            title: "Service Unavailable".into(),
            status: 503,
            detail: why,
            code: "unfit_redis".into(),
        }) {
            *r.body_mut() = axum::body::Body::from(v);
        }
        return r;
    }
    match ping {
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

/// Middleware: while Redis may evict keys ([`crate::service::fitness`], rechecked
/// periodically and by `/readyz`), every write to `/v1` answers 503 `unfit_redis` with
/// `Retry-After` and stores nothing; reads keep working.
pub async fn fit_redis(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let write = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if write
        && req.uri().path().starts_with("/v1/")
        && let Some(why) = st.fitness.unfit()
    {
        return ApiError::Overloaded {
            code: "unfit_redis",
            detail: format!("writes are refused while {why}"),
        }
        .into_response();
    }
    next.run(req).await
}

/// Unknown route.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see /openapi.json".into())
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> Response {
    let mut r = ApiError::bad(
        "method_not_allowed",
        "this method is not allowed on this route",
    )
    .into_response();
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

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    summary = "Prometheus metrics (read role)",
    responses(
        (status = 200, body = String, content_type = "text/plain", description = "Prometheus text format"),
        (status = 401, body = Problem, content_type = "application/problem+json", description = "No or unknown token"),
        (status = 403, body = Problem, content_type = "application/problem+json", description = "The token may not do this"),
        (status = 503, body = Problem, content_type = "application/problem+json", description = "Redis unavailable; retry after Retry-After")
    )
)]
/// `GET /metrics`: Prometheus text. Queue and node figures come from Redis.
///
/// # Errors
/// 503 Redis down.
pub async fn metrics(
    State(st): State<AppState>,
    who: super::auth::Principal,
    caller: super::auth::Caller,
) -> Result<Response, ApiError> {
    use crate::metrics::{METRICS, label};
    use std::fmt::Write;
    who.require(super::auth::Role::Read)?;
    let mut out = String::new();
    // A token limited to some queues sees only their series (and only the nodes that
    // serve one of them), as in `GET /v1/queues` and `GET /v1/nodes`.
    let mut queues = st.store.queue_names().await?;
    queues.retain(|q| caller.reaches(q));
    let mut depth = String::new();
    let mut counters = String::new();
    let mut oldest = String::new();
    for q in &queues {
        let info = st.store.queue_info(q).await?;
        let c = &info.counts;
        for (state, v) in [
            ("scheduled", c.scheduled),
            ("pending", c.pending),
            ("assigned", c.assigned),
            ("running", c.running),
            ("retrying", c.retrying),
            ("succeeded", c.succeeded),
            ("failed", c.failed),
            ("cancelled", c.cancelled),
        ] {
            let _ = writeln!(
                depth,
                "muster_queue_tasks{{queue=\"{}\",state=\"{state}\"}} {v}",
                label(q)
            );
        }
        if let Some(age) = info.oldest_pending_age_ms {
            let _ = writeln!(
                oldest,
                "muster_queue_oldest_pending_seconds{{queue=\"{}\"}} {}",
                label(q),
                age as f64 / 1000.0
            );
        }
        let stats = st.store.queue_stats(q).await?;
        for name in ["submitted", "succeeded", "failed", "retried", "cancelled"] {
            let _ = writeln!(
                counters,
                "muster_tasks_{name}_total{{queue=\"{}\"}} {}",
                label(q),
                stats.get(name).copied().unwrap_or(0)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP muster_queue_tasks Tasks per queue and state (finished ones while retained)."
    );
    let _ = writeln!(out, "# TYPE muster_queue_tasks gauge");
    out.push_str(&depth);
    let _ = writeln!(
        out,
        "# HELP muster_queue_oldest_pending_seconds Age of the oldest pending task."
    );
    let _ = writeln!(out, "# TYPE muster_queue_oldest_pending_seconds gauge");
    out.push_str(&oldest);
    for name in ["submitted", "succeeded", "failed", "retried", "cancelled"] {
        let _ = writeln!(out, "# TYPE muster_tasks_{name}_total counter");
        for line in counters
            .lines()
            .filter(|l| l.starts_with(&format!("muster_tasks_{name}_total")))
        {
            let _ = writeln!(out, "{line}");
        }
    }
    let nodes = st.store.nodes().await?;
    let active = nodes
        .iter()
        .filter(|n| n.node.status == crate::domain::NodeStatus::Active)
        .filter(|n| !caller.scoped() || n.node.queues.iter().any(|q| caller.reaches(q)))
        .count();
    let _ = writeln!(out, "# HELP muster_nodes_active Nodes with status active.");
    let _ = writeln!(out, "# TYPE muster_nodes_active gauge");
    let _ = writeln!(out, "muster_nodes_active {active}");
    out.push_str(&METRICS.render());
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response())
}

/// Middleware: records every request's duration under its route template.
pub async fn track_http(
    matched: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().as_str().to_string();
    let route = matched
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let start = std::time::Instant::now();
    let res = next.run(req).await;
    crate::metrics::METRICS
        .http
        .with_label_values(&[method.as_str(), route.as_str(), res.status().as_str()])
        .observe(start.elapsed().as_secs_f64());
    res
}

/// True for a `Host` or `Origin` authority that names this machine's loopback
/// interface (`localhost`, `127.0.0.1`, `[::1]`, any port).
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Middleware, with `--no-auth` only: every caller is admin, so only pages of this
/// machine may call. A `Host` that is not a loopback name (DNS rebinding) or an
/// `Origin` of another site (a cross-site form or fetch) is refused with 403.
pub async fn loopback_only(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !st.no_auth {
        return next.run(req).await;
    }
    let allowed = {
        let text = |name| {
            req.headers()
                .get(name)
                .map(|v: &axum::http::HeaderValue| v.to_str().unwrap_or("\u{0}"))
        };
        let host_ok = text(axum::http::header::HOST).is_none_or(is_loopback_authority);
        let origin_ok = text(axum::http::header::ORIGIN).is_none_or(|o| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
                .is_some_and(is_loopback_authority)
        });
        host_ok && origin_ok
    };
    if allowed {
        return next.run(req).await;
    }
    super::error::ApiError::Forbidden(
        "this server runs with --no-auth: only requests from this machine's loopback pages are served (Host and Origin must be localhost, 127.0.0.1 or [::1]); start it with tokens to serve others".into(),
    )
    .into_response()
}

/// Middleware: refuses request heads larger than [`super::MAX_HEAD`] with 431.
pub async fn limit_head(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let size: usize = req.uri().to_string().len()
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if size > super::MAX_HEAD {
        let p = Problem {
            type_: "https://muster.dev/problems/header_too_large".into(),
            title: "Request Header Fields Too Large".into(),
            status: 431,
            detail: format!(
                "the request head is {size} bytes; the limit is {}",
                super::MAX_HEAD
            ),
            code: "header_too_large".into(),
        };
        return (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            [(axum::http::header::CONTENT_TYPE, "application/problem+json")],
            serde_json::to_vec(&p).unwrap_or_default(),
        )
            .into_response();
    }
    next.run(req).await
}

/// Whether a path's percent-escapes decode to UTF-8 (what every path parameter must be).
fn path_is_utf8(path: &str) -> bool {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// Middleware: a path whose percent-escapes are not UTF-8 (`/v1/tasks/%ff`) answers 400
/// problem+json `bad_path` here, instead of the text/plain rejection of axum's `Path`.
pub async fn utf8_path(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if path_is_utf8(req.uri().path()) {
        return next.run(req).await;
    }
    ApiError::bad(
        "bad_path",
        "the path is not valid UTF-8 once percent-decoded",
    )
    .into_response()
}

#[cfg(test)]
mod path_tests {
    #[test]
    fn percent_escapes_must_decode_to_utf8() {
        for ok in [
            "/v1/tasks/abc",
            "/v1/queues/a%2Eb",
            "/%C3%A9",
            "/100%",
            "/%zz",
        ] {
            assert!(super::path_is_utf8(ok), "{ok}");
        }
        for bad in ["/v1/tasks/%ff", "/v1/queues/%C3", "/%e2%82"] {
            assert!(!super::path_is_utf8(bad), "{bad}");
        }
    }
}
