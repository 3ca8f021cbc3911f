//! The worker loop behind `wasm-runner serve`: fetch → instantiate → run → classify → record,
//! with leases renewed in the background and graceful shutdown.
//!
//! Delivery is at least once. A job's outcome is recorded at most once per lease (the finish
//! script checks the lease token), but a job whose worker dies or loses Redis mid-attempt runs
//! again elsewhere once the lease expires, so its side effects may happen twice.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{Notify, Semaphore};
use tracing::Instrument as _;

use crate::config::Limits;
use crate::job::JobContext;
use crate::queue::{AttemptRecord, Completion, LeasedJob, Queue};
use crate::runtime::{AbortHandle, Executor, RunReport, TaskComponent};
use crate::scheduler::{self, Decision};

/// How much of a job's log is kept with each attempt record.
const LOG_TAIL_BYTES: usize = 4 << 10;
/// The longest a worker waits between fetches when idle, so that due jobs and other workers'
/// expired leases are picked up even if no wake-up arrives.
const MAX_IDLE_WAIT: Duration = Duration::from_secs(1);
/// The shortest and longest pause after a Redis error.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The Redis URL.
    pub redis_url: String,
    /// The tenant whose jobs this worker runs.
    pub tenant: String,
    /// The queues to serve, in priority order.
    pub queues: Vec<String>,
    /// The most jobs run at once.
    pub concurrency: usize,
    /// How long a lease lasts without renewal; it is renewed every third of that.
    pub lease: Duration,
    /// How long running jobs may go on after a shutdown signal before they are released.
    pub grace: Duration,
    /// Where compiled components are cached across restarts; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// This worker's id, as recorded with each attempt.
    pub worker_id: String,
    /// If set, how long the served queues keep succeeded jobs (stored with each queue).
    pub succeeded_retention: Option<Duration>,
    /// If set, how long the served queues keep failed jobs (stored with each queue).
    pub failed_retention: Option<Duration>,
}

impl WorkerConfig {
    /// A worker for `redis_url` with the defaults of `wasm-runner serve`: tenant and queue
    /// `default`, concurrency 8, lease 30 s, grace 30 s, no compile cache, the queues' own
    /// retention, and an id from the host name and process id.
    pub fn new(redis_url: impl Into<String>) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "worker".to_owned());
        WorkerConfig {
            redis_url: redis_url.into(),
            tenant: crate::queue::DEFAULT_TENANT.to_owned(),
            queues: vec![crate::queue::DEFAULT_QUEUE.to_owned()],
            concurrency: 8,
            lease: Duration::from_secs(30),
            grace: Duration::from_secs(30),
            cache_dir: None,
            worker_id: format!("{host}-{}", std::process::id()),
            succeeded_retention: None,
            failed_retention: None,
        }
    }
}

/// A job being run: how to stop it and how to renew its lease.
#[derive(Debug)]
struct Running {
    queue: String,
    token: u64,
    abort: AbortHandle,
}

/// Shared state of one worker process.
struct Worker {
    config: WorkerConfig,
    queue: Queue,
    executor: Arc<Executor>,
    components: Mutex<HashMap<String, TaskComponent>>,
    running: Mutex<HashMap<String, Running>>,
    wake: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the maps are still valid.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs a worker until `shutdown` resolves, then lets running jobs finish within the grace
/// period, releases the rest back to their queues uncharged, and returns.
///
/// A Redis that is down at start, or goes away later, is waited for: the worker logs the
/// error and tries again with backoff capped at 5 s, so a supervisor never sees it crash-loop.
///
/// # Errors
///
/// Only for a configuration that can never work: a Redis URL or tenant name that does not
/// parse. Redis errors are never returned and never charged to a job.
pub async fn serve(
    config: WorkerConfig,
    executor: Arc<Executor>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::queue::Target::parse(&config.redis_url)?;
    crate::queue::check_name("tenant", &config.tenant).map_err(anyhow::Error::msg)?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = MIN_BACKOFF;
    let queue = loop {
        match connect_queue(&config).await {
            Ok(queue) => break queue,
            Err(err) => {
                tracing::error!(
                    error = %format!("{err:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "cannot reach Redis; waiting for it"
                );
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = &mut shutdown => return Ok(()),
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    tracing::info!(
        worker = %config.worker_id,
        tenant = %config.tenant,
        queues = ?config.queues,
        concurrency = config.concurrency,
        lease_ms = config.lease.as_millis() as u64,
        "worker started"
    );
    let worker = Arc::new(Worker {
        config,
        queue,
        executor,
        components: Mutex::new(HashMap::new()),
        running: Mutex::new(HashMap::new()),
        wake: Notify::new(),
    });
    let slots = Arc::new(Semaphore::new(worker.config.concurrency));
    let mut background = tokio::task::JoinSet::new();
    background.spawn(worker.clone().renew_leases());
    for queue in worker.config.queues.clone() {
        background.spawn(worker.clone().listen_for_wakeups(queue, slots.clone()));
    }

    let mut backoff = MIN_BACKOFF;
    loop {
        // Wait for a free slot before fetching, so a fetched job never waits for this worker.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("slots are never closed"),
            () = &mut shutdown => break,
        };
        let free = slots.available_permits() + 1;
        drop(permit);

        let wait = match worker.fetch_and_start(free, &slots).await {
            Ok((started, _)) if started > 0 => {
                backoff = MIN_BACKOFF;
                continue;
            }
            Ok((_, next_due)) => {
                backoff = MIN_BACKOFF;
                next_due.map_or(MAX_IDLE_WAIT, |due| due.min(MAX_IDLE_WAIT))
            }
            Err(err) => {
                tracing::error!(
                    error = %format!("{err:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "cannot fetch jobs; is Redis up?"
                );
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wait
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = worker.wake.notified() => {}
            () = &mut shutdown => break,
        }
    }

    tracing::info!(
        running = lock(&worker.running).len(),
        grace_ms = worker.config.grace.as_millis() as u64,
        "shutdown started"
    );
    worker.drain(&slots).await;
    background.abort_all();
    tracing::info!(worker = %worker.config.worker_id, "shutdown finished");
    Ok(())
}

/// Connects and applies the queues' settings.
async fn connect_queue(config: &WorkerConfig) -> anyhow::Result<Queue> {
    let queue = Queue::open(&config.redis_url, &config.tenant).await?;
    for name in &config.queues {
        queue
            .set_retention(name, config.succeeded_retention, config.failed_retention)
            .await?;
    }
    Ok(queue)
}

impl Worker {
    /// Fetches up to `free` jobs from the queues in order and starts them. Returns how many
    /// started and how long until the next scheduled job is due.
    async fn fetch_and_start(
        self: &Arc<Self>,
        mut free: usize,
        slots: &Arc<Semaphore>,
    ) -> anyhow::Result<(usize, Option<Duration>)> {
        let mut started = 0;
        let mut next_due: Option<Duration> = None;
        for queue in &self.config.queues {
            if free == 0 {
                break;
            }
            let fetched = self
                .queue
                .fetch(queue, &self.config.worker_id, self.config.lease, free)
                .await?;
            next_due = match (next_due, fetched.next_due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            for job in fetched.jobs {
                // The loop waited for `free` permits and only this loop takes them.
                let permit = slots
                    .clone()
                    .try_acquire_owned()
                    .context("a slot counted as free was taken")?;
                free -= 1;
                started += 1;
                let abort = AbortHandle::new();
                lock(&self.running).insert(
                    job.id.clone(),
                    Running {
                        queue: queue.clone(),
                        token: job.token,
                        abort: abort.clone(),
                    },
                );
                let worker = self.clone();
                let queue = queue.clone();
                let span = tracing::info_span!(
                    "job",
                    job_id = %job.id,
                    task = %job.task,
                    queue = %queue,
                    attempt = job.attempt,
                );
                tokio::spawn(
                    async move {
                        worker.run_job(&queue, job, abort).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
        Ok((started, next_due))
    }

    /// Runs one leased job and records its outcome.
    async fn run_job(&self, queue: &str, job: LeasedJob, abort: AbortHandle) {
        let mut unrunnable = false;
        let report = match self.component(&job.digest).await {
            Ok(component) => {
                let ctx = JobContext {
                    job_id: job.id.clone(),
                    attempt: job.attempt,
                    max_attempts: job.policy.max_attempts,
                    task_name: job.task.clone(),
                    tenant: self.config.tenant.clone(),
                };
                let limits = Limits {
                    memory_bytes: job.memory_bytes,
                    timeout: job.timeout,
                    fuel: None,
                };
                self.executor
                    .run_abortable(&component, &ctx, &job.payload, &limits, &abort)
                    .await
            }
            Err(err) => {
                // Redis trouble is worth retrying; a missing or invalid component never runs.
                unrunnable = !matches!(err, ComponentError::Redis(_));
                RunReport::host_error(err.to_string())
            }
        };
        lock(&self.running).remove(&job.id);

        let lease_lost = abort.reason().is_some_and(|reason| reason == LEASE_LOST);
        if lease_lost {
            // Another worker may hold the job now; whatever this attempt did is not recorded.
            tracing::warn!(job_id = %job.id, "lease lost; attempt abandoned");
            return;
        }
        let completion = if unrunnable {
            Completion::Fail
        } else {
            completion_for(&job, &report, abort.is_aborted())
        };
        self.record(queue, &job, &report, &completion).await;
    }

    /// Writes the outcome, retrying Redis errors until the lease would have run out: past that,
    /// another worker may own the job and the write would be refused anyway.
    async fn record(
        &self,
        queue: &str,
        job: &LeasedJob,
        report: &RunReport,
        completion: &Completion,
    ) {
        let outcome = serde_json::to_value(&report.outcome).unwrap_or_default();
        let record = AttemptRecord {
            attempt: job.attempt,
            worker: self.config.worker_id.clone(),
            started_at_ms: 0,
            ended_at_ms: 0,
            run_ms: report.elapsed.as_millis() as u64,
            outcome: outcome.clone(),
            decision: describe_completion(completion),
            log_tail: log_tail(report),
        };
        let give_up = Instant::now() + self.config.lease;
        let mut backoff = MIN_BACKOFF;
        loop {
            match self
                .queue
                .finish(queue, job, completion, &outcome, &record)
                .await
            {
                Ok(true) => {
                    tracing::info!(
                        outcome = report.outcome.name(),
                        decision = %record.decision,
                        elapsed_ms = report.elapsed.as_millis() as u64,
                        "attempt recorded"
                    );
                    return;
                }
                Ok(false) => {
                    tracing::warn!("lease lost before the outcome was recorded; discarded");
                    return;
                }
                Err(err) if Instant::now() + backoff < give_up => {
                    tracing::warn!(
                        error = %format!("{err:#}"),
                        retry_in_ms = backoff.as_millis() as u64,
                        "cannot record the outcome yet"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(err) => {
                    tracing::error!(
                        error = %format!("{err:#}"),
                        "giving up recording the outcome; the job will run again after its \
                         lease expires"
                    );
                    return;
                }
            }
        }
    }

    /// The compiled component for `digest`, from memory, the disk cache, or Redis.
    async fn component(&self, digest: &str) -> Result<TaskComponent, ComponentError> {
        if let Some(component) = lock(&self.components).get(digest) {
            return Ok(component.clone());
        }
        let wasm = match self.queue.component(digest).await {
            Ok(Some(wasm)) => wasm,
            Ok(None) => return Err(ComponentError::Missing(digest.to_owned())),
            Err(err) => return Err(ComponentError::Redis(err)),
        };
        let executor = self.executor.clone();
        let cache_dir = self.config.cache_dir.clone();
        let digest_owned = digest.to_owned();
        // Compiling takes tens of milliseconds to seconds; keep it off the async threads.
        let component = tokio::task::spawn_blocking(move || {
            executor.load_cached(&wasm, &digest_owned, cache_dir.as_deref())
        })
        .await
        .map_err(|err| ComponentError::Redis(anyhow::anyhow!("the compile thread failed: {err}")))?
        .map_err(|err| ComponentError::Invalid(digest.to_owned(), err))?;
        lock(&self.components).insert(digest.to_owned(), component.clone());
        Ok(component)
    }

    /// Renews every running job's lease every third of the lease, and stops the guests whose
    /// lease is gone. If Redis cannot be reached for most of a lease, every guest is stopped
    /// before another worker can take its job over.
    async fn renew_leases(self: Arc<Self>) {
        let interval = self.config.lease / 3;
        let mut last_ok = Instant::now();
        loop {
            tokio::time::sleep(interval).await;
            let mut by_queue: HashMap<String, Vec<(String, u64)>> = HashMap::new();
            for (id, running) in lock(&self.running).iter() {
                by_queue
                    .entry(running.queue.clone())
                    .or_default()
                    .push((id.clone(), running.token));
            }
            let mut all_ok = true;
            for queue in &self.config.queues {
                let jobs = by_queue.remove(queue).unwrap_or_default();
                match self
                    .queue
                    .renew(queue, &self.config.worker_id, self.config.lease, &jobs)
                    .await
                {
                    Ok(lost) => self.abort_jobs(&lost, LEASE_LOST),
                    Err(err) => {
                        all_ok = false;
                        tracing::warn!(error = %format!("{err:#}"), "cannot renew leases");
                    }
                }
            }
            if all_ok {
                last_ok = Instant::now();
            } else if last_ok.elapsed() + interval >= self.config.lease {
                // The next renewal would come too late: the leases may already be someone
                // else's by then. Stop the guests now rather than run a job twice at once.
                let ids: Vec<String> = lock(&self.running).keys().cloned().collect();
                if !ids.is_empty() {
                    tracing::error!(jobs = ids.len(), "Redis unreachable; stopping all guests");
                }
                self.abort_jobs(&ids, LEASE_LOST);
            }
        }
    }

    fn abort_jobs(&self, ids: &[String], reason: &str) {
        let running = lock(&self.running);
        for id in ids {
            if let Some(job) = running.get(id) {
                job.abort.abort(reason);
            }
        }
    }

    /// Pops wake-up tokens for `queue` while this worker has a free slot, and wakes the fetch
    /// loop for each. Uses a connection of its own, because the pop blocks it.
    async fn listen_for_wakeups(self: Arc<Self>, queue: String, slots: Arc<Semaphore>) {
        let mut conn = None;
        let mut backoff = MIN_BACKOFF;
        loop {
            if slots.available_permits() == 0 {
                // A busy worker leaves the tokens to idle ones.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let result = match &mut conn {
                Some(conn) => self.queue.wait_for_work(conn, &queue, MAX_IDLE_WAIT).await,
                None => match crate::queue::connect(&self.config.redis_url).await {
                    Ok(new) => {
                        conn = Some(new);
                        continue;
                    }
                    Err(err) => Err(err),
                },
            };
            match result {
                Ok(true) => self.wake.notify_one(),
                Ok(false) => {}
                Err(err) => {
                    tracing::debug!(error = %format!("{err:#}"), "wake-up listener error");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            }
            backoff = MIN_BACKOFF;
        }
    }

    /// Lets running jobs finish within the grace period, then stops the rest; they are
    /// released back to their queues without spending an attempt.
    async fn drain(&self, slots: &Arc<Semaphore>) {
        let all = self.config.concurrency as u32;
        let finished = tokio::time::timeout(self.config.grace, slots.acquire_many(all)).await;
        if finished.is_ok() {
            return;
        }
        let ids: Vec<String> = lock(&self.running).keys().cloned().collect();
        tracing::warn!(
            jobs = ids.len(),
            "grace period over; releasing running jobs"
        );
        self.abort_jobs(&ids, SHUTDOWN);
        // Each stopped job records its release before giving its slot back.
        let _ = slots.acquire_many(all).await;
    }
}

/// Why a job's component could not be had.
#[derive(Debug, thiserror::Error)]
enum ComponentError {
    /// Redis failed (or the compile thread died): worth retrying.
    #[error("cannot load the task's component: {0:#}")]
    Redis(anyhow::Error),
    /// The digest is not stored: the job can never run.
    #[error("component {0} is missing from Redis; upload the task again and requeue the job")]
    Missing(String),
    /// The stored bytes do not load: the job can never run.
    #[error("component {0} is not a valid task: {1}")]
    Invalid(String, crate::runtime::LoadError),
}

/// Abort reasons, as reported in the attempt's outcome.
const LEASE_LOST: &str = "the worker lost the job's lease";
const SHUTDOWN: &str = "the worker shut down before the attempt finished";

/// What to tell the queue about an attempt that ended in `outcome`.
fn completion_for(job: &LeasedJob, report: &RunReport, aborted: bool) -> Completion {
    if aborted {
        return Completion::Release;
    }
    match scheduler::decide(
        &job.policy,
        job.attempt,
        &report.outcome,
        rand::random::<f64>(),
    ) {
        Decision::Succeed => Completion::Succeed {
            result: report.output.clone().unwrap_or_default(),
        },
        Decision::Retry { delay, charged } => Completion::Retry { delay, charged },
        Decision::Fail { .. } => Completion::Fail,
    }
}

fn describe_completion(completion: &Completion) -> String {
    match completion {
        Completion::Succeed { .. } => "succeeded".to_owned(),
        Completion::Retry { delay, charged } => format!(
            "retry in {}{}",
            crate::config::format_duration(*delay),
            if *charged { "" } else { " (not charged)" }
        ),
        Completion::Fail => "failed".to_owned(),
        Completion::Release => "released (not charged)".to_owned(),
    }
}

/// The last bytes of the task's stderr, or of its log records when stderr is empty.
fn log_tail(report: &RunReport) -> String {
    let mut text = String::new();
    for record in &report.log.records {
        text.push_str(&format!("[{}] {}\n", record.level.as_str(), record.message));
    }
    text.push_str(&report.log.stderr);
    if text.len() <= LOG_TAIL_BYTES {
        return text;
    }
    let mut start = text.len() - LOG_TAIL_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}
