//! The worker loop behind `wasm-runner serve`: fetch → instantiate → run → classify → record,
//! with leases renewed in the background and graceful shutdown.
//!
//! Delivery is at least once. A job's outcome is recorded at most once per lease (the finish
//! script checks the lease token), but a job whose worker dies or loses Redis mid-attempt runs
//! again elsewhere once the lease expires, so its side effects may happen twice.

mod finisher;
mod served;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{Notify, OnceCell, Semaphore};
use tracing::Instrument as _;

use crate::config::Limits;
use crate::job::JobContext;
use crate::queue::{
    AttemptRecord, Completion, Conn, DEFAULT_QUEUE, DEFAULT_TENANT, Finished, LeasedJob, Queue,
    QueueKeys, Refusal, Registry,
};
use crate::runtime::{AbortHandle, Executor, RunReport, TaskComponent};
use crate::scheduler::{self, Decision};
use finisher::Finisher;
use served::Served;

/// How much of a job's log is kept with each attempt record.
const LOG_TAIL_BYTES: usize = 4 << 10;
/// The longest a worker waits between fetches when idle, so that due jobs and other workers'
/// expired leases are picked up even if no wake-up arrives.
const MAX_IDLE_WAIT: Duration = Duration::from_secs(1);
/// The shortest and longest pause after a Redis error.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the served tenants, queues and quotas are read again.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How long one blocking wait for wake-ups and cancels lasts.
const LISTEN_WAIT: Duration = Duration::from_millis(500);
/// The same while every slot is busy, when the wait is for cancels only.
const DEAF_LISTEN_WAIT: Duration = Duration::from_millis(50);
/// How long a worker leaves a tenant whose running-jobs cap is full before asking again
/// (sooner when one of the tenant's jobs on this worker ends).
const CAPPED_RETRY: Duration = Duration::from_millis(50);
/// How often the fence checks the time since the last successful renewal.
const FENCE_CHECK: Duration = Duration::from_millis(50);
/// How often a fetch also beats the worker's heartbeat and applies the queue's retention.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// The default most outcomes per finish call: large enough to carry a busy worker's outcomes
/// in a handful of calls per millisecond, small enough that one call is quick for Redis.
pub const DEFAULT_FINISH_BATCH: usize = 128;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The Redis URL.
    pub redis_url: String,
    /// The tenants whose jobs this worker runs; `None` serves every tenant in the registry
    /// and the default tenant, found anew every second.
    pub tenants: Option<Vec<String>>,
    /// The queues to serve of each tenant; `None` serves all of each tenant's queues, found
    /// anew every second.
    pub queues: Option<Vec<String>>,
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
    /// The most outcomes recorded by one finish call. Outcomes that end while a call is in
    /// flight share the next one, up to this many.
    pub finish_batch: usize,
    /// After how many lost workers (leases that ran out) a job fails as `worker_lost` instead
    /// of running again, so a job that kills its worker cannot take the fleet down.
    pub max_worker_losses: u32,
}

impl WorkerConfig {
    /// A worker for `redis_url` with the defaults of `wasm-runner serve`: every tenant and
    /// every queue, concurrency 8, lease 30 s, grace 30 s, no compile cache, the queues' own
    /// retention, and an id from the host name and process id.
    pub fn new(redis_url: impl Into<String>) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_else(|_| "worker".to_owned());
        WorkerConfig {
            redis_url: redis_url.into(),
            tenants: None,
            queues: None,
            concurrency: 8,
            lease: Duration::from_secs(30),
            grace: Duration::from_secs(30),
            cache_dir: None,
            worker_id: format!("{host}-{}", std::process::id()),
            succeeded_retention: None,
            failed_retention: None,
            finish_batch: DEFAULT_FINISH_BATCH,
            max_worker_losses: crate::queue::MAX_WORKER_LOSSES,
        }
    }
}

/// A job being run: whose it is, how to stop it, and how to renew its lease and slot.
#[derive(Debug)]
struct Running {
    tenant: Queue,
    queue: String,
    token: u64,
    abort: AbortHandle,
    /// The tenant's running-jobs slot it holds, when the tenant has a cap.
    slot: Option<String>,
}

/// One served queue's handle and the (job id, lease token) pairs this worker holds on it.
type QueueLeases = (Queue, Vec<(String, u64)>);

/// Shared state of one worker process.
struct Worker {
    config: WorkerConfig,
    conn: Conn,
    registry: Registry,
    executor: Arc<Executor>,
    served: Mutex<Served>,
    /// Compiled tasks by digest. Each digest has one cell, so the jobs that start together on a
    /// task the worker has not compiled yet wait for one compile instead of each running
    /// their own (with 64 slots, a fresh worker compiled a task 64 times over).
    components: Mutex<HashMap<String, Arc<OnceCell<TaskComponent>>>>,
    running: Mutex<HashMap<String, Running>>,
    /// Tenants already warned about a fuel quota this worker cannot meter.
    fuel_warned: Mutex<HashSet<String>>,
    /// The data epoch of Redis this worker last saw (see `check_epoch`).
    epoch: Mutex<Option<String>>,
    /// When the last fully successful lease renewal started (see `fence`).
    renewed_at: Mutex<Instant>,
    /// When each served queue (tenant, queue) last had a housekeeping fetch; a queue missing
    /// here is due one.
    housekept: Mutex<HashMap<(String, String), Instant>>,
    /// Writes outcomes in batches.
    finisher: Finisher,
    /// Outcomes written (attempts whose end was recorded), for the shutdown summary.
    recorded: AtomicU64,
    /// Jobs started and not yet done with: running, or having their outcome written.
    in_flight: AtomicUsize,
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
/// Only for a configuration that can never work: a Redis URL, tenant or queue name that does
/// not parse. Redis errors are never returned and never charged to a job.
pub async fn serve(
    config: WorkerConfig,
    executor: Arc<Executor>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::queue::Target::parse(&config.redis_url)?;
    for tenant in config.tenants.iter().flatten() {
        crate::queue::check_name("tenant", tenant).map_err(anyhow::Error::msg)?;
    }
    for queue in config.queues.iter().flatten() {
        crate::queue::check_name("queue", queue).map_err(anyhow::Error::msg)?;
    }
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = MIN_BACKOFF;
    let conn = loop {
        match crate::queue::connect(&config.redis_url).await {
            Ok(conn) => break conn,
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
    let (finisher, write_outcomes) = Finisher::new(config.finish_batch);
    let worker = Arc::new(Worker {
        registry: Registry::new(conn.clone()),
        conn,
        config,
        executor,
        served: Mutex::new(Served::default()),
        components: Mutex::new(HashMap::new()),
        running: Mutex::new(HashMap::new()),
        fuel_warned: Mutex::new(HashSet::new()),
        epoch: Mutex::new(None),
        renewed_at: Mutex::new(Instant::now()),
        housekept: Mutex::new(HashMap::new()),
        finisher,
        recorded: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        wake: Notify::new(),
    });
    let slots = Arc::new(Semaphore::new(worker.config.concurrency));
    match worker.registry.eviction_policy().await.as_deref() {
        Some("noeviction") | None => {}
        Some(policy) => tracing::warn!(
            maxmemory_policy = %policy,
            "Redis may evict keys when full, and an evicted key is a lost job or task; set \
             `maxmemory-policy noeviction` so a full Redis refuses writes instead"
        ),
    }
    if let Err(err) = worker.refresh(&slots).await {
        // Not fatal: the refresher below keeps trying, and fetching starts once it succeeds.
        tracing::error!(error = %format!("{err:#}"), "cannot list tenants and queues yet");
    }
    tracing::info!(
        worker = %worker.config.worker_id,
        tenants = ?worker.config.tenants,
        queues = ?worker.config.queues,
        concurrency = worker.config.concurrency,
        lease_ms = worker.config.lease.as_millis() as u64,
        fuel_metering = worker.executor.options().fuel,
        "worker started"
    );
    let mut background = tokio::task::JoinSet::new();
    background.spawn(write_outcomes);
    background.spawn(worker.clone().renew_leases());
    background.spawn(worker.clone().fence());
    background.spawn(worker.clone().keep_refreshing(slots.clone()));
    if !worker.is_cluster() {
        // One blocking pop over every served queue's keys; on a cluster, keys of different
        // queues live on different nodes, so each queue gets a listener (see `refresh`).
        background.spawn(worker.clone().listen(None, slots.clone()));
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

        let wait = match worker.fetch_round(free, &slots).await {
            Ok(started) if started > 0 => {
                backoff = MIN_BACKOFF;
                continue;
            }
            Ok(_) => {
                backoff = MIN_BACKOFF;
                lock(&worker.served)
                    .next_check(Instant::now())
                    .map_or(MAX_IDLE_WAIT, |due| due.min(MAX_IDLE_WAIT))
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
    // A target of its own, so the totals can be asked for alone
    // (`RUST_LOG=warn,wasm_runner::worker::totals=info`, as the benchmark does) without turning
    // on the per-job spans of `wasm_runner::worker`.
    tracing::info!(
        target: "wasm_runner::worker::totals",
        worker = %worker.config.worker_id,
        jobs = worker.recorded.load(Ordering::Relaxed),
        redis_round_trips = crate::queue::conn::round_trips(),
        "shutdown finished"
    );
    Ok(())
}

impl Worker {
    fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// Checks that Redis still holds the data it held when this worker first saw it. A Redis
    /// restarted without persistence, flushed, or failed over to a stale replica comes back
    /// empty; the queues then look idle, so without this check the loss would go unnoticed.
    async fn check_epoch(&self) -> anyhow::Result<()> {
        let candidate = uuid::Uuid::now_v7().to_string();
        let seen = self.registry.epoch(&candidate).await?;
        let mut known = lock(&self.epoch);
        match known.as_deref() {
            None => *known = Some(seen),
            Some(previous) if previous != seen => {
                tracing::error!(
                    previous_epoch = %previous,
                    epoch = %seen,
                    "REDIS LOST ITS DATA: the marker this worker saw at start is gone, so Redis \
                     restarted without persistence, was flushed, or failed over to a replica \
                     that was behind. Jobs that were queued, scheduled or running, and uploaded \
                     tasks, may be gone; enqueue them again. Turn on appendonly (see \
                     docs/queue.md) to keep acknowledged jobs across restarts."
                );
                *known = Some(seen);
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Re-reads which tenants and queues to serve, with the tenants' current quotas; applies
    /// the retention settings to queues seen for the first time and, on a cluster, starts
    /// their wake-up listeners.
    async fn refresh(self: &Arc<Self>, slots: &Arc<Semaphore>) -> anyhow::Result<()> {
        self.check_epoch().await?;
        let records = match &self.config.tenants {
            None => {
                let mut records = self.registry.list().await?;
                if !records.iter().any(|r| r.name == DEFAULT_TENANT) {
                    records.push(self.registry.resolve(DEFAULT_TENANT).await?);
                }
                records
            }
            Some(names) => {
                let mut records = Vec::new();
                for name in names {
                    match self.registry.resolve(name).await {
                        Ok(record) => records.push(record),
                        Err(err) if Refusal::of(&err).is_some() => {
                            tracing::warn!(tenant = %name, error = %err, "not serving tenant");
                        }
                        Err(err) => return Err(err),
                    }
                }
                records
            }
        };
        let mut tenants = Vec::with_capacity(records.len());
        for record in &records {
            let handle = Queue::for_tenant(self.conn.clone(), record)?
                .with_max_worker_losses(self.config.max_worker_losses);
            let queues = match &self.config.queues {
                Some(queues) => queues.clone(),
                None => {
                    // The default queue is always served, so the first job of a fresh setup
                    // does not wait for the next refresh to be found.
                    let mut queues = handle.queues().await?;
                    if !queues.iter().any(|q| q == DEFAULT_QUEUE) {
                        queues.insert(0, DEFAULT_QUEUE.to_owned());
                    }
                    queues
                }
            };
            tenants.push((handle, queues));
        }

        let added = lock(&self.served).update(tenants);
        for (tenant, queue) in added {
            let handle = lock(&self.served).handle(&tenant).cloned();
            if let Some(handle) = handle {
                handle
                    .set_retention(
                        &queue,
                        self.config.succeeded_retention,
                        self.config.failed_retention,
                    )
                    .await?;
            }
            tracing::info!(tenant = %tenant, queue = %queue, "serving queue");
            if self.is_cluster() {
                tokio::spawn(self.clone().listen(Some((tenant, queue)), slots.clone()));
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Refreshes the served set every second, so new tenants, queues and quota changes are
    /// picked up without a restart.
    async fn keep_refreshing(self: Arc<Self>, slots: Arc<Semaphore>) {
        loop {
            tokio::time::sleep(REFRESH_INTERVAL).await;
            if let Err(err) = self.refresh(&slots).await {
                tracing::warn!(error = %format!("{err:#}"), "cannot refresh tenants and queues");
            }
        }
    }

    /// One fetch round over up to `free` slots, shared fairly between tenants (see
    /// [`Served::plan`]). Returns how many jobs started.
    ///
    /// A failure on one tenant's queue is logged and that queue rested for a second, so one
    /// tenant's trouble cannot stop the others; the round fails only when nothing worked.
    async fn fetch_round(
        self: &Arc<Self>,
        mut free: usize,
        slots: &Arc<Semaphore>,
    ) -> anyhow::Result<usize> {
        let steps = lock(&self.served).plan(free, Instant::now());
        let mut started = 0;
        let mut first_error = None;
        let mut any_ok = steps.is_empty();
        for step in steps {
            if free == 0 {
                break;
            }
            let tenant = step.tenant.tenant().to_owned();
            let mut share = step.share.min(free);
            let mut holders = Vec::new();
            if let Some(cap) = step.tenant.quotas().max_running {
                let wanted: Vec<String> = (0..share)
                    .map(|_| format!("{}|{}", self.config.worker_id, uuid::Uuid::now_v7()))
                    .collect();
                match step
                    .tenant
                    .take_slots(&wanted, cap, self.config.lease)
                    .await
                {
                    Ok(taken) if taken.is_empty() => {
                        any_ok = true;
                        lock(&self.served).mark_capped(&tenant, Instant::now() + CAPPED_RETRY);
                        continue;
                    }
                    Ok(taken) => {
                        share = taken.len();
                        holders = taken;
                    }
                    Err(err) => {
                        first_error.get_or_insert(err);
                        continue;
                    }
                }
            }

            let mut holders = holders.into_iter();
            for queue in &step.queues {
                if share == 0 {
                    break;
                }
                let key = (tenant.clone(), queue.clone());
                let housekeeping = lock(&self.housekept)
                    .get(&key)
                    .is_none_or(|at| at.elapsed() >= HOUSEKEEPING_INTERVAL);
                let asked_at = Instant::now();
                let fetched = match step
                    .tenant
                    .fetch(
                        queue,
                        &self.config.worker_id,
                        self.config.lease,
                        share,
                        housekeeping,
                    )
                    .await
                {
                    Ok(fetched) => {
                        if fetched.more_expired {
                            lock(&self.housekept).remove(&key);
                        } else if housekeeping {
                            lock(&self.housekept).insert(key, Instant::now());
                        }
                        fetched
                    }
                    Err(err) => {
                        tracing::warn!(
                            tenant = %tenant,
                            queue = %queue,
                            error = %format!("{err:#}"),
                            "cannot fetch from queue"
                        );
                        lock(&self.served).mark_idle(&tenant, queue, asked_at, MAX_IDLE_WAIT);
                        first_error.get_or_insert(err);
                        continue;
                    }
                };
                any_ok = true;
                let count = fetched.jobs.len();
                if count < share {
                    let wait = fetched
                        .next_due
                        .map_or(MAX_IDLE_WAIT, |due| due.min(MAX_IDLE_WAIT));
                    lock(&self.served).mark_idle(&tenant, queue, asked_at, wait);
                }
                for job in fetched.jobs {
                    self.start(&step.tenant, queue, job, holders.next(), slots)?;
                }
                share -= count;
                free -= count;
                started += count;
            }
            let unused: Vec<String> = holders.collect();
            if let Err(err) = step.tenant.give_slots(&unused).await {
                tracing::warn!(tenant = %tenant, error = %format!("{err:#}"),
                    "cannot give back unused slots; they expire with the lease");
            }
        }
        match first_error {
            Some(err) if !any_ok && started == 0 => Err(err),
            _ => Ok(started),
        }
    }

    /// Starts a fetched job on a free slot.
    fn start(
        self: &Arc<Self>,
        tenant: &Queue,
        queue: &str,
        job: LeasedJob,
        slot: Option<String>,
        slots: &Arc<Semaphore>,
    ) -> anyhow::Result<()> {
        // The fetch loop asked for at most the free slots and only it takes them.
        let permit = slots
            .clone()
            .try_acquire_owned()
            .context("a slot counted as free was taken")?;
        let abort = AbortHandle::new();
        lock(&self.running).insert(
            job.id.clone(),
            Running {
                tenant: tenant.clone(),
                queue: queue.to_owned(),
                token: job.token,
                abort: abort.clone(),
                slot: slot.clone(),
            },
        );
        let worker = self.clone();
        let tenant = tenant.clone();
        let queue = queue.to_owned();
        let span = tracing::info_span!(
            "job",
            tenant = %tenant.tenant(),
            job_id = %job.id,
            task = %job.task,
            queue = %queue,
            attempt = job.attempt,
        );
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(
            async move {
                let ended = worker.run_job(&tenant, &job, abort).await;
                // The guest is gone, so its slot takes the next job while this outcome is
                // written: fetching and running overlap with recording.
                drop(permit);
                worker.wake.notify_one();
                if let Some((report, completion)) = ended {
                    worker
                        .record(&tenant, &queue, &job, &report, &completion)
                        .await;
                }
                if let Some(slot) = slot
                    && let Err(err) = tenant.give_slots(&[slot]).await
                {
                    tracing::warn!(error = %format!("{err:#}"),
                        "cannot give back the tenant slot; it expires with the lease");
                }
                lock(&worker.served).uncap(tenant.tenant());
                worker.in_flight.fetch_sub(1, Ordering::SeqCst);
                worker.wake.notify_one();
            }
            .instrument(span),
        );
        Ok(())
    }

    /// The limits of an attempt: the job's own, within its tenant's current ceilings.
    fn limits_for(&self, tenant: &Queue, job: &LeasedJob) -> Limits {
        // The served set holds the freshest quotas; the handle's are from the fetch.
        let quotas = lock(&self.served)
            .handle(tenant.tenant())
            .map_or_else(|| tenant.quotas().clone(), |handle| handle.quotas().clone());
        let memory_bytes = quotas
            .max_memory_bytes
            .map_or(job.memory_bytes, |ceiling| job.memory_bytes.min(ceiling));
        let timeout = quotas.max_timeout_ms.map_or(job.timeout, |ceiling| {
            job.timeout.min(Duration::from_millis(ceiling))
        });
        let fuel = quotas
            .fuel_per_attempt
            .filter(|_| self.executor.options().fuel);
        if quotas.fuel_per_attempt.is_some()
            && fuel.is_none()
            && lock(&self.fuel_warned).insert(tenant.tenant().to_owned())
        {
            tracing::warn!(
                tenant = %tenant.tenant(),
                "the tenant has a fuel quota but this worker runs without --fuel-metering; \
                 its jobs run under their time and memory limits only"
            );
        }
        Limits {
            memory_bytes,
            timeout,
            fuel,
        }
    }

    /// Runs one leased job, and returns its report and what to record, or `None` when nothing
    /// is to be recorded (the lease was lost, or the job was canceled).
    async fn run_job(
        &self,
        tenant: &Queue,
        job: &LeasedJob,
        abort: AbortHandle,
    ) -> Option<(RunReport, Completion)> {
        let mut unrunnable = false;
        let report = match self.component(tenant, &job.digest).await {
            Ok(component) => {
                let ctx = JobContext {
                    job_id: job.id.clone(),
                    attempt: job.attempt,
                    max_attempts: job.policy.max_attempts,
                    task_name: job.task.clone(),
                    tenant: tenant.tenant().to_owned(),
                };
                let limits = self.limits_for(tenant, job);
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

        match abort.reason().as_deref() {
            Some(LEASE_LOST) => {
                // Another worker may hold the job now; whatever this attempt did is not recorded.
                tracing::warn!(job_id = %job.id, "lease lost; attempt abandoned");
                return None;
            }
            Some(CANCELED) => {
                // The cancel already moved the job to the failed set and fenced this lease.
                tracing::info!(job_id = %job.id, "job canceled; guest stopped");
                return None;
            }
            _ => {}
        }
        let completion = if unrunnable {
            Completion::Fail
        } else {
            completion_for(job, &report, abort.is_aborted())
        };
        Some((report, completion))
    }

    /// Writes the outcome, retrying Redis errors until the lease would have run out: past that,
    /// another worker may own the job and the write would be refused anyway.
    async fn record(
        &self,
        tenant: &Queue,
        queue: &str,
        job: &LeasedJob,
        report: &RunReport,
        completion: &Completion,
    ) {
        let outcome = serde_json::to_value(&report.outcome).unwrap_or_default();
        let decision = describe_completion(completion);
        let record = AttemptRecord {
            attempt: job.attempt,
            worker: self.config.worker_id.clone(),
            started_at_ms: 0,
            ended_at_ms: 0,
            run_ms: report.elapsed.as_millis() as u64,
            outcome: outcome.clone(),
            decision,
            log_tail: log_tail(report),
        };
        let finished = Finished {
            id: job.id.clone(),
            token: job.token,
            completion: completion.clone(),
            outcome: outcome.to_string(),
            record: match serde_json::to_string(&record) {
                Ok(text) => text,
                Err(err) => {
                    tracing::error!(error = %err, "cannot encode the attempt record");
                    return;
                }
            },
            started_at_ms: job.leased_at_ms,
            task: job.task.clone(),
        };
        let give_up = Instant::now() + self.config.lease;
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.finisher.finish(tenant, queue, finished.clone()).await {
                Ok(true) => {
                    self.recorded.fetch_add(1, Ordering::Relaxed);
                    // A success is routine: at tens of thousands of jobs a second a line per
                    // job would cost more than the job. Retries and failures are worth a line.
                    if matches!(completion, Completion::Succeed { .. }) {
                        tracing::debug!(
                            outcome = report.outcome.name(),
                            decision = %record.decision,
                            elapsed_ms = report.elapsed.as_millis() as u64,
                            "attempt recorded"
                        );
                    } else {
                        tracing::info!(
                            outcome = report.outcome.name(),
                            decision = %record.decision,
                            elapsed_ms = report.elapsed.as_millis() as u64,
                            "attempt recorded"
                        );
                    }
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
    ///
    /// Components are content-addressed, so one compiled copy serves every tenant that
    /// uploaded the same bytes; the bytes are always read from the job's own tenant.
    async fn component(
        &self,
        tenant: &Queue,
        digest: &str,
    ) -> Result<TaskComponent, ComponentError> {
        let cell = lock(&self.components)
            .entry(digest.to_owned())
            .or_default()
            .clone();
        // A failed load leaves the cell empty, so the next job of the task tries again.
        let component = cell
            .get_or_try_init(|| async {
                let wasm = match tenant.component(digest).await {
                    Ok(Some(wasm)) => wasm,
                    Ok(None) => return Err(ComponentError::Missing(digest.to_owned())),
                    Err(err) => return Err(ComponentError::Redis(err)),
                };
                let executor = self.executor.clone();
                let cache_dir = self.config.cache_dir.clone();
                let digest_owned = digest.to_owned();
                // Compiling takes tens of milliseconds to seconds; keep it off the async
                // threads.
                tokio::task::spawn_blocking(move || {
                    executor.load_cached(&wasm, &digest_owned, cache_dir.as_deref())
                })
                .await
                .map_err(|err| {
                    ComponentError::Redis(anyhow::anyhow!("the compile thread failed: {err}"))
                })?
                .map_err(|err| ComponentError::Invalid(digest.to_owned(), err))
            })
            .await?;
        Ok(component.clone())
    }

    /// Renews every running job's lease and tenant slot every third of the lease, and stops
    /// the guests whose lease is gone. [`Worker::fence`] stops every guest when renewals have
    /// failed for most of a lease.
    async fn renew_leases(self: Arc<Self>) {
        let interval = self.config.lease / 3;
        loop {
            tokio::time::sleep(interval).await;
            // Leases renewed in this round run from no earlier than now on the server.
            let round_started = Instant::now();
            // Every served queue is renewed, with or without jobs, as the worker's heartbeat.
            let mut by_queue: HashMap<(String, String), QueueLeases> = lock(&self.served)
                .pairs()
                .into_iter()
                .map(|(handle, queue)| ((handle.tenant().to_owned(), queue), (handle, Vec::new())))
                .collect();
            let mut slots_by_tenant: HashMap<String, (Queue, Vec<String>)> = HashMap::new();
            for (id, running) in lock(&self.running).iter() {
                let key = (running.tenant.tenant().to_owned(), running.queue.clone());
                by_queue
                    .entry(key)
                    .or_insert_with(|| (running.tenant.clone(), Vec::new()))
                    .1
                    .push((id.clone(), running.token));
                if let Some(slot) = &running.slot {
                    slots_by_tenant
                        .entry(running.tenant.tenant().to_owned())
                        .or_insert_with(|| (running.tenant.clone(), Vec::new()))
                        .1
                        .push(slot.clone());
                }
            }

            let mut all_ok = true;
            for ((tenant, queue), (handle, jobs)) in by_queue {
                match handle
                    .renew(&queue, &self.config.worker_id, self.config.lease, &jobs)
                    .await
                {
                    Ok(lost) => self.abort_jobs(&lost, LEASE_LOST),
                    Err(err) => {
                        all_ok = false;
                        tracing::warn!(tenant = %tenant, queue = %queue,
                            error = %format!("{err:#}"), "cannot renew leases");
                    }
                }
            }
            for (tenant, (handle, holders)) in slots_by_tenant {
                match handle.renew_slots(&holders, self.config.lease).await {
                    Ok(expired) if !expired.is_empty() => tracing::warn!(
                        tenant = %tenant,
                        slots = expired.len(),
                        "tenant slots had expired; the cap may briefly be exceeded"
                    ),
                    Ok(_) => {}
                    Err(err) => {
                        all_ok = false;
                        tracing::warn!(tenant = %tenant, error = %format!("{err:#}"),
                            "cannot renew tenant slots");
                    }
                }
            }

            if all_ok {
                *lock(&self.renewed_at) = round_started;
            }
        }
    }

    /// Stops every guest once the last successful renewal is about to run out, so another
    /// worker can never take over a job whose guest still runs here.
    ///
    /// This runs on its own timer rather than after a failed renewal: on a link that freezes
    /// without a reset, a renewal only fails when the client's response timeout ends, which
    /// can be after the lease itself.
    async fn fence(self: Arc<Self>) {
        let margin = self.config.lease / 6;
        loop {
            tokio::time::sleep(FENCE_CHECK).await;
            let deadline = *lock(&self.renewed_at) + self.config.lease - margin;
            if Instant::now() < deadline {
                continue;
            }
            let ids: Vec<String> = lock(&self.running)
                .iter()
                .filter(|(_, job)| !job.abort.is_aborted())
                .map(|(id, _)| id.clone())
                .collect();
            if !ids.is_empty() {
                tracing::error!(jobs = ids.len(), "Redis unreachable; stopping all guests");
                self.abort_jobs(&ids, LEASE_LOST);
            }
        }
    }

    fn abort_jobs(&self, ids: &[String], reason: &'static str) {
        let running = lock(&self.running);
        for id in ids {
            if let Some(job) = running.get(id) {
                job.abort.abort(reason);
            }
        }
    }

    /// Waits for wake-up tokens (a job became ready) and cancel requests (a running job of
    /// this worker was canceled) on the served queues, or on `only` one queue (on a cluster).
    /// Uses a connection of its own, because the wait blocks it.
    ///
    /// Wake-up tokens are only taken while a slot is free: a busy worker leaves them to idle
    /// ones. Cancel requests are always taken, so a guest stops within milliseconds.
    async fn listen(self: Arc<Self>, only: Option<(String, String)>, slots: Arc<Semaphore>) {
        let mut conn = None;
        let mut backoff = MIN_BACKOFF;
        let mut turn = 0_usize;
        loop {
            let mut pairs: Vec<(String, String)> = match &only {
                Some((tenant, queue)) => {
                    if !lock(&self.served).serves(tenant, queue) {
                        return;
                    }
                    vec![(tenant.clone(), queue.clone())]
                }
                None => lock(&self.served)
                    .pairs()
                    .into_iter()
                    .map(|(handle, queue)| (handle.tenant().to_owned(), queue))
                    .collect(),
            };
            // A blocking pop takes from the first of its keys that holds a token, and a
            // flooding tenant's queue always holds some (each enqueue call leaves up to 16), so
            // with a fixed order a quiet tenant's token would wait behind all of them. Starting
            // one key further along each time reaches every queue's token within one pop per
            // served queue.
            if !pairs.is_empty() {
                let len = pairs.len();
                pairs.rotate_left(turn % len);
                turn = turn.wrapping_add(1);
            }
            let hear_wakeups = slots.available_permits() > 0;
            let listened = pairs.clone();
            let mut keys = Vec::with_capacity(pairs.len() * 2);
            let mut meaning: HashMap<String, (String, String, bool)> = HashMap::new();
            for (tenant, queue) in pairs {
                let queue_keys = QueueKeys::new(&tenant, &queue);
                let cancels = queue_keys.cancels(&self.config.worker_id);
                meaning.insert(cancels.clone(), (tenant.clone(), queue.clone(), false));
                keys.push(cancels);
                if hear_wakeups {
                    let wake = queue_keys.wake();
                    meaning.insert(wake.clone(), (tenant, queue, true));
                    keys.push(wake);
                }
            }
            if keys.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let Some(conn) = conn.as_mut() else {
                lock(&self.served).set_hearing(&listened, false);
                match crate::queue::connect(&self.config.redis_url).await {
                    Ok(new) => conn = Some(new),
                    Err(err) => {
                        tracing::debug!(error = %format!("{err:#}"), "wake-up listener error");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                continue;
            };
            // Short waits, so a change in free slots or served queues is seen quickly; shorter
            // still while deaf to wake-ups, since meanwhile every fetch round asks every queue.
            lock(&self.served).set_hearing(&listened, hear_wakeups);
            let wait = if hear_wakeups {
                LISTEN_WAIT
            } else {
                DEAF_LISTEN_WAIT
            };
            match Queue::wait_any(conn, &keys, wait).await {
                Ok(Some((key, value))) => match meaning.get(&key) {
                    Some((tenant, queue, true)) => {
                        lock(&self.served).wake(tenant, queue, Instant::now());
                        self.wake.notify_one();
                    }
                    Some((_, _, false)) => self.abort_jobs(&[value], CANCELED),
                    None => {}
                },
                Ok(None) => {}
                Err(err) => {
                    lock(&self.served).set_hearing(&listened, false);
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
        if finished.is_err() {
            let ids: Vec<String> = lock(&self.running).keys().cloned().collect();
            tracing::warn!(
                jobs = ids.len(),
                "grace period over; releasing running jobs"
            );
            self.abort_jobs(&ids, SHUTDOWN);
            let _ = slots.acquire_many(all).await;
        }

        // Every guest has stopped; wait for their outcomes (and releases) to be written. The
        // writes give up once a lease has passed, so this wait is bounded too.
        let deadline = Instant::now() + self.config.lease + Duration::from_secs(1);
        while self.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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
const CANCELED: &str = "the job was canceled";

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
