//! Per-token rate limit: a token bucket per bearer token (keyed by the token's hash),
//! in this process. Past it: 429 with `Retry-After`. Off unless configured.

use super::AppState;
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

/// Middleware: applies the limiter to requests that carry a bearer token.
pub async fn rate_limit(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if let (Some(rl), Some(h)) = (
        &st.limiter,
        req.headers().get(axum::http::header::AUTHORIZATION),
    ) {
        let key = crate::store::token_sha(h.to_str().unwrap_or(""));
        if let Err(wait) = rl.take(&key) {
            let secs = wait.ceil().max(1.0) as u64;
            let mut r = ApiError::invalid("rate_limited", "").into_response();
            *r.status_mut() = axum::http::StatusCode::TOO_MANY_REQUESTS;
            let p = crate::domain::Problem {
                type_: "https://muster.dev/problems/rate_limited".into(),
                title: "Too Many Requests".into(),
                status: 429,
                detail: format!("this token is over its rate limit; retry after {secs} s"),
                code: "rate_limited".into(),
            };
            *r.body_mut() = axum::body::Body::from(serde_json::to_vec(&p).unwrap_or_default());
            if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
            return r;
        }
    }
    next.run(req).await
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
