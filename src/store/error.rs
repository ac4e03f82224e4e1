//! [`StoreError`], the one error type of the store, and its [`Result`] alias.

/// What a [`StoreError::NotFound`] did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// A task (an unknown or malformed id).
    Task,
    /// A batch.
    Batch,
}

impl Missing {
    /// The name of what is missing: `task`, `batch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Missing::Task => "task",
            Missing::Batch => "batch",
        }
    }
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// What the call names does not exist.
    #[error("no such {what}")]
    NotFound {
        /// What is missing.
        what: Missing,
    },
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
    /// A queue's shards can only grow (a task id names its shard for good).
    #[error("queue {queue:?} has {now} shards; shards only grow, {wanted} is fewer")]
    ShardsShrink {
        /// The queue.
        queue: String,
        /// Its shards now.
        now: u32,
        /// What was asked.
        wanted: u32,
    },
    /// An idempotency key already used by another caller or with another body.
    #[error("idempotency key already used {}", if *by_another_caller { "by another caller" } else { "with another body" })]
    IdempotencyReused {
        /// Another caller (else the same caller with another body).
        by_another_caller: bool,
    },
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        // Redis over its maxmemory refuses writes ("OOM command not allowed"), also
        // from inside a script: the caller may retry later, it did nothing wrong.
        let oom = e.code() == Some("OOM") || e.to_string().contains("OOM command not allowed");
        let unavailable = oom
            || e.is_io_error()
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
                        | ServerErrorKind::Moved
                        | ServerErrorKind::Ask
                ) | ErrorKind::ClusterConnectionNotFound
            );
        if unavailable {
            StoreError::Unavailable(e)
        } else {
            StoreError::Redis(e)
        }
    }
}

impl From<redis::ParsingError> for StoreError {
    fn from(e: redis::ParsingError) -> Self {
        StoreError::Protocol(e.to_string())
    }
}

impl StoreError {
    /// Redis did not answer in time (or at all): [`StoreError::Unavailable`].
    pub(crate) fn timed_out(what: &'static str) -> StoreError {
        StoreError::Unavailable(redis::RedisError::from((
            redis::ErrorKind::Io,
            "timed out",
            what.to_string(),
        )))
    }
}

/// Result alias of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
