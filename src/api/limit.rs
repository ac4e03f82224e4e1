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
use std::sync::Mutex;
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
            parts.extensions.insert(Authenticated(who));
            identity
        }
        Err(_) => ANONYMOUS.to_string(),
    };
    if let Err(e) = rl.admit(&identity) {
        return e.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
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
}
