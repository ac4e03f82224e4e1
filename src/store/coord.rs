//! The batch types under their former path (`crate::store::coord`), kept so that code
//! written against it still compiles; new code uses [`crate::store::BatchCheck`] and
//! [`crate::store::BatchBegin`] (defined in [`super::batches`]).

pub use super::batches::{BatchBegin, BatchCheck};
