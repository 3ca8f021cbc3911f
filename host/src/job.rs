//! Job data shared by the executor, the CLI and the queue: what a task is told about its job
//! ([`JobContext`]) and what it left behind ([`JobLog`]). Data only; no I/O.

use serde::{Deserialize, Serialize};

/// The most attempts a job may be given.
pub const MAX_ATTEMPTS_LIMIT: u32 = 1000;

/// What the host tells a task about the job it is running (the WIT `job-context`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobContext {
    /// The job's id, the same across its attempts.
    pub job_id: String,
    /// Which attempt this is, starting at 1.
    pub attempt: u32,
    /// The most attempts the job gets.
    pub max_attempts: u32,
    /// The name the task was uploaded or run under.
    pub task_name: String,
    /// The tenant that owns the job.
    pub tenant: String,
}

impl JobContext {
    /// Checks the attempt numbers.
    ///
    /// # Errors
    ///
    /// Returns a message when `attempt` is 0, `max_attempts` is 0 or above
    /// [`MAX_ATTEMPTS_LIMIT`], or `attempt` is past `max_attempts`.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&self.max_attempts) {
            return Err(format!(
                "max attempts {} is out of range; use between 1 and {MAX_ATTEMPTS_LIMIT}",
                self.max_attempts
            ));
        }
        if !(1..=self.max_attempts).contains(&self.attempt) {
            return Err(format!(
                "attempt {} is out of range; attempts count from 1 up to max attempts ({})",
                self.attempt, self.max_attempts
            ));
        }
        Ok(())
    }
}

/// How important a log record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    /// Very detailed tracing output.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal progress.
    Info,
    /// Something unexpected that was handled.
    Warn,
    /// A failure.
    Error,
}

impl LogLevel {
    /// The level's lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// One record a task logged through the `host-log` import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Milliseconds since the attempt started.
    pub at_ms: u64,
    /// The record's level.
    pub level: LogLevel,
    /// The message, cut to a bounded length.
    pub message: String,
    /// Key/value pairs, bounded in number and length.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<(String, String)>,
}

/// Everything an attempt left behind for people to read: its log records and what it wrote to
/// stdout and stderr.
///
/// Each part is bounded. Past the bound the first part and the most recent part are kept and
/// the middle is dropped, because the start says what the task was doing and the end says how
/// it failed (a panic message is the last thing on stderr); the `*_dropped` counts say how much
/// is missing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLog {
    /// Records from the `host-log` import, oldest first.
    pub records: Vec<LogRecord>,
    /// How many records were dropped from the middle.
    #[serde(default)]
    pub records_dropped: u64,
    /// What the task wrote to stdout (lossily decoded as UTF-8).
    pub stdout: String,
    /// How many stdout bytes were dropped from the middle.
    #[serde(default)]
    pub stdout_dropped_bytes: u64,
    /// What the task wrote to stderr (lossily decoded as UTF-8).
    pub stderr: String,
    /// How many stderr bytes were dropped from the middle.
    #[serde(default)]
    pub stderr_dropped_bytes: u64,
}

impl JobLog {
    /// Whether the task left nothing at all.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.stdout.is_empty() && self.stderr.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(attempt: u32, max_attempts: u32) -> JobContext {
        JobContext {
            job_id: "job-1".into(),
            attempt,
            max_attempts,
            task_name: "hello".into(),
            tenant: "default".into(),
        }
    }

    #[test]
    fn attempts_count_from_one_to_max() {
        assert!(context(1, 1).validate().is_ok());
        assert!(context(3, 3).validate().is_ok());
        assert!(context(0, 3).validate().unwrap_err().contains("attempt 0"));
        assert!(context(4, 3).validate().unwrap_err().contains("attempt 4"));
        assert!(
            context(1, 0)
                .validate()
                .unwrap_err()
                .contains("max attempts 0")
        );
        assert!(context(1, MAX_ATTEMPTS_LIMIT + 1).validate().is_err());
    }
}
