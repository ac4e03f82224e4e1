//! Control-plane settings: [`Config`], its defaults (written once, here, and used by
//! the `muster serve` flags too) and [`Config::validate`], which
//! [`crate::startup::Application::build`] runs for every way of starting a server.

use crate::domain::limits::{MAX_WAIT, MAX_WAIT_MS};
use crate::domain::roles::{MIN_TOKEN_LEN, QueueScope, Role, TokenEntry};
use std::time::Duration;

/// Default HTTP listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default key namespace.
pub const DEFAULT_NAMESPACE: &str = "muster";
/// Default heartbeat interval told to agents, ms.
pub const DEFAULT_HEARTBEAT_MS: u64 = 5_000;
/// Default reaper interval, ms.
pub const DEFAULT_REAPER_MS: u64 = 1_000;
/// Default Redis command timeout.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest heartbeat interval accepted, ms.
pub const MIN_HEARTBEAT_MS: u64 = 100;
/// Shortest reaper interval accepted, ms.
pub const MIN_REAPER_MS: u64 = 10;

/// Default cap on open HTTP connections (lowered to fit the open-files limit).
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default cap on open long-lived requests (event streams and long-polls) in all.
pub const DEFAULT_MAX_STREAMS: usize = 8192;
/// Default cap on open long-lived requests of one caller (a token or a node; the
/// admin token is held only to the total).
pub const DEFAULT_MAX_STREAMS_PER_CALLER: usize = 256;

/// Default time without a heartbeat after which a node holding no lease is removed.
pub const DEFAULT_DEAD_NODE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What shows in place of a secret in `Debug` output.
const REDACTED: &str = "<redacted>";

/// Settings of one `muster serve` process. `Debug` redacts the tokens and the Redis
/// password.
#[derive(Clone)]
pub struct Config {
    /// HTTP listen address (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Redis URL.
    pub redis_url: String,
    /// A Cluster or Sentinels instead of `redis_url` (`--redis-cluster`,
    /// `--redis-sentinel`).
    pub redis_target: Option<crate::store::RedisTarget>,
    /// Replicas every acknowledged write waits for (`WAIT`; 0: none).
    pub replica_acks: u32,
    /// Key namespace (default `muster`).
    pub namespace: String,
    /// Admin bearer token; `None` only with `no_auth`.
    pub admin_token: Option<String>,
    /// More tokens with their roles (`read`, `submit`, `agent`, `admin`).
    pub tokens: Vec<(Role, String)>,
    /// Queues some of those tokens are limited to (by token; from the tokens file's
    /// `queues=`): such a token reaches only the queues its patterns match.
    pub token_queues: Vec<(String, QueueScope)>,
    /// What some of those tokens may hold at once (by token; the tokens file's
    /// `max_queues=`, `max_schedules=`, `max_locks=`, `max_streams=`).
    pub token_quotas: Vec<(String, crate::domain::roles::TokenQuotas)>,
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
    /// most [`MAX_WAIT`]); answering earlier is always allowed by the contract.
    pub max_wait: Duration,
    /// Redis command timeout; past it the API answers 503.
    pub redis_timeout: Duration,
    /// Most open HTTP connections; at the cap an idle connection is closed for a new
    /// one (strangers' first), else the new one gets 503 (see `startup::server`).
    pub max_connections: usize,
    /// Most open event streams and long-polls in all (503 past it).
    pub max_streams: usize,
    /// Most open event streams and long-polls per caller (429 past it).
    pub max_streams_per_caller: usize,
    /// A node without a heartbeat for this long and holding no lease is removed.
    pub dead_node_after: Duration,
}

/// A setting out of range. The messages name the `muster serve` flag that sets it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// Rate limit not above 0.
    #[error("--rate-limit must be above 0")]
    RateLimit,
    /// A role token shorter than [`MIN_TOKEN_LEN`].
    #[error("--token: the {0} token is too short: use at least {MIN_TOKEN_LEN} characters")]
    ShortToken(&'static str),
    /// The admin token shorter than [`MIN_TOKEN_LEN`].
    #[error(
        "the admin token (MUSTER_ADMIN_TOKEN / --admin-token) is too short: use at least {MIN_TOKEN_LEN} characters"
    )]
    ShortAdminToken,
    /// The tokens file can be read by other users.
    #[error(
        "--tokens-file {path} can be read by other users (mode {mode:03o}); run chmod 600 {path}"
    )]
    TokensFileReadable {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The tokens file cannot be read or holds a bad line.
    #[error("--tokens-file {path}: {reason}")]
    TokensFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// No dispatcher worker.
    #[error("--dispatchers must be at least 1")]
    Dispatchers,
    /// Heartbeat interval under [`MIN_HEARTBEAT_MS`].
    #[error("--heartbeat-interval-ms must be at least {MIN_HEARTBEAT_MS}")]
    HeartbeatInterval,
    /// Reaper interval under [`MIN_REAPER_MS`].
    #[error("--reaper-interval-ms must be at least {MIN_REAPER_MS}")]
    ReaperInterval,
    /// Long-poll ceiling above [`MAX_WAIT`].
    #[error("--max-wait-ms must be at most {MAX_WAIT_MS}")]
    MaxWait,
    /// A connection or stream cap of 0.
    #[error("the connection and stream limits must be at least 1")]
    Limits,
    /// Neither an admin token nor `no_auth`.
    #[error(
        "no admin token: set MUSTER_ADMIN_TOKEN (or --admin-token), or use --no-auth on a loopback address"
    )]
    NoAdminToken,
}

impl Config {
    /// Where the keyspace is: the Cluster or Sentinels when given, else `redis_url`.
    pub fn target(&self) -> crate::store::RedisTarget {
        self.redis_target
            .clone()
            .unwrap_or_else(|| crate::store::RedisTarget::Standalone(self.redis_url.clone()))
    }

    /// Defaults for a given Redis URL and listen address.
    pub fn new(listen: impl Into<String>, redis_url: impl Into<String>) -> Config {
        Config {
            listen: listen.into(),
            redis_url: redis_url.into(),
            redis_target: None,
            replica_acks: 0,
            namespace: DEFAULT_NAMESPACE.into(),
            admin_token: None,
            tokens: Vec::new(),
            token_queues: Vec::new(),
            token_quotas: Vec::new(),
            no_auth: false,
            rate_limit: None,
            dispatchers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            heartbeat_interval: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            reaper_interval: Duration::from_millis(DEFAULT_REAPER_MS),
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            max_wait: MAX_WAIT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_streams: DEFAULT_MAX_STREAMS,
            max_streams_per_caller: DEFAULT_MAX_STREAMS_PER_CALLER,
            dead_node_after: DEFAULT_DEAD_NODE_AFTER,
        }
    }

    /// Checks every setting that does not need Redis or the bound address (the
    /// loopback rule of `no_auth` is checked once the listener is bound).
    ///
    /// # Errors
    /// The first setting out of range, in the order the `muster serve` flags are listed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some((rate, _)) = self.rate_limit
            && (rate.is_nan() || rate <= 0.0)
        {
            return Err(ConfigError::RateLimit);
        }
        if self
            .admin_token
            .as_ref()
            .is_some_and(|t| t.len() < MIN_TOKEN_LEN)
        {
            return Err(ConfigError::ShortAdminToken);
        }
        if let Some((role, _)) = self.tokens.iter().find(|(_, t)| t.len() < MIN_TOKEN_LEN) {
            return Err(ConfigError::ShortToken(role.name()));
        }
        if self.dispatchers == 0 {
            return Err(ConfigError::Dispatchers);
        }
        if self.heartbeat_interval < Duration::from_millis(MIN_HEARTBEAT_MS) {
            return Err(ConfigError::HeartbeatInterval);
        }
        if self.reaper_interval < Duration::from_millis(MIN_REAPER_MS) {
            return Err(ConfigError::ReaperInterval);
        }
        if self.max_wait > MAX_WAIT {
            return Err(ConfigError::MaxWait);
        }
        if self.max_connections == 0 || self.max_streams == 0 || self.max_streams_per_caller == 0 {
            return Err(ConfigError::Limits);
        }
        if self.admin_token.is_none() && !self.no_auth {
            return Err(ConfigError::NoAdminToken);
        }
        Ok(())
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tokens: Vec<(Role, &str)> = self.tokens.iter().map(|(r, _)| (*r, REDACTED)).collect();
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("redis_url", &redact_url(&self.redis_url))
            .field(
                "redis_target",
                &self.redis_target.as_ref().map(|t| t.describe()),
            )
            .field("replica_acks", &self.replica_acks)
            .field("namespace", &self.namespace)
            .field("admin_token", &self.admin_token.as_ref().map(|_| REDACTED))
            .field("tokens", &tokens)
            .field(
                "token_queues",
                &self
                    .token_queues
                    .iter()
                    .map(|(_, q)| (REDACTED, q.patterns()))
                    .collect::<Vec<_>>(),
            )
            .field("no_auth", &self.no_auth)
            .field("rate_limit", &self.rate_limit)
            .field("dispatchers", &self.dispatchers)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("reaper_interval", &self.reaper_interval)
            .field("max_wait", &self.max_wait)
            .field("redis_timeout", &self.redis_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_streams", &self.max_streams)
            .field("max_streams_per_caller", &self.max_streams_per_caller)
            .field("dead_node_after", &self.dead_node_after)
            .finish()
    }
}

/// Reads a tokens file (`ROLE:TOKEN` per line, `#` comments), refusing one that the
/// group or others may read: it holds every role token in clear. Queue limits
/// (`queues=`) are dropped: [`read_token_entries`] keeps them.
///
/// # Errors
/// As [`read_token_entries`].
pub fn read_tokens_file(path: &std::path::Path) -> Result<Vec<(Role, String)>, ConfigError> {
    Ok(read_token_entries(path)?
        .into_iter()
        .map(|e| (e.role, e.token))
        .collect())
}

/// Adds the entries of a tokens file to `cfg`: their roles to `tokens`, their queue
/// limits to `token_queues`, their quotas to `token_quotas`.
///
/// # Errors
/// As [`read_token_entries`].
pub fn add_tokens_file(cfg: &mut Config, path: &std::path::Path) -> Result<(), ConfigError> {
    for e in read_token_entries(path)? {
        if let Some(q) = e.queues {
            cfg.token_queues.push((e.token.clone(), q));
        }
        if !e.quotas.is_empty() {
            cfg.token_quotas.push((e.token.clone(), e.quotas));
        }
        cfg.tokens.push((e.role, e.token));
    }
    Ok(())
}

/// Reads a tokens file: one `ROLE:TOKEN [queues=PATTERN,PATTERN...]` a line, `#`
/// comments (see [`crate::domain::roles::parse_token_entry`]), refusing one that the
/// group or others may read.
///
/// # Errors
/// [`ConfigError::TokensFileReadable`] (with the `chmod 600` to run), or
/// [`ConfigError::TokensFile`] for an unreadable file or a bad line.
pub fn read_token_entries(path: &std::path::Path) -> Result<Vec<TokenEntry>, ConfigError> {
    let shown = path.display().to_string();
    let fail = |reason: String| ConfigError::TokensFile {
        path: shown.clone(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::TokensFileReadable {
                path: shown.clone(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(i, l)| {
            crate::domain::roles::parse_token_entry(l)
                .map_err(|e| fail(format!("entry {}: {e}", i + 1)))
        })
        .collect()
}

/// A URL with the password of its user info (`scheme://user:password@host`) redacted;
/// user info without a `:` is redacted whole, since Redis takes a lone one as a password.
fn redact_url(url: &str) -> String {
    crate::store::connection::redact(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> Config {
        let mut c = Config::new("127.0.0.1:0", "redis://127.0.0.1:6379");
        c.admin_token = Some("admin-secret-0123456789".into());
        c
    }

    #[test]
    fn debug_redacts_the_tokens_and_the_redis_password() {
        let mut c = valid();
        c.redis_url = "redis://default:hunter2@redis.internal:6379/0".into();
        c.tokens = vec![(Role::Read, "read-secret-0123456789".into())];
        let shown = format!("{c:?}");
        for secret in ["admin-secret", "read-secret", "hunter2"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(
            shown.contains("redis://default:<redacted>@redis.internal:6379/0"),
            "{shown}"
        );
        assert!(shown.contains("(Read, \"<redacted>\")"), "{shown}");
        assert!(shown.contains("namespace: \"muster\""), "{shown}");
    }

    #[test]
    fn urls_without_a_password_are_shown_as_they_are() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("redis://:pw@h:1"), "redis://:<redacted>@h:1");
        assert_eq!(redact_url("redis://pw@h:1/0"), "redis://<redacted>@h:1/0");
        assert_eq!(redact_url("unix:///tmp/r.sock"), "unix:///tmp/r.sock");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[cfg(unix)]
    #[test]
    fn a_tokens_file_others_may_read_is_refused_with_the_chmod_to_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# roles\nread:read-0123456789abcdef\n\nagent:agent-0123456789abcdef\n",
        )
        .expect("write");
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let e = read_tokens_file(&path).expect_err("readable by others");
            assert!(e.to_string().contains("chmod 600"), "{e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let tokens = read_tokens_file(&path).expect("private file");
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[1], (Role::Agent, "agent-0123456789abcdef".into()));
        std::fs::write(&path, "reader:x\n").expect("write");
        let e = read_tokens_file(&path).expect_err("bad role");
        assert!(e.to_string().contains("entry 1"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_tokens_file_limits_tokens_to_queue_patterns() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "agent:agent-0123456789abcdef queues=images.*,ocr\nread:read-0123456789abcdef\n",
        )
        .expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut c = valid();
        add_tokens_file(&mut c, &path).expect("reads");
        assert_eq!(c.tokens.len(), 2);
        assert_eq!(c.token_queues.len(), 1);
        assert_eq!(c.token_queues[0].0, "agent-0123456789abcdef");
        assert!(c.token_queues[0].1.allows("images.big"));
        assert!(!c.token_queues[0].1.allows("payroll"));
        assert!(!format!("{c:?}").contains("agent-0123456789abcdef"));
        std::fs::write(&path, "submit:submit-0123456789abcdef queues=\n").expect("write");
        let e = read_token_entries(&path).expect_err("empty pattern");
        assert!(e.to_string().contains("entry 1: queues="), "{e}");
    }

    #[test]
    fn a_tokens_file_gives_tokens_their_quotas() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "submit:submit-0123456789abcdef max_queues=100 max_schedules=5
             agent:agent-0123456789abcdef queues=ocr max_streams=4 max_locks=10
             read:read-0123456789abcdef
",
        )
        .expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut c = valid();
        add_tokens_file(&mut c, &path).expect("reads");
        assert_eq!(c.tokens.len(), 3);
        assert_eq!(c.token_quotas.len(), 2, "the read token has none");
        assert_eq!(c.token_quotas[0].1.queues, Some(100));
        assert_eq!(c.token_quotas[0].1.schedules, Some(5));
        assert_eq!(c.token_quotas[1].1.streams, Some(4));
        assert_eq!(c.token_quotas[1].1.locks, Some(10));
        assert_eq!(c.token_queues.len(), 1);
        std::fs::write(&path, "submit:submit-0123456789abcdef max_queues=lots\n").expect("write");
        let e = read_token_entries(&path).expect_err("bad quota");
        assert!(e.to_string().contains("entry 1: max_queues"), "{e}");
    }

    #[test]
    fn the_defaults_are_valid_once_there_is_an_admin_token() {
        assert_eq!(valid().validate(), Ok(()));
        let open = Config::new("127.0.0.1:0", DEFAULT_REDIS_URL);
        assert_eq!(open.validate(), Err(ConfigError::NoAdminToken));
        let mut no_auth = open;
        no_auth.no_auth = true;
        assert_eq!(no_auth.validate(), Ok(()));
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        type Case = (fn(&mut Config), ConfigError);
        let cases: Vec<Case> = vec![
            (|c| c.rate_limit = Some((0.0, 1.0)), ConfigError::RateLimit),
            (
                |c| c.rate_limit = Some((f64::NAN, 1.0)),
                ConfigError::RateLimit,
            ),
            (
                |c| c.tokens = vec![(Role::Agent, "short".into())],
                ConfigError::ShortToken("agent"),
            ),
            (|c| c.dispatchers = 0, ConfigError::Dispatchers),
            (
                |c| c.admin_token = Some("fifteen-chars-x".into()),
                ConfigError::ShortAdminToken,
            ),
            (|c| c.max_streams = 0, ConfigError::Limits),
            (
                |c| c.heartbeat_interval = Duration::from_millis(99),
                ConfigError::HeartbeatInterval,
            ),
            (
                |c| c.reaper_interval = Duration::from_millis(9),
                ConfigError::ReaperInterval,
            ),
            (
                |c| c.max_wait = MAX_WAIT + Duration::from_millis(1),
                ConfigError::MaxWait,
            ),
        ];
        for (tweak, want) in cases {
            let mut c = valid();
            tweak(&mut c);
            assert_eq!(c.validate(), Err(want));
        }
    }
}
