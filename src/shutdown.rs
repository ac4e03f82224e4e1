//! Signals: SIGTERM or Ctrl-C (SIGINT) stop a command; [`on_signals`] turns them into
//! the cancellation of a root token, [`signal`] into a future that names the signal.

use tokio_util::sync::CancellationToken;

/// Resolves when SIGINT (Ctrl-C) or SIGTERM arrives; names the signal.
pub async fn signal() -> &'static str {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    match term {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// A token cancelled on SIGTERM or SIGINT; logs `<signal>: <what>` then.
pub fn on_signals(what: &'static str) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let sig = signal().await;
        tracing::info!("{sig}: {what}");
        t.cancel();
    });
    token
}
