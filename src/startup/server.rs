//! The HTTP server loop: hyper's HTTP/1 with the protections axum's `serve` does not
//! expose: a header-read timeout against slow clients (slowloris), a cap on the size
//! of the request head (431 past it), and graceful shutdown that lets requests in
//! flight finish.

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A client must send its whole request head within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub use crate::api::MAX_HEAD;
/// Time requests in flight get after shutdown starts.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let svc = app
            .clone()
            .map_request(|r: hyper::Request<Incoming>| r.map(axum::body::Body::new));
        let svc = TowerToHyperService::new(svc);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD);
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some requests did not finish within {DRAIN:?} of shutdown");
    }
}
