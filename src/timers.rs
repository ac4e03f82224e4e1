//! timers (in progress).
