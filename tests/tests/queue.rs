//! End-to-end tests of the Redis queue and the worker, in process, each against its own
//! private `redis-server`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use wasm_runner::outcome::Outcome;
use wasm_runner::queue::{
    AttemptRecord, Completion, EnqueueRequest, JobState, JobView, Queue, TaskDefaults,
};
use wasm_runner::scheduler::{Backoff, RetryPolicy};
use wasm_runner_tests::{InProcessWorker, TestRedis, guest_bytes};

const QUEUE: &str = "default";
const MAX_PAYLOAD: usize = 1 << 20;
const WORKER: &str = "test-worker";

fn policy(max_attempts: u32, intervals_ms: &[u64]) -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(max_attempts)
        .backoff(Backoff::Intervals(
            intervals_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
        ))
        .jitter_percent(0)
        .build()
        .expect("valid policy")
}

async fn upload(queue: &Queue, name: &str, package: &str, policy: RetryPolicy) {
    let defaults = TaskDefaults {
        policy,
        timeout_ms: 10_000,
        memory_bytes: 64 << 20,
    };
    queue
        .upload(name, &guest_bytes(package), &defaults)
        .await
        .expect("upload works");
}

async fn enqueue(queue: &Queue, task: &str, payload: &str) -> String {
    queue
        .enqueue(QUEUE, &EnqueueRequest::new(task, payload), MAX_PAYLOAD)
        .await
        .expect("enqueue works")
        .id
}

/// Polls the job until it reaches `state`, within `timeout`.
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
                "job {id} is {:?}, not {state:?}, after {timeout:?}: {job:#?}",
                job.state
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails the test if the queue is inconsistent (see `Queue::check_invariants`).
async fn assert_consistent(queue: &Queue) -> anyhow::Result<()> {
    let problems = queue.check_invariants(QUEUE).await?;
    assert!(problems.is_empty(), "queue inconsistent: {problems:#?}");
    Ok(())
}

fn class(record: &AttemptRecord) -> &str {
    record.outcome["class"].as_str().unwrap_or("")
}

fn gap_ms(earlier: &AttemptRecord, later: &AttemptRecord) -> u64 {
    later.started_at_ms - earlier.ended_at_ms
}

/// `flaky` with three attempts and intervals of 200 ms and 400 ms fails twice, then succeeds;
/// all three attempts are recorded and the gaps between them match the intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_job_succeeds_on_its_third_attempt() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "flaky", "example-flaky", policy(3, &[200, 400])).await;
    let worker = InProcessWorker::start(&redis, WORKER, 4, Duration::from_secs(5))?;

    let id = enqueue(&queue, "flaky", "{}").await;
    let job = wait_for(&queue, &id, JobState::Succeeded, Duration::from_secs(20)).await?;

    assert_eq!(job.attempt, 3);
    let classes: Vec<&str> = job.attempts.iter().map(class).collect();
    assert_eq!(classes, ["transient", "transient", "ok"]);
    for record in &job.attempts {
        // The task's own run time fits inside the attempt's span on the Redis clock.
        let span = record.ended_at_ms - record.started_at_ms;
        assert!(record.run_ms <= span + 1, "{record:?}");
    }
    let first = gap_ms(&job.attempts[0], &job.attempts[1]);
    let second = gap_ms(&job.attempts[1], &job.attempts[2]);
    // Lateness is measured on the Redis clock; allow for a loaded machine.
    assert!((200..450).contains(&first), "first gap {first} ms");
    assert!((400..650).contains(&second), "second gap {second} ms");
    assert!(
        job.result
            .as_deref()
            .unwrap_or("")
            .contains("\"succeeded_on_attempt\":3")
    );
    worker.stop().await?;
    assert_consistent(&queue).await
}

/// A permanent error runs once and lands in the failed set with its message and code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_error_runs_once_and_fails() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "validate", "example-validate", policy(5, &[50])).await;
    let worker = InProcessWorker::start(&redis, WORKER, 4, Duration::from_secs(5))?;

    let id = enqueue(&queue, "validate", r#"{"email": "nope", "quantity": 1}"#).await;
    let job = wait_for(&queue, &id, JobState::Failed, Duration::from_secs(20)).await?;

    assert_eq!(job.attempts.len(), 1);
    let outcome = job.outcome.clone().context("outcome recorded")?;
    assert_eq!(outcome["class"], "permanent");
    assert_eq!(outcome["code"], "invalid-email");
    let failed = queue.jobs(QUEUE, JobState::Failed, None, 10).await?;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, id);
    worker.stop().await?;
    assert_consistent(&queue).await
}

/// Transient errors that outlast the attempts fail the job after exactly max attempts, with
/// every attempt recorded; requeueing gives it fresh attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_fail_after_max_attempts_and_can_be_requeued() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "flaky", "example-flaky", policy(2, &[50])).await;
    let worker = InProcessWorker::start(&redis, WORKER, 4, Duration::from_secs(5))?;

    let id = enqueue(&queue, "flaky", "{}").await;
    let job = wait_for(&queue, &id, JobState::Failed, Duration::from_secs(20)).await?;
    assert_eq!(job.attempt, 2);
    assert_eq!(job.attempts.len(), 2);
    assert!(
        job.attempts
            .iter()
            .all(|record| class(record) == "transient")
    );

    // Requeued, it starts again from attempt 1: flaky fails on attempts 1 and 2 again.
    assert!(queue.requeue(QUEUE, &id, true).await?);
    let job = wait_for(&queue, &id, JobState::Failed, Duration::from_secs(20)).await?;
    assert_eq!(job.attempts.len(), 4, "history is kept across a requeue");
    assert!(!queue.requeue(QUEUE, "no-such-job", false).await?);
    worker.stop().await?;
    assert_consistent(&queue).await
}

/// The task's retry-after hint lengthens the policy's delay, and the hint ceiling clamps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_hint_is_honoured_and_clamped() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    let clamped = RetryPolicy {
        hint_ceiling: Duration::from_millis(300),
        ..policy(2, &[50])
    };
    upload(&queue, "limited", "example-rate-limited", policy(2, &[50])).await;
    upload(&queue, "clamped", "example-rate-limited", clamped).await;
    let worker = InProcessWorker::start(&redis, WORKER, 4, Duration::from_secs(5))?;

    let honoured = enqueue(&queue, "limited", r#"{"retry_after_ms": 600}"#).await;
    let capped = enqueue(&queue, "clamped", r#"{"retry_after_ms": 60000}"#).await;
    let honoured = wait_for(
        &queue,
        &honoured,
        JobState::Succeeded,
        Duration::from_secs(20),
    );
    let capped = wait_for(
        &queue,
        &capped,
        JobState::Succeeded,
        Duration::from_secs(20),
    );
    let (honoured, capped) = (honoured.await?, capped.await?);

    let gap = gap_ms(&honoured.attempts[0], &honoured.attempts[1]);
    assert!((600..900).contains(&gap), "hinted gap {gap} ms");
    let gap = gap_ms(&capped.attempts[0], &capped.attempts[1]);
    assert!((300..600).contains(&gap), "clamped gap {gap} ms");
    worker.stop().await?;
    assert_consistent(&queue).await
}

/// A delayed job does not start before its due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_job_waits_for_its_due_time() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "hello", "example-hello", policy(1, &[50])).await;
    let worker = InProcessWorker::start(&redis, WORKER, 4, Duration::from_secs(5))?;

    let request = EnqueueRequest {
        delay: Some(Duration::from_millis(500)),
        ..EnqueueRequest::new("hello", r#"{"name": "Later"}"#)
    };
    let id = queue.enqueue(QUEUE, &request, MAX_PAYLOAD).await?.id;
    assert_eq!(
        queue.job(QUEUE, &id).await?.context("job")?.state,
        JobState::Scheduled
    );
    let job = wait_for(&queue, &id, JobState::Succeeded, Duration::from_secs(20)).await?;
    let waited = job.attempts[0].started_at_ms - job.enqueued_at_ms.context("enqueued")?;
    assert!(
        (500..800).contains(&waited),
        "started {waited} ms after enqueue"
    );
    worker.stop().await?;
    assert_consistent(&queue).await
}

/// The same idempotency key returns the first job instead of adding another.
#[tokio::test]
async fn idempotency_key_returns_the_first_job() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "hello", "example-hello", policy(1, &[50])).await;

    let request = EnqueueRequest {
        idempotency_key: Some("order-42".into()),
        ..EnqueueRequest::new("hello", r#"{"name": "Once"}"#)
    };
    let first = queue.enqueue(QUEUE, &request, MAX_PAYLOAD).await?;
    let second = queue.enqueue(QUEUE, &request, MAX_PAYLOAD).await?;
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.id, second.id);
    assert_eq!(
        queue.jobs(QUEUE, JobState::Queued, None, 10).await?.len(),
        1
    );
    assert_consistent(&queue).await?;
    Ok(())
}

/// A worker's heartbeat keeps the queue's heartbeat set alive for an hour and no longer, so a
/// set left behind by workers of a deleted tenant goes away by itself (the fix for the set
/// outliving its tenant, which the chaos suite found).
#[tokio::test]
async fn heartbeat_set_expires_an_hour_after_the_last_heartbeat() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    let key = wasm_runner::queue::QueueKeys::new("default", QUEUE).workers();
    queue
        .fetch(QUEUE, "worker-a", Duration::from_secs(1), 0, true)
        .await?;
    let ttl = pttl(&redis, &key)?;
    assert!(
        ttl > 3_500_000 && ttl <= 3_600_000,
        "the heartbeat set {key} has a TTL of {ttl} ms, not about an hour"
    );
    // A fetch without housekeeping does not beat, so it leaves the TTL alone.
    redis.command(&["PEXPIRE", &key, "60000"])?;
    queue
        .fetch(QUEUE, "worker-a", Duration::from_secs(1), 0, false)
        .await?;
    let ttl = pttl(&redis, &key)?;
    assert!(
        ttl > 0 && ttl <= 60_000,
        "a fetch without housekeeping touched the heartbeat set"
    );
    Ok(())
}

/// The time to live of `key` in ms, from the raw reply (`:<n>`) of `PTTL`.
fn pttl(redis: &TestRedis, key: &str) -> anyhow::Result<i64> {
    let reply = redis.command(&["PTTL", key])?;
    let value = reply
        .trim()
        .strip_prefix(':')
        .context("PTTL answers an integer")?;
    Ok(value.parse()?)
}

/// A worker whose lease expired cannot record an outcome: the job was recovered and leased to
/// another worker, whose outcome is the one kept. The lost attempt is not charged.
#[tokio::test]
async fn stale_worker_cannot_record_an_outcome() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "hello", "example-hello", policy(3, &[50])).await;
    let id = enqueue(&queue, "hello", r#"{"name": "Fence"}"#).await;

    let lease = Duration::from_millis(200);
    let stale = queue
        .fetch(QUEUE, "worker-a", lease, 1, true)
        .await?
        .jobs
        .remove(0);
    assert_eq!(stale.attempt, 1);
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let fresh = queue
        .fetch(QUEUE, "worker-b", lease * 10, 1, true)
        .await?
        .jobs
        .remove(0);
    assert_eq!(fresh.id, id);
    assert_eq!(fresh.attempt, 1, "the lost attempt is not charged");
    assert_eq!(fresh.losses, 1);

    let record = |worker: &str| AttemptRecord {
        attempt: 1,
        worker: worker.into(),
        started_at_ms: 0,
        ended_at_ms: 0,
        run_ms: 0,
        outcome: serde_json::to_value(Outcome::Ok).unwrap(),
        decision: "succeeded".into(),
        log_tail: String::new(),
    };
    let ok = serde_json::to_value(Outcome::Ok)?;
    let late = Completion::Succeed {
        result: b"stale".to_vec(),
    };
    assert!(
        !queue
            .finish(QUEUE, &stale, &late, &ok, &record("worker-a"))
            .await?
    );
    let done = Completion::Succeed {
        result: b"fresh".to_vec(),
    };
    assert!(
        queue
            .finish(QUEUE, &fresh, &done, &ok, &record("worker-b"))
            .await?
    );
    assert!(
        !queue
            .finish(QUEUE, &stale, &late, &ok, &record("worker-a"))
            .await?
    );

    let job = queue.job(QUEUE, &id).await?.context("job")?;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.result.as_deref(), Some("fresh"));
    let classes: Vec<&str> = job.attempts.iter().map(class).collect();
    assert_eq!(classes, ["worker_lost", "ok"]);
    assert_consistent(&queue).await?;
    Ok(())
}

/// A job that keeps losing its worker (a poison job) fails after a bounded number of losses:
/// the default, and a count set with `with_max_worker_losses` (`serve --max-worker-losses`).
#[tokio::test]
async fn job_that_keeps_losing_its_worker_fails() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "hello", "example-hello", policy(3, &[50])).await;
    for limit in [None, Some(5)] {
        let queue = match limit {
            Some(losses) => queue.clone().with_max_worker_losses(losses),
            None => queue.clone(),
        };
        let losses = limit.unwrap_or(wasm_runner::queue::MAX_WORKER_LOSSES);
        let id = enqueue(&queue, "hello", r#"{"name": "Poison"}"#).await;

        let lease = Duration::from_millis(100);
        for loss in 0..losses {
            let fetched = queue.fetch(QUEUE, "doomed", lease, 1, true).await?;
            assert_eq!(fetched.jobs.len(), 1, "leased again after {loss} losses");
            tokio::time::sleep(lease + Duration::from_millis(50)).await;
        }
        // This fetch recovers the last expired lease and fails the job instead of leasing it.
        assert!(
            queue
                .fetch(QUEUE, "doomed", lease, 1, true)
                .await?
                .jobs
                .is_empty()
        );
        let job = queue.job(QUEUE, &id).await?.context("job")?;
        assert_eq!(job.state, JobState::Failed);
        assert_eq!(job.losses, losses);
        assert_eq!(job.attempt, 0, "losses are not charged as attempts");
    }
    assert_consistent(&queue).await?;
    Ok(())
}

/// A batch is enqueued in order in a few round trips; one bad request refuses the whole batch.
#[tokio::test]
async fn batch_enqueue_is_all_or_nothing_when_checked() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "hello", "example-hello", policy(1, &[50])).await;

    let mut requests: Vec<EnqueueRequest> = (0..1200)
        .map(|n| EnqueueRequest::new("hello", format!(r#"{{"name": "n{n}"}}"#)))
        .collect();
    let ids = queue.enqueue_batch(QUEUE, &requests, MAX_PAYLOAD).await?;
    assert_eq!(ids.len(), 1200);
    let queued = queue.jobs(QUEUE, JobState::Queued, None, 2000).await?;
    let queued: Vec<&str> = queued.iter().map(|job| job.id.as_str()).collect();
    let enqueued: Vec<&str> = ids.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(queued, enqueued, "ready in enqueue order");

    requests.push(EnqueueRequest::new("missing", "{}"));
    assert!(
        queue
            .enqueue_batch(QUEUE, &requests, MAX_PAYLOAD)
            .await
            .is_err()
    );
    assert_eq!(
        queue.jobs(QUEUE, JobState::Queued, None, 5000).await?.len(),
        1200
    );
    assert_consistent(&queue).await?;
    Ok(())
}

/// Bad requests are refused with a specific message and write nothing.
#[tokio::test]
async fn bad_enqueues_are_refused_without_writes() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "hello", "example-hello", policy(1, &[50])).await;

    let unknown = queue
        .enqueue(QUEUE, &EnqueueRequest::new("nope", "{}"), MAX_PAYLOAD)
        .await;
    assert!(format!("{:#}", unknown.unwrap_err()).contains("there is no task `nope`"));

    let big = EnqueueRequest::new("hello", vec![b'x'; 2048]);
    let err = queue.enqueue(QUEUE, &big, 1024).await.unwrap_err();
    assert!(format!("{err:#}").contains("over the limit"), "{err:#}");

    let hello = EnqueueRequest::new("hello", "{}");
    let bad_queue = queue.enqueue("no/slash", &hello, MAX_PAYLOAD).await;
    assert!(format!("{:#}", bad_queue.unwrap_err()).contains("queue name"));

    let stats = queue.stats(QUEUE, Duration::from_secs(60)).await?;
    assert!(
        stats.counts.iter().all(|(_, count)| *count == 0),
        "{stats:?}"
    );

    assert!(Queue::open("not a url", "default").await.is_err());
    assert!(Queue::open(&redis.url(), "bad{tenant}").await.is_err());
    Ok(())
}

/// Tenants do not see each other's tasks or jobs, even with the same names.
#[tokio::test]
async fn tenants_are_isolated() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let acme = Queue::open(&redis.url(), "acme").await?;
    let globex = Queue::open(&redis.url(), "globex").await?;
    upload(&acme, "hello", "example-hello", policy(1, &[50])).await;

    assert!(globex.tasks().await?.is_empty());
    let id = enqueue(&acme, "hello", "{}").await;
    assert!(globex.job(QUEUE, &id).await?.is_none());
    let hello = EnqueueRequest::new("hello", "{}");
    assert!(globex.enqueue(QUEUE, &hello, MAX_PAYLOAD).await.is_err());
    Ok(())
}

/// A job whose component is gone from Redis fails at once, saying so, instead of retrying
/// forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_with_a_missing_component_fails_with_the_reason() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "hello", "example-hello", policy(3, &[50])).await;
    let digest = queue.task("hello").await?.context("task")?.digest;
    let id = enqueue(&queue, "hello", r#"{"name": "Gone"}"#).await;
    redis.command(&["DEL", &format!("wr:{{default}}:component:{digest}")])?;

    let worker = InProcessWorker::start(&redis, WORKER, 4, Duration::from_secs(5))?;
    let job = wait_for(&queue, &id, JobState::Failed, Duration::from_secs(20)).await?;
    let outcome = job.outcome.context("outcome")?;
    assert_eq!(outcome["class"], "host_error");
    let message = outcome["message"].as_str().unwrap_or_default();
    assert!(message.contains("missing from Redis"), "{message}");
    assert_eq!(job.attempts.len(), 1);
    worker.stop().await?;
    assert_consistent(&queue).await
}

/// Succeeded jobs are dropped after the queue's retention period, which stats reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn succeeded_jobs_are_dropped_after_their_retention() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "hello", "example-hello", policy(1, &[50])).await;
    queue
        .set_retention(QUEUE, Some(Duration::from_millis(300)), None)
        .await?;
    let stats = queue.stats(QUEUE, Duration::from_secs(60)).await?;
    assert_eq!(stats.succeeded_retention_ms, 300);
    assert_eq!(stats.failed_retention_ms, 7 * 24 * 60 * 60 * 1000);

    let worker = InProcessWorker::start(&redis, WORKER, 4, Duration::from_secs(5))?;
    let id = enqueue(&queue, "hello", r#"{"name": "Brief"}"#).await;
    wait_for(&queue, &id, JobState::Succeeded, Duration::from_secs(20)).await?;
    // An idle worker fetches at least once a second, which applies retention.
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.job(QUEUE, &id).await?.is_some() {
        assert!(Instant::now() < deadline, "job {id} outlived its retention");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = queue.stats(QUEUE, Duration::from_secs(60)).await?;
    assert!(
        stats.counts.iter().all(|(_, count)| *count == 0),
        "{stats:?}"
    );
    assert!(stats.tasks.is_empty(), "per-task counts follow: {stats:?}");
    worker.stop().await?;
    assert_consistent(&queue).await
}

/// A worker that finds its lease gone stops the guest at once and records nothing: its only
/// slot frees up, so it can take the job again as soon as the lost lease is recovered, long
/// before the guest would have finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_stops_a_guest_whose_lease_is_lost() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "slow", "example-slow", policy(3, &[50])).await;
    let worker = InProcessWorker::start(&redis, WORKER, 1, Duration::from_millis(900))?;
    let id = enqueue(&queue, "slow", r#"{"ms": 20000}"#).await;
    let running = wait_for(&queue, &id, JobState::Running, Duration::from_secs(20)).await?;

    // Another party takes the lease over: the worker's lease `<id>|<token>` leaves the running
    // set, and a new one, with the next token, runs out shortly.
    redis.command(&[
        "EVAL",
        "local t = redis.call('HINCRBY', KEYS[1], 'token', 1) \
         local now = redis.call('TIME') \
         redis.call('ZREM', KEYS[2], ARGV[1] .. '|' .. (t - 1)) \
         redis.call('ZADD', KEYS[2], now[1] * 1000 + 900, ARGV[1] .. '|' .. t) return t",
        "2",
        &format!("wr:{{default/{QUEUE}}}:job:{id}"),
        &format!("wr:{{default/{QUEUE}}}:running"),
        &id,
    ])?;

    // Had the guest kept running, the worker's only slot would stay busy for 20 s and the
    // recovered job would wait in the ready list. Stopped, the job is leased again at once.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let job = queue.job(QUEUE, &id).await?.context("job")?;
        if job.state == JobState::Running && job.losses == 1 {
            assert!(
                job.started_at_ms > running.started_at_ms,
                "a new lease: {job:?}"
            );
            let classes: Vec<&str> = job.attempts.iter().map(class).collect();
            assert_eq!(
                classes,
                ["worker_lost"],
                "the stopped attempt recorded nothing"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job was not taken again: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(worker);
    Ok(())
}

/// The consistency check finds each kind of damage: an id with no hash, a hash in no
/// structure, a state that disagrees with its structure, and counts that disagree.
#[tokio::test]
async fn consistency_check_finds_damage() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let queue = Queue::open(&redis.url(), "default").await?;
    upload(&queue, "hello", "example-hello", policy(1, &[50])).await;
    let kept = enqueue(&queue, "hello", "{}").await;
    let orphan = enqueue(&queue, "hello", "{}").await;
    assert_consistent(&queue).await?;

    let tag = format!("wr:{{default/{QUEUE}}}");
    redis.command(&["RPUSH", &format!("{tag}:ready"), "ghost"])?;
    redis.command(&["LREM", &format!("{tag}:ready"), "0", &orphan])?;
    redis.command(&["HSET", &format!("{tag}:job:{kept}"), "state", "failed"])?;
    redis.command(&["HINCRBY", &format!("{tag}:counts"), "hello|running", "1"])?;

    let problems = queue.check_invariants(QUEUE).await?.join("\n");
    assert!(
        problems.contains("job ghost is listed in [Queued] but has no hash"),
        "{problems}"
    );
    assert!(
        problems.contains(&format!("job {orphan} is queued but in no")),
        "{problems}"
    );
    assert!(
        problems.contains(&format!("job {kept} is failed but listed")),
        "{problems}"
    );
    assert!(
        problems.contains("has 1 running jobs but it has none"),
        "{problems}"
    );
    Ok(())
}
