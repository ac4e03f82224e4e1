//! The one HTTP client of the muster v1 API, used by the agent, the CLI, the demo and
//! the bench (and, later, the Rust SDK).
//!
//! - [`Client`]: one or more base URLs (a connection error moves on to the next, for
//!   agents talking to replicas), a default bearer token, timeouts.
//! - Typed calls, one per route, named after the route's handler: the user-facing
//!   ones (`tasks_*`, `queues_*`, `nodes_list`, `schedules_list`) in [`tasks`] return
//!   an [`Answer`] that keeps the JSON as sent (for `--json`); the agent protocol
//!   (`nodes_register`, `nodes_lease`, …) in [`nodes`].
//! - [`Client::request`] for anything else (a route the typed calls do not cover, or a
//!   lean reply type where decoding every field would cost, as in the bench).
//! - Every failure is a [`ClientError`]; error answers carry their decoded
//!   problem+json. Callers word them for their users (the CLI does, in
//!   `cli::client::errors`).

mod error;
pub mod nodes;
mod request;
pub mod tasks;

pub use error::{ClientError, DecodeKind, ERROR_BODY_LIMIT, TransportKind, UrlError};
pub use request::{Reply, Request};

use reqwest::Url;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The server a client talks to when none is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Default connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default timeout of a whole call (long-polls add their wait to it).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A decoded answer together with the JSON exactly as the server sent it.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The body as received.
    pub raw: Value,
    /// The body decoded into its contract type.
    pub value: T,
}

/// A client of one control plane (or of replicas, tried in turn).
pub struct Client {
    http: reqwest::Client,
    servers: Vec<Url>,
    current: AtomicUsize,
    token: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.servers)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Options of a [`Client`]; [`ClientBuilder::build`] checks the URLs.
#[derive(Clone)]
pub struct ClientBuilder {
    servers: Vec<String>,
    token: Option<String>,
    connect_timeout: Duration,
    timeout: Duration,
    user_agent: String,
    pool_max_idle_per_host: Option<usize>,
    pool_idle_timeout: Option<Duration>,
}

impl ClientBuilder {
    /// The bearer token sent when a call names none (blank means none).
    pub fn token(mut self, token: Option<&str>) -> Self {
        self.token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        self
    }

    /// Connect timeout (default [`CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Timeout of a call that sets none (default [`REQUEST_TIMEOUT`]).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// `User-Agent` (default `muster/<version>`).
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    /// Idle connections kept per host.
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = Some(n);
        self
    }

    /// How long an idle connection is kept.
    pub fn pool_idle_timeout(mut self, d: Duration) -> Self {
        self.pool_idle_timeout = Some(d);
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    /// No URL, or one that is not an http(s) base URL.
    pub fn build(self) -> Result<Client, ClientError> {
        let servers = self
            .servers
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| request::parse_base_url(s))
            .collect::<Result<Vec<Url>, UrlError>>()?;
        if servers.is_empty() {
            return Err(match self.servers.len() {
                1 => UrlError::Empty,
                _ => UrlError::None,
            }
            .into());
        }
        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .user_agent(self.user_agent);
        if let Some(n) = self.pool_max_idle_per_host {
            http = http.pool_max_idle_per_host(n);
        }
        if let Some(d) = self.pool_idle_timeout {
            http = http.pool_idle_timeout(d);
        }
        let http = http
            .build()
            .map_err(|e| ClientError::Build(error::root_cause(&e)))?;
        Ok(Client {
            http,
            servers,
            current: AtomicUsize::new(0),
            token: self.token,
            timeout: self.timeout,
        })
    }
}

impl Client {
    /// Options for a client of `servers` (base URLs; `http://` is assumed when no
    /// scheme is given, a trailing `/` is ignored).
    pub fn builder<S: AsRef<str>>(servers: &[S]) -> ClientBuilder {
        ClientBuilder {
            servers: servers.iter().map(|s| s.as_ref().to_owned()).collect(),
            token: None,
            connect_timeout: CONNECT_TIMEOUT,
            timeout: REQUEST_TIMEOUT,
            user_agent: concat!("muster/", env!("CARGO_PKG_VERSION")).to_owned(),
            pool_max_idle_per_host: None,
            pool_idle_timeout: None,
        }
    }

    /// A client of one server with default options.
    ///
    /// # Errors
    /// See [`ClientBuilder::build`].
    pub fn new(server: &str, token: Option<&str>) -> Result<Client, ClientError> {
        Client::builder(&[server]).token(token).build()
    }

    /// The base URL calls go to now, without a trailing `/`.
    pub fn current_server(&self) -> &str {
        self.server(self.current.load(Ordering::Relaxed) % self.servers.len())
    }

    fn server(&self, idx: usize) -> &str {
        self.servers[idx].as_str().trim_end_matches('/')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_a_server() {
        let none: [&str; 0] = [];
        assert!(matches!(
            Client::builder(&none).build(),
            Err(ClientError::Url(UrlError::None))
        ));
        assert!(matches!(
            Client::new(" ", None),
            Err(ClientError::Url(UrlError::Empty))
        ));
        let c = Client::builder(&["http://a:1/", "http://b:2"])
            .build()
            .expect("client");
        assert_eq!(c.current_server(), "http://a:1");
    }

    #[test]
    fn debug_redacts_the_token() {
        let c = Client::new("http://a:1", Some("secret-token")).expect("client");
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
    }

    #[tokio::test]
    async fn connection_errors_fail_over_to_the_next_server() {
        // Two ports nothing listens on: both are tried, the error is a transport one.
        let c = Client::builder(&["http://127.0.0.1:9", "http://127.0.0.1:1"])
            .build()
            .expect("client");
        let e = c.nodes_heartbeat("n", "t").await.unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(
            matches!(
                e,
                ClientError::Transport {
                    kind: TransportKind::Connect,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(c.current_server(), "http://127.0.0.1:9");
    }
}
