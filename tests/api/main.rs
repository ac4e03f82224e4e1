//! One integration-test binary: every test drives real redis-server processes.

mod cluster;
mod faults;
mod flow;
mod helpers;
mod store;
