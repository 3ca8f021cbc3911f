//! How a task reports failure: `TaskError`, and its translation into the WIT `task-error`.

use std::fmt;
use std::time::Duration;

use crate::bindings;

/// Why an attempt failed, and whether the job is worth running again.
///
/// Build one with [`TaskError::transient`] (retry later) or [`TaskError::permanent`] (never
/// retry), then refine it with [`code`](TaskError::code) and, for transient errors,
/// [`retry_after`](TaskError::retry_after):
///
/// ```
/// use std::time::Duration;
/// use wasm_runner_guest::TaskError;
///
/// let err = TaskError::transient("upstream answered 429")
///     .code("rate-limited")
///     .retry_after(Duration::from_secs(2));
/// assert!(err.is_transient());
/// assert_eq!(err.error_code(), Some("rate-limited"));
/// assert_eq!(err.retry_hint(), Some(Duration::from_secs(2)));
/// ```
///
/// The accessors are named `error_code` and `retry_hint` because `code` and `retry_after` are
/// taken by the builder methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    kind: Kind,
    message: String,
    code: Option<String>,
    retry_after_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transient,
    Permanent,
}

impl TaskError {
    /// A failure worth retrying: a network blip, a rate limit, an outage downstream.
    ///
    /// The host runs the job again after its retry delay if the job has attempts left; on the
    /// last attempt (see [`Context::is_last_attempt`](crate::Context::is_last_attempt)) the job
    /// fails for good.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(Kind::Transient, message.into())
    }

    /// A failure that retrying cannot fix: invalid input, a bug, a missing resource.
    ///
    /// The host never runs the job again, whatever attempts it has left.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(Kind::Permanent, message.into())
    }

    fn new(kind: Kind, message: String) -> Self {
        Self {
            kind,
            message,
            code: None,
            retry_after_ms: None,
        }
    }

    /// Attaches a short machine-readable reason, such as `rate-limited` or `invalid-payload`.
    ///
    /// Codes are kebab-case by convention. Calling this again replaces the previous code.
    #[must_use]
    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Suggests how long the host should wait before the next attempt.
    ///
    /// The host treats it as a hint: it waits at least its retry policy's delay and at most its
    /// ceiling. The delay is sent in whole milliseconds (truncated), and a delay too long for a
    /// `u64` of milliseconds is sent as `u64::MAX`.
    ///
    /// On a permanent error this does nothing, because the host never retries it: the hint is
    /// dropped and [`retry_hint`](TaskError::retry_hint) stays `None`.
    #[must_use]
    pub fn retry_after(mut self, delay: Duration) -> Self {
        if self.kind == Kind::Transient {
            self.retry_after_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        }
        self
    }

    /// Returns `true` for an error built with [`TaskError::transient`].
    pub fn is_transient(&self) -> bool {
        self.kind == Kind::Transient
    }

    /// Returns `true` for an error built with [`TaskError::permanent`].
    pub fn is_permanent(&self) -> bool {
        self.kind == Kind::Permanent
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The machine-readable reason set with [`code`](TaskError::code), if any.
    pub fn error_code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The retry delay set with [`retry_after`](TaskError::retry_after), in the whole
    /// milliseconds that will be sent to the host. Always `None` for a permanent error.
    pub fn retry_hint(&self) -> Option<Duration> {
        self.retry_after_ms.map(Duration::from_millis)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Transient => "transient",
            Kind::Permanent => "permanent",
        };
        write!(f, "{kind} error")?;
        if let Some(code) = &self.code {
            write!(f, " [{code}]")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for TaskError {}

impl From<TaskError> for bindings::TaskError {
    fn from(err: TaskError) -> Self {
        match err.kind {
            Kind::Transient => Self::Transient(bindings::TransientError {
                message: err.message,
                retry_after_ms: err.retry_after_ms,
                code: err.code,
            }),
            Kind::Permanent => Self::Permanent(bindings::PermanentError {
                message: err.message,
                code: err.code,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_keeps_code_and_retry_hint() {
        let err = TaskError::transient("busy")
            .code("rate-limited")
            .retry_after(Duration::from_millis(1500));
        assert!(err.is_transient());
        assert!(!err.is_permanent());
        assert_eq!(err.message(), "busy");
        assert_eq!(err.error_code(), Some("rate-limited"));
        assert_eq!(err.retry_hint(), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn permanent_drops_retry_hint() {
        let err = TaskError::permanent("bad input").retry_after(Duration::from_secs(1));
        assert!(err.is_permanent());
        assert_eq!(err.retry_hint(), None);
        assert_eq!(err.error_code(), None);
    }

    #[test]
    fn retry_hint_truncates_to_milliseconds_and_saturates() {
        let sub_ms = TaskError::transient("x").retry_after(Duration::from_micros(2_999));
        assert_eq!(sub_ms.retry_hint(), Some(Duration::from_millis(2)));
        let huge = TaskError::transient("x").retry_after(Duration::MAX);
        assert_eq!(huge.retry_hint(), Some(Duration::from_millis(u64::MAX)));
    }

    #[test]
    fn later_code_replaces_earlier_one() {
        let err = TaskError::permanent("x").code("first").code("second");
        assert_eq!(err.error_code(), Some("second"));
    }

    #[test]
    fn display_names_kind_code_and_message() {
        let err = TaskError::permanent("email has no @").code("invalid-email");
        assert_eq!(
            err.to_string(),
            "permanent error [invalid-email]: email has no @"
        );
        assert_eq!(
            TaskError::transient("down").to_string(),
            "transient error: down"
        );
    }

    #[test]
    fn converts_transient_into_wit_variant() {
        let err = TaskError::transient("busy")
            .code("rate-limited")
            .retry_after(Duration::from_secs(3));
        let bindings::TaskError::Transient(wit) = bindings::TaskError::from(err) else {
            panic!("a transient error must become the transient case");
        };
        assert_eq!(wit.message, "busy");
        assert_eq!(wit.code.as_deref(), Some("rate-limited"));
        assert_eq!(wit.retry_after_ms, Some(3000));
    }

    #[test]
    fn converts_permanent_into_wit_variant() {
        let err = TaskError::permanent("nope").code("invalid-payload");
        let bindings::TaskError::Permanent(wit) = bindings::TaskError::from(err) else {
            panic!("a permanent error must become the permanent case");
        };
        assert_eq!(wit.message, "nope");
        assert_eq!(wit.code.as_deref(), Some("invalid-payload"));
    }
}
