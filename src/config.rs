//! Control-plane settings.

use std::time::Duration;

/// Settings of one `muster serve` process.
#[derive(Debug, Clone)]
pub struct Config {
    /// HTTP listen address (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Redis URL.
    pub redis_url: String,
    /// Key namespace (default `muster`).
    pub namespace: String,
    /// Admin bearer token; `None` only with `no_auth`.
    pub admin_token: Option<String>,
    /// More tokens with their roles (`read`, `submit`, `agent`, `admin`).
    pub tokens: Vec<(crate::api::auth::Role, String)>,
    /// Serve without authentication (loopback only).
    pub no_auth: bool,
    /// Per-token rate limit: (requests per second, burst).
    pub rate_limit: Option<(f64, f64)>,
    /// Dispatcher workers.
    pub dispatchers: usize,
    /// Interval agents are told to heartbeat at; a node is offline after 3 missed.
    pub heartbeat_interval: Duration,
    /// How often expired leases and due tasks are looked for.
    pub reaper_interval: Duration,
    /// Longest a long-poll (`/wait`, `lease`) is held, whatever the client asks (at
    /// most 60 s); answering earlier is always allowed by the contract.
    pub max_wait: Duration,
    /// Redis command timeout; past it the API answers 503.
    pub redis_timeout: Duration,
}

impl Config {
    /// Defaults for a given Redis URL and listen address.
    pub fn new(listen: impl Into<String>, redis_url: impl Into<String>) -> Config {
        Config {
            listen: listen.into(),
            redis_url: redis_url.into(),
            namespace: "muster".into(),
            admin_token: None,
            tokens: Vec::new(),
            no_auth: false,
            rate_limit: None,
            dispatchers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            heartbeat_interval: Duration::from_secs(5),
            reaper_interval: Duration::from_millis(1000),
            redis_timeout: Duration::from_secs(1),
            max_wait: Duration::from_secs(60),
        }
    }
}
