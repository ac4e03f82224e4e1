//! One integration-test binary: every test drives real redis-server processes.

mod helpers;
mod dev_demo;
