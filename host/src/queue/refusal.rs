//! Why the queue refused a request that was the caller's mistake, as opposed to a Redis
//! failure. Returned inside `anyhow::Error`; the HTTP API downcasts it to pick a status code,
//! and the CLI prints it as it stands.

/// A request refused for what it asked, with a message that says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such tenant, task or job (or it belongs to another tenant, which is the same thing
    /// from where the caller stands).
    #[error("{0}")]
    NotFound(String),
    /// A payload or component over the tenant's size limit.
    #[error("{0}")]
    TooLarge(String),
    /// A name, policy, limit or other value that is not valid.
    #[error("{0}")]
    Invalid(String),
    /// A memory limit or timeout over the tenant's ceiling.
    #[error("{0}")]
    Limit(String),
    /// A quota that is full now but may not be later (queued jobs).
    #[error("{0}")]
    Quota(String),
    /// The object is not in a state that allows the change (e.g. requeueing a running job).
    #[error("{0}")]
    Conflict(String),
}

impl Refusal {
    /// The refusal inside `err`, if that is what it is.
    pub fn of(err: &anyhow::Error) -> Option<&Refusal> {
        err.downcast_ref::<Refusal>()
    }
}

/// Redis refused a write because it reached `maxmemory` under the `noeviction` policy. Not
/// the caller's mistake and not an outage: nothing was written, and the same request will
/// work once memory is freed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what}: Redis is out of memory (it reached `maxmemory` and its policy is `noeviction`), \
     so nothing was written. Let workers drain the queues, shorten the retention of finished \
     jobs, or raise `maxmemory`; then try again"
)]
pub struct RedisFull {
    /// What was being done, e.g. "failed to enqueue a `hello` job".
    pub what: String,
}

/// Wraps a Redis error with `what`, turning an out-of-memory refusal into [`RedisFull`] so
/// it reads as what it is instead of Redis's raw script error.
pub(crate) fn redis_failure(err: redis::RedisError, what: String) -> anyhow::Error {
    if err.code() == Some("OOM") {
        anyhow::Error::new(RedisFull { what })
    } else {
        anyhow::Error::new(err).context(what)
    }
}
