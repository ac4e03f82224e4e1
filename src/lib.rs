//! muster: a distributed task-processing platform on Redis.
//!
//! # Layout
//! - [`domain`]: task and node types, states, the JSON shapes of the HTTP contract.
//! - [`store`]: the Redis key schema and one Lua script per lifecycle transition.
//! - [`api`]: the axum router, auth, problem+json errors.
//! - [`dispatcher`], [`reconciler`], [`timers`], [`scheduler`]: the background components.
//! - [`startup`]: [`startup::Application`] wires them together.
//! - [`agent`]: the node agent, a library ([`agent::run`]). [`client`]: the HTTP client of
//!   the v1 API (agent, CLI, demo, bench). [`cli`]: the commands of the `muster` binary.
//! - [`worker`]: the Rust SDK ([`worker::Worker`]), in-process handlers on the agent engine.

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
