//! The Rust worker of `scripts/bench-sdk`: one [`Worker`] whose `noop` handler returns
//! `null` at once, or sleeps first (asynchronously) when `SLEEP_MS` is set. It serves
//! until SIGTERM/SIGINT, like any worker; the harness measures it from outside.
//!
//! Env: `MUSTER_SERVER`, `MUSTER_TOKEN`, `QUEUE` (default `bench`), `CONCURRENCY`
//! (default 64), `PREFETCH` (default 0), `SLEEP_MS` (default 0). Build with
//! `cargo build --release --example bench_worker`.

use muster::worker::{Context, Error, Worker};
use serde_json::Value;
use std::time::Duration;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let queue = std::env::var("QUEUE").unwrap_or_else(|_| "bench".into());
    let sleep = Duration::from_millis(env_or("SLEEP_MS", 0u64));
    Worker::builder()
        .queue(queue)
        .concurrency(env_or("CONCURRENCY", 64u32))
        .prefetch(env_or("PREFETCH", 0u32))
        .handler("noop", move |_p: Value, _ctx: Context| async move {
            if !sleep.is_zero() {
                tokio::time::sleep(sleep).await;
            }
            Ok::<_, Error>(Value::Null)
        })
        .build()?
        .run()
        .await
}
