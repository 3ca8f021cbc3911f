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
