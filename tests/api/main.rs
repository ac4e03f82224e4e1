//! One integration-test binary: every test drives real redis-server processes.

mod bench_smoke;
mod cluster;
mod connections;
mod coord;
mod dev_demo;
mod events;
mod faults;
mod flow;
mod helpers;
mod locks;
mod quotas;
mod redis_ha;
mod router;
mod schedules;
mod security;
mod shards;
mod store;
mod support;
mod ui;
mod worker_sdk;
