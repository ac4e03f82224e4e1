//! One integration-test binary: every test drives real redis-server processes.

mod helpers;
mod store;
mod security;
mod events;
