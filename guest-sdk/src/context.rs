//! What a task knows about the job it is running: `Context`.

use crate::bindings;

/// The job an attempt belongs to, as the host describes it.
///
/// The export macros build one for every call of `run` and lend it to the task function. Its
/// fields are public so that tests can build one with a struct literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The job's id: unique per job and the same across all of its attempts, which makes it a
    /// good idempotency key for side effects.
    pub job_id: String,
    /// Which attempt this is, starting at 1.
    pub attempt: u32,
    /// The most attempts this job gets. A transient error on the last attempt is final.
    pub max_attempts: u32,
    /// The name the task was uploaded or run under.
    pub task_name: String,
    /// The tenant that owns the job.
    pub tenant: String,
}

impl Context {
    /// Returns `true` when this attempt is the job's last one.
    ///
    /// A transient error returned now fails the job for good, so a task may want to report a
    /// more complete error, or try a slower fallback, instead of asking for a retry. Also `true`
    /// if the host ever reports an attempt beyond `max_attempts`.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

impl From<bindings::JobContext> for Context {
    fn from(ctx: bindings::JobContext) -> Self {
        Self {
            job_id: ctx.job_id,
            attempt: ctx.attempt,
            max_attempts: ctx.max_attempts,
            task_name: ctx.task_name,
            tenant: ctx.tenant,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(attempt: u32, max_attempts: u32) -> Context {
        Context {
            job_id: "job-1".into(),
            attempt,
            max_attempts,
            task_name: "test".into(),
            tenant: "acme".into(),
        }
    }

    #[test]
    fn last_attempt_is_the_one_equal_to_max_attempts() {
        assert!(!context(1, 3).is_last_attempt());
        assert!(!context(2, 3).is_last_attempt());
        assert!(context(3, 3).is_last_attempt());
        assert!(context(1, 1).is_last_attempt());
    }

    #[test]
    fn converts_every_field_from_the_wit_record() {
        let wit = bindings::JobContext {
            job_id: "job-7".into(),
            attempt: 2,
            max_attempts: 5,
            task_name: "resize".into(),
            tenant: "acme".into(),
        };
        let ctx = Context::from(wit);
        assert_eq!(ctx.job_id, "job-7");
        assert_eq!((ctx.attempt, ctx.max_attempts), (2, 5));
        assert_eq!(ctx.task_name, "resize");
        assert_eq!(ctx.tenant, "acme");
    }
}
