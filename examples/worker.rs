//! A muster worker in Rust: `add` sums two numbers, `nap` sleeps asynchronously (and
//! stops early when the task is cancelled). Run a server (`muster dev`), then
//! `MUSTER_SERVER=http://127.0.0.1:8080 cargo run --example worker` and submit
//! `{"a": 1, "b": 2}` tasks of kind `add` to the queue `math`.

use muster::worker::{Context, Error, Worker};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Deserialize)]
struct Add {
    a: i64,
    b: i64,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    Worker::builder()
        .queue("math")
        .concurrency(64)
        .handler("add", |p: Add, _ctx: Context| async move {
            Ok::<_, Error>(json!({ "sum": p.a + p.b }))
        })
        .handler("nap", |p: Value, ctx: Context| async move {
            let ms = p["ms"].as_u64().unwrap_or(100);
            let stop = ctx.cancellation();
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                () = stop.cancelled() => return Err(Error::non_retryable("cancelled")),
            }
            ctx.progress(json!({ "slept_ms": ms }));
            Ok(json!({ "slept_ms": ms, "attempt": ctx.attempt() }))
        })
        .build()?
        .run()
        .await
}
