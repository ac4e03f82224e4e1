//! Signals: SIGTERM or Ctrl-C (SIGINT) stop a command; [`on_signals`] turns them into
//! the cancellation of a root token, [`signal`] into a future that names the signal.

use tokio_util::sync::CancellationToken;

/// Listens for SIGINT (Ctrl-C) and SIGTERM from the moment it is called (not from the
/// first poll: a signal that arrives between a readiness message and the first poll
/// would otherwise end the process with the default disposition); the future resolves
/// when one arrives and names it.
pub fn signal() -> impl std::future::Future<Output = &'static str> + Send {
    use tokio::signal::unix::{SignalKind, signal as listen};
    let int = listen(SignalKind::interrupt());
    let term = listen(SignalKind::terminate());
    async move {
        match (int, term) {
            (Ok(mut int), Ok(mut term)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            (Ok(mut int), Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = int.recv().await;
                "SIGINT"
            }
            (Err(e), _) => {
                tracing::warn!(error = %e, "cannot listen for SIGINT; trying Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
}

/// A token cancelled on SIGTERM or SIGINT; logs `<signal>: <what>` then.
pub fn on_signals(what: &'static str) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    let listening = signal();
    tokio::spawn(async move {
        let sig = listening.await;
        tracing::info!("{sig}: {what}");
        t.cancel();
    });
    token
}
