//! `wasm-runner enqueue`: adds a job and prints its id.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use clap::Args;

use super::CommandError;
use super::common::{PolicyArgs, QueueArg, RedisArgs, block_on, usage_or_host};
use crate::config::{parse_duration, parse_size};
use crate::queue::{DEFAULT_MAX_PAYLOAD_BYTES, EnqueueRequest};
use crate::scheduler::RetryPolicy;

/// Add a job for a task and print its id.
#[derive(Debug, Args)]
pub struct EnqueueCommand {
    /// The task's name, as uploaded.
    task: String,

    /// The payload as JSON text.
    #[arg(long, value_name = "JSON", conflicts_with = "payload_file")]
    payload: Option<String>,

    /// Read the payload's raw bytes from a file (`-` for stdin). Default: empty.
    #[arg(long, value_name = "FILE")]
    payload_file: Option<PathBuf>,

    #[command(flatten)]
    policy: PolicyArgs,

    /// Wall-clock limit per attempt. Default: the task's.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,

    /// Memory limit per attempt. Default: the task's.
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,

    /// Run no earlier than this long from now, e.g. `30s`.
    #[arg(long, value_parser = parse_duration, conflicts_with = "at")]
    delay: Option<Duration>,

    /// Run no earlier than this time, RFC 3339, e.g. `2026-12-24T18:00:00Z`.
    #[arg(long, value_name = "TIME")]
    at: Option<String>,

    /// An idempotency key: enqueueing again with the same key within a day returns the first
    /// job's id instead of adding a job.
    #[arg(long, value_name = "KEY")]
    key: Option<String>,

    /// The largest payload accepted.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    max_payload: u64,

    #[command(flatten)]
    queue: QueueArg,

    #[command(flatten)]
    redis: RedisArgs,
}

impl EnqueueCommand {
    /// Enqueues the job and prints its id on stdout.
    ///
    /// # Errors
    ///
    /// A usage error for bad flags, an unreadable or oversized payload, or an unknown task; a
    /// host error when Redis fails.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        let payload =
            super::run::read_payload(self.payload.as_deref(), self.payload_file.as_deref())
                .map_err(CommandError::Usage)?;
        let at_ms = self
            .at
            .as_deref()
            .map(parse_time_ms)
            .transpose()
            .map_err(CommandError::Usage)?;
        let max_payload = usize::try_from(self.max_payload).unwrap_or(DEFAULT_MAX_PAYLOAD_BYTES);

        let enqueued = block_on(async {
            let queue = self.redis.open().await?;
            let policy = if self.policy.is_empty() {
                None
            } else {
                // Flags override the task's policy, so start from it.
                let base = queue
                    .task(&self.task)
                    .await
                    .map_err(CommandError::Host)?
                    .map_or_else(RetryPolicy::default, |task| task.defaults.policy);
                Some(
                    self.policy
                        .apply(base)
                        .map_err(|msg| CommandError::Usage(anyhow!(msg)))?,
                )
            };
            let request = EnqueueRequest {
                policy,
                timeout: self.timeout,
                memory_bytes: self.memory,
                delay: self.delay,
                at_ms,
                idempotency_key: self.key.clone(),
                ..EnqueueRequest::new(&self.task, payload)
            };
            queue
                .enqueue(&self.queue.queue, &request, max_payload)
                .await
                .map_err(usage_or_host)
        })?;
        println!("{}", enqueued.id);
        if !enqueued.created {
            eprintln!("the idempotency key already named this job; nothing was added");
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn parse_time_ms(text: &str) -> anyhow::Result<u64> {
    let time = humantime::parse_rfc3339_weak(text).with_context(|| {
        format!("`--at {text}` is not an RFC 3339 time; write e.g. 2026-12-24T18:00:00Z")
    })?;
    Ok(time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64)
}
