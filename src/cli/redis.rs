//! The Redis flags shared by `serve`, `doctor`, `migrate` and `bench`: one server, a
//! Cluster, or Sentinels ([`crate::store::RedisTarget`]).

use crate::store::{RedisTarget, Store};
use anyhow::Context;
use std::time::Duration;

/// Where the keyspace is.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Redis URL (`redis://[user:password@]host:port[/db]`, `rediss://` for TLS).
    #[arg(
        long,
        env = "MUSTER_REDIS_URL",
        default_value = crate::config::DEFAULT_REDIS_URL
    )]
    pub redis_url: String,
    /// A Redis Cluster instead: seed node URLs, comma-separated (any few of its nodes).
    #[arg(long, env = "MUSTER_REDIS_CLUSTER", conflicts_with = "redis_sentinel")]
    pub redis_cluster: Option<String>,
    /// Sentinels instead: their URLs, comma-separated; the primary is the one they name
    /// `--sentinel-master` (reached with the first URL's user, password and TLS).
    #[arg(long, env = "MUSTER_REDIS_SENTINEL", requires = "sentinel_master")]
    pub redis_sentinel: Option<String>,
    /// The primary's name in the Sentinels' configuration (`sentinel monitor NAME …`).
    #[arg(long, env = "MUSTER_SENTINEL_MASTER")]
    pub sentinel_master: Option<String>,
}

impl RedisArgs {
    /// The target the flags name.
    ///
    /// # Errors
    /// An empty list or a URL that does not parse, in one line.
    pub fn target(&self) -> anyhow::Result<RedisTarget> {
        let t = match (&self.redis_cluster, &self.redis_sentinel) {
            (Some(c), _) => RedisTarget::Cluster(RedisTarget::list(c)),
            (None, Some(s)) => RedisTarget::Sentinel {
                sentinels: RedisTarget::list(s),
                master: self.sentinel_master.clone().unwrap_or_default(),
            },
            (None, None) => RedisTarget::Standalone(self.redis_url.clone()),
        };
        t.validate().map_err(anyhow::Error::msg)?;
        Ok(t)
    }

    /// A store on the keyspace (not prepared: its schema version is not checked).
    ///
    /// # Errors
    /// Bad flags, Redis unreachable.
    pub async fn connect(&self, namespace: &str, timeout: Duration) -> anyhow::Result<Store> {
        let target = self.target()?;
        Store::connect_to(&target, namespace, timeout)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to {}; check it runs, or pass --redis-url, --redis-cluster or --redis-sentinel",
                    target.describe()
                )
            })
    }
}
