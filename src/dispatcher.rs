//! dispatcher (in progress).
