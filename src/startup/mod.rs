//! [`Application`]: binds the listener, connects to Redis, and runs the API with the
//! dispatcher, reconciler and timers until shutdown.

pub mod server;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::service::directory::Directory;
use crate::service::hub::Hub;
use crate::store::{Store, token_sha};
use crate::workers::dispatcher::Dispatcher;
use crate::workers::reconciler::Reconciler;
use crate::workers::timers::Timers;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A built control plane, listening but not yet serving.
pub struct Application {
    addr: SocketAddr,
    listener: TcpListener,
    state: AppState,
}

impl Application {
    /// Validates the config, connects to Redis, checks it, loads the scripts and binds
    /// the listener.
    ///
    /// # Errors
    /// A setting out of range ([`crate::config::ConfigError`]), Redis unreachable or
    /// unsuitable, or the address taken.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        config.validate()?;
        let target = config.target();
        let store = Store::connect_to(&target, &config.namespace, config.redis_timeout)
            .await
            .with_context(|| {
                format!(
                    "cannot connect to {}; start redis-server or pass --redis-url (--redis-cluster, --redis-sentinel)",
                    target.describe()
                )
            })?
            .with_replica_acks(config.replica_acks);
        let persistence = store.prepare().await.context("redis is not usable")?;
        if config.replica_acks > 0 {
            match store.connected_replicas().await {
                Ok(Some(n)) if n < config.replica_acks => tracing::warn!(
                    replicas = n,
                    replica_acks = config.replica_acks,
                    "the redis primary has fewer replicas than --replica-acks: every write answers 503 until enough connect"
                ),
                _ => {}
            }
        }
        if !persistence {
            tracing::warn!(
                "redis persistence is off (no AOF, no RDB): a redis restart loses every task; enable appendonly yes"
            );
        }
        let listener = TcpListener::bind(&config.listen).await.with_context(|| {
            format!(
                "cannot listen on {}; pick another address with --listen",
                config.listen
            )
        })?;
        let addr = listener.local_addr()?;
        if config.no_auth {
            if !addr.ip().is_loopback() {
                anyhow::bail!("--no-auth is only allowed on a loopback listen address, not {addr}");
            }
            tracing::warn!(
                "AUTHENTICATION IS OFF (--no-auth): anyone who can reach {addr} controls this muster"
            );
        }
        let hub = Hub::new();
        let state = AppState {
            store: store.clone(),
            admin_sha: config.admin_token.as_deref().map(token_sha),
            tokens: Arc::new(
                config
                    .tokens
                    .iter()
                    .map(|(r, t)| (token_sha(t), *r))
                    .collect(),
            ),
            token_queues: Arc::new(
                config
                    .token_queues
                    .iter()
                    .map(|(t, q)| (token_sha(t), Arc::new(q.clone())))
                    .collect(),
            ),
            token_quotas: Arc::new(
                config
                    .token_quotas
                    .iter()
                    .map(|(t, q)| (token_sha(t), *q))
                    .collect(),
            ),
            no_auth: config.no_auth,
            limiter: config
                .rate_limit
                .map(|(r, b)| Arc::new(crate::api::limit::RateLimiter::new(r, b))),
            hub,
            directory: Arc::new(Directory::new(Duration::from_millis(500))),
            persistence: Arc::new(AtomicBool::new(persistence)),
            events: crate::api::events::EventFeed::new(store.clone()),
            streams: crate::api::limit::StreamLimits::new(
                config.max_streams,
                config.max_streams_per_caller,
            ),
            fitness: crate::service::fitness::Fitness::new(),
            config: Arc::new(config),
        };
        Ok(Application {
            addr,
            listener,
            state,
        })
    }

    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (for tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled or a component dies.
    ///
    /// # Errors
    /// A component that died, named.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let st = self.state;
        let cfg = st.config.clone();
        let mut set = tokio::task::JoinSet::new();
        let child = shutdown.child_token();

        let dispatcher = Dispatcher::new(
            st.store.clone(),
            st.hub.clone(),
            st.directory.clone(),
            cfg.heartbeat_interval,
        );
        let sd = child.clone();
        let workers = cfg.dispatchers;
        set.spawn(async move {
            dispatcher.run(workers, sd).await;
            "dispatcher"
        });
        let reconciler = Reconciler::new(st.store.clone(), st.hub.clone(), st.directory.clone())
            .with_dead_node_after(cfg.dead_node_after)
            .with_fitness(st.fitness.clone());
        let sd = child.clone();
        set.spawn(async move {
            reconciler.run(sd).await;
            "reconciler"
        });
        let coordinator =
            crate::workers::coordinator::Coordinator::new(st.store.clone(), st.hub.clone());
        let sd = child.clone();
        set.spawn(async move {
            coordinator.run(sd).await;
            "coordinator"
        });
        let timers = Timers::new(
            st.store.clone(),
            st.hub.clone(),
            st.directory.clone(),
            cfg.reaper_interval,
            cfg.heartbeat_interval,
        );
        let sd = child.clone();
        set.spawn(async move {
            timers.run(sd).await;
            "timers"
        });
        let scheduler = crate::workers::scheduler::Scheduler::new(st.store.clone(), st.hub.clone());
        let sd = child.clone();
        set.spawn(async move {
            scheduler.run(sd).await;
            "scheduler"
        });
        let app = api::router(st);
        let sd = child.clone();
        let listener = self.listener;
        let max_connections = cfg.max_connections;
        set.spawn(async move {
            crate::startup::server::serve(listener, app, max_connections, sd).await;
            "http server"
        });
        tracing::info!(addr = %self.addr, "muster serving");
        let first = set.join_next().await;
        if !child.is_cancelled() {
            let name = first.and_then(|r| r.ok()).unwrap_or("a component");
            child.cancel();
            // Give the rest a moment to stop at a safe point.
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while set.join_next().await.is_some() {}
            })
            .await;
            anyhow::bail!("{name} stopped unexpectedly; shutting down");
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while set.join_next().await.is_some() {}
        })
        .await;
        Ok(())
    }
}
