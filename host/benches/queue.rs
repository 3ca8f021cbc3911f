//! Throughput and retry lateness of the queue, with one worker and a private redis-server.
//!
//! Run with `cargo bench -p wasm-runner --bench queue` (add `-- --jobs 20000 --retry-jobs 500`
//! to change the sizes). It measures, on this machine:
//!
//! 1. enqueue: `--jobs` `hello` jobs through `Queue::enqueue_batch` (pipelined), jobs/s;
//! 2. drain: one worker (the same code `wasm-runner serve` runs, in this process, concurrency
//!    8) running them all, jobs/s from the first start to the last finish;
//! 3. Redis cost per job over enqueue plus drain: script calls (round trips), every command
//!    Redis ran (including those inside scripts), and Redis CPU time, from `INFO`;
//! 4. retry lateness: `--retry-jobs` `flaky` jobs, enqueued 5 ms apart, with intervals 1s,2s
//!    and no jitter retry twice each; lateness is each retry's start minus (previous end + its
//!    interval), on the Redis clock, reported as p50 / p99 / max.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use wasm_runner::queue::{EnqueueRequest, JobState, Queue, TaskDefaults};
use wasm_runner::runtime::{EngineOptions, Executor};
use wasm_runner::scheduler::{Backoff, RetryPolicy};
use wasm_runner::worker::{WorkerConfig, serve};
use wasm_runner_tests::{TestRedis, guest_bytes};

const QUEUE: &str = "default";
const INTERVALS_MS: [u64; 2] = [1000, 2000];

fn arg(args: &[String], name: &str, default: usize) -> anyhow::Result<usize> {
    match args.iter().position(|arg| arg == name) {
        Some(i) => Ok(args.get(i + 1).context("missing value")?.parse()?),
        None => Ok(default),
    }
}

/// Numeric fields of `INFO` sections, by name.
fn info(redis: &TestRedis, section: &str) -> anyhow::Result<HashMap<String, String>> {
    let text = redis.command(&["INFO", section])?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.to_owned(), value.trim().to_owned()))
        .collect())
}

/// (script calls, all commands) from `INFO commandstats`.
fn command_counts(redis: &TestRedis) -> anyhow::Result<(u64, u64)> {
    let stats = info(redis, "commandstats")?;
    let calls = |value: &str| -> u64 {
        value
            .split(',')
            .find_map(|field| field.strip_prefix("calls="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut scripts = 0;
    let mut all = 0;
    for (name, value) in &stats {
        let Some(command) = name.strip_prefix("cmdstat_") else {
            continue;
        };
        let n = calls(value);
        all += n;
        if command == "evalsha" || command == "eval" {
            scripts += n;
        }
    }
    Ok((scripts, all))
}

/// The commands that cost Redis the most CPU: (name, calls, total µs), most expensive first.
fn costliest_commands(redis: &TestRedis, top: usize) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let stats = info(redis, "commandstats")?;
    let field = |value: &str, name: &str| -> u64 {
        value
            .split(',')
            .find_map(|field| field.strip_prefix(name))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let mut costs: Vec<(String, u64, u64)> = stats
        .iter()
        .filter_map(|(name, value)| {
            let command = name.strip_prefix("cmdstat_")?;
            Some((
                command.to_owned(),
                field(value, "calls="),
                field(value, "usec="),
            ))
        })
        .collect();
    costs.sort_by_key(|(_, _, usec)| std::cmp::Reverse(*usec));
    costs.truncate(top);
    Ok(costs)
}

fn redis_cpu_seconds(redis: &TestRedis) -> anyhow::Result<f64> {
    let cpu = info(redis, "cpu")?;
    let field = |name: &str| -> f64 { cpu.get(name).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    Ok(field("used_cpu_sys") + field("used_cpu_user"))
}

async fn wait_until(
    queue: &Queue,
    state: JobState,
    count: u64,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let stats = queue.stats(QUEUE, Duration::from_secs(60)).await?;
        let done = stats
            .counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        if done >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {count} jobs reached {state:?} within {limit:?}: {stats:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let jobs = arg(&args, "--jobs", 20_000)?;
    let retry_jobs = arg(&args, "--retry-jobs", 500)?;
    let concurrency = arg(&args, "--concurrency", 8)?;

    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    let defaults = |policy| TaskDefaults {
        policy,
        timeout_ms: 30_000,
        memory_bytes: 64 << 20,
    };
    queue
        .upload(
            "hello",
            &guest_bytes("example-hello"),
            &defaults(RetryPolicy::default()),
        )
        .await?;
    let retries = RetryPolicy::builder()
        .max_attempts(3)
        .backoff(Backoff::Intervals(
            INTERVALS_MS.map(Duration::from_millis).to_vec(),
        ))
        .jitter_percent(0)
        .build()
        .map_err(anyhow::Error::msg)?;
    queue
        .upload("flaky", &guest_bytes("example-flaky"), &defaults(retries))
        .await?;

    // Start the worker first so it has compiled nothing yet but is connected; the first job of
    // each task pays for compiling it, as in production.
    let executor = Arc::new(Executor::new(EngineOptions {
        max_concurrent: concurrency as u32,
        ..EngineOptions::default()
    })?);
    redis.command(&["CONFIG", "RESETSTAT"])?;
    let cpu_before = redis_cpu_seconds(&redis)?;

    let payload = br#"{"name": "Bench"}"#.to_vec();
    let requests: Vec<EnqueueRequest> = (0..jobs)
        .map(|_| EnqueueRequest::new("hello", payload.clone()))
        .collect();
    let started = Instant::now();
    for batch in requests.chunks(1000) {
        queue.enqueue_batch(QUEUE, batch, 1 << 20).await?;
    }
    let enqueue_time = started.elapsed();

    let config = WorkerConfig {
        concurrency,
        worker_id: "bench".into(),
        ..WorkerConfig::new(redis.url())
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(serve(config, executor, async {
        let _ = stopped.await;
    }));
    let started = Instant::now();
    wait_until(
        &queue,
        JobState::Succeeded,
        jobs as u64,
        Duration::from_secs(600),
    )
    .await?;
    let drain_time = started.elapsed();
    let (scripts, commands) = command_counts(&redis)?;
    let cpu = redis_cpu_seconds(&redis)? - cpu_before;
    let costliest = costliest_commands(&redis, 12)?;

    // Retry lateness. The jobs are enqueued 5 ms apart, as a steady stream, so what is measured
    // is how late the scheduler starts a due retry, not how long a burst of retries that all
    // fell due at once waits for the worker.
    let mut ids = Vec::with_capacity(retry_jobs);
    for _ in 0..retry_jobs {
        ids.push(
            queue
                .enqueue(QUEUE, &EnqueueRequest::new("flaky", "{}"), 1 << 20)
                .await?
                .id,
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = (jobs + retry_jobs) as u64;
    wait_until(&queue, JobState::Succeeded, total, Duration::from_secs(120)).await?;
    let mut lateness = Vec::with_capacity(retry_jobs * 2);
    for id in &ids {
        let job = queue.job(QUEUE, id).await?.context("job exists")?;
        for (k, pair) in job.attempts.windows(2).enumerate() {
            let due = pair[0].ended_at_ms + INTERVALS_MS[k];
            lateness.push(pair[1].started_at_ms as i64 - due as i64);
        }
    }
    lateness.sort();

    let _ = stop.send(());
    worker.await??;

    println!("queue bench: {jobs} hello jobs, 1 worker (concurrency {concurrency}), one Redis");
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| enqueue (batches of 1,000) | {:.0} jobs/s |",
        jobs as f64 / enqueue_time.as_secs_f64()
    );
    println!(
        "| drain | {:.0} jobs/s |",
        jobs as f64 / drain_time.as_secs_f64()
    );
    println!(
        "| script calls per job (enqueue, fetch, finish, renew) | {:.2} |",
        scripts as f64 / jobs as f64
    );
    println!(
        "| Redis commands per job, incl. inside scripts | {:.1} |",
        commands as f64 / jobs as f64
    );
    println!(
        "| Redis CPU per job, enqueue + drain | {:.1} µs |",
        cpu * 1e6 / jobs as f64
    );
    // `--retry-jobs 0` skips the lateness part.
    if !lateness.is_empty() {
        println!(
            "| retry lateness, {} retries: p50 / p99 / max | {} / {} / {} ms |",
            lateness.len(),
            percentile(&lateness, 0.5),
            percentile(&lateness, 0.99),
            lateness.last().copied().unwrap_or(0),
        );
    }
    println!();
    println!("Costliest Redis commands over enqueue + drain (a script's time includes the");
    println!("commands it runs, which are also listed on their own):");
    println!();
    println!("| command | calls per job | µs per job |");
    println!("|---|---|---|");
    for (command, calls, usec) in costliest {
        println!(
            "| {command} | {:.2} | {:.1} |",
            calls as f64 / jobs as f64,
            usec as f64 / jobs as f64
        );
    }
    Ok(())
}
