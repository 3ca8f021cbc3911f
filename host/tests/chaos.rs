//! Chaos and abuse scenarios from the reliability test plan (`queue-reliability.md` §6): real
//! `wasm-runner serve` processes killed with SIGKILL, or cut off from Redis by a fault proxy,
//! while they run `guest-ledger` jobs.
//!
//! The ledger guest logs the start and end of every execution, so each worker's log is an
//! external ledger of what really ran (`wasm_runner_tests::ledger`), including the executions
//! the queue never recorded. The scenarios compare that ledger with what the queue says.
//!
//! The kill storm also runs on a Redis Cluster of three masters on loopback, with queues
//! spread over them (T16), as do retries across workers.
//!
//! Each scenario prints its measured figures (`eprintln!`, shown with `--nocapture`):
//!
//! ```sh
//! cargo test -p wasm-runner --test chaos -- --nocapture
//! CHAOS_JOBS=10000 cargo test -p wasm-runner --test chaos kill9 -- --nocapture
//! cargo test -p wasm-runner --test chaos cluster -- --nocapture
//! ```

#[allow(
    dead_code,
    reason = "the helpers are shared; this file uses only some of them"
)]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};

use support::*;
use wasm_runner::queue::{DEFAULT_QUEUE, DEFAULT_TENANT, JobState, JobView};
use wasm_runner_tests::ledger::{self, Execution};
use wasm_runner_tests::proxy::{FaultProxy, Mode};
use wasm_runner_tests::{TestRedis, TestRedisCluster};

/// The guest package every scenario runs.
const GUEST: &str = "guest-ledger";
/// The name it is uploaded as.
const TASK: &str = "ledger";

/// Worker logs: warnings, the worker's own progress, and the guest's records, which the host
/// emits at debug level under `wasm_runner::guest` whatever level the guest logged them at.
const LEDGER_ENV: [(&str, &str); 1] =
    [("RUST_LOG", "warn,wasm_runner=info,wasm_runner::guest=debug")];

/// What a worker logs when it stops its guests because it cannot renew their leases.
const STOPPING_ALL: &str = "Redis unreachable; stopping all guests";

/// Held by each scenario while it runs. They load the two-core machine and their checks
/// depend on workers keeping to their lease schedule, so one must not skew another's run.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Takes [`ONE_AT_A_TIME`]; a scenario that failed while holding it poisoned nothing real.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The wall clock in ms since the epoch: the clock the worker logs' timestamps use.
fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// A small xorshift generator: the scenarios need a few random choices, and a printed seed
/// makes a failing run repeatable (`CHAOS_SEED`).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn from_env() -> anyhow::Result<Self> {
        let seed = match std::env::var("CHAOS_SEED") {
            Ok(text) => text.parse().context("CHAOS_SEED is not a number")?,
            Err(_) => now_ms() | 1,
        };
        eprintln!("CHAOS_SEED={seed}");
        Ok(Rng(seed.max(1)))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// How many jobs the kill storm drains: `CHAOS_JOBS`, or `default`.
fn jobs_from_env(default: usize) -> anyhow::Result<usize> {
    match std::env::var("CHAOS_JOBS") {
        Ok(text) => text.parse().context("CHAOS_JOBS is not a number"),
        Err(_) => Ok(default),
    }
}

/// The ledger of every worker log, killed incarnations included.
fn executions(logs: &[(String, String)]) -> anyhow::Result<Vec<Execution>> {
    ledger::parse_all(logs.iter().map(|(id, log)| (id.as_str(), log.as_str())))
}

/// Checks that every job succeeded with exactly one successful attempt on record, and that the
/// recorded success is one of the ledger's executions that ran to its end.
fn check_recorded_once(views: &[JobView], executions: &[Execution]) -> anyhow::Result<()> {
    let by_job = ledger::by_job(executions);
    for view in views {
        ensure!(
            view.state == JobState::Succeeded,
            "not succeeded: {view:#?}"
        );
        let ok: Vec<_> = view
            .attempts
            .iter()
            .filter(|record| record.outcome["class"] == "ok")
            .collect();
        ensure!(ok.len() == 1, "{} successes recorded: {view:#?}", ok.len());
        let ran = by_job.get(view.id.as_str()).map_or(&[][..], Vec::as_slice);
        ensure!(
            ran.iter().any(|execution| execution.worker == ok[0].worker
                && execution.attempt == ok[0].attempt
                && execution.end_ms.is_some()),
            "the recorded success of job {} matches no finished execution in the ledger: \
             {ran:#?}\n{view:#?}",
            view.id
        );
    }
    Ok(())
}

/// Fails listing every pair of executions of one job that ran at the same time; an execution
/// with neither an end nor a stop is taken to run until `open_until(execution)`.
fn check_no_overlap(
    executions: &[Execution],
    open_until: impl Fn(&Execution) -> u64,
) -> anyhow::Result<()> {
    let overlaps = ledger::overlaps(executions, open_until);
    ensure!(
        overlaps.is_empty(),
        "{} pair(s) of executions of one job ran at the same time: {overlaps:#?}",
        overlaps.len()
    );
    Ok(())
}

/// Checks that queue `name` holds `succeeded` succeeded jobs and nothing else.
fn check_drained(cli: &Cli, name: &str, succeeded: usize) -> anyhow::Result<()> {
    let counts = cli.counts_in(&[name])?;
    if counts.get("succeeded").copied() != Some(succeeded as u64) {
        // Say why: the failed jobs with their attempts, as `wasm-runner jobs` shows them.
        let failed = cli
            .run(&["jobs", "--queue", name, "--state", "failed", "--json"])
            .unwrap_or_default();
        bail!("not all {succeeded} jobs of queue `{name}` succeeded: {counts:?}\n{failed}");
    }
    for state in ["queued", "scheduled", "running", "failed"] {
        ensure!(
            counts.get(state).copied() == Some(0),
            "queue `{name}`, {state}: {counts:?}"
        );
    }
    Ok(())
}

/// A SIGKILL of one worker during the storm.
#[derive(Debug)]
struct Kill {
    /// The incarnation killed.
    worker: String,
    /// When, on the wall clock (ms since the epoch).
    at_ms: u64,
    /// Jobs running on the queue (all workers) just before the kill: a bound on how many of
    /// the killed worker's jobs can run again.
    running_before: u64,
}

/// Three worker slots, each restarted as a new incarnation (`w<slot>-<n>`) after a kill. The
/// logs of killed incarnations are kept for the ledger.
#[derive(Debug)]
struct Fleet<'a> {
    cli: &'a Cli,
    flags: &'a [&'a str],
    slots: Vec<Option<Worker>>,
    started: usize,
    dead: Vec<(String, String)>,
}

impl<'a> Fleet<'a> {
    fn start(cli: &'a Cli, flags: &'a [&'a str], size: usize) -> anyhow::Result<Self> {
        let mut fleet = Fleet {
            cli,
            flags,
            slots: (0..size).map(|_| None).collect(),
            started: 0,
            dead: Vec::new(),
        };
        for slot in 0..size {
            fleet.restart(slot)?;
        }
        Ok(fleet)
    }

    fn restart(&mut self, slot: usize) -> anyhow::Result<()> {
        self.started += 1;
        let id = format!("w{slot}-{}", self.started);
        self.slots[slot] = Some(Worker::start_with_env(
            self.cli,
            &id,
            self.flags,
            &LEDGER_ENV,
        )?);
        Ok(())
    }

    /// Kills slot `slot`'s worker with SIGKILL and returns its id.
    fn kill(&mut self, slot: usize) -> anyhow::Result<String> {
        let worker = self.slots[slot].take().context("the slot is empty")?;
        let id = worker.id.clone();
        let log = worker.kill_for_log()?;
        self.dead.push((id.clone(), log));
        Ok(id)
    }

    /// The logs of every incarnation, as `(worker id, log)`, and the ids of those still alive.
    fn logs(&self) -> (Vec<(String, String)>, Vec<String>) {
        let mut logs = self.dead.clone();
        let mut alive = Vec::new();
        for worker in self.slots.iter().flatten() {
            logs.push((worker.id.clone(), worker.log()));
            alive.push(worker.id.clone());
        }
        (logs, alive)
    }
}

/// The latest a job cut off by a kill may start again: the 2 s lease plus a 4 s margin for a
/// loaded machine (runs here: 2.0 s typical, 4.0 s the worst seen).
const RESTART_BOUND_MS: u64 = 6_000;

/// **T1, kill -9 storm.** Three workers drain `CHAOS_JOBS` (default 6,000: 25 to 50 s and 12
/// to 25 kills on a shared two-core machine) ledger jobs on the default queue of one Redis,
/// under the kills of [`Storm::run`], whose pass criteria it checks.
#[test]
fn kill9_storm_loses_nothing() -> anyhow::Result<()> {
    let _serial = one_at_a_time();
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    let storm = Storm {
        label: "T1 kill -9 storm",
        cli: &cli,
        queues: &[DEFAULT_QUEUE.to_owned()],
        jobs: jobs_from_env(6_000)?,
        flags: &[],
    };
    storm.run()?;
    Ok(())
}

/// **T16, kill -9 storm on a Redis Cluster.** The storm of [`Storm::run`] on a cluster of
/// three masters on loopback: `CHAOS_JOBS` (default 2,000) ledger jobs spread round robin over
/// three queues whose hash tags live on three different masters, drained by three workers
/// given `--redis cluster:...` and serving every queue of the tenant.
///
/// Pass criteria: those of the storm, for every queue; and no worker log shows a Redis Cluster
/// error (see [`cluster_errors`]): with every key of a queue under one hash tag, no script
/// touches two slots, and nothing the workers do is redirected.
#[test]
fn kill9_storm_on_a_cluster() -> anyhow::Result<()> {
    let _serial = one_at_a_time();
    let cluster = TestRedisCluster::start()?;
    let queues = cluster.queues_on_every_node(DEFAULT_TENANT)?;
    let url = cluster.url();
    let cli = Cli::for_url(url.clone());
    let storm = Storm {
        label: "T16 kill -9 storm on a 3-master Redis Cluster",
        cli: &cli,
        queues: &queues,
        jobs: jobs_from_env(2_000)?,
        flags: &["--redis", &url],
    };
    let logs = storm.run()?;

    check_no_cluster_errors(&logs)
}

/// A kill -9 storm: where its workers run and what they drain.
#[derive(Debug)]
struct Storm<'a> {
    /// Names the scenario in the printed figures.
    label: &'a str,
    cli: &'a Cli,
    /// The queues the jobs are spread over, round robin. Workers serve every queue of the
    /// tenant, and find these because an enqueue records its queue in the tenant's set.
    queues: &'a [String],
    jobs: usize,
    /// Worker flags on top of the storm's own slots and lease, e.g. `--redis`.
    flags: &'a [&'a str],
}

impl Storm<'_> {
    /// Three workers (8 slots each, lease 2 s, a job fails after 10 lost workers rather than
    /// 3) drain the storm's ledger jobs of 10 to 50 ms
    /// while, every 2 s, a random worker is killed with SIGKILL and restarted 0.5 s later,
    /// until every job is done. Returns every worker incarnation's log, as `(id, log)`.
    ///
    /// Pass criteria:
    /// - every job succeeded; none failed, none is left queued, scheduled or running, on any
    ///   of the queues;
    /// - each job has exactly one successful attempt on record, and it is an execution the
    ///   ledger saw run to its end;
    /// - the ledger holds at least one execution per job, and the extra executions (re-runs
    ///   of jobs a killed worker held) number at most the jobs running at the kills, summed;
    /// - no job ran more often than once plus its recorded worker losses: a job runs again
    ///   only after a lease was lost, and every lost lease is on record;
    /// - no two executions of one job overlap in time (a killed worker's execution counts as
    ///   running until the kill);
    /// - every job a kill interrupted started again within [`RESTART_BOUND_MS`] of the kill
    ///   (the lease plus a wide margin for a loaded machine);
    /// - every queue is consistent (`Queue::check_invariants`).
    ///
    /// Measured and printed: the drain time, and the mean and longest time from a kill until
    /// a job it interrupted started again (the plan's bound is lease + reaper + 1 s).
    fn run(&self) -> anyhow::Result<Vec<(String, String)>> {
        const WORKERS: usize = 3;
        const KILL_EVERY: Duration = Duration::from_secs(2);
        const RESTART_AFTER: Duration = Duration::from_millis(500);
        let Storm {
            label,
            cli,
            queues,
            jobs,
            ..
        } = *self;
        let names: Vec<&str> = queues.iter().map(String::as_str).collect();
        let mut rng = Rng::from_env()?;
        cli.upload(TASK, GUEST)?;
        let payloads: Vec<String> = (0..jobs)
            .map(|_| format!(r#"{{"ms": {}}}"#, rng.between(10, 50)))
            .collect();
        // Job `n` goes to queue `n % queues`: the queues get equal shares, give or take one.
        let mut ids: Vec<Vec<String>> = Vec::with_capacity(names.len());
        for (index, name) in names.iter().enumerate() {
            let share: Vec<String> = payloads
                .iter()
                .skip(index)
                .step_by(names.len())
                .cloned()
                .collect();
            ids.push(cli.enqueue_many_on(name, TASK, &share)?);
        }

        // Generous: a shared two-core machine drains 120 to 250 of these jobs a second while
        // workers are being killed; this bound only stops a run that has stalled.
        let bound = Duration::from_secs(90) + Duration::from_millis(60 * jobs as u64);
        // A kill every lease period can catch a re-run job on its next worker too: at 10,000
        // jobs, 2 jobs once lost 3 workers in a row and failed as poison (the default verdict,
        // which `poison_job_fails_after_bounded_worker_losses` checks). The storm is about
        // losing nothing, so it allows 10 losses.
        let mut flags = vec![
            "--concurrency",
            "8",
            "--lease",
            "2s",
            "--max-worker-losses",
            "10",
        ];
        flags.extend_from_slice(self.flags);
        let started = Instant::now();
        let mut fleet = Fleet::start(cli, &flags, WORKERS)?;
        let mut kills: Vec<Kill> = Vec::new();
        let mut next_kill = started + KILL_EVERY;
        let mut pending: Option<(usize, Instant)> = None;
        loop {
            let counts = cli.counts_in(&names)?;
            let done = counts.get("succeeded").copied().unwrap_or(0)
                + counts.get("failed").copied().unwrap_or(0);
            if done >= jobs as u64 {
                break;
            }
            if started.elapsed() > bound {
                bail!("the storm did not drain within {bound:?}: {counts:?}, {kills:#?}");
            }

            if let Some((slot, at)) = pending
                && Instant::now() >= at
            {
                fleet.restart(slot)?;
                pending = None;
            }

            if pending.is_none() && Instant::now() >= next_kill {
                // Sampled just before the kill: every job the victim holds is among these.
                let running = cli.counts_in(&names)?.get("running").copied();
                let slot = (rng.next() % WORKERS as u64) as usize;
                let worker = fleet.kill(slot)?;
                // Read once the process is dead and reaped: its executions ended before this.
                let at_ms = now_ms();
                kills.push(Kill {
                    worker,
                    at_ms,
                    running_before: running.unwrap_or(0),
                });
                pending = Some((slot, Instant::now() + RESTART_AFTER));
                next_kill += KILL_EVERY;
            }

            std::thread::sleep(Duration::from_millis(100));
        }
        let drain = started.elapsed();

        let mut views = Vec::with_capacity(jobs);
        for (name, ids) in names.iter().zip(&ids) {
            check_drained(cli, name, ids.len())?;
            views.extend(cli.job_views_on(name, ids)?);
        }
        let ids: Vec<&String> = ids.iter().flatten().collect();
        let (logs, alive) = fleet.logs();
        let executions = executions(&logs)?;
        check_recorded_once(&views, &executions)?;
        let by_job = ledger::by_job(&executions);
        for id in &ids {
            ensure!(by_job.contains_key(id.as_str()), "job {id} never ran");
        }
        ensure!(
            by_job.len() == ids.len(),
            "the ledger has executions of jobs never enqueued"
        );

        let extra = executions.len() - jobs;
        let bound_extra: u64 = kills.iter().map(|kill| kill.running_before).sum();
        ensure!(
            extra as u64 <= bound_extra,
            "{extra} extra executions, more than the {bound_extra} jobs running at the kills"
        );

        for view in &views {
            let lost = view
                .attempts
                .iter()
                .filter(|record| record.outcome["class"] == "worker_lost")
                .count();
            ensure!(
                lost == view.losses as usize,
                "{lost} lost attempts on record but losses = {}: {view:#?}",
                view.losses
            );
            let ran = by_job[view.id.as_str()].len();
            ensure!(
                ran <= 1 + lost,
                "job {} ran {ran} times with {lost} lost lease(s): {:#?}",
                view.id,
                by_job[view.id.as_str()]
            );
        }

        let killed_at: HashMap<&str, u64> = kills
            .iter()
            .map(|kill| (kill.worker.as_str(), kill.at_ms))
            .collect();
        // A live worker's unfinished execution would still be running: it overlaps anything
        // later.
        check_no_overlap(&executions, |execution| {
            killed_at
                .get(execution.worker.as_str())
                .copied()
                .unwrap_or(u64::MAX)
        })?;
        for execution in &executions {
            ensure!(
                execution.over_ms().is_some() || killed_at.contains_key(execution.worker.as_str()),
                "a live worker left an execution unfinished: {execution:#?}"
            );
        }

        // From each kill to the restart of every execution it cut off.
        let mut restarts: Vec<u64> = Vec::new();
        for kill in &kills {
            for (job, group) in &by_job {
                for (index, execution) in group.iter().enumerate() {
                    if execution.worker != kill.worker || execution.over_ms().is_some() {
                        continue;
                    }
                    let next = group
                        .get(index + 1)
                        .with_context(|| format!("job {job} was cut off and never ran again"))?;
                    restarts.push(next.start_ms.saturating_sub(kill.at_ms));
                }
            }
        }
        let lost_records: usize = views
            .iter()
            .flat_map(|view| &view.attempts)
            .filter(|record| record.outcome["class"] == "worker_lost")
            .count();
        let stopped = executions.iter().filter(|e| e.stopped_ms.is_some()).count();
        let max_restart = restarts.iter().max().copied().unwrap_or(0);
        let mean_restart = restarts.iter().sum::<u64>() / (restarts.len().max(1) as u64);
        eprintln!(
            "{label}: {jobs} jobs of 10-50 ms on {} queue(s), {WORKERS} workers x 8 slots, \
             lease 2 s\n  drain {:.1} s ({:.0} jobs/s), {} kills, {} worker incarnations ({} \
             alive at the end)\n  ledger executions {} = jobs + {extra} extra; bound (running \
             at kills, summed) {bound_extra}\n  executions cut off by kills {}, restarted after \
             the kill: max {} ms, mean {} ms\n  worker_lost attempt records {lost_records}; \
             guests stopped for a lost lease {stopped}",
            names.len(),
            drain.as_secs_f64(),
            jobs as f64 / drain.as_secs_f64(),
            kills.len(),
            logs.len(),
            alive.len(),
            executions.len(),
            restarts.len(),
            max_restart,
            mean_restart,
        );
        ensure!(!kills.is_empty(), "the drain ended before the first kill");
        // Orphans restart once their lease runs out and a worker's next fetch comes, about the
        // lease itself (2 s) here. The margin is wide because this machine is shared: the point
        // is that an orphan is not left to a much later sweep, not a precise figure.
        ensure!(
            max_restart <= RESTART_BOUND_MS,
            "a cut-off job restarted {max_restart} ms after its kill, past the {RESTART_BOUND_MS} \
             ms bound (lease 2 s + margin)"
        );
        for name in &names {
            cli.assert_consistent_on(name)?;
        }
        Ok(logs)
    }
}

/// **T16, retries on a Redis Cluster.** `flaky` jobs (a transient failure on attempts 1 and 2,
/// success on attempt 3), uploaded with `--intervals 200ms,400ms`, ten on each of three queues
/// whose hash tags live on three different masters, run by two workers given
/// `--redis cluster:...`, 2 slots each.
///
/// Pass criteria:
/// - every job succeeded on attempt 3, with three attempt records: two transient failures,
///   then a success, none lost;
/// - each retry started no sooner than its interval after the attempt before it ended (both
///   times are the Redis clock of the job's master);
/// - both workers ran attempts;
/// - no worker log shows a Redis Cluster error (see [`cluster_errors`]);
/// - every queue is consistent.
///
/// Printed: the drain time, attempts per worker, jobs whose attempts ran on both workers, and
/// how late each retry started beyond its interval.
#[test]
fn retries_on_a_cluster_across_workers() -> anyhow::Result<()> {
    const INTERVALS_MS: [u64; 2] = [200, 400];
    const JOBS_PER_QUEUE: usize = 10;
    let _serial = one_at_a_time();
    let cluster = TestRedisCluster::start()?;
    let queues = cluster.queues_on_every_node(DEFAULT_TENANT)?;
    let names: Vec<&str> = queues.iter().map(String::as_str).collect();
    let url = cluster.url();
    let cli = Cli::for_url(url.clone());
    // Jitter off: the default 20% could start a retry a fifth of its interval early, and the
    // check below is that no retry starts before its interval is over.
    let policy = ["--intervals", "200ms,400ms", "--jitter", "0%"];
    cli.upload_with("flaky", "example-flaky", &policy)?;

    let flags = ["--concurrency", "2", "--redis", &url];
    let workers = [
        Worker::start(&cli, "r0", &flags)?,
        Worker::start(&cli, "r1", &flags)?,
    ];
    // Both fetching before the first job exists, so neither gets a head start on the jobs.
    for worker in &workers {
        let what = format!("worker {} to heartbeat", worker.id);
        wait_for(&what, Duration::from_secs(30), || {
            Ok(heartbeat_age(&cli, &worker.id)?.map(|_| ()))
        })?;
    }

    let started = Instant::now();
    let mut ids = Vec::with_capacity(queues.len());
    for name in &names {
        let payloads = vec!["{}".to_owned(); JOBS_PER_QUEUE];
        ids.push(cli.enqueue_many_on(name, "flaky", &payloads)?);
    }
    let total = JOBS_PER_QUEUE * names.len();
    // Each job takes at least 600 ms of intervals; the bound only stops a stalled run.
    wait_for(
        "every flaky job to succeed",
        Duration::from_secs(60),
        || {
            let succeeded = cli.counts_in(&names)?.get("succeeded").copied();
            Ok((succeeded == Some(total as u64)).then_some(()))
        },
    )?;
    let drain = started.elapsed();

    let mut views = Vec::with_capacity(total);
    for (name, ids) in names.iter().zip(&ids) {
        check_drained(&cli, name, ids.len())?;
        views.extend(cli.job_views_on(name, ids)?);
    }
    let mut per_worker: BTreeMap<&str, usize> = BTreeMap::new();
    let mut on_both = 0;
    // How long after its interval each retry started, per retry.
    let mut late_ms: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for view in &views {
        ensure!(
            view.state == JobState::Succeeded && view.attempt == 3 && view.attempts.len() == 3,
            "not a success on attempt 3 after two retries: {view:#?}"
        );
        let classes: Vec<&serde_json::Value> = view
            .attempts
            .iter()
            .map(|record| &record.outcome["class"])
            .collect();
        ensure!(
            classes == ["transient", "transient", "ok"],
            "outcomes {classes:?}: {view:#?}"
        );
        for (index, record) in view.attempts.iter().enumerate() {
            ensure!(
                record.attempt as usize == index + 1,
                "attempt record {index} is of attempt {}: {view:#?}",
                record.attempt
            );
            *per_worker.entry(&record.worker).or_default() += 1;
        }
        for (retry, pair) in view.attempts.windows(2).enumerate() {
            let gap = pair[1].started_at_ms.saturating_sub(pair[0].ended_at_ms);
            ensure!(
                pair[1].started_at_ms >= pair[0].ended_at_ms + INTERVALS_MS[retry],
                "retry {} of job {} started {gap} ms after the attempt before it ended, \
                 sooner than its interval of {} ms: {view:#?}",
                retry + 1,
                view.id,
                INTERVALS_MS[retry]
            );
            late_ms[retry].push(gap - INTERVALS_MS[retry]);
        }
        let first = &view.attempts[0].worker;
        if view.attempts.iter().any(|record| &record.worker != first) {
            on_both += 1;
        }
    }
    let logs: Vec<(String, String)> = workers
        .iter()
        .map(|worker| (worker.id.clone(), worker.log()))
        .collect();
    let range = |late: &[u64]| {
        let min = late.iter().min().copied().unwrap_or(0);
        let max = late.iter().max().copied().unwrap_or(0);
        format!("{min}-{max} ms")
    };
    eprintln!(
        "T16 retries on a 3-master Redis Cluster: {total} flaky jobs on {} queues, intervals \
         {INTERVALS_MS:?} ms, 2 workers x 2 slots\n  drain {:.1} s; attempts per worker \
         {per_worker:?}; jobs run on both workers {on_both}\n  retries started after their \
         interval by: retry 1 {}, retry 2 {}",
        names.len(),
        drain.as_secs_f64(),
        range(&late_ms[0]),
        range(&late_ms[1]),
    );

    for worker in &workers {
        ensure!(
            per_worker.contains_key(worker.id.as_str()),
            "worker {} ran no attempt: {per_worker:?}",
            worker.id
        );
    }
    check_no_cluster_errors(&logs)?;
    for name in &names {
        cli.assert_consistent_on(name)?;
    }
    Ok(())
}

/// Redis Cluster's error codes: a redirection (`MOVED`, `ASK`), a script or command whose keys
/// span slots (`CROSSSLOT`), a slot in migration (`TRYAGAIN`), or a cluster that lost slots
/// (`CLUSTERDOWN`).
const CLUSTER_ERRORS: [&str; 5] = ["CROSSSLOT", "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"];

/// The lines of worker logs, as `worker: line`, that show a Redis Cluster error: any line
/// naming `CROSSSLOT`, and any failure a worker reported (`cannot fetch`, `cannot renew`,
/// `cannot record`, ...) whose error names one of [`CLUSTER_ERRORS`] or a hash slot. The
/// client follows redirections by itself, so one that shows up in a failure was not followed.
fn cluster_errors(logs: &[(String, String)]) -> Vec<String> {
    let mut found = Vec::new();
    for (worker, log) in logs {
        for line in log.lines() {
            let failure = line.contains("cannot ")
                && (line.contains("hash slot")
                    || line.contains("same slot")
                    || line
                        .split(|c: char| !c.is_ascii_alphanumeric())
                        .any(|word| CLUSTER_ERRORS.contains(&word)));
            if failure || line.contains("CROSSSLOT") {
                found.push(format!("{worker}: {line}"));
            }
        }
    }
    found
}

/// Fails listing every Redis Cluster error in the worker logs (see [`cluster_errors`]); prints
/// how many failures of any kind the workers reported, for the record.
fn check_no_cluster_errors(logs: &[(String, String)]) -> anyhow::Result<()> {
    let failures = logs
        .iter()
        .flat_map(|(_, log)| log.lines())
        .filter(|line| line.contains("cannot "))
        .count();
    let errors = cluster_errors(logs);
    eprintln!(
        "  worker log lines reporting a failure (`cannot ...`): {failures}; Redis Cluster \
         errors among them or elsewhere: {}",
        errors.len()
    );
    ensure!(
        errors.is_empty(),
        "{} Redis Cluster error(s) in the worker logs:\n{}",
        errors.len(),
        errors.join("\n")
    );
    Ok(())
}

/// **T3, freeze.** See [`partition`]: worker A's link to Redis stops carrying bytes, without a
/// reset, for three leases.
///
/// The regression test of a bug it found: a renewal sent into a silent link waited for the
/// Redis client's 5 s response timeout, and the worker decided to stop its guests only after
/// that call returned, so with a 3 s lease they ran on 1.5 s after B had started the same
/// jobs. The worker now fences on its own timer (`Worker::fence`).
#[test]
fn frozen_network_fences_the_worker() -> anyhow::Result<()> {
    partition(Mode::Freeze)
}

/// **T3, cut.** See [`partition`]: worker A's connections to Redis are reset, and new ones
/// refused, for three leases.
#[test]
fn cut_network_fences_the_worker() -> anyhow::Result<()> {
    partition(Mode::Drop)
}

/// The lease in the partition scenarios.
const PARTITION_LEASE: Duration = Duration::from_secs(3);

/// **T3, self-fencing under partition.** Worker A reaches Redis through a fault proxy, worker
/// B (and the CLI) directly; both have 4 slots and a 3 s lease. A takes four ledger jobs of
/// 8 s, longer than the lease, so the fault lands in the middle of them; B starts idle. Then the
/// proxy is switched to `fault` for three leases and back to `Pass`. B takes A's jobs over
/// once their leases expire. Finally B is stopped and four short jobs are enqueued, which A
/// alone must run.
///
/// Pass criteria:
/// - no two executions of one job overlap in time: each execution A had when the fault began
///   either ended, or was stopped (A's `lease lost; attempt abandoned` line), before B started
///   the same job;
/// - A stopped those guests before their leases could have run out: no later than one lease
///   after the fault began (the last renewal came before it);
/// - A logged `Redis unreachable; stopping all guests`;
/// - every job succeeded, with exactly one successful attempt on record that the ledger saw
///   run to its end;
/// - after the heal, A heartbeats again and runs jobs (ledger executions of A after it);
/// - the queue is consistent.
///
/// Printed: when A stopped its guests and when B took each job over (from the fault's start),
/// and how long A took to heartbeat after the heal.
fn partition(fault: Mode) -> anyhow::Result<()> {
    const SLOTS: &str = "4";
    const LONG_MS: u64 = 8_000;
    let _serial = one_at_a_time();
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    cli.upload(TASK, GUEST)?;
    let proxy = FaultProxy::start(redis.port())?;
    let proxy_url = proxy.redis_url();
    let lease = humantime::format_duration(PARTITION_LEASE).to_string();

    let a_flags = [
        "--concurrency",
        SLOTS,
        "--lease",
        &lease,
        "--redis",
        &proxy_url,
    ];
    let a = Worker::start_with_env(&cli, "A", &a_flags, &LEDGER_ENV)?;
    let long = format!(r#"{{"ms": {LONG_MS}}}"#);
    let mut ids = cli.enqueue_many(TASK, &vec![long; 4])?;
    wait_for("A to start its four jobs", Duration::from_secs(30), || {
        Ok((ledger::parse("A", &a.log())?.len() == 4).then_some(()))
    })?;
    let b_flags = ["--concurrency", SLOTS, "--lease", &lease];
    let mut b = Worker::start_with_env(&cli, "B", &b_flags, &LEDGER_ENV)?;
    // B must be fetching before the fault, so it is ready to take A's jobs over.
    wait_for("B to heartbeat", Duration::from_secs(30), || {
        Ok(heartbeat_age(&cli, "B")?.map(|_| ()))
    })?;

    let fault_ms = now_ms();
    proxy.set_mode(fault);
    std::thread::sleep(3 * PARTITION_LEASE);
    proxy.set_mode(Mode::Pass);
    let heal_ms = now_ms();
    let healed = Instant::now();

    wait_for(
        "the four long jobs to succeed",
        Duration::from_secs(60),
        || Ok((cli.count("succeeded")? == 4).then_some(())),
    )?;
    // A heartbeat younger than the time since the heal was sent after it.
    let reconnect_ms = wait_for(
        "A to heartbeat after the heal",
        Duration::from_secs(30),
        || {
            let since_heal = u64::try_from(healed.elapsed().as_millis())?;
            Ok(heartbeat_age(&cli, "A")?
                .filter(|&age| age < since_heal)
                .map(|age| since_heal - age))
        },
    )?;

    // With B gone, only A can run what comes next.
    b.signal("-TERM")?;
    let status = b.wait_exit(Duration::from_secs(20))?;
    ensure!(status.success(), "B exited with {status}");
    ids.extend(cli.enqueue_many(TASK, &vec![r#"{"ms": 200}"#.to_owned(); 4])?);
    wait_for(
        "A to run the jobs enqueued after the heal",
        Duration::from_secs(60),
        || Ok((cli.count("succeeded")? == 8).then_some(())),
    )?;

    check_drained(&cli, DEFAULT_QUEUE, ids.len())?;
    let views = cli.job_views(&ids)?;
    let a_log = a.log();
    let logs = [("A".to_owned(), a_log.clone()), ("B".to_owned(), b.log())];
    let executions = executions(&logs)?;

    // The figures first, so a failing run still reports them.
    let cut_off: Vec<&Execution> = executions
        .iter()
        .filter(|e| e.worker == "A" && e.start_ms < fault_ms)
        .filter(|e| e.over_ms().is_none_or(|over| over > fault_ms))
        .collect();
    let since_fault = |at: u64| i64::try_from(at).unwrap_or(i64::MAX) - fault_ms as i64;
    let stops: Vec<Option<i64>> = cut_off
        .iter()
        .map(|e| e.stopped_ms.map(since_fault))
        .collect();
    let takeovers: Vec<Option<&Execution>> = cut_off
        .iter()
        .map(|cut| {
            executions
                .iter()
                .find(|e| e.job_id == cut.job_id && e.worker == "B")
        })
        .collect();
    let taken_at: Vec<Option<i64>> = takeovers
        .iter()
        .map(|taken| taken.map(|e| since_fault(e.start_ms)))
        .collect();
    let stopping = ledger::times_of(&a_log, STOPPING_ALL)?;
    let after_heal = executions
        .iter()
        .filter(|e| e.worker == "A" && e.start_ms > heal_ms)
        .count();
    let mut per_worker: BTreeMap<&str, usize> = BTreeMap::new();
    for execution in &executions {
        *per_worker.entry(&execution.worker).or_default() += 1;
    }
    eprintln!(
        "T3 partition ({fault:?} for {:?}, lease {lease}), ms from the fault's start:\n  \
         A's guests stopped at {stops:?}; B started the same jobs at {taken_at:?}\n  \
         A logged `{STOPPING_ALL}` at {:?}\n  A heartbeat again {reconnect_ms} ms after the \
         heal and ran {after_heal} jobs after it; executions per worker {per_worker:?}",
        3 * PARTITION_LEASE,
        stopping
            .iter()
            .map(|&at| since_fault(at))
            .collect::<Vec<_>>(),
    );

    ensure!(
        cut_off.len() == 4,
        "A was not running its four jobs when the fault began: {cut_off:#?}"
    );
    // Neither worker was killed, so an execution with no end and no stop was never stopped.
    check_no_overlap(&executions, |_| u64::MAX)?;
    let lease_ms = i64::try_from(PARTITION_LEASE.as_millis())?;
    for (execution, stopped) in cut_off.iter().zip(&stops) {
        let stopped = stopped.with_context(|| {
            format!("A's guest was not stopped for its lost lease: {execution:#?}")
        })?;
        // The last renewal came before the fault, so the lease ran out within one lease of it.
        ensure!(
            stopped <= lease_ms,
            "A stopped a guest {stopped} ms after the fault began, when its lease of \
             {lease_ms} ms had run out: {execution:#?}"
        );
    }
    ensure!(
        takeovers.iter().all(Option::is_some),
        "B did not take every job of A over: {takeovers:#?}"
    );
    ensure!(
        stopping.iter().any(|&at| at > fault_ms),
        "A never logged `{STOPPING_ALL}`"
    );
    ensure!(after_heal > 0, "A ran nothing after the heal");
    check_recorded_once(&views, &executions)?;
    a.signal("-TERM")?;
    cli.assert_consistent()?;
    Ok(())
}

/// **T3, slow network.** One worker reaches Redis through the proxy in `Delay` mode: every
/// chunk is held 40 ms each way, so each round trip takes at least 80 ms, 40 times the usual
/// lease renewal's on loopback. It drains 300 ledger jobs of 10 ms, lease 2 s.
///
/// Pass:
/// - every job succeeded, with exactly one successful attempt on record that the ledger saw
///   run to its end, and no job ran twice (a slow link must cost time, not leases);
/// - no attempt was recorded as `worker_lost`;
/// - the queue is consistent.
///
/// Printed: the drain time and rate over the slow link.
#[test]
fn slow_network_costs_time_not_jobs() -> anyhow::Result<()> {
    const JOBS: usize = 300;
    let _serial = one_at_a_time();
    let redis = TestRedis::start()?;
    let cli = Cli::new(&redis);
    cli.upload(TASK, GUEST)?;
    let proxy = FaultProxy::start(redis.port())?;
    proxy.set_mode(Mode::Delay(Duration::from_millis(40)));
    let proxy_url = proxy.redis_url();
    let flags = ["--concurrency", "8", "--lease", "2s", "--redis", &proxy_url];
    let worker = Worker::start_with_env(&cli, "A", &flags, &LEDGER_ENV)?;

    let started = Instant::now();
    let ids = cli.enqueue_many(TASK, &vec![r#"{"ms": 10}"#.to_owned(); JOBS])?;
    wait_for(
        "the jobs to succeed over the slow link",
        Duration::from_secs(120),
        || Ok((cli.count("succeeded")? == JOBS as u64).then_some(())),
    )?;
    let took = started.elapsed();

    check_drained(&cli, DEFAULT_QUEUE, JOBS)?;
    let views = cli.job_views(&ids)?;
    let executions = executions(&[("A".to_owned(), worker.log())])?;
    let lost = views
        .iter()
        .flat_map(|view| &view.attempts)
        .filter(|attempt| attempt.outcome["class"] == "worker_lost")
        .count();
    eprintln!(
        "T3 slow network (40 ms each way): {JOBS} jobs in {} ms ({:.0} jobs/s), {} executions, \
         {lost} lost leases",
        took.as_millis(),
        JOBS as f64 / took.as_secs_f64(),
        executions.len()
    );
    ensure!(
        lost == 0,
        "{lost} attempts lost their lease over a slow link"
    );
    ensure!(
        executions.len() == JOBS,
        "{} executions for {JOBS} jobs: some ran twice",
        executions.len()
    );
    check_no_overlap(&executions, |_| u64::MAX)?;
    check_recorded_once(&views, &executions)?;
    worker.signal("-TERM")?;
    cli.assert_consistent()?;
    Ok(())
}

/// How long ago (ms) worker `id` last heartbeat on the default queue, if it did in the last
/// minute, from `stats --json`.
fn heartbeat_age(cli: &Cli, id: &str) -> anyhow::Result<Option<u64>> {
    let stats = cli.json(&["stats", "--json"])?;
    let workers = stats[0]["workers"]
        .as_array()
        .context("`stats --json` lists no workers")?;
    Ok(workers
        .iter()
        .find(|pair| pair[0] == id)
        .and_then(|pair| pair[1].as_u64()))
}

/// The log grep of the cluster scenarios finds a cross-slot failure and a redirection that
/// surfaced as a failure, and passes over failures that merely mention the tenants' running
/// slots.
#[test]
fn cluster_errors_are_found_in_worker_logs() {
    let log = "\
2026-01-01T00:00:00.000000Z  WARN wasm_runner::worker: cannot fetch from queue tenant=default \
queue=q1 error=failed to fetch: CROSSSLOT: Keys in request don't hash to the same slot
2026-01-01T00:00:01.000000Z  WARN wasm_runner::worker: cannot renew leases tenant=default \
queue=q2 error=MOVED: 1234 127.0.0.1:7001
2026-01-01T00:00:02.000000Z  WARN wasm_runner::worker: cannot give back unused slots; they \
expire with the lease tenant=default error=timed out
2026-01-01T00:00:03.000000Z  INFO wasm_runner::worker: serving queue tenant=default queue=q3";
    let found = cluster_errors(&[("w0".to_owned(), log.to_owned())]);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(found[0].starts_with("w0: ") && found[0].contains("CROSSSLOT"));
    assert!(found[1].contains("MOVED"));
}
