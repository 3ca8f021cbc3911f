//! The operator's view: `wasm-runner job`, `jobs`, `requeue` and `stats`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;

use super::CommandError;
use super::common::{QueueArg, RedisArgs, block_on, format_time_ms, print_json, usage_or_host};
use crate::queue::{Canceled, DEFAULT_QUEUE, JobState, model::describe_outcome};

/// Show one job: its state, every attempt with its outcome and log tail, and its result.
#[derive(Debug, Args)]
pub struct JobCommand {
    /// The job's id, as printed by `enqueue`.
    id: String,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    queue: QueueArg,

    #[command(flatten)]
    redis: RedisArgs,
}

impl JobCommand {
    /// Prints the job.
    ///
    /// # Errors
    ///
    /// A usage error when there is no such job; a host error when Redis fails.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        let job = block_on(async {
            let queue = self.redis.open().await?;
            queue
                .job(&self.queue.queue, &self.id)
                .await
                .map_err(CommandError::Host)
        })?;
        let Some(job) = job else {
            return Err(CommandError::Usage(anyhow!(
                "there is no job {} in queue `{}` of tenant `{}`; it may have passed its \
                 retention, or be in another queue (--queue)",
                self.id,
                self.queue.queue,
                self.redis.tenant
            )));
        };
        if self.json {
            print_json(&job)?;
            return Ok(ExitCode::SUCCESS);
        }
        println!("job {}  task {}  queue {}", job.id, job.task, job.queue);
        println!(
            "state {}  attempt {} of {}  worker losses {}",
            job.state.as_str(),
            job.attempt,
            job.max_attempts,
            job.losses
        );
        if let Some(due) = job.due_at_ms {
            println!("due {}", format_time_ms(due));
        }
        if let Some(outcome) = &job.outcome {
            println!("last outcome: {}", describe_outcome(outcome));
        }
        for record in &job.attempts {
            println!(
                "  attempt {} on {} at {} (ran {} ms): {} -> {}",
                record.attempt,
                record.worker,
                format_time_ms(record.started_at_ms),
                record.run_ms,
                describe_outcome(&record.outcome),
                if record.decision.is_empty() {
                    "-"
                } else {
                    &record.decision
                },
            );
            for line in record
                .log_tail
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .iter()
                .rev()
            {
                println!("      | {line}");
            }
        }
        if let Some(result) = &job.result {
            println!("result: {result}");
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// List jobs in one state, newest first (queued jobs in the order they will run).
#[derive(Debug, Args)]
pub struct JobsCommand {
    /// Which state: queued, scheduled, running, succeeded or failed.
    #[arg(long, default_value = "failed", value_parser = JobState::parse)]
    state: JobState,

    /// Only jobs of this task.
    #[arg(long, value_name = "NAME")]
    task: Option<String>,

    /// At most this many jobs.
    #[arg(long, default_value_t = 50, value_name = "N")]
    limit: usize,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    queue: QueueArg,

    #[command(flatten)]
    redis: RedisArgs,
}

impl JobsCommand {
    /// Prints the list.
    ///
    /// # Errors
    ///
    /// A host error when Redis fails.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        let jobs = block_on(async {
            let queue = self.redis.open().await?;
            queue
                .jobs(
                    &self.queue.queue,
                    self.state,
                    self.task.as_deref(),
                    self.limit,
                )
                .await
                .map_err(CommandError::Host)
        })?;
        if self.json {
            print_json(&jobs)?;
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<36}  {:<20}  {:<9}  {:>7}  LAST OUTCOME",
            "JOB", "TASK", "STATE", "ATTEMPT"
        );
        for job in jobs {
            println!(
                "{:<36}  {:<20}  {:<9}  {:>7}  {}",
                job.id,
                job.task,
                job.state.as_str(),
                job.attempt,
                job.last_outcome
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Put failed jobs back in the queue with fresh attempts.
#[derive(Debug, Args)]
pub struct RequeueCommand {
    /// The failed job to requeue.
    #[arg(required_unless_present = "all_failed", conflicts_with = "all_failed")]
    id: Option<String>,

    /// Requeue every failed job (of `--task`, if given).
    #[arg(long)]
    all_failed: bool,

    /// With --all-failed, only jobs of this task.
    #[arg(long, value_name = "NAME", requires = "all_failed")]
    task: Option<String>,

    /// Run the task's newest version instead of the version the job failed with.
    #[arg(long)]
    latest_version: bool,

    #[command(flatten)]
    queue: QueueArg,

    #[command(flatten)]
    redis: RedisArgs,
}

impl RequeueCommand {
    /// Requeues and prints how many jobs went back.
    ///
    /// # Errors
    ///
    /// A usage error when the named job is not failed; a host error when Redis fails.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        let queue_name = self.queue.queue.clone();
        let requeued = block_on(async {
            let queue = self.redis.open().await?;
            let ids = match &self.id {
                Some(id) => vec![id.clone()],
                None => {
                    let failed = queue
                        .jobs(&queue_name, JobState::Failed, self.task.as_deref(), 10_000)
                        .await
                        .map_err(CommandError::Host)?;
                    failed.into_iter().map(|job| job.id).collect()
                }
            };
            let mut requeued = 0;
            for id in &ids {
                let done = queue
                    .requeue(&queue_name, id, self.latest_version)
                    .await
                    .map_err(CommandError::Host)?;
                if done {
                    requeued += 1;
                } else if self.id.is_some() {
                    return Err(CommandError::Usage(anyhow!(
                        "job {id} is not in the failed set of queue `{queue_name}`; only failed \
                         jobs can be requeued (see `wasm-runner job {id}`)"
                    )));
                }
            }
            Ok(requeued)
        })?;
        println!("requeued {requeued} job(s)");
        Ok(ExitCode::SUCCESS)
    }
}

/// Cancel a job that has not finished: a waiting job never runs, a running guest is stopped.
/// The job moves to the failed set with a `canceled` outcome, from where it can be requeued.
#[derive(Debug, Args)]
pub struct CancelCommand {
    /// The job to cancel.
    id: String,

    #[command(flatten)]
    queue: QueueArg,

    #[command(flatten)]
    redis: RedisArgs,
}

impl CancelCommand {
    /// Cancels and says what the job was doing.
    ///
    /// # Errors
    ///
    /// A usage error when the job does not exist or already finished; a host error when Redis
    /// fails.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        let canceled = block_on(async {
            let queue = self.redis.open().await?;
            queue
                .cancel(&self.queue.queue, &self.id)
                .await
                .map_err(usage_or_host)
        })?;
        match canceled {
            Canceled::Done(state) => {
                println!("canceled job {} (it was {})", self.id, state.as_str());
                Ok(ExitCode::SUCCESS)
            }
            Canceled::AlreadyFinished(state) => Err(CommandError::Usage(anyhow!(
                "job {} already {}; only waiting or running jobs can be canceled",
                self.id,
                state.as_str()
            ))),
        }
    }
}

/// Show job counts per state (per queue and per task) and the workers alive.
#[derive(Debug, Args)]
pub struct StatsCommand {
    /// A queue to show; repeat for several.
    #[arg(long = "queue", value_name = "NAME", default_value = DEFAULT_QUEUE)]
    queues: Vec<String>,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    redis: RedisArgs,
}

impl StatsCommand {
    /// Prints the stats.
    ///
    /// # Errors
    ///
    /// A host error when Redis fails.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        let stats = block_on(async {
            let queue = self.redis.open().await?;
            let mut all = Vec::new();
            for name in &self.queues {
                // A worker renews every third of its lease; a minute covers the default lease.
                let stats = queue
                    .stats(name, Duration::from_secs(60))
                    .await
                    .map_err(CommandError::Host)?;
                all.push(stats);
            }
            Ok(all)
        })?;
        if self.json {
            print_json(&stats)?;
            return Ok(ExitCode::SUCCESS);
        }
        for stats in stats {
            let counts: Vec<String> = stats
                .counts
                .iter()
                .map(|(state, count)| format!("{} {count}", state.as_str()))
                .collect();
            println!("queue {}: {}", stats.queue, counts.join(", "));
            println!(
                "  retention: succeeded {}, failed {}",
                crate::config::format_duration(Duration::from_millis(stats.succeeded_retention_ms)),
                crate::config::format_duration(Duration::from_millis(stats.failed_retention_ms)),
            );
            for task in &stats.tasks {
                let counts: Vec<String> = task
                    .counts
                    .iter()
                    .map(|(state, count)| format!("{} {count}", state.as_str()))
                    .collect();
                println!("  task {}: {}", task.task, counts.join(", "));
            }
            if stats.workers.is_empty() {
                println!("  no workers seen in the last minute");
            }
            for (worker, ago_ms) in stats.workers {
                println!("  worker {worker}: last heartbeat {ago_ms} ms ago");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
