//! The records the queue stores and returns: task versions, enqueue requests, leased jobs,
//! attempt records and job views. Data only.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::outcome::Outcome;
use crate::scheduler::RetryPolicy;

/// Where a job is in its life. Ordered as in the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting in the ready list.
    Queued,
    /// Waiting for its due time: delayed, or a retry.
    Scheduled,
    /// Leased by a worker.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Failed for good; in the failed set until requeued or past retention.
    Failed,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Scheduled,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
    ];

    /// The state's name as stored in Redis and shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }

    /// Parses a state name.
    ///
    /// # Errors
    ///
    /// Lists the valid names when `text` is none of them.
    pub fn parse(text: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown job state `{text}`; use one of queued, scheduled, running, \
                     succeeded, failed"
                )
            })
    }
}

/// The settings a task's jobs get unless the enqueue overrides them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDefaults {
    /// When and how often to retry.
    pub policy: RetryPolicy,
    /// Wall-clock limit per attempt, in milliseconds.
    pub timeout_ms: u64,
    /// Memory limit per attempt, in bytes.
    pub memory_bytes: u64,
}

/// One uploaded version of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskVersion {
    /// The task's name.
    pub name: String,
    /// 1 for the first upload of the name, then 2, 3, ...
    pub version: u32,
    /// The hex sha256 of the component's bytes.
    pub digest: String,
    /// The component's size in bytes.
    pub size_bytes: u64,
    /// The defaults its jobs get.
    pub defaults: TaskDefaults,
    /// When it was uploaded (Redis server time, ms since the epoch).
    pub uploaded_at_ms: u64,
}

/// What to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct EnqueueRequest {
    /// The task's name; the job runs the task's newest version at enqueue time.
    pub task: String,
    /// The job's input.
    pub payload: Vec<u8>,
    /// Overrides the task's retry policy.
    pub policy: Option<RetryPolicy>,
    /// Overrides the task's timeout.
    pub timeout: Option<Duration>,
    /// Overrides the task's memory limit, in bytes.
    pub memory_bytes: Option<u64>,
    /// Runs the job no earlier than this long from now.
    pub delay: Option<Duration>,
    /// Runs the job no earlier than this time (ms since the epoch).
    pub at_ms: Option<u64>,
    /// Enqueueing again with the same key (within a day) returns the first job instead.
    pub idempotency_key: Option<String>,
}

impl EnqueueRequest {
    /// A request for `task` with `payload` and the task's defaults.
    pub fn new(task: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        EnqueueRequest {
            task: task.into(),
            payload: payload.into(),
            policy: None,
            timeout: None,
            memory_bytes: None,
            delay: None,
            at_ms: None,
            idempotency_key: None,
        }
    }
}

/// The result of an enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id.
    pub id: String,
    /// False when an idempotency key matched an earlier job, whose id this is.
    pub created: bool,
}

impl Enqueued {
    /// From the enqueue script's `{created, id}` reply.
    pub(crate) fn from_reply((created, id): (i64, String)) -> Self {
        Enqueued {
            id,
            created: created == 1,
        }
    }
}

/// A job a worker holds the lease of.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedJob {
    /// The job's id.
    pub id: String,
    /// The lease token; every write about this attempt must present it.
    pub token: u64,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// How many earlier attempts were lost with their worker.
    pub losses: u32,
    /// The task's name.
    pub task: String,
    /// The digest of the component the job is pinned to.
    pub digest: String,
    /// The job's input.
    pub payload: Vec<u8>,
    /// The job's retry policy.
    pub policy: RetryPolicy,
    /// Wall-clock limit for the attempt.
    pub timeout: Duration,
    /// Memory limit for the attempt, in bytes.
    pub memory_bytes: u64,
    /// When the lease began, on the Redis server's clock (ms since the epoch); recorded as
    /// the attempt's start.
    pub leased_at_ms: u64,
}

/// What a worker got from one fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    /// The jobs now leased to the worker.
    pub jobs: Vec<LeasedJob>,
    /// How long until the next scheduled job is due, if any is.
    pub next_due: Option<Duration>,
    /// Whether the retention pass of a housekeeping fetch stopped at its per-call limit, so
    /// the next fetch should do housekeeping again.
    pub more_expired: bool,
}

/// One ended attempt, ready to be recorded by [`Queue::finish_many`](super::Queue::finish_many).
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// The job's id.
    pub id: String,
    /// The lease token the attempt ran under.
    pub token: u64,
    /// How the job moves on.
    pub completion: Completion,
    /// The attempt's outcome, as JSON text.
    pub outcome: String,
    /// The attempt record as a JSON object, without its start and end times (zero values are
    /// left out when serialized), which the script adds.
    pub record: String,
    /// When the lease began ([`LeasedJob::leased_at_ms`]).
    pub started_at_ms: u64,
    /// The job's task, for the per-task counts.
    pub task: String,
}

/// How a finished attempt moves its job on.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    /// Store the result; the job succeeded.
    Succeed {
        /// The task's output.
        result: Vec<u8>,
    },
    /// Run the job again after `delay`.
    Retry {
        /// How long to wait.
        delay: Duration,
        /// Whether this attempt counts toward the job's max attempts.
        charged: bool,
    },
    /// The job failed for good.
    Fail,
    /// Give the job back untouched (shutdown); the attempt is not charged.
    Release,
}

/// One finished attempt, as recorded with the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Which attempt it was.
    pub attempt: u32,
    /// The worker that ran it.
    pub worker: String,
    /// When it started and ended (Redis server time, ms since the epoch).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub started_at_ms: u64,
    /// When it ended.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ended_at_ms: u64,
    /// How long the task itself ran (instantiate and call), in ms. The span from start to end
    /// also includes fetching and, on a worker's first job of a task, compiling it.
    #[serde(default)]
    pub run_ms: u64,
    /// How it ended: an [`Outcome`], or `{"class": "worker_lost", ...}` / `released`.
    pub outcome: serde_json::Value,
    /// What the scheduler decided, e.g. `retry in 2s`.
    #[serde(default)]
    pub decision: String,
    /// The end of the task's log and stderr.
    #[serde(default)]
    pub log_tail: String,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// A job as `wasm-runner job` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    /// The job's id.
    pub id: String,
    /// The queue it is in.
    pub queue: String,
    /// The task's name.
    pub task: String,
    /// The component digest it is pinned to.
    pub digest: String,
    /// Where it is.
    pub state: JobState,
    /// Attempts charged so far.
    pub attempt: u32,
    /// The most attempts it gets.
    pub max_attempts: u32,
    /// Attempts lost with their worker.
    pub losses: u32,
    /// Times (Redis server time, ms since the epoch).
    pub enqueued_at_ms: Option<u64>,
    /// When the latest attempt started.
    pub started_at_ms: Option<u64>,
    /// When it succeeded or failed.
    pub finished_at_ms: Option<u64>,
    /// When it is due, while scheduled.
    pub due_at_ms: Option<u64>,
    /// How its latest attempt ended.
    pub outcome: Option<serde_json::Value>,
    /// Its result, once succeeded (text when it is UTF-8).
    pub result: Option<String>,
    /// The size of its result in bytes.
    pub result_bytes: Option<usize>,
    /// The size of its payload in bytes.
    pub payload_bytes: usize,
    /// Every finished attempt, oldest first.
    pub attempts: Vec<AttemptRecord>,
}

/// A line of `wasm-runner jobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSummary {
    /// The job's id.
    pub id: String,
    /// The task's name.
    pub task: String,
    /// Where it is.
    pub state: JobState,
    /// Attempts charged so far.
    pub attempt: u32,
    /// A short description of its latest outcome.
    pub last_outcome: String,
}

/// Counts for `wasm-runner stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Jobs per state.
    pub counts: Vec<(JobState, u64)>,
    /// Jobs per state for each task that has any, by task name.
    pub tasks: Vec<TaskCounts>,
    /// Workers that fetched or renewed recently: id and ms since their last heartbeat.
    pub workers: Vec<(String, u64)>,
    /// How long succeeded and failed jobs are kept, in ms.
    pub succeeded_retention_ms: u64,
    /// How long failed jobs are kept, in ms.
    pub failed_retention_ms: u64,
}

/// Job counts of one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskCounts {
    /// The task.
    pub task: String,
    /// Jobs per state.
    pub counts: Vec<(JobState, u64)>,
}

/// Reads an [`Outcome`] back from a stored value, when it is one.
pub fn stored_outcome(value: &serde_json::Value) -> Option<Outcome> {
    serde_json::from_value(value.clone()).ok()
}

/// A one-line description of a stored outcome value.
pub fn describe_outcome(value: &serde_json::Value) -> String {
    if let Some(outcome) = stored_outcome(value) {
        return match outcome {
            Outcome::Ok => "ok".to_owned(),
            other => format!("{}: {}", other.name(), other.describe()),
        };
    }
    let class = value["class"].as_str().unwrap_or("unknown");
    match value["message"].as_str() {
        Some(message) => format!("{class}: {message}"),
        None => class.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Ok(state));
        }
        assert!(JobState::parse("done").unwrap_err().contains("queued"));
    }

    #[test]
    fn describes_outcomes_and_worker_losses() {
        let lost = serde_json::json!({"class": "worker_lost", "message": "gone"});
        assert_eq!(describe_outcome(&lost), "worker_lost: gone");
        let ok = serde_json::to_value(Outcome::Ok).unwrap();
        assert_eq!(describe_outcome(&ok), "ok");
    }
}
