//! Library errors. Each message names the thing that went wrong and, where there is one,
//! the fix.

/// Errors returned by the taskstream library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis could not be reached or answered with an error.
    #[error("redis: {0}")]
    Redis(redis::RedisError),
    /// Redis refused a command because the ACL user lacks a permission (`NOPERM`, or a
    /// script whose inner command the user may not run). Not a passing fault: it lasts
    /// until an operator grants the permission (`ACL SETUSER`), so callers retry it with
    /// backoff and report it, and never count it as Redis being unreachable.
    #[error("Redis refused {command} for user \"{user}\" (NOPERM): {fix}")]
    NoPermission {
        /// The refused command as Redis named it (e.g. `EVALSHA`, `SCRIPT LOAD`, `MULTI`),
        /// or what was refused (a key, a command inside a script).
        command: String,
        /// The ACL user the connection runs as (`<user>` when it could not be learned).
        user: String,
        /// The fix: the `ACL SETUSER` line that grants it, and where the roles are documented.
        fix: String,
    },
    /// The write went to the master but fewer than `redis.wait_replicas` replicas had it
    /// within `redis.wait_timeout_ms` (`WAIT`): a failover now could lose it. It may still
    /// replicate later; retrying an enqueue with the same idempotency key is safe.
    #[error("the write reached {got} of {wanted} replicas within {timeout_ms} ms (redis.wait_replicas): a master failover could lose it; retry with the same idempotency key, or check the replicas (INFO replication)")]
    NotReplicated {
        /// Replicas that acknowledged the write.
        got: u64,
        /// `redis.wait_replicas`.
        wanted: u32,
        /// `redis.wait_timeout_ms`.
        timeout_ms: u64,
    },
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
    /// A saga kept changing (other orchestrators or operators moved it) while a
    /// transition was being applied; nothing was written. Retrying is safe.
    #[error("saga {id} changed {attempts} times while this transition was being applied; nothing was written: retry (an orchestrator retries its replies and deadlines by itself)")]
    SagaConflict {
        /// Saga id.
        id: String,
        /// Compare-and-set attempts made.
        attempts: usize,
    },
    /// The saga has ended, so it cannot be aborted (or moved at all).
    #[error("saga {id} has ended ({status}); only a running saga can be aborted (see `taskstream saga show {id}`)")]
    SagaEnded {
        /// Saga id.
        id: String,
        /// Its final state: `completed`, `rolled_back` or `failed`.
        status: String,
    },
    /// The saga's state machine refused the request (e.g. an abort of a saga whose
    /// record is damaged); nothing was written.
    #[error("saga {id}: {reason}")]
    SagaRejected {
        /// Saga id.
        id: String,
        /// Why, as the state machine put it.
        reason: String,
    },
    /// A saga with this id exists already (ids are fresh UUIDv7s: a clash means a bug,
    /// or a record written by hand).
    #[error("saga {0} already exists; start it again for a fresh id")]
    SagaExists(String),

    /// [`Producer::enqueue_and_wait`](crate::producer::Producer::enqueue_and_wait) gave up:
    /// the task did not end within the wait. It was enqueued and may still run.
    #[error("task {task_id} of queue {queue:?} did not end within {waited_ms} ms; it is enqueued and may still run (`taskstream task show {task_id} -q {queue}`). Waiting needs result_ttl_secs on the queue's workers, or nothing ever rings")]
    WaitTimeout {
        /// The task.
        task_id: String,
        /// Its queue.
        queue: String,
        /// How long the call waited.
        waited_ms: u64,
    },
}

impl From<redis::RedisError> for Error {
    /// A permission refusal becomes [`Error::NoPermission`]; everything else
    /// [`Error::Redis`].
    fn from(e: redis::RedisError) -> Self {
        match crate::rdb::no_permission(&e) {
            Some((command, user, fix)) => Error::NoPermission { command, user, fix },
            None => Error::Redis(e),
        }
    }
}

impl Error {
    /// True for [`Error::NoPermission`]: Redis answered, but refused the command.
    pub fn is_no_permission(&self) -> bool {
        matches!(self, Error::NoPermission { .. })
    }
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
