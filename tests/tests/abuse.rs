//! Abuse tests of the queue (issue #5, plan T11–T13 in the queue-reliability research): huge
//! payloads, a Redis that runs out of memory, and a retry storm. Each runs a worker in process
//! against its own private `redis-server` and prints its figures with `eprintln!`, so
//! `--nocapture` shows them.
//!
//! T9 (a job that kills its worker) needs worker processes to kill; it is in
//! `host/tests/abuse.rs`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use wasm_runner::queue::{
    DEFAULT_MAX_PAYLOAD_BYTES, EnqueueRequest, JobState, JobView, Queue, Quotas, Refusal, Registry,
    TaskDefaults, connect,
};
use wasm_runner::scheduler::{Backoff, RetryPolicy};
use wasm_runner_tests::{InProcessWorker, TestRedis, guest_bytes, wat};

const QUEUE: &str = "default";
const WORKER: &str = "abuse-worker";
/// The key prefix of the default tenant's default queue (see docs/queue.md).
const TAG: &str = "wr:{default/default}";

async fn upload(queue: &Queue, name: &str, package: &str, policy: RetryPolicy) {
    let defaults = TaskDefaults {
        policy,
        timeout_ms: 30_000,
        memory_bytes: 64 << 20,
    };
    queue
        .upload(name, &guest_bytes(package), &defaults)
        .await
        .expect("upload works");
}

fn one_attempt() -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(1)
        .build()
        .expect("valid policy")
}

/// Fails the test if the queue is inconsistent (see `Queue::check_invariants`).
async fn assert_consistent(queue: &Queue) -> anyhow::Result<()> {
    let problems = queue.check_invariants(QUEUE).await?;
    ensure!(problems.is_empty(), "queue inconsistent: {problems:#?}");
    Ok(())
}

/// How many jobs the queue holds in each state.
async fn counts(queue: &Queue) -> anyhow::Result<BTreeMap<JobState, u64>> {
    let stats = queue.stats(QUEUE, Duration::from_secs(60)).await?;
    Ok(stats.counts.into_iter().collect())
}

/// Polls the counts until `done` of them succeeded, within `timeout`.
async fn wait_succeeded(queue: &Queue, done: u64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = counts(queue).await?;
        if counts.get(&JobState::Succeeded) == Some(&done) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{done} jobs did not succeed within {timeout:?}: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls one job until it reaches `state`, within `timeout`.
async fn wait_for(
    queue: &Queue,
    id: &str,
    state: JobState,
    timeout: Duration,
) -> anyhow::Result<JobView> {
    let deadline = Instant::now() + timeout;
    loop {
        let job = queue.job(QUEUE, id).await?.context("job exists")?;
        if job.state == state {
            return Ok(job);
        }
        if Instant::now() > deadline {
            bail!(
                "job {id} is {:?}, not {state:?}, after {timeout:?}",
                job.state
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many job hashes of the default queue exist in Redis.
fn job_hashes(redis: &TestRedis) -> anyhow::Result<i64> {
    // `KEYS` is fine on a private test server; keys below a job's (none are made today) are
    // left out.
    let reply = redis.command(&[
        "EVAL",
        "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
         if not string.find(k, ':attempts', 1, true) then n = n + 1 end end return n",
        "0",
        &format!("{TAG}:job:*"),
    ])?;
    match parse_resp(&reply)?.0 {
        Resp::Int(n) => Ok(n),
        other => bail!("unexpected reply to the key count: {other:?}"),
    }
}

/// A field of `INFO`, e.g. `used_memory`.
fn info_field(redis: &TestRedis, section: &str, field: &str) -> anyhow::Result<u64> {
    let info = redis.command(&["INFO", section])?;
    let prefix = format!("{field}:");
    info.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .with_context(|| format!("no `{field}` in INFO {section}: {info}"))?
        .trim()
        .parse()
        .with_context(|| format!("`{field}` is not a number"))
}

/// A RESP reply, as much of it as these tests read.
#[derive(Debug)]
enum Resp {
    Int(i64),
    Text(String),
    Nil,
    Array(Vec<Resp>),
}

/// Parses one RESP value from the front of `input` (raw text from `TestRedis::command`; the
/// replies read here are ASCII, so byte lengths match).
fn parse_resp(input: &str) -> anyhow::Result<(Resp, &str)> {
    let (line, rest) = input.split_once("\r\n").context("truncated RESP reply")?;
    let kind = line.get(..1).context("empty RESP line")?;
    let body = &line[1..];
    match kind {
        "+" => Ok((Resp::Text(body.to_owned()), rest)),
        "-" => bail!("Redis answered with an error: {body}"),
        ":" => Ok((Resp::Int(body.parse()?), rest)),
        "$" => {
            let Ok(len) = usize::try_from(body.parse::<i64>()?) else {
                return Ok((Resp::Nil, rest));
            };
            let text = rest.get(..len).context("truncated bulk string")?;
            let rest = rest.get(len + 2..).context("truncated bulk string")?;
            Ok((Resp::Text(text.to_owned()), rest))
        }
        "*" => {
            let Ok(len) = usize::try_from(body.parse::<i64>()?) else {
                return Ok((Resp::Nil, rest));
            };
            let mut items = Vec::with_capacity(len);
            let mut rest = rest;
            for _ in 0..len {
                let (item, after) = parse_resp(rest)?;
                items.push(item);
                rest = after;
            }
            Ok((Resp::Array(items), rest))
        }
        _ => bail!("not a RESP reply: {line:?}"),
    }
}

/// One `SLOWLOG` entry: how long the command ran and its first words.
#[derive(Debug)]
struct Slow {
    micros: i64,
    command: String,
}

/// The longest a script may run in the retry storm, unless the server was seen stalled.
const SLOW_SCRIPT_MICROS: i64 = 10_000;

/// Whether a slow log entry's command is a script call.
fn is_script(command: &str) -> bool {
    const SCRIPTS: [&str; 6] = [
        "EVAL",
        "EVALSHA",
        "EVAL_RO",
        "EVALSHA_RO",
        "FCALL",
        "FCALL_RO",
    ];
    let name = command.split(' ').next().unwrap_or("").to_ascii_uppercase();
    SCRIPTS.contains(&name.as_str())
}

/// Every entry of the server's slow log.
fn slowlog(redis: &TestRedis) -> anyhow::Result<Vec<Slow>> {
    let reply = redis.command(&["SLOWLOG", "GET", "-1"])?;
    let Resp::Array(entries) = parse_resp(&reply)?.0 else {
        bail!("SLOWLOG GET did not return a list: {reply}");
    };
    entries
        .into_iter()
        .map(|entry| {
            // [id, unix time, microseconds, [args...], client address, client name]
            let Resp::Array(fields) = entry else {
                bail!("a slow log entry is not a list");
            };
            let Some(Resp::Int(micros)) = fields.get(2) else {
                bail!("a slow log entry has no duration: {fields:?}");
            };
            let command = match fields.get(3) {
                Some(Resp::Array(args)) => args
                    .iter()
                    .take(2)
                    .map(|arg| match arg {
                        Resp::Text(text) => text.chars().take(48).collect(),
                        other => format!("{other:?}"),
                    })
                    .collect::<Vec<String>>()
                    .join(" "),
                _ => String::new(),
            };
            Ok(Slow {
                micros: *micros,
                command,
            })
        })
        .collect()
}

/// A `wordfreq` payload of exactly `size` bytes: `{"text":"..."}` padded with words, and the
/// number of words the task should count in it.
fn wordfreq_payload(size: usize) -> (Vec<u8>, u64) {
    const PREFIX: &str = r#"{"text":""#;
    const SUFFIX: &str = r#""}"#;
    let words = "lorem ipsum dolor sit amet ";
    let filler: String = words
        .chars()
        .cycle()
        .take(size - PREFIX.len() - SUFFIX.len())
        .collect();
    // The task's notion of a word: a run of alphanumeric characters.
    let count = filler
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .count();
    let payload = format!("{PREFIX}{filler}{SUFFIX}").into_bytes();
    assert_eq!(payload.len(), size);
    (payload, count as u64)
}

/// T12. Payloads of 1 KiB, 256 KiB and exactly the default limit (1 MiB) are enqueued and run
/// with every byte intact; payloads of the limit + 1 byte and of 64 MiB are refused at enqueue
/// with a `TooLarge` refusal whose message names both sizes, and write nothing.
///
/// Pass: each accepted job succeeds, its recorded payload size equals what was sent and the
/// task counts the words that were sent; each refusal names the limit (1048576 bytes) and the
/// payload's size; afterwards no new job hash exists, the counts are unchanged and the queue is
/// consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_at_and_over_the_limit() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "wordfreq", "example-wordfreq", one_attempt()).await;
    let worker = InProcessWorker::start(&redis, WORKER, 2, Duration::from_secs(10))?;
    let limit = DEFAULT_MAX_PAYLOAD_BYTES;
    let baseline_memory = info_field(&redis, "memory", "used_memory")?;

    for size in [1 << 10, 256 << 10, limit] {
        let (payload, words) = wordfreq_payload(size);
        let started = Instant::now();
        let request = EnqueueRequest::new("wordfreq", payload);
        let id = queue.enqueue(QUEUE, &request, limit).await?.id;
        let enqueue_ms = started.elapsed().as_millis();
        let job = wait_for(&queue, &id, JobState::Succeeded, Duration::from_secs(30)).await?;
        assert_eq!(job.payload_bytes, size, "stored payload size");
        let result: serde_json::Value =
            serde_json::from_str(job.result.as_deref().context("no result")?)?;
        assert_eq!(
            result["total_words"], words,
            "the task saw the whole payload"
        );
        let record = job.attempts.last().context("no attempt record")?;
        eprintln!(
            "payload {size} bytes: enqueued in {enqueue_ms} ms, ran in {} ms, {words} words",
            record.run_ms
        );
    }
    let memory_with_jobs = info_field(&redis, "memory", "used_memory")?;
    eprintln!(
        "redis used_memory: {baseline_memory} bytes before, {memory_with_jobs} bytes with the \
         three accepted jobs"
    );

    let hashes = job_hashes(&redis)?;
    let before = counts(&queue).await?;
    assert_eq!(hashes, 3, "one hash per accepted job");
    for size in [limit + 1, 64 << 20] {
        let payload = vec![b' '; size];
        let started = Instant::now();
        let err = queue
            .enqueue(QUEUE, &EnqueueRequest::new("wordfreq", payload), limit)
            .await
            .expect_err("an over-limit payload is refused");
        let message = format!("{err:#}");
        eprintln!(
            "payload {size} bytes refused in {} ms: {message}",
            started.elapsed().as_millis()
        );
        assert!(
            matches!(Refusal::of(&err), Some(Refusal::TooLarge(_))),
            "a typed refusal: {err:?}"
        );
        assert!(
            message.contains(&format!("limit of {limit} bytes")),
            "names the limit: {message}"
        );
        assert!(
            message.contains(&format!("{size} bytes")),
            "names the size: {message}"
        );
    }
    assert_eq!(job_hashes(&redis)?, hashes, "a refused enqueue wrote a job");
    assert_eq!(
        counts(&queue).await?,
        before,
        "a refused enqueue moved a count"
    );
    worker.stop().await?;
    assert_consistent(&queue).await
}

/// The T13 scenario, shared by the two tests below; returns the refused enqueue's message.
///
/// A worker of 4 slots is kept busy with 4 `slow` jobs (3 s each) while a private Redis
/// limited to 8 MB with `noeviction` is filled through `Queue::enqueue` with 16 KiB `wordfreq`
/// jobs until it refuses one. Redis stays full for 4 s, past the slow jobs' end and past the
/// 2 s lease, so their outcomes and lease renewals hit the full Redis. Then the limit is lifted.
///
/// Checks: the refusal comes within the fill bound and promptly (no hang: under 10 s); while
/// Redis is full no job is stranded (the queue is consistent and every accepted job is counted
/// in exactly one state) and the worker keeps running; after `CONFIG SET maxmemory 0` every
/// accepted job succeeds, nothing is left queued, scheduled, running or failed, and the queue
/// is consistent.
async fn fill_redis_until_refused_then_recover() -> anyhow::Result<String> {
    const MAX_JOBS: usize = 4000;
    const SLOW_JOBS: usize = 4;
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "wordfreq", "example-wordfreq", one_attempt()).await;
    upload(&queue, "slow", "example-slow", one_attempt()).await;
    let worker = InProcessWorker::start(&redis, WORKER, SLOW_JOBS, Duration::from_secs(2))?;
    let mut ids = Vec::new();
    for _ in 0..SLOW_JOBS {
        let request = EnqueueRequest::new("slow", r#"{"ms": 3000}"#);
        ids.push(queue.enqueue(QUEUE, &request, 1024).await?.id);
    }
    for id in &ids {
        wait_for(&queue, id, JobState::Running, Duration::from_secs(20)).await?;
    }
    redis.command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])?;
    redis.command(&["CONFIG", "SET", "maxmemory", "8mb"])?;
    let (payload, _) = wordfreq_payload(16 << 10);

    // 4000 jobs of 16 KiB are 64 MB, far past the limit: the loop ends with a refusal.
    let mut refusal = None;
    while ids.len() < MAX_JOBS {
        let request = EnqueueRequest::new("wordfreq", payload.clone());
        let started = Instant::now();
        let enqueue = queue.enqueue(QUEUE, &request, DEFAULT_MAX_PAYLOAD_BYTES);
        match tokio::time::timeout(Duration::from_secs(10), enqueue).await {
            Ok(Ok(enqueued)) => ids.push(enqueued.id),
            Ok(Err(err)) => {
                refusal = Some((err, started.elapsed()));
                break;
            }
            Err(_) => bail!("an enqueue hung for 10 s with Redis at maxmemory"),
        }
    }
    let (err, took) = refusal.context("Redis never refused a write")?;
    let full_since = Instant::now();
    let message = format!("{err:#}");
    let used = info_field(&redis, "memory", "used_memory")?;
    eprintln!(
        "refused after {} jobs, in {} ms, used_memory {used} bytes: {message}",
        ids.len(),
        took.as_millis()
    );

    // While Redis is full every write fails, so the queue holds still for the scan.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let full = counts(&queue).await?;
    eprintln!("counts while full: {full:?}");
    assert_consistent(&queue).await?;
    assert_eq!(
        full.values().sum::<u64>(),
        ids.len() as u64,
        "every accepted job is in exactly one state"
    );
    // The slow jobs end and their leases lapse while Redis is still full.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(full_since.elapsed())).await;
    assert!(
        worker.is_running(),
        "the worker stopped while Redis was full"
    );
    assert_consistent(&queue).await?;

    redis.command(&["CONFIG", "SET", "maxmemory", "0"])?;
    let freed = Instant::now();
    wait_succeeded(&queue, ids.len() as u64, Duration::from_secs(60)).await?;
    let drained = freed.elapsed();
    let mut rerun = 0;
    for id in &ids {
        let job = queue.job(QUEUE, id).await?.context("job exists")?;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        rerun += usize::from(job.losses > 0);
    }
    eprintln!(
        "drained {} jobs {} ms after memory was freed; {rerun} re-run after a lapsed lease",
        ids.len(),
        drained.as_millis()
    );
    let after = counts(&queue).await?;
    for state in [
        JobState::Queued,
        JobState::Scheduled,
        JobState::Running,
        JobState::Failed,
    ] {
        assert_eq!(after.get(&state), Some(&0), "{state:?}: {after:?}");
    }
    assert!(worker.is_running(), "the worker stopped");
    worker.stop().await?;
    assert_consistent(&queue).await?;
    Ok(message)
}

/// T13 in full: the scenario of [`fill_redis_until_refused_then_recover`], and the refusal
/// must tell the caller that Redis is out of memory.
///
/// Pass: everything the scenario checks, and the enqueue's error message names Redis and says
/// it is out of memory (`out of memory` or `maxmemory`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_at_maxmemory_refuses_clearly_and_recovers() -> anyhow::Result<()> {
    let message = fill_redis_until_refused_then_recover().await?;
    assert!(
        message.contains("Redis is out of memory") && message.contains("raise `maxmemory`"),
        "the refusal should say Redis is out of memory and what to do: {message}"
    );
    // Redis's own script error, with its script id, must not leak through (twice) instead.
    assert!(!message.contains("@user_script"), "{message}");
    Ok(())
}

/// The jittered delay a retry decision recorded, e.g. `retry in 1s 834ms`.
fn recorded_delay_ms(decision: &str) -> anyhow::Result<u64> {
    let text = decision
        .strip_prefix("retry in ")
        .with_context(|| format!("not a retry decision: {decision:?}"))?;
    let mut total = 0;
    for part in text.split_whitespace() {
        let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let value: u64 = digits
            .parse()
            .with_context(|| format!("bad delay {decision:?}"))?;
        total += match &part[digits.len()..] {
            "ms" => value,
            "s" => value * 1000,
            "m" => value * 60_000,
            unit => bail!("unexpected unit {unit:?} in {decision:?}"),
        };
    }
    Ok(total)
}

/// 100 ms buckets of `times` over `[start, end)`: the fullest bucket (anywhere) and the mean
/// over the buckets of the window.
fn bucket_figures(times: &[u64], start: u64, end: u64) -> (usize, f64) {
    let mut buckets: BTreeMap<i64, usize> = BTreeMap::new();
    for &time in times {
        *buckets
            .entry((time as i64 - start as i64).div_euclid(100))
            .or_default() += 1;
    }
    let max = buckets.values().copied().max().unwrap_or(0);
    let window_buckets = (end - start).div_ceil(100).max(1);
    (max, times.len() as f64 / window_buckets as f64)
}

/// T11. 2,000 `flaky` jobs (transient failure on attempts 1 and 2) with a 2 s retry interval
/// and 20% jitter are enqueued at once and run by one worker of 8 slots.
///
/// Pass: every job succeeds on attempt 3 after two transient failures; every recorded retry
/// delay lies in [1.6 s, 2.4 s] and no retry starts before its delay has passed; for each of
/// the two retry waves, the fullest 100 ms bucket holds at most twice the mean over the jitter
/// window [1.6 s, 2.4 s], both for the delays the scheduler chose and for the retry starts
/// (`started_at_ms`) measured from each job's own failure, i.e. as if all jobs had failed at
/// the same instant; and no script ran 10 ms or longer (`SLOWLOG`), or twice the slowest plain
/// command when one shows that the server was descheduled. The starts' buckets on the Redis
/// clock are printed, not asserted (see the comment in the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_storm_spreads_out() -> anyhow::Result<()> {
    const JOBS: usize = 2000;
    const INTERVAL_MS: u64 = 2000;
    const JITTER_PERCENT: u8 = 20;
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .backoff(Backoff::Intervals(vec![Duration::from_millis(INTERVAL_MS)]))
        .jitter_percent(JITTER_PERCENT)
        .build()
        .expect("valid policy");
    upload(&queue, "flaky", "example-flaky", policy).await;
    let requests: Vec<EnqueueRequest> = (0..JOBS)
        .map(|_| EnqueueRequest::new("flaky", "{}"))
        .collect();
    let ids: Vec<String> = queue
        .enqueue_batch(QUEUE, &requests, DEFAULT_MAX_PAYLOAD_BYTES)
        .await?
        .into_iter()
        .map(|enqueued| enqueued.id)
        .collect();
    // Log every command of 1 ms or more, from here on: the storm, not the producer's batch.
    redis.command(&["CONFIG", "SET", "slowlog-log-slower-than", "1000"])?;
    redis.command(&["CONFIG", "SET", "slowlog-max-len", "10000"])?;
    redis.command(&["SLOWLOG", "RESET"])?;

    let started = Instant::now();
    let worker = InProcessWorker::start(&redis, WORKER, 8, Duration::from_secs(10))?;
    wait_succeeded(&queue, JOBS as u64, Duration::from_secs(75)).await?;
    let drain = started.elapsed();
    let slow = slowlog(&redis)?;
    worker.stop().await?;

    let mut jobs = Vec::with_capacity(JOBS);
    for id in &ids {
        jobs.push(queue.job(QUEUE, id).await?.context("job exists")?);
    }
    for job in &jobs {
        let classes: Vec<&str> = job
            .attempts
            .iter()
            .map(|record| record.outcome["class"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(job.attempt, 3, "{job:?}");
        assert_eq!(classes, ["transient", "transient", "ok"], "{job:?}");
    }
    eprintln!(
        "{JOBS} jobs x 3 attempts drained in {} ms",
        drain.as_millis()
    );

    let low = INTERVAL_MS * u64::from(100 - JITTER_PERCENT) / 100;
    let high = INTERVAL_MS * u64::from(100 + JITTER_PERCENT) / 100;
    for wave in 1..=2 {
        let mut delays = Vec::with_capacity(JOBS);
        let mut gaps = Vec::with_capacity(JOBS);
        let mut lateness = Vec::with_capacity(JOBS);
        let mut starts = Vec::with_capacity(JOBS);
        let mut dues = Vec::with_capacity(JOBS);
        for job in &jobs {
            let (failed, retried) = (&job.attempts[wave - 1], &job.attempts[wave]);
            let delay = recorded_delay_ms(&failed.decision)?;
            assert!((low..=high).contains(&delay), "delay {delay} ms: {job:?}");
            let gap = retried.started_at_ms - failed.ended_at_ms;
            assert!(
                gap >= delay,
                "retry started {gap} ms after, before its delay: {job:?}"
            );
            delays.push(delay);
            gaps.push(gap);
            lateness.push(gap - delay);
            starts.push(retried.started_at_ms);
            dues.push(failed.ended_at_ms + delay);
        }

        // The jitter the scheduler chose: spread over [low, high], not piled on one value.
        let (delay_max, delay_mean) = bucket_figures(&delays, low, high);
        // The retry starts, each measured from its own job's failure: as if all 2,000 jobs
        // had failed at the same instant, which is the storm the jitter must spread out.
        let (gap_max, gap_mean) = bucket_figures(&gaps, low, high);
        // The same starts on the Redis clock. The failures themselves are spread over a
        // stretch as long as the jitter range (the worker runs ~2,000 attempts in under a
        // second), so the starts' fullest bucket is bound to be near twice their mean over
        // [first failure + low, last failure + high] even with perfect jitter; it is printed
        // next to the fullest bucket of the due times, which is what perfect promotion gives.
        let first_fail = jobs.iter().map(|j| j.attempts[wave - 1].ended_at_ms).min();
        let last_fail = jobs.iter().map(|j| j.attempts[wave - 1].ended_at_ms).max();
        let (first_fail, last_fail) = (first_fail.context("no jobs")?, last_fail.unwrap_or(0));
        let (window_start, window_end) = (first_fail + low, last_fail + high);
        let (start_max, start_mean) = bucket_figures(&starts, window_start, window_end);
        let (due_max, _) = bucket_figures(&dues, window_start, window_end);
        lateness.sort_unstable();
        eprintln!(
            "retry wave {wave}: delays {}..{} ms, fullest 100 ms bucket {delay_max} vs mean \
             {delay_mean:.1}; starts after failure: fullest bucket {gap_max} vs mean \
             {gap_mean:.1}; lateness after due p50 {} ms, p99 {} ms, max {} ms",
            delays.iter().min().unwrap_or(&0),
            delays.iter().max().unwrap_or(&0),
            lateness[JOBS / 2],
            lateness[JOBS * 99 / 100],
            lateness[JOBS - 1],
        );
        eprintln!(
            "retry wave {wave} on the Redis clock: failures over {} ms; starts over a {} ms \
             window, fullest bucket {start_max} (due times: {due_max}) vs mean {start_mean:.1}",
            last_fail - first_fail,
            window_end - window_start,
        );
        assert!(
            delay_max as f64 <= 2.0 * delay_mean,
            "wave {wave}: the jittered delays bunch up: {delay_max} in one 100 ms bucket, \
             mean {delay_mean:.1}"
        );
        assert!(
            gap_max as f64 <= 2.0 * gap_mean,
            "wave {wave}: retries start in a burst: {gap_max} in one 100 ms bucket after \
             their failure, mean {gap_mean:.1} over the jitter window"
        );
    }

    let slowest = slow.iter().max_by_key(|entry| entry.micros);
    eprintln!(
        "SLOWLOG: {} commands of 1 ms or more during the storm; slowest: {}",
        slow.len(),
        slowest.map_or("none".to_owned(), |s| format!(
            "{} us ({})",
            s.micros, s.command
        ))
    );
    // SLOWLOG times are wall clock: on a shared 2-core machine Redis can be descheduled for
    // 10 ms or more in the middle of any command. A plain command here does bounded work (a
    // `LIMIT`ed range, a renewal of a few leases), so a slow one shows such a stall, and a
    // script is then allowed twice the slowest plain command; a script whose own work is long
    // stays over the bound whatever the machine does.
    let stalled = slow
        .iter()
        .filter(|entry| !is_script(&entry.command))
        .map(|entry| entry.micros)
        .max()
        .unwrap_or(0);
    let bound = SLOW_SCRIPT_MICROS.max(2 * stalled);
    let over: Vec<&Slow> = slow
        .iter()
        .filter(|entry| is_script(&entry.command) && entry.micros >= bound)
        .collect();
    assert!(
        over.is_empty(),
        "scripts of {bound} us or more (slowest plain command {stalled} us): {over:#?}"
    );
    assert_consistent(&queue).await
}

/// T4: Redis is killed with SIGKILL in the middle of a drain while a producer keeps
/// enqueueing, then restarted from its append-only file.
///
/// Pass: every enqueue that was acknowledged (returned an id) before, during or after the
/// crash ends succeeded: none lost; enqueues refused while Redis was down are reported to the
/// producer as errors (not acknowledged); the worker resumes by itself; the queue is
/// consistent. The server fsyncs every write (`appendfsync always`): with the default
/// `everysec`, writes acknowledged in the last second before a crash can be lost, which
/// docs/reliability.md states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_enqueues_survive_a_redis_crash_mid_drain() -> anyhow::Result<()> {
    let mut redis = TestRedis::start_with_aof()?;
    redis.command(&["CONFIG", "SET", "appendfsync", "always"])?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "hello", "example-hello", one_attempt()).await;
    let worker = InProcessWorker::start(&redis, WORKER, 4, Duration::from_secs(2))?;

    // The producer enqueues one job at a time and keeps the ids Redis acknowledged.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let (mut acked, mut refused) = (Vec::new(), 0_u32);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !*stopped.borrow_and_update() && Instant::now() < deadline {
                let request = EnqueueRequest::new("hello", r#"{"name": "crash"}"#);
                match queue.enqueue(QUEUE, &request, 1024).await {
                    Ok(enqueued) => acked.push(enqueued.id),
                    Err(_) => {
                        refused += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (acked, refused)
        })
    };

    wait_succeeded_at_least(&queue, 300, Duration::from_secs(30)).await?;
    redis.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart()?;
    let back = Instant::now();
    // The first command after the restart may still meet the old, broken connection.
    let mut before = None;
    for _ in 0..50 {
        if let Ok(counts) = counts(&queue).await {
            before = counts.get(&JobState::Succeeded).copied();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = before.context("Redis did not answer within 5 s of its restart")?;
    wait_succeeded_at_least(&queue, before + 300, Duration::from_secs(30)).await?;
    let resumed = back.elapsed();
    stop.send(true)?;
    let (acked, refused) = producer.await?;

    // An enqueue whose reply was lost in the crash may still have been written: the producer
    // saw an error, yet the job exists and runs. So wait for at least the acknowledged ones.
    wait_succeeded_at_least(&queue, acked.len() as u64, Duration::from_secs(60)).await?;
    let mut lost = 0;
    for id in &acked {
        let state = queue.job(QUEUE, id).await?.map(|job| job.state);
        lost += usize::from(state != Some(JobState::Succeeded));
    }
    eprintln!(
        "redis down for {} ms; {} enqueues acknowledged, {refused} refused while it was down, \
         {lost} lost; 300 more jobs done {} ms after it was back",
        (back - killed).as_millis(),
        acked.len(),
        resumed.as_millis()
    );
    let written_unacknowledged = counts(&queue).await?[&JobState::Succeeded] - acked.len() as u64;
    eprintln!("written although the producer saw an error: {written_unacknowledged}");
    assert_eq!(lost, 0, "acknowledged enqueues were lost");
    assert!(
        refused > 0,
        "the producer never saw Redis down; the crash tested nothing"
    );
    assert!(worker.is_running(), "the worker stopped");
    worker.stop().await?;
    assert_consistent(&queue).await
}

/// Polls the counts until at least `done` jobs succeeded, within `timeout`; returns nothing
/// but fails with the counts when the time runs out.
async fn wait_succeeded_at_least(
    queue: &Queue,
    done: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let counts = counts(queue).await?;
        if counts.get(&JobState::Succeeded).is_some_and(|n| *n >= done) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{done} jobs did not succeed within {timeout:?}: {counts:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sandbox abuse at the worker: guests that try to escape, spin, eat memory (linearly and
/// exponentially), overflow the stack, panic, grow a table without end, flood stdout, stderr
/// and the log, and loop forever writing output or calling the host, all from one tenant
/// (`mallory`, running-jobs cap 2) on a worker of 4 slots that also serves 200 ordinary jobs
/// of the default tenant.
///
/// Pass: every abusive job ends with the outcome its abuse deserves (contained and
/// classified: `timed_out`, `memory_limit`, `trap`, `ok` with every escape probe denied and
/// output bounded); every ordinary job succeeds while `spin` still holds its slot, so the
/// abusers slowed the others only by the slots and CPU their cap lets them hold; and the
/// worker is still serving afterwards. How long the ordinary jobs took alone and beside the
/// abusers is printed; it is a figure, not an assertion, since the machine is shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_guests_are_contained_and_the_worker_keeps_serving() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "hello", "example-hello", one_attempt()).await;
    let conn = connect(&redis.url()).await?;
    let quotas = Quotas {
        max_running: Some(2),
        ..Quotas::default()
    };
    let (record, _token) = Registry::new(conn.clone())
        .create("mallory", quotas)
        .await?;
    let mallory = Queue::for_tenant(conn, &record)?;

    // `spin` comes first and runs longest, so it holds a slot while the ordinary jobs run.
    let abusers: [(&str, Vec<u8>, &str, &str); 11] = [
        ("spin", guest_bytes("example-spin"), "{}", "timed_out"),
        ("hog", guest_bytes("example-hog"), "{}", "memory_limit"),
        (
            "balloon",
            guest_bytes("guest-balloon"),
            "{}",
            "memory_limit",
        ),
        ("tables", wat::table_grower(10_000), "{}", "memory_limit"),
        ("stack", guest_bytes("guest-stack-overflow"), "{}", "trap"),
        ("panic", guest_bytes("example-panic"), "{}", "trap"),
        ("escape", guest_bytes("guest-escape"), "{}", "ok"),
        ("chatty", guest_bytes("guest-chatty"), "{}", "ok"),
        ("flood", guest_bytes("guest-log-flood"), "{}", "ok"),
        (
            "endless-stdout",
            guest_bytes("guest-endless"),
            "stdout",
            "timed_out",
        ),
        (
            "endless-log",
            guest_bytes("guest-endless"),
            "log",
            "timed_out",
        ),
    ];
    for (task, component, _, _) in &abusers {
        // The guests that never end on their own get a timeout; `spin`'s outlasts the
        // ordinary jobs many times over. The others must end for their own reasons.
        let timeout_ms = match *task {
            "spin" => 8_000,
            "endless-stdout" | "endless-log" => 500,
            _ => 30_000,
        };
        let defaults = TaskDefaults {
            policy: one_attempt(),
            timeout_ms,
            memory_bytes: 32 << 20,
        };
        mallory.upload(task, component, &defaults).await?;
    }
    let worker = InProcessWorker::start(&redis, WORKER, 4, Duration::from_secs(5))?;

    // The ordinary jobs alone first, for the comparison, then again beside the abusers.
    let alone = run_hellos(&queue, 200).await?;
    let mut abusive_ids = Vec::new();
    for (task, _, payload, expected) in &abusers {
        let id = mallory
            .enqueue(QUEUE, &EnqueueRequest::new(*task, *payload), 1024)
            .await?
            .id;
        abusive_ids.push((*task, id, *expected));
    }
    wait_for_state(&mallory, &abusive_ids[0].1, JobState::Running).await?;
    let beside = run_hellos(&queue, 200).await?;
    let spin = mallory
        .job(QUEUE, &abusive_ids[0].1)
        .await?
        .context("spin exists")?;
    ensure!(
        spin.state == JobState::Running,
        "the ordinary jobs finished only after `spin` ended ({:?})",
        spin.state
    );

    for (task, id, expected) in &abusive_ids {
        let job = wait_for_end(&mallory, id).await?;
        let outcome = &job.attempts[0].outcome;
        assert_eq!(outcome["class"], *expected, "{task}: {outcome}");
        if *task == "escape" {
            let report: serde_json::Value =
                serde_json::from_str(job.result.as_deref().context("escape has a result")?)?;
            for (probe, value) in report.as_object().context("escape reports an object")? {
                // Listing arguments and the environment works, and must find nothing.
                let denied = value["ok"] == false || value["value"]["count"] == 0;
                assert!(denied, "probe {probe} got something: {value}");
            }
        }
    }
    eprintln!(
        "200 ordinary jobs took {} ms alone and {} ms beside {} abusive guests (cap 2 of 4 slots)",
        alone.as_millis(),
        beside.as_millis(),
        abusers.len()
    );
    run_hellos(&queue, 10).await?;
    assert!(worker.is_running(), "the worker stopped");
    worker.stop().await?;
    assert_consistent(&mallory).await?;
    assert_consistent(&queue).await
}

/// Polls a job until it is in `state`, within a minute.
async fn wait_for_state(queue: &Queue, id: &str, state: JobState) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = queue.job(QUEUE, id).await?.context("job exists")?;
        if job.state == state {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "job {id} is still {:?}, not {state:?}, after a minute",
                job.state
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Enqueues `count` hello jobs and waits for all to succeed; returns how long that took.
async fn run_hellos(queue: &Queue, count: usize) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let requests: Vec<EnqueueRequest> = (0..count)
        .map(|i| EnqueueRequest::new("hello", format!(r#"{{"name": "n{i}"}}"#)))
        .collect();
    let ids = queue.enqueue_batch(QUEUE, &requests, 1024).await?;
    for enqueued in &ids {
        let job = wait_for_end(queue, &enqueued.id).await?;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    }
    Ok(started.elapsed())
}

/// Polls a job until it has succeeded or failed, within a minute.
async fn wait_for_end(queue: &Queue, id: &str) -> anyhow::Result<JobView> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job = queue.job(QUEUE, id).await?.context("job exists")?;
        if matches!(job.state, JobState::Succeeded | JobState::Failed) {
            return Ok(job);
        }
        if Instant::now() > deadline {
            bail!("job {id} is still {:?} after a minute", job.state);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
