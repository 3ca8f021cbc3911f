//! Process-level abuse tests (issue #5, plan T9 in the queue-reliability research): a job
//! that takes down every worker that runs it. Real `wasm-runner serve` processes against a
//! private Redis, killed with SIGKILL; figures are printed with `eprintln!`.
//!
//! The in-process abuse tests (payload sizes, Redis out of memory, retry storm) are in
//! `tests/tests/abuse.rs`.

#[allow(
    dead_code,
    reason = "the helpers are shared; this file uses only some of them"
)]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use redis::Commands as _;

use support::*;
use wasm_runner::queue::{JobState, MAX_WORKER_LOSSES};
use wasm_runner_tests::TestRedis;

/// Worker flags: a short lease, so a killed worker's jobs come back within about a second.
const FLAGS: [&str; 4] = ["--concurrency", "4", "--lease", "1s"];
/// The worker's own events at info, and the guests' records at debug: the worker logs those
/// inside the `job` span, with the job id, so a guest's first record marks its start.
const RUST_LOG: &str = "warn,wasm_runner=info,wasm_runner::guest=debug";
/// The poison job is `slow` asked to sleep far longer than the test waits: it is still
/// running whenever its worker is killed.
const POISON_PAYLOAD: &str = r#"{"ms": 20000}"#;

/// Whether a worker's log shows it started the poison job: `slow` logs `sleeping` first.
fn started(log: &str, poison: &str) -> bool {
    log.lines()
        .any(|line| line.contains(poison) && line.contains("sleeping"))
}

fn start_worker(cli: &Cli, n: usize) -> anyhow::Result<Worker> {
    Worker::start_with_env(cli, &format!("w{n}"), &FLAGS, &[("RUST_LOG", RUST_LOG)])
}

/// The Redis server's clock, in ms since the epoch: the clock attempt records use.
fn redis_now_ms(conn: &mut redis::Connection) -> anyhow::Result<u64> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(conn)?;
    Ok(secs * 1000 + micros / 1000)
}

/// T9. A poison job, one whose execution brings its worker down, mixed with 200 `hello`
/// jobs on three worker processes (4 slots, 1 s lease). The sandbox cannot crash the host, so
/// the crash is the test's doing: whenever a worker's log shows the poison job started, that
/// worker is SIGKILLed and a fresh one started in its place, as a supervisor would.
///
/// Pass: the poison job ends `failed` with outcome class `worker_lost` after exactly
/// `MAX_WORKER_LOSSES` (3) starts, each recorded as a `worker_lost` attempt of the worker that
/// was killed, in kill order, none charged as an attempt; so it crashes exactly 3 workers and
/// no worker starts it again; each loss is recorded after its kill; all 200 `hello` jobs
/// succeed with exactly one `ok` record each, and any lost attempt of theirs belongs to a
/// killed worker; nothing is left queued, scheduled or running, and the queue is consistent.
#[test]
fn poison_job_fails_after_bounded_worker_losses() -> anyhow::Result<()> {
    const NORMAL_JOBS: usize = 200;
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    cli.upload("hello", "example-hello")?;
    cli.upload("poison", "example-slow")?;
    // The poison job first, so the first kill falls among running normal jobs.
    let poison = cli.enqueue("poison", POISON_PAYLOAD)?;
    let names: Vec<String> = (0..NORMAL_JOBS)
        .map(|i| format!(r#"{{"name": "n{i}"}}"#))
        .collect();
    let normal = cli.enqueue_many("hello", &names)?;
    // The poison job's state is polled in Redis itself: a `job` process every 10 ms would
    // load the two cores the workers share.
    let mut conn = redis::Client::open(redis.url())?.get_connection()?;
    let poison_key = format!("wr:{{default/default}}:job:{poison}");

    let begun = Instant::now();
    let mut live = (1..=3)
        .map(|n| start_worker(&cli, n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut next_worker = live.len() + 1;
    // (worker id, Redis time of the kill in ms)
    let mut kills: Vec<(String, u64)> = Vec::new();
    let deadline = begun + Duration::from_secs(60);
    loop {
        let state: Option<String> = conn.hget(&poison_key, "state")?;
        if state.as_deref() == Some("failed") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the poison job is still {state:?} after 60 s and {} kills",
            kills.len()
        );
        if let Some(index) = live.iter().position(|w| started(&w.log(), &poison)) {
            let worker = live.remove(index);
            let id = worker.id.clone();
            worker.kill_for_log()?;
            kills.push((id, redis_now_ms(&mut conn)?));
            live.push(start_worker(&cli, next_worker)?);
            next_worker += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "poison job failed {} ms after the workers started, after {} kills",
        begun.elapsed().as_millis(),
        kills.len()
    );

    wait_for(
        "the normal jobs to succeed",
        Duration::from_secs(30),
        || Ok((cli.count("succeeded")? == NORMAL_JOBS as u64).then_some(())),
    )?;
    // Two leases more: time enough for any worker to start the failed job again if the
    // queue still offered it.
    std::thread::sleep(Duration::from_secs(2));
    for worker in &live {
        assert!(
            !started(&worker.log(), &poison),
            "worker {} started the poison job after it failed",
            worker.id
        );
    }

    let job = cli.job(&poison)?;
    assert_eq!(kills.len(), MAX_WORKER_LOSSES as usize, "{job:#}");
    assert_eq!(job["state"], "failed", "{job:#}");
    assert_eq!(job["outcome"]["class"], "worker_lost", "{job:#}");
    assert_eq!(job["losses"], MAX_WORKER_LOSSES, "{job:#}");
    assert_eq!(job["attempt"], 0, "losses are not charged: {job:#}");
    let records = attempts(&job);
    assert_eq!(records.len(), kills.len(), "one record per start: {job:#}");
    let mut previous_loss = None;
    for (record, (killed, killed_at)) in records.iter().zip(&kills) {
        assert_eq!(record["outcome"]["class"], "worker_lost", "{job:#}");
        assert_eq!(record["worker"], killed.as_str(), "{job:#}");
        let start = record["started_at_ms"].as_u64().context("no start")?;
        let lost = record["ended_at_ms"].as_u64().context("no end")?;
        assert!(lost >= *killed_at, "loss recorded before the kill: {job:#}");
        let since_loss = previous_loss.map_or("first start".to_owned(), |previous| {
            format!(
                "{} ms after the previous loss was recorded",
                start - previous
            )
        });
        eprintln!(
            "poison start on {killed}: {since_loss}; killed {} ms after its lease; loss \
             recorded {} ms after the kill",
            killed_at.saturating_sub(start),
            lost - killed_at,
        );
        previous_loss = Some(lost);
    }

    let killed: BTreeSet<&str> = kills.iter().map(|(id, _)| id.as_str()).collect();
    let mut lost_by_worker: BTreeMap<String, usize> = BTreeMap::new();
    for view in cli.job_views(&normal)? {
        assert_eq!(view.state, JobState::Succeeded, "{view:?}");
        let classes: Vec<&str> = view
            .attempts
            .iter()
            .map(|record| record.outcome["class"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(classes.last(), Some(&"ok"), "{view:?}");
        assert_eq!(
            classes.iter().filter(|class| **class == "ok").count(),
            1,
            "{view:?}"
        );
        for record in &view.attempts[..view.attempts.len() - 1] {
            assert_eq!(record.outcome["class"], "worker_lost", "{view:?}");
            assert!(
                killed.contains(record.worker.as_str()),
                "a normal job lost a worker that was not killed: {view:?}"
            );
            *lost_by_worker.entry(record.worker.clone()).or_default() += 1;
        }
    }
    eprintln!("normal jobs re-run after a kill, by killed worker: {lost_by_worker:?}");

    let counts = cli.counts()?;
    for (state, expected) in [
        ("queued", 0),
        ("scheduled", 0),
        ("running", 0),
        ("failed", 1),
        ("succeeded", NORMAL_JOBS as u64),
    ] {
        assert_eq!(counts[state], expected, "{state}: {counts:?}");
    }
    cli.assert_consistent()?;
    Ok(())
}
