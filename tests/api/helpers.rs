//! The names the tests used before `support/` existed, kept so that code written
//! against them still compiles: everything here is [`crate::support`].

#[allow(unused_imports)]
pub use crate::support::*;
