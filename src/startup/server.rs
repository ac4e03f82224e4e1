//! The HTTP server loop: hyper's HTTP/1 with the protections axum's `serve` does not
//! expose: a header-read timeout against slow clients (slowloris), a cap on the size
//! of the request head (431 past it), a cap on open connections, and graceful shutdown
//! that lets requests in flight finish.
//!
//! **Connections.** At most `max_connections` are open (lowered to fit the process's
//! open-files limit, so `accept` never fails for want of a descriptor). At the cap a
//! new connection takes the place of an idle one, closing it: first a stranger's (a
//! connection none of whose requests authenticated, such as a socket that never sent a
//! byte), the oldest first, then an idle keep-alive connection; a connection with a
//! request in flight (an event stream, a long-poll) is never closed. When every
//! connection is busy the new one is answered 503 problem+json and closed. So idle or
//! trickling sockets of strangers cannot starve authenticated traffic.

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A client must send its whole request head within this time.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub use crate::api::MAX_HEAD;
/// Time requests in flight get after shutdown starts.
pub const DRAIN: Duration = Duration::from_secs(10);
/// Descriptors kept free of connections (Redis connections, files, the listener).
pub const FD_RESERVE: usize = 64;

/// One open connection, as the cap sees it.
#[derive(Debug, Default)]
struct Conn {
    /// Requests in flight (until their response body ends).
    busy: AtomicUsize,
    /// One of its requests authenticated (its answer carried `X-Muster-Role`).
    known: AtomicBool,
    /// Cancelled to close it.
    close: CancellationToken,
}

/// The open connections, by accept order.
#[derive(Debug)]
struct Conns {
    max: usize,
    next: AtomicUsize,
    open: Mutex<BTreeMap<usize, Arc<Conn>>>,
}

impl Conns {
    /// Registers a new connection, closing an idle one at the cap; `None` when every
    /// connection is busy.
    fn admit(&self) -> Option<(usize, Arc<Conn>)> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= self.max {
            let idle = |c: &Arc<Conn>| c.busy.load(Ordering::Acquire) == 0;
            let victim = open
                .iter()
                .find(|(_, c)| idle(c) && !c.known.load(Ordering::Acquire))
                .or_else(|| open.iter().find(|(_, c)| idle(c)))
                .map(|(id, _)| *id)?;
            if let Some(c) = open.remove(&victim) {
                c.close.cancel();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let c = Arc::new(Conn::default());
        open.insert(id, c.clone());
        Some((id, c))
    }

    fn remove(&self, id: usize) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

/// The soft open-files limit of this process (Linux `/proc/self/limits`), if known.
fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The connection cap: `configured`, lowered to leave [`FD_RESERVE`] descriptors free.
pub fn connection_cap(configured: usize) -> usize {
    match open_files_limit() {
        Some(n) => configured.min(n.saturating_sub(FD_RESERVE).max(16)),
        None => configured,
    }
}

/// The answer of a connection over the cap, written without reading its request.
const OVERLOADED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\n\
content-length: 203\r\n\r\n\
{\"type\":\"https://muster.dev/problems/too_many_connections\",\"title\":\"Service Unavailable\",\
\"status\":503,\"detail\":\"this server holds as many busy connections as it may; retry\",\
\"code\":\"too_many_connections\"}";

/// Serves `app` on `listener` until `shutdown`, with at most `max_connections` open.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    let conns = Arc::new(Conns {
        max: connection_cap(max_connections),
        next: AtomicUsize::new(0),
        open: Mutex::new(BTreeMap::new()),
    });
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
        let Some((id, conn_state)) = conns.admit() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let app = app.clone();
        let st = conn_state.clone();
        let svc = hyper::service::service_fn(move |r: hyper::Request<Incoming>| {
            let app = app.clone();
            let st = st.clone();
            st.busy.fetch_add(1, Ordering::AcqRel);
            let guard = Busy(st.clone());
            async move {
                let res = app.oneshot(r.map(axum::body::Body::new)).await;
                let res = match res {
                    Ok(res) => res,
                    Err(never) => match never {},
                };
                if res.headers().contains_key(crate::api::auth::ROLE_HEADER) {
                    st.known.store(true, Ordering::Release);
                }
                // Busy until the body ends: an event stream is in flight while it lasts.
                Ok::<_, std::convert::Infallible>(
                    res.map(|body| crate::api::limit::hold(body, guard)),
                )
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD);
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        let conns = conns.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                _ = conn_state.close.cancelled() => {
                    tracing::debug!(%peer, "idle connection closed for a new one");
                }
            }
            conns.remove(id);
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

/// Marks its connection idle again when dropped (with the response body).
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers a connection over the cap with 503 and closes it, reading a little of its
/// request first so that the close does not reset the answer away.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
    let _ = stream.write_all(OVERLOADED).await;
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overloaded_answer_has_the_length_it_says() {
        let text = std::str::from_utf8(OVERLOADED).expect("ascii");
        let (_, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).expect("json body");
        assert_eq!(v["status"], 503);
    }

    #[test]
    fn at_the_cap_a_strangers_idle_connection_goes_first_and_busy_ones_stay() {
        let c = Conns {
            max: 3,
            next: AtomicUsize::new(0),
            open: Mutex::new(BTreeMap::new()),
        };
        let (_, known) = c.admit().expect("1");
        known.known.store(true, Ordering::Release);
        let (_, stranger) = c.admit().expect("2");
        let (_, busy) = c.admit().expect("3");
        busy.busy.store(1, Ordering::Release);
        let (_, fourth) = c.admit().expect("4 replaces the stranger");
        assert!(stranger.close.is_cancelled());
        assert!(!known.close.is_cancelled());
        fourth.busy.store(1, Ordering::Release);
        let (_, fifth) = c.admit().expect("5 replaces the idle known one");
        assert!(known.close.is_cancelled());
        fifth.busy.store(1, Ordering::Release);
        assert!(c.admit().is_none(), "every connection busy");
    }
}
