//! The one test support module of the `api` binary: redis-server processes
//! ([`redis_server`]), in-process control planes ([`app`]), `muster` child processes
//! ([`procs`]), HTTP clients ([`http`]), event-stream tails ([`events`]) and waiting and Redis inspection ([`wait`]).
//! Every test file uses it; the fault suite builds its harness on it.

pub mod app;
pub mod events;
pub mod http;
pub mod procs;
pub mod redis_cluster;
pub mod redis_server;
pub mod wait;

pub use app::*;
pub use events::*;
pub use http::*;
pub use procs::*;
pub use redis_cluster::*;
pub use redis_server::*;
pub use wait::*;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The admin token every test server is started with.
pub const ADMIN_TOKEN: &str = "test-admin-token";
/// Heartbeat interval of test servers and agents, in ms (offline after 3 missed).
pub const HEARTBEAT_MS: u64 = 500;
/// Reaper interval of test servers, in ms.
pub const REAPER_MS: u64 = 250;

/// A namespace no other test uses.
pub fn unique_ns() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Path of the built `muster` binary.
pub fn muster_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_muster"))
}

/// A store on `redis_url` / `ns` (without `prepare`).
pub async fn store_on(redis_url: &str, ns: &str) -> muster::store::Store {
    muster::store::Store::connect(redis_url, ns, Duration::from_secs(3))
        .await
        .expect("store connects")
}

/// A store on `redis_url` / `ns` and a reconciler that prunes empty queues at once
/// (no idle time), for tests that empty queues and check they are forgotten.
pub async fn pruner_on(
    redis_url: &str,
    ns: &str,
) -> (
    muster::store::Store,
    muster::workers::reconciler::Reconciler,
) {
    let store = store_on(redis_url, ns).await;
    let r = muster::workers::reconciler::Reconciler::new(
        store.clone(),
        muster::service::hub::Hub::new(),
        std::sync::Arc::new(muster::service::directory::Directory::new(
            Duration::from_millis(100),
        )),
    )
    .with_empty_queue_after(Duration::ZERO);
    (store, r)
}

/// Cancels and deletes the tasks `ids` through `store`, `chunk` at a time in parallel
/// (emptying junk queues so that they can be pruned).
pub async fn cancel_and_delete(store: &muster::store::Store, ids: &[String], chunk: usize) {
    let mut joins = Vec::new();
    for part in ids.chunks(chunk.max(1)) {
        let (part, s) = (part.to_vec(), store.clone());
        joins.push(tokio::spawn(async move {
            for id in part {
                s.cancel(&id).await.expect("cancel");
                s.delete(&id).await.expect("delete");
            }
        }));
    }
    for j in joins {
        j.await.expect("join");
    }
}

/// The Redis the end-to-end suites run on: the shared server, or the shared Cluster
/// under `MUSTER_TEST_BACKEND=cluster` ([`on_cluster`]).
pub fn e2e_target() -> muster::store::RedisTarget {
    if on_cluster() {
        shared_cluster().target()
    } else {
        muster::store::RedisTarget::Standalone(e2e_redis().url())
    }
}

/// A store on the shared Redis (or Cluster) under a fresh namespace, prepared.
pub async fn store() -> muster::store::Store {
    let s = muster::store::Store::connect_to(&e2e_target(), &unique_ns(), Duration::from_secs(2))
        .await
        .expect("connect");
    s.prepare().await.expect("prepare");
    s
}
