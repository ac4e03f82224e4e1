//! muster: a distributed task-processing platform on Redis.
//!
//! # Layout
//! Dependencies run one way: `cli → startup → {api, workers} → service → store → domain`
//! (docs/architecture.md has the picture and each transition's path to its script).
//! - [`domain`]: types that validate themselves ([`domain::TaskSpec::parse`],
//!   [`domain::cron::CronSpec`], [`domain::roles::Role`], ids and names) and the JSON
//!   shapes of the HTTP contract. No HTTP, no Redis.
//! - [`store`]: every Redis key ([`store::keys`]) and script call, one file per resource;
//!   the Lua scripts live in `lua/`, one per transition.
//! - [`service`]: the one submit path, batches' `then` tasks, the wake-up hub, the node cache.
//! - [`api`]: the axum router, auth and rate limit, problem+json errors, the OpenAPI document.
//! - [`workers`]: the background jobs (dispatcher, reconciler, timers, coordinator, scheduler).
//! - [`startup`]: [`startup::Application`] validates the config and wires them together.
//! - [`agent`]: the node agent, a library ([`agent::run`]); [`client`]: the HTTP client of
//!   the v1 API (agent, CLI, demo, bench); [`cli`]: the commands of the `muster` binary.
//! - [`worker`]: the Rust SDK ([`worker::Worker`]), in-process handlers on the agent engine.
//! - Leaves: [`config`], [`metrics`], [`telemetry`], [`shutdown`].

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod domain;
pub mod metrics;
pub mod service;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod worker;
pub mod workers;
