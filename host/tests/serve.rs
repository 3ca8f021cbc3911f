//! End-to-end tests of `wasm-runner serve` and the queue commands: real worker processes
//! against a private Redis, killed, stopped with SIGTERM and cut off from Redis, with every
//! check made through the CLI (`job --json`, `jobs --json`, `stats --json`).

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

use support::*;
use wasm_runner::commands::{EXIT_HOST, EXIT_USAGE};
use wasm_runner_tests::{TestRedis, guest};

/// Jobs leased by a worker that is SIGKILLed are taken over once their lease expires and
/// finished by the other worker, once each, without charging the lost attempt.
#[test]
fn killed_worker_jobs_are_finished_by_another() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    cli.upload("slow", "example-slow")?;
    let ids = (0..6)
        .map(|_| cli.enqueue("slow", r#"{"ms": 1500}"#))
        .collect::<anyhow::Result<BTreeSet<_>>>()?;
    let flags = ["--concurrency", "2", "--lease", "1s"];

    let mut doomed = Worker::start(&cli, "doomed", &flags)?;
    // Only `doomed` serves so far, so every running job is one of its own. Polled through
    // `stats`: `jobs` fails while no job is running (see `jobs_of_an_empty_state_is_empty`).
    wait_for(
        "the first worker to run two jobs",
        Duration::from_secs(20),
        || Ok((cli.count("running")? == 2).then_some(())),
    )?;
    let held = cli.ids("running")?;
    let _survivor = Worker::start(&cli, "survivor", &flags)?;
    doomed.kill()?;

    wait_for("every job to succeed", Duration::from_secs(30), || {
        Ok((cli.count("succeeded")? == ids.len() as u64).then_some(()))
    })?;
    assert_eq!(cli.ids("succeeded")?, ids);
    let mut lost = 0;
    for id in &ids {
        let job = cli.job(id)?;
        assert_eq!(job["state"], "succeeded", "{job:#}");
        assert_eq!(count_class(&job, "ok"), 1, "one recorded success: {job:#}");
        assert_eq!(job["attempt"], 1, "lost attempts are not charged: {job:#}");
        let by_doomed: Vec<&Value> = attempts(&job)
            .iter()
            .filter(|record| record["worker"] == "doomed")
            .collect();
        let finished_by_doomed = by_doomed.iter().any(|r| r["outcome"]["class"] == "ok");
        if held.contains(id) && !finished_by_doomed {
            // It was running on `doomed` when it died, so its lease ran out.
            lost += 1;
            assert_eq!(job["losses"], 1, "{job:#}");
            assert!(
                by_doomed
                    .iter()
                    .any(|r| r["outcome"]["class"] == "worker_lost"),
                "the lost attempt is on record: {job:#}"
            );
            let last = attempts(&job).last().context("no attempts")?;
            assert_eq!(last["worker"], "survivor", "{job:#}");
            assert_eq!(last["outcome"]["class"], "ok", "{job:#}");
        }
    }
    // Both held jobs need 1.5 s and the kill follows the check within milliseconds; a machine
    // slow enough to let them finish first would leave nothing to recover, not fail the test.
    if lost == 0 {
        eprintln!("note: the killed worker finished its jobs before the kill");
    }
    eprintln!("{lost} job(s) taken over from the killed worker");
    cli.assert_consistent()?;
    Ok(())
}

/// A worker that stalls past its lease (SIGSTOP, as in a long GC pause or a frozen VM) loses
/// its job to another worker, which finishes it. When the stalled worker resumes, its late
/// result is refused and changes nothing, and it still shuts down cleanly.
#[test]
fn stalled_worker_is_fenced_and_its_jobs_finished_by_another() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    cli.upload("slow", "example-slow")?;
    let flags = ["--concurrency", "1", "--lease", "1s"];
    let mut stalled = Worker::start(&cli, "stalled", &flags)?;
    let id = cli.enqueue("slow", r#"{"ms": 1500}"#)?;
    // `job --json` does not name the worker; `stalled` is the only one serving so far.
    wait_for("the job to run", Duration::from_secs(20), || {
        Ok((cli.job(&id)?["state"] == "running").then_some(()))
    })?;

    stalled.signal("-STOP")?;
    let job = cli.job(&id)?;
    assert_eq!(job["state"], "running", "finished before the stop: {job:#}");
    let mut other = Worker::start(&cli, "other", &flags)?;
    let job = wait_for("the job to succeed", Duration::from_secs(20), || {
        let job = cli.job(&id)?;
        Ok((job["state"] == "succeeded").then_some(job))
    })?;
    assert_eq!(job["losses"], 1, "{job:#}");
    assert_eq!(
        job["attempt"], 1,
        "the lost attempt is not charged: {job:#}"
    );
    let records = attempts(&job);
    assert_eq!(records.len(), 2, "{job:#}");
    let (lost, ok) = (&records[0], &records[1]);
    assert_eq!(lost["worker"], "stalled", "{job:#}");
    assert_eq!(lost["outcome"]["class"], "worker_lost", "{job:#}");
    assert_eq!(ok["worker"], "other", "{job:#}");
    assert_eq!(ok["outcome"]["class"], "ok", "{job:#}");
    let lost_at = lost["ended_at_ms"].as_u64().context("no end time")?;
    let taken_at = ok["started_at_ms"].as_u64().context("no start time")?;
    assert!(
        taken_at >= lost_at,
        "taken over before the lease ran out: {job:#}"
    );

    // On waking, the stalled worker either learns from a renewal that the lease is gone and
    // abandons the attempt, or finishes the guest first and has its outcome refused. Both log
    // "lease lost", and neither may write anything.
    stalled.signal("-CONT")?;
    wait_for(
        "the resumed worker to notice its lease is gone",
        Duration::from_secs(10),
        || Ok(stalled.log().contains("lease lost").then_some(())),
    )?;
    for worker in [&mut stalled, &mut other] {
        worker.signal("-TERM")?;
        let status = worker.wait_exit(Duration::from_secs(10))?;
        assert_eq!(status.code(), Some(0), "worker {}: {status}", worker.id);
    }
    assert_eq!(cli.job(&id)?, job, "the late result changed the job");
    cli.assert_consistent()?;
    Ok(())
}

/// Two workers sharing a queue of 200 jobs run each one and record exactly one success for it.
#[test]
fn two_workers_record_each_outcome_once() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    cli.upload("hello", "example-hello")?;
    let _one = Worker::start(&cli, "one", &["--concurrency", "4"])?;
    let _two = Worker::start(&cli, "two", &["--concurrency", "4"])?;

    // Enqueued while both workers are already fetching, so they race for every job.
    let ids = (0..200)
        .map(|i| cli.enqueue("hello", &format!(r#"{{"name": "n{i}"}}"#)))
        .collect::<anyhow::Result<BTreeSet<_>>>()?;
    assert_eq!(ids.len(), 200, "every enqueue made a new job");
    wait_for("200 jobs to succeed", Duration::from_secs(30), || {
        Ok((cli.count("succeeded")? == 200).then_some(()))
    })?;

    let counts = cli.counts()?;
    for state in ["queued", "scheduled", "running", "failed"] {
        assert_eq!(counts[state], 0, "{state}: {counts:?}");
    }
    assert_eq!(cli.ids("succeeded")?, ids);
    let mut by_worker: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let job = cli.job(id)?;
        let records = attempts(&job);
        assert_eq!(records.len(), 1, "one attempt record: {job:#}");
        assert_eq!(records[0]["outcome"]["class"], "ok", "{job:#}");
        assert_eq!(records[0]["decision"], "succeeded", "{job:#}");
        assert_eq!(job["attempt"], 1, "{job:#}");
        let worker = records[0]["worker"].as_str().unwrap_or_default();
        *by_worker.entry(worker.to_owned()).or_default() += 1;
    }
    eprintln!("jobs per worker: {by_worker:?}");
    cli.assert_consistent()?;
    Ok(())
}

/// SIGTERM lets a running job finish within the grace period, then the worker exits 0.
#[test]
fn sigterm_lets_a_running_job_finish() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    cli.upload("slow", "example-slow")?;
    let mut worker = Worker::start(&cli, "w", &["--grace", "10s", "--lease", "1s"])?;
    let id = cli.enqueue("slow", r#"{"ms": 1500}"#)?;
    wait_for("the job to run", Duration::from_secs(20), || {
        Ok((cli.job(&id)?["state"] == "running").then_some(()))
    })?;

    worker.signal("-TERM")?;
    let status = worker.wait_exit(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(0), "{status}");
    let job = cli.job(&id)?;
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(job["attempt"], 1, "{job:#}");
    assert_eq!(attempts(&job).len(), 1, "{job:#}");
    assert_eq!(count_class(&job, "ok"), 1, "{job:#}");
    cli.assert_consistent()?;
    Ok(())
}

/// A job still running when the grace period ends is stopped and released back to the queue
/// without spending an attempt, and the next worker runs it as attempt 1.
#[test]
fn sigterm_past_the_grace_releases_the_job_uncharged() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    cli.upload("slow", "example-slow")?;
    let mut first = Worker::start(&cli, "first", &["--grace", "200ms", "--lease", "1s"])?;
    let id = cli.enqueue("slow", r#"{"ms": 5000}"#)?;
    wait_for("the job to run", Duration::from_secs(20), || {
        Ok((cli.job(&id)?["state"] == "running").then_some(()))
    })?;

    let signalled = Instant::now();
    first.signal("-TERM")?;
    let status = first.wait_exit(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "exited {:?} after SIGTERM, long after a 200ms grace",
        signalled.elapsed()
    );
    let job = cli.job(&id)?;
    assert_eq!(job["state"], "queued", "{job:#}");
    assert_eq!(job["attempt"], 0, "the release is not charged: {job:#}");
    assert_eq!(job["losses"], 0, "{job:#}");
    let records = attempts(&job);
    assert_eq!(records.len(), 1, "{job:#}");
    let decision = records[0]["decision"].as_str().unwrap_or_default();
    assert!(decision.contains("released"), "{job:#}");

    let _second = Worker::start(&cli, "second", &["--lease", "1s"])?;
    let job = wait_for("the job to succeed", Duration::from_secs(20), || {
        let job = cli.job(&id)?;
        Ok((job["state"] == "succeeded").then_some(job))
    })?;
    assert_eq!(job["attempt"], 1, "{job:#}");
    let last = attempts(&job).last().context("no attempts")?;
    assert_eq!(last["attempt"], 1, "{job:#}");
    assert_eq!(last["worker"], "second", "{job:#}");
    assert_eq!(last["outcome"]["class"], "ok", "{job:#}");
    cli.assert_consistent()?;
    Ok(())
}

/// A worker rides out a Redis crash and restart: it neither exits nor stops taking jobs, and
/// the jobs acknowledged before the crash are still there afterwards.
#[test]
fn worker_survives_redis_restart() -> anyhow::Result<()> {
    let mut redis = TestRedis::start_with_aof()?;
    let cli = Cli::new(&redis);
    cli.upload("hello", "example-hello")?;
    let mut worker = Worker::start(&cli, "w", &["--lease", "1s"])?;
    for i in 0..20 {
        cli.enqueue("hello", &format!(r#"{{"name": "before {i}"}}"#))?;
    }
    wait_for("20 jobs to succeed", Duration::from_secs(20), || {
        Ok((cli.count("succeeded")? == 20).then_some(()))
    })?;

    redis.kill();
    // Wait until the worker has seen Redis go, so the restart is one it has to recover from.
    wait_for(
        "the worker to notice Redis is down",
        Duration::from_secs(10),
        || Ok(worker.log().contains("cannot fetch jobs").then_some(())),
    )?;
    redis.restart()?;
    for i in 0..20 {
        cli.enqueue("hello", &format!(r#"{{"name": "after {i}"}}"#))?;
    }
    wait_for("40 jobs to succeed", Duration::from_secs(30), || {
        Ok((cli.count("succeeded")? == 40).then_some(()))
    })?;
    assert!(worker.is_alive()?, "the worker exited");
    let counts = cli.counts()?;
    for state in ["queued", "scheduled", "running", "failed"] {
        assert_eq!(counts[state], 0, "{state}: {counts:?}");
    }
    // With the append-only file nothing was lost, so no data-loss alarm may be raised.
    assert!(
        !worker.log().contains(DATA_LOSS),
        "false alarm:\n{}",
        worker.log()
    );
    cli.assert_consistent()?;
    Ok(())
}

/// What a worker logs when Redis comes back without its data.
const DATA_LOSS: &str = "REDIS LOST ITS DATA";

/// Redis restarted without persistence comes back empty; the queues then look merely idle.
/// Pass: the worker says loudly that data was lost within 5 s of Redis being back (it checks
/// every second), and keeps serving what is enqueued afterwards.
#[test]
fn worker_reports_data_loss_when_redis_restarts_empty() -> anyhow::Result<()> {
    let mut redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    cli.upload("hello", "example-hello")?;
    let mut worker = Worker::start(&cli, "w", &["--lease", "1s"])?;
    let id = cli.enqueue("hello", r#"{"name": "before"}"#)?;
    wait_for("the job to succeed", Duration::from_secs(20), || {
        Ok((cli.job(&id)?["state"] == "succeeded").then_some(()))
    })?;
    assert!(!worker.log().contains(DATA_LOSS), "alarm before any loss");

    redis.kill();
    redis.restart()?;
    let back = Instant::now();
    wait_for(
        "the worker to report the loss",
        Duration::from_secs(5),
        || Ok(worker.log().contains(DATA_LOSS).then_some(())),
    )?;
    eprintln!(
        "data loss reported {} ms after Redis was back",
        back.elapsed().as_millis()
    );

    // The task is gone with everything else; once uploaded again, work goes on.
    cli.upload("hello", "example-hello")?;
    let id = cli.enqueue("hello", r#"{"name": "after"}"#)?;
    wait_for("the new job to succeed", Duration::from_secs(20), || {
        Ok((cli.job(&id)?["state"] == "succeeded").then_some(()))
    })?;
    assert!(worker.is_alive()?, "the worker exited");
    Ok(())
}

/// A worker started while Redis is down waits for it instead of exiting, then serves jobs.
#[test]
fn worker_started_before_redis_waits_for_it() -> anyhow::Result<()> {
    let mut redis = TestRedis::start_with_aof()?;
    let cli = Cli::new(&redis);
    cli.upload("hello", "example-hello")?;
    redis.kill();

    let mut worker = Worker::start(&cli, "early", &["--lease", "1s"])?;
    wait_for(
        "the worker to report Redis down",
        Duration::from_secs(15),
        || Ok(worker.log().contains("cannot reach Redis").then_some(())),
    )?;
    assert!(worker.is_alive()?, "the worker exited instead of waiting");

    redis.restart()?;
    cli.enqueue("hello", r#"{"name": "late"}"#)?;
    wait_for("the job to succeed", Duration::from_secs(30), || {
        Ok((cli.count("succeeded")? == 1).then_some(()))
    })?;
    Ok(())
}

/// Listing a state that holds no job prints an empty list.
#[test]
fn jobs_of_an_empty_state_is_empty() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    for state in ["queued", "scheduled", "running", "succeeded", "failed"] {
        assert_eq!(cli.ids(state)?, BTreeSet::new(), "{state}");
    }
    Ok(())
}

/// Bad input to the queue commands is refused with a usage error that says what is wrong, an
/// unreachable Redis with a host error, and nothing is written for a refused request.
/// `enqueue --batch` adds one job per non-blank line, across several script calls and
/// pipelines, and prints their ids in order; a bad line stops it with the line's number and
/// how many jobs went in before it, and nothing after it is added.
#[test]
fn enqueue_batch_adds_one_job_per_line() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    cli.upload("hello", "example-hello")?;
    let dir = tempfile::tempdir()?;

    // 2,345 jobs: more than one 1,000-line chunk, and chunks that are not whole script calls.
    let jobs = 2345;
    let mut lines: Vec<String> = (0..jobs)
        .map(|n| format!(r#"{{"name": "n{n}"}}"#))
        .collect();
    lines.insert(7, "   ".to_owned());
    let good = dir.path().join("good.jsonl");
    std::fs::write(&good, lines.join("\n"))?;
    let out = cli.run(&[
        "enqueue",
        "hello",
        "--batch",
        good.to_str().context("path")?,
    ])?;
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), jobs, "one id per job");
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        jobs,
        "ids are distinct"
    );
    assert_eq!(cli.count("queued")?, jobs as u64);
    let last = cli.job(ids[jobs - 1])?;
    assert_eq!(last["state"], "queued", "{last:#}");

    // Line 1,502 is not JSON: the first chunk of 1,000 went in, the second did not.
    let mut lines: Vec<String> = (0..2000).map(|n| format!("{n}")).collect();
    lines[1501] = "{not json".to_owned();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n"))?;
    assert_refused(
        &cli,
        &["enqueue", "hello", "--batch", bad.to_str().context("path")?],
        EXIT_USAGE,
        "line 1502 of",
    )?;
    assert_refused(
        &cli,
        &["enqueue", "hello", "--batch", bad.to_str().context("path")?],
        EXIT_USAGE,
        "1000 jobs before it were enqueued",
    )?;
    // Two refused runs, each after its first chunk of 1,000.
    assert_eq!(cli.count("queued")?, jobs as u64 + 2000);
    cli.assert_consistent()
}

#[test]
fn queue_commands_reject_bad_input() -> anyhow::Result<()> {
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    cli.upload("hello", "example-hello")?;
    let dir = tempfile::tempdir()?;
    let text = dir.path().join("notes.wasm");
    std::fs::write(&text, "just some text")?;
    let text = text.to_str().context("temp path is not UTF-8")?;
    let hello = guest("example-hello");
    let hello = hello.to_str().context("guest path is not UTF-8")?;
    let big = format!(r#"{{"name": "{}"}}"#, "a".repeat(2048));

    assert_refused(&cli, &["enqueue", "nope"], EXIT_USAGE, "no task `nope`")?;
    assert_refused(
        &cli,
        &["enqueue", "hello", "--payload", "{bad"],
        EXIT_USAGE,
        "not valid JSON",
    )?;
    assert_refused(
        &cli,
        &[
            "enqueue",
            "hello",
            "--payload",
            &big,
            "--max-payload",
            "1KiB",
        ],
        EXIT_USAGE,
        "over the limit",
    )?;
    assert_refused(
        &cli,
        &["enqueue", "hello", "--intervals", ""],
        EXIT_USAGE,
        "empty",
    )?;
    assert_refused(
        &cli,
        &["upload", text, "--name", "notes"],
        EXIT_USAGE,
        "not WebAssembly",
    )?;
    assert_refused(
        &cli,
        &["upload", hello, "--name", "hello", "--max-attempts", "0"],
        EXIT_USAGE,
        "max attempts 0 is out of range",
    )?;
    assert_refused(
        &cli,
        &["serve", "--max-worker-losses", "0"],
        EXIT_USAGE,
        "max worker losses 0 is out of range",
    )?;
    assert_refused(
        &cli,
        &["job", "01a23c3c-0000-7000-8000-000000000000"],
        EXIT_USAGE,
        "there is no job",
    )?;
    assert_refused(
        &cli,
        &["requeue", "01a23c3c-0000-7000-8000-000000000000"],
        EXIT_USAGE,
        "not in the failed set",
    )?;

    let output = cli.output(&["tasks", "--redis", "not-a-url"])?;
    assert_eq!(
        output.status.code(),
        Some(i32::from(EXIT_USAGE)),
        "{}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("`not-a-url` is not a Redis URL"),
        "{}",
        stderr(&output)
    );
    let started = Instant::now();
    assert_refused(
        &cli,
        &["tasks", "--redis", "redis://127.0.0.1:1"],
        EXIT_HOST,
        "failed to connect to Redis",
    )?;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up on an unreachable Redis only after {:?}",
        started.elapsed()
    );

    let counts = cli.counts()?;
    assert!(
        counts.values().all(|&n| n == 0),
        "nothing enqueued: {counts:?}"
    );
    let tasks = cli.json(&["tasks", "--all-versions", "--json"])?;
    let tasks = tasks.as_array().context("`tasks --json` is not an array")?;
    assert_eq!(tasks.len(), 1, "only the first upload is stored: {tasks:?}");
    Ok(())
}
