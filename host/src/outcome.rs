//! How an attempt ended, and what that means for retrying it.
//!
//! Every way a run can end is one [`Outcome`] variant, and [`Outcome::retry_class`] is the one
//! place that says what each means for the job by default:
//!
//! | outcome | class | why |
//! |---|---|---|
//! | `ok` | done | |
//! | `transient` | retry | the task said so |
//! | `timed_out` | retry | slowness is often a slow dependency, which passes |
//! | `permanent` | fail | the task said so |
//! | `memory_limit` | fail | the same input will need the same memory again |
//! | `fuel_exhausted` | fail | fuel is deterministic: the same input burns the same fuel |
//! | `trap` | fail | a panic, `unreachable` or stack overflow is a bug in the task |
//! | `host_error` | uncharged | the host's fault: retry without spending an attempt |
//! | `aborted` | uncharged | the host stopped the attempt (shutdown, lost lease), not the task |
//!
//! Per-task overrides of these defaults belong to the retry policy, not here.

use serde::{Deserialize, Serialize};

/// How one attempt of a job ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "class", rename_all = "snake_case")]
pub enum Outcome {
    /// The task returned output.
    Ok,
    /// The task reported a failure worth retrying.
    Transient {
        /// The task's description of the failure.
        message: String,
        /// How long the task suggests waiting before the next attempt, in milliseconds.
        retry_after_ms: Option<u64>,
        /// The task's machine-readable reason, such as `rate-limited`.
        code: Option<String>,
    },
    /// The task reported a failure that retrying cannot fix.
    Permanent {
        /// The task's description of the failure.
        message: String,
        /// The task's machine-readable reason, such as `invalid-payload`.
        code: Option<String>,
    },
    /// The attempt ran past its wall-clock timeout and was stopped.
    TimedOut {
        /// The timeout that was exceeded, in milliseconds.
        timeout_ms: u64,
    },
    /// The task tried to grow its memory (or tables) past the limit and was stopped.
    MemoryLimit {
        /// The limit that was hit, in bytes.
        limit_bytes: u64,
    },
    /// The task used up its fuel budget and was stopped.
    FuelExhausted {
        /// The budget that was used up.
        fuel: u64,
    },
    /// The task crashed: it panicked, executed `unreachable`, overflowed its stack, or broke a
    /// WebAssembly rule.
    Trap {
        /// What kind of crash it was.
        kind: TrapKind,
        /// The panic message when the guest printed one, otherwise the trap's description.
        message: String,
    },
    /// The host failed to run the attempt; the task is not to blame.
    HostError {
        /// What went wrong in the host.
        message: String,
    },
    /// The host stopped the attempt on purpose: the worker is shutting down, or it lost the
    /// job's lease and another worker may already be running it.
    Aborted {
        /// Why the host stopped it.
        reason: String,
    },
}

/// What kind of crash ended an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrapKind {
    /// The guest panicked (Rust guests abort on panic, after printing the message to stderr).
    Panic,
    /// The guest executed `unreachable` without printing a panic message first.
    Unreachable,
    /// The guest's call stack grew past the host's stack limit.
    StackOverflow,
    /// The guest called `exit` instead of returning from `run`.
    Exit,
    /// Any other trap: out-of-bounds access, division by zero, a bad indirect call, or a host
    /// call that the guest used wrongly.
    Other,
}

impl TrapKind {
    /// The kind's stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::Panic => "panic",
            TrapKind::Unreachable => "unreachable",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::Exit => "exit",
            TrapKind::Other => "other",
        }
    }
}

/// What an outcome means for the job by default (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryClass {
    /// The job is finished successfully.
    Done,
    /// Retry if the job has attempts left; this attempt counts.
    Retry,
    /// Never retry; the job fails now.
    Fail,
    /// Retry without counting this attempt against the job.
    Uncharged,
}

impl Outcome {
    /// The default meaning of this outcome for the job's retries.
    pub fn retry_class(&self) -> RetryClass {
        match self {
            Outcome::Ok => RetryClass::Done,
            Outcome::Transient { .. } | Outcome::TimedOut { .. } => RetryClass::Retry,
            Outcome::Permanent { .. }
            | Outcome::MemoryLimit { .. }
            | Outcome::FuelExhausted { .. }
            | Outcome::Trap { .. } => RetryClass::Fail,
            Outcome::HostError { .. } | Outcome::Aborted { .. } => RetryClass::Uncharged,
        }
    }

    /// The outcome's stable snake_case name, as used in logs, JSON and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Transient { .. } => "transient",
            Outcome::Permanent { .. } => "permanent",
            Outcome::TimedOut { .. } => "timed_out",
            Outcome::MemoryLimit { .. } => "memory_limit",
            Outcome::FuelExhausted { .. } => "fuel_exhausted",
            Outcome::Trap { .. } => "trap",
            Outcome::HostError { .. } => "host_error",
            Outcome::Aborted { .. } => "aborted",
        }
    }

    /// A one-line description for people, without the class name.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Transient {
                message,
                retry_after_ms,
                code,
            } => {
                let mut text = with_code(message, code.as_deref());
                if let Some(ms) = retry_after_ms {
                    text.push_str(&format!(" (retry after {ms} ms)"));
                }
                text
            }
            Outcome::Permanent { message, code } => with_code(message, code.as_deref()),
            Outcome::TimedOut { timeout_ms } => {
                format!("stopped after the {timeout_ms} ms timeout")
            }
            Outcome::MemoryLimit { limit_bytes } => {
                format!(
                    "stopped at the memory limit of {}",
                    bytesize::ByteSize(*limit_bytes)
                )
            }
            Outcome::FuelExhausted { fuel } => format!("used up its fuel budget of {fuel}"),
            Outcome::Trap { kind, message } => format!("{}: {message}", kind.as_str()),
            Outcome::HostError { message } => message.clone(),
            Outcome::Aborted { reason } => format!("stopped by the host: {reason}"),
        }
    }
}

fn with_code(message: &str, code: Option<&str>) -> String {
    match code {
        Some(code) => format!("[{code}] {message}"),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classes_follow_the_documented_table() {
        let cases = [
            (Outcome::Ok, RetryClass::Done),
            (
                Outcome::Transient {
                    message: "busy".into(),
                    retry_after_ms: None,
                    code: None,
                },
                RetryClass::Retry,
            ),
            (Outcome::TimedOut { timeout_ms: 5 }, RetryClass::Retry),
            (
                Outcome::Permanent {
                    message: "bad".into(),
                    code: None,
                },
                RetryClass::Fail,
            ),
            (Outcome::MemoryLimit { limit_bytes: 1 }, RetryClass::Fail),
            (Outcome::FuelExhausted { fuel: 1 }, RetryClass::Fail),
            (
                Outcome::Trap {
                    kind: TrapKind::Panic,
                    message: "boom".into(),
                },
                RetryClass::Fail,
            ),
            (
                Outcome::HostError {
                    message: "pool".into(),
                },
                RetryClass::Uncharged,
            ),
        ];
        for (outcome, class) in cases {
            assert_eq!(outcome.retry_class(), class, "{}", outcome.name());
        }
    }

    #[test]
    fn serialises_with_a_class_tag() {
        let outcome = Outcome::Transient {
            message: "slow down".into(),
            retry_after_ms: Some(1500),
            code: Some("rate-limited".into()),
        };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["class"], "transient");
        assert_eq!(json["retry_after_ms"], 1500);
        let back: Outcome = serde_json::from_value(json).unwrap();
        assert_eq!(back, outcome);
    }

    #[test]
    fn describes_codes_and_hints() {
        let outcome = Outcome::Transient {
            message: "slow down".into(),
            retry_after_ms: Some(1500),
            code: Some("rate-limited".into()),
        };
        assert_eq!(
            outcome.describe(),
            "[rate-limited] slow down (retry after 1500 ms)"
        );
    }
}
