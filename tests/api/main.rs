//! One integration-test binary: every test drives real redis-server processes.

mod cluster;
mod flow;
mod helpers;
mod store;
mod security;
mod events;
