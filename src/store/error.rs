//! [`StoreError`], the one error type of the store, and its [`Result`] alias.

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The task or node does not exist.
    #[error("not found")]
    NotFound,
    /// The lease token is stale or belongs to another node.
    #[error("the lease is not current (task is {state})")]
    LeaseConflict {
        /// The task's state now.
        state: String,
    },
    /// The transition is not legal from the current state.
    #[error("illegal transition from {from}")]
    IllegalTransition {
        /// The task's state now.
        from: String,
    },
    /// Redis cannot be reached (down, timing out, loading).
    #[error("redis unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// Any other Redis error.
    #[error("redis error: {0}")]
    Redis(#[source] redis::RedisError),
    /// Redis answered something the scripts never return.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
    /// The Redis instance is not fit for muster.
    #[error("{0}")]
    Unfit(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        let unavailable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
            );
        if unavailable {
            StoreError::Unavailable(e)
        } else {
            StoreError::Redis(e)
        }
    }
}

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
