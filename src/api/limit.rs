//! Per-caller rate limit: a token bucket per authenticated identity (the admin, each
//! configured token by its hash, each node), one shared bucket for callers without a
//! valid token; in this process. A middleware in front of every route, for requests
//! that carry an `Authorization` header: it authenticates them (the handler's
//! [`super::auth::Principal`] reuses the answer) before any body is read. Past the
//! limit: 429 with `Retry-After`. Off unless configured.

use super::AppState;
use super::auth::{Authenticated, authenticate};
use super::error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Token buckets, one per bearer token.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` requests per second, bursts of `burst`.
    pub fn new(rate: f64, burst: f64) -> RateLimiter {
        RateLimiter {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`; `Err(seconds)` to wait when empty.
    pub fn take(&self, key: &str) -> Result<(), f64> {
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() > 100_000 {
            // Forget full buckets: they behave like new ones.
            let (rate, burst) = (self.rate, self.burst);
            b.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * rate < burst);
        }
        let (tokens, at) = b.entry(key.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / self.rate)
        }
    }
}

/// The bucket of every caller whose token is missing or unknown: strangers share one
/// bucket, so junk tokens cannot grow the map or spare themselves the limit.
pub const ANONYMOUS: &str = "anonymous";

impl RateLimiter {
    /// Takes one request from `identity`'s bucket (an authenticated identity, or
    /// [`ANONYMOUS`]).
    ///
    /// # Errors
    /// 429 `rate_limited` with the seconds to wait.
    pub fn admit(&self, identity: &str) -> Result<(), ApiError> {
        self.take(identity)
            .map_err(|wait| ApiError::RateLimited(wait.ceil().max(1.0) as u64))
    }
}

/// Middleware: applies the limiter to requests that carry an `Authorization` header,
/// keyed on who they authenticate as.
pub async fn rate_limit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(rl) = &st.limiter else {
        return next.run(req).await;
    };
    if !req
        .headers()
        .contains_key(axum::http::header::AUTHORIZATION)
    {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let identity = match authenticate(&parts, &st).await {
        Ok((who, identity)) => {
            parts
                .extensions
                .insert(Authenticated(who, identity.clone()));
            identity
        }
        Err(_) => ANONYMOUS.to_string(),
    };
    if let Err(e) = rl.admit(&identity) {
        return e.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Open long-lived requests (event streams and long-polls), in all and per caller.
/// Each holds a connection, a file descriptor and a task for up to minutes, so neither
/// one caller nor all of them together may hold more than configured.
#[derive(Debug)]
pub struct StreamLimits {
    max_total: usize,
    max_per_caller: usize,
    open: Mutex<(usize, HashMap<String, usize>)>,
}

/// One open stream, counted until dropped (with the response body).
#[derive(Debug)]
pub struct StreamPermit {
    limits: Arc<StreamLimits>,
    identity: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut o = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        o.0 = o.0.saturating_sub(1);
        if let Some(n) = o.1.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                o.1.remove(&self.identity);
            }
        }
    }
}

impl StreamLimits {
    /// At most `max_total` open in all, `max_per_caller` per caller.
    pub fn new(max_total: usize, max_per_caller: usize) -> Arc<StreamLimits> {
        Arc::new(StreamLimits {
            max_total,
            max_per_caller,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Open streams in all.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Counts one more stream for `identity`, held to `per_caller` (the caller's
    /// quota, else the configured default; `None` for no per-caller limit: the admin).
    ///
    /// # Errors
    /// 503 `too_many_streams` past the total, 429 `too_many_streams` past the caller's.
    pub fn admit(
        self: &Arc<Self>,
        identity: &str,
        per_caller: Option<Option<usize>>,
    ) -> Result<StreamPermit, ApiError> {
        let mut o = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if o.0 >= self.max_total {
            return Err(ApiError::Overloaded {
                code: "too_many_streams",
                detail: format!(
                    "this server holds {} event streams and long-polls, as many as it may; retry",
                    self.max_total
                ),
            });
        }
        let mine = o.1.get(identity).copied().unwrap_or(0);
        if let Some(max) = per_caller.unwrap_or(Some(self.max_per_caller))
            && mine >= max
        {
            return Err(ApiError::TooMany {
                code: "too_many_streams",
                detail: format!(
                    "this token holds {max} event streams and long-polls, as many as it may; \
                     close one first"
                ),
                retry_after: 1,
            });
        }
        o.0 += 1;
        *o.1.entry(identity.to_string()).or_default() += 1;
        Ok(StreamPermit {
            limits: self.clone(),
            identity: identity.to_string(),
        })
    }
}

/// Whether a request is long-lived: the event stream and the long-polls.
fn is_stream(method: &axum::http::Method, path: &str) -> bool {
    let seg: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(
        (method.as_str(), seg.as_slice()),
        ("GET", ["", "v1", "events"])
            | ("GET", ["", "v1", "tasks", _, "wait"])
            | ("POST", ["", "v1", "nodes", _, "lease"])
    )
}

/// Middleware: counts event streams and long-polls per caller ([`StreamLimits`]) for as
/// long as their response body is open. Requests that do not authenticate pass on to
/// be refused by the handler.
pub async fn stream_limit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if !is_stream(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let found = match parts.extensions.get::<Authenticated>() {
        Some(a) => Some((a.0.clone(), a.1.clone())),
        None => match authenticate(&parts, &st).await {
            Ok((who, identity)) => {
                parts
                    .extensions
                    .insert(Authenticated(who.clone(), identity.clone()));
                Some((who, identity))
            }
            Err(_) => None,
        },
    };
    let Some((who, identity)) = found else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    // The admin has no per-caller limit; a token with `max_streams=` has its own, which
    // its nodes' long-polls share (they count under the token that registered them).
    let (identity, per_caller) = match &who {
        super::auth::Principal::Role(super::auth::Role::Admin) => (identity, Some(None)),
        super::auth::Principal::Node(node) => {
            match super::auth::quota_owner_of_node(&st, node).await {
                Ok(Some(owner)) => {
                    let quota = st.token_quotas.get(&owner).and_then(|q| q.streams);
                    match quota {
                        Some(q) => (format!("token:{owner}"), Some(Some(q as usize))),
                        None => (identity, None),
                    }
                }
                Ok(None) => (identity, None),
                Err(e) => return e.into_response(),
            }
        }
        super::auth::Principal::Role(_) => {
            let quota = identity
                .strip_prefix("token:")
                .and_then(|sha| st.token_quotas.get(sha))
                .and_then(|q| q.streams);
            (identity, quota.map(|q| Some(q as usize)))
        }
    };
    let permit = match st.streams.admit(&identity, per_caller) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let res = next.run(Request::from_parts(parts, body)).await;
    res.map(|body| hold(body, permit))
}

/// A response body that keeps `guard` alive until the body is dropped (sent, or the
/// connection gone); its frames, end and size (`Content-Length`) are the inner body's.
pub fn hold<G: Send + Unpin + 'static>(body: axum::body::Body, guard: G) -> axum::body::Body {
    axum::body::Body::new(Held {
        body,
        _guard: guard,
    })
}

struct Held<G> {
    body: axum::body::Body,
    _guard: G,
}

impl<G: Unpin> hyper::body::Body for Held<G> {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_a_wait() {
        let rl = RateLimiter::new(50.0, 100.0);
        let ok = (0..150).filter(|_| rl.take("a").is_ok()).count();
        assert!((100..=102).contains(&ok), "{ok}");
        assert!(rl.take("a").is_err());
        // Another token has its own bucket.
        assert!(rl.take("b").is_ok());
    }

    #[test]
    fn streams_are_held_to_the_total_and_per_caller() {
        let l = StreamLimits::new(3, 2);
        let a1 = l.admit("a", None).expect("a 1");
        let _a2 = l.admit("a", None).expect("a 2");
        assert!(matches!(l.admit("a", None), Err(ApiError::TooMany { .. })));
        let _admin = l.admit("admin", Some(None)).expect("admin");
        assert!(matches!(
            l.admit("b", None),
            Err(ApiError::Overloaded { .. })
        ));
        drop(a1);
        assert_eq!(l.open(), 2);
        let _b = l.admit("b", None).expect("b after a closed one");
        assert!(is_stream(&axum::http::Method::GET, "/v1/events"));
        assert!(is_stream(&axum::http::Method::GET, "/v1/tasks/x/wait"));
        assert!(is_stream(&axum::http::Method::POST, "/v1/nodes/n/lease"));
        assert!(!is_stream(&axum::http::Method::GET, "/v1/tasks/x"));
    }
}
