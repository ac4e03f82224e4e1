//! The fault suite (RELIABILITY.md R1–R4, R6, R8 and the handler limits): real
//! redis-server, `muster serve` and `muster agent` processes, real signals (`kill -9`,
//! `SIGSTOP` / `SIGCONT`), a recorder of client operations and a checker.
//!
//! `cargo test --test api faults -- --nocapture` runs the bounded (CI) version and
//! prints the measured figures; `MUSTER_FAULTS_LONG=1` runs the long one. Scenarios
//! take a lock and run one at a time: they measure recovery times.

mod agents;
mod control_plane;
mod handlers;
pub mod harness;
mod model;
mod redis_faults;
