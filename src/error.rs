//! Library errors. Each message names the thing that went wrong and, where there is one,
//! the fix.

/// Errors returned by the taskstream library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A connection could not be taken from the pool.
    #[error("redis connection pool: {0}")]
    Pool(String),
    /// The payload is larger than the configured limit.
    #[error("payload of task type {task_type:?} is {size} bytes, above the {limit}-byte limit (raise producer.max_payload_bytes or store the data elsewhere and enqueue a reference)")]
    PayloadTooLarge {
        /// Task type.
        task_type: String,
        /// Payload size in bytes.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The payload could not be serialized to JSON.
    #[error("payload is not serializable to JSON: {0}")]
    Payload(#[from] serde_json::Error),
    /// A name or value is not valid.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid (e.g. "queue name").
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The configuration is not valid.
    #[error("{0}")]
    Config(String),
    /// The Redis server does not meet the requirements.
    #[error("redis preflight failed: {0}")]
    Preflight(String),
    /// Something was not found.
    #[error("{0} not found")]
    NotFound(String),
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
