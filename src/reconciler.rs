//! reconciler (in progress).
