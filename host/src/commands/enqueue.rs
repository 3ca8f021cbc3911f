//! `wasm-runner enqueue`: adds a job, or a batch of jobs from a file, and prints their ids.

use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use clap::Args;

use super::CommandError;
use super::common::{PolicyArgs, QueueArg, RedisArgs, block_on, usage_or_host};
use crate::config::{parse_duration, parse_size};
use crate::queue::{DEFAULT_MAX_PAYLOAD_BYTES, EnqueueRequest, Queue};
use crate::scheduler::RetryPolicy;

/// Add a job for a task and print its id; with `--batch`, one job per line of a file.
#[derive(Debug, Args)]
pub struct EnqueueCommand {
    /// The task's name, as uploaded.
    task: String,

    /// The payload as JSON text.
    #[arg(long, value_name = "JSON", conflicts_with_all = ["payload_file", "batch"])]
    payload: Option<String>,

    /// Add one job per line of FILE (`-` for stdin), each line a JSON payload, and print one
    /// id per line. Jobs go to Redis in pipelined batches (100 jobs per script call, 1,000 per
    /// round trip), tens of thousands per second. The other flags apply to every job.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["payload_file", "key"])]
    batch: Option<PathBuf>,

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
        if let Some(path) = self.batch.clone() {
            return self.execute_batch(&path);
        }
        let payload =
            super::run::read_payload(self.payload.as_deref(), self.payload_file.as_deref())
                .map_err(CommandError::Usage)?;
        let at_ms = self.at_ms()?;
        let max_payload = usize::try_from(self.max_payload).unwrap_or(DEFAULT_MAX_PAYLOAD_BYTES);

        let enqueued = block_on(async {
            let queue = self.redis.open().await?;
            let policy = self.policy(&queue).await?;
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

impl EnqueueCommand {
    /// `--at`, as ms since the epoch.
    fn at_ms(&self) -> Result<Option<u64>, CommandError> {
        self.at
            .as_deref()
            .map(parse_time_ms)
            .transpose()
            .map_err(CommandError::Usage)
    }

    /// The policy the policy flags ask for, or `None` to keep the task's. The flags override
    /// single fields of the task's policy, so they start from it.
    async fn policy(&self, queue: &Queue) -> Result<Option<RetryPolicy>, CommandError> {
        if self.policy.is_empty() {
            return Ok(None);
        }
        let base = queue
            .task(&self.task)
            .await
            .map_err(CommandError::Host)?
            .map_or_else(RetryPolicy::default, |task| task.defaults.policy);
        self.policy
            .apply(base)
            .map(Some)
            .map_err(|msg| CommandError::Usage(anyhow!(msg)))
    }
}

/// How many lines of a batch file are checked and sent together.
const BATCH_LINES: usize = 1000;

impl EnqueueCommand {
    /// `--batch`: one job per line. Lines are read and sent a thousand at a time, so a file of
    /// any length is enqueued in bounded memory. A bad line stops the run before its chunk is
    /// sent; the ids printed so far are enqueued and the message says how many.
    fn execute_batch(self, path: &Path) -> Result<ExitCode, CommandError> {
        let reader: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot read the batch file {}", path.display()))
                .map_err(CommandError::Usage)?;
            Box::new(std::io::BufReader::new(file))
        };
        let at_ms = self.at_ms()?;
        let max_payload = usize::try_from(self.max_payload).unwrap_or(DEFAULT_MAX_PAYLOAD_BYTES);

        block_on(async {
            let queue = self.redis.open().await?;
            let policy = self.policy(&queue).await?;
            let template = EnqueueRequest {
                policy,
                timeout: self.timeout,
                memory_bytes: self.memory,
                delay: self.delay,
                at_ms,
                ..EnqueueRequest::new(&self.task, Vec::new())
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut lines = reader.lines().enumerate();
            let mut added = 0usize;
            loop {
                let mut chunk = Vec::with_capacity(BATCH_LINES);
                for (index, line) in lines.by_ref() {
                    let line = line
                        .with_context(|| format!("cannot read the batch file {}", path.display()))
                        .map_err(CommandError::Usage)?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&line) {
                        return Err(CommandError::Usage(anyhow!(
                            "line {} of {} is not a JSON payload ({err}); {added} jobs before \
                             it were enqueued",
                            index + 1,
                            path.display()
                        )));
                    }
                    chunk.push(EnqueueRequest {
                        payload: line.into_bytes(),
                        ..template.clone()
                    });
                    if chunk.len() == BATCH_LINES {
                        break;
                    }
                }
                if chunk.is_empty() {
                    break;
                }
                let enqueued = queue
                    .enqueue_batch(&self.queue.queue, &chunk, max_payload)
                    .await
                    .map_err(|err| {
                        usage_or_host(
                            err.context(format!("{added} jobs were enqueued before this")),
                        )
                    })?;
                for job in &enqueued {
                    writeln!(out, "{}", job.id)
                        .context("cannot write the job ids")
                        .map_err(CommandError::Host)?;
                }
                added += enqueued.len();
            }
            out.flush()
                .context("cannot write the job ids")
                .map_err(CommandError::Host)?;
            tracing::debug!(jobs = added, "batch enqueued");
            Ok::<_, CommandError>(())
        })?;
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
