//! [`Application`]: binds the listener, connects to Redis, and runs the API with the
//! dispatcher, reconciler and timers until shutdown.

use crate::config::Config;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// A built control plane, listening but not yet serving.
pub struct Application {
    addr: SocketAddr,
}

impl Application {
    /// Connects to Redis, checks it, loads the scripts and binds the listener.
    ///
    /// # Errors
    /// Redis unreachable or unsuitable, or the address taken.
    pub async fn build(_config: Config) -> anyhow::Result<Application> {
        anyhow::bail!("not implemented yet")
    }

    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` is cancelled or a component dies.
    ///
    /// # Errors
    /// A component that died, named.
    pub async fn run(self, _shutdown: CancellationToken) -> anyhow::Result<()> {
        anyhow::bail!("not implemented yet")
    }
}
