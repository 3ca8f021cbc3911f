//! The Redis side: the task registry and the job queue. The only module that talks to Redis.
//!
//! Every state change is one Lua script (`lua/*.lua`), so it is atomic, uses the Redis server's
//! clock, checks all its preconditions before its first write, and touches only keys of one
//! queue's hash tag (see [`keys`]), which lets it run on Redis Cluster. The main type is
//! [`Queue`], a handle for one tenant.

mod admin;
pub mod conn;
mod invariants;
pub mod keys;
pub mod model;
mod refusal;
mod slots;
pub mod tenants;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use redis::{AsyncCommands, FromRedisValue, Script, Value};
use sha2::{Digest, Sha256};

use crate::scheduler::RetryPolicy;

pub use admin::Canceled;
pub use conn::{Conn, Target};
pub use keys::{QueueKeys, TenantKeys, check_name};
pub use model::{
    AttemptRecord, Completion, EnqueueRequest, Enqueued, Fetched, Finished, JobState, JobSummary,
    JobView, LeasedJob, QueueStats, TaskCounts, TaskDefaults, TaskVersion,
};
use refusal::redis_failure;
pub use refusal::{RedisFull, Refusal};
pub use tenants::{Quotas, Registry, TenantRecord, Token};

/// The tenant used when none is named.
pub const DEFAULT_TENANT: &str = "default";
/// The queue used when none is named.
pub const DEFAULT_QUEUE: &str = "default";
/// The largest payload accepted by default (1 MiB).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How long succeeded jobs (and their results) are kept unless the queue says otherwise.
pub const SUCCEEDED_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// How long failed jobs are kept, unless the queue says otherwise.
pub const FAILED_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// A job fails after losing this many workers (killed, stalled or cut off mid-attempt).
pub const MAX_WORKER_LOSSES: u32 = 3;

fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("lua/prelude.lua")))
}

/// The scripts, built once; `redis::Script` sends the SHA and reloads a script if Redis lost it
/// (after a restart or failover).
struct Scripts {
    enqueue: Script,
    fetch: Script,
    renew: Script,
    finish: Script,
    requeue: Script,
    upload: Script,
    cancel: Script,
    slots: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            enqueue: script(include_str!("lua/enqueue.lua")),
            fetch: script(include_str!("lua/fetch.lua")),
            renew: script(include_str!("lua/renew.lua")),
            finish: script(include_str!("lua/finish.lua")),
            requeue: script(include_str!("lua/requeue.lua")),
            upload: script(include_str!("lua/upload.lua")),
            cancel: script(include_str!("lua/cancel.lua")),
            slots: script(include_str!("lua/slots.lua")),
        }
    }
}

/// A connection to the queue for one tenant, under that tenant's quotas. Cheap to clone;
/// clones share the connection.
#[derive(Clone)]
pub struct Queue {
    conn: Conn,
    tenant: String,
    tenant_keys: TenantKeys,
    quotas: Quotas,
    scripts: Arc<Scripts>,
    /// Queues already recorded in the tenant's queue set by this handle.
    known_queues: Arc<Mutex<HashSet<String>>>,
    /// After how many lost workers a fetch fails a job instead of running it again.
    max_worker_losses: u32,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding the lock; if something did, the set is still valid.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// Connects to Redis at `url` (see [`Target::parse`] for the forms it takes), failing fast
/// with a message that says what to check.
///
/// # Errors
///
/// When the URL does not parse or Redis does not answer.
pub async fn connect(url: &str) -> anyhow::Result<Conn> {
    Conn::connect(&Target::parse(url)?).await
}

impl Queue {
    /// A handle for `tenant` over an existing connection, with default quotas (see
    /// [`Queue::with_quotas`]). It does not check that the tenant was created; the CLI and
    /// the HTTP API go through [`Registry::resolve`] first.
    ///
    /// # Errors
    ///
    /// When the tenant name is not valid (see [`check_name`]).
    pub fn new(conn: Conn, tenant: &str) -> anyhow::Result<Self> {
        check_name("tenant", tenant).map_err(Refusal::Invalid)?;
        Ok(Queue {
            conn,
            tenant: tenant.to_owned(),
            tenant_keys: TenantKeys::new(tenant),
            quotas: Quotas::default(),
            scripts: Arc::new(Scripts::new()),
            known_queues: Arc::default(),
            max_worker_losses: MAX_WORKER_LOSSES,
        })
    }

    /// A handle for a tenant as registered: its name and quotas.
    ///
    /// # Errors
    ///
    /// When the record's name is not valid.
    pub fn for_tenant(conn: Conn, record: &TenantRecord) -> anyhow::Result<Self> {
        Ok(Queue::new(conn, &record.name)?.with_quotas(record.quotas.clone()))
    }

    /// This handle with `quotas` enforced on uploads and enqueues.
    pub fn with_quotas(mut self, quotas: Quotas) -> Self {
        self.quotas = quotas;
        self
    }

    /// This handle with fetches that fail a job once it has lost `losses` workers (at least
    /// 1; the default is [`MAX_WORKER_LOSSES`]), instead of running it again.
    pub fn with_max_worker_losses(mut self, losses: u32) -> Self {
        self.max_worker_losses = losses.max(1);
        self
    }

    /// The quotas this handle enforces.
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// The connection this handle uses, for sharing with other handles.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Connects to `url` and returns a handle for `tenant`.
    ///
    /// # Errors
    ///
    /// As [`connect`] and [`Queue::new`].
    pub async fn open(url: &str, tenant: &str) -> anyhow::Result<Self> {
        check_name("tenant", tenant).map_err(|msg| anyhow!(msg))?;
        Queue::new(connect(url).await?, tenant)
    }

    /// The tenant this handle acts for.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    fn queue_keys(&self, queue: &str) -> anyhow::Result<QueueKeys> {
        check_name("queue", queue).map_err(Refusal::Invalid)?;
        Ok(QueueKeys::new(&self.tenant, queue))
    }

    /// Stores a component and records it as the newest version of task `name`.
    ///
    /// The caller validates the component first (the upload command loads it into an executor);
    /// this only stores. Bytes are stored once per digest, however often they are uploaded.
    ///
    /// # Errors
    ///
    /// When the name is not valid, the component is over the tenant's size limit, the
    /// defaults ask for more memory or time than the tenant's ceilings (all [`Refusal`]s), or
    /// Redis fails.
    pub async fn upload(
        &self,
        name: &str,
        wasm: &[u8],
        defaults: &TaskDefaults,
    ) -> anyhow::Result<TaskVersion> {
        check_name("task", name).map_err(Refusal::Invalid)?;
        let limit = self.quotas.component_limit();
        if wasm.len() as u64 > limit {
            bail!(Refusal::TooLarge(format!(
                "the component is {}, over tenant `{}`'s limit of {}; build it with \
                 `--release` and `opt-level = \"s\"`, or raise the limit with \
                 `wasm-runner tenant update {} --max-component-size SIZE`",
                bytesize::ByteSize(wasm.len() as u64),
                self.tenant,
                bytesize::ByteSize(limit),
                self.tenant
            )));
        }
        self.quotas
            .check_limits(defaults.memory_bytes, defaults.timeout_ms)?;
        let digest = format!("{:x}", Sha256::digest(wasm));
        let record = serde_json::json!({
            "name": name,
            "digest": digest,
            "size_bytes": wasm.len(),
            "defaults": defaults,
        });
        let encoded: String = self
            .scripts
            .upload
            .key(self.tenant_keys.component(&digest))
            .key(self.tenant_keys.versions(name))
            .key(self.tenant_keys.tasks())
            .arg(wasm)
            .arg(name)
            .arg(record.to_string())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|err| redis_failure(err, format!("failed to store task `{name}` in Redis")))?;
        serde_json::from_str(&encoded).context("Redis returned a malformed task version")
    }

    /// The newest version of every task, by name.
    ///
    /// # Errors
    ///
    /// When Redis fails or holds a malformed record.
    pub async fn tasks(&self) -> anyhow::Result<Vec<TaskVersion>> {
        let all: Vec<(String, String)> = self
            .conn
            .clone()
            .hgetall(self.tenant_keys.tasks())
            .await
            .context("failed to list tasks")?;
        let mut tasks = all
            .into_iter()
            .map(|(name, json)| {
                serde_json::from_str(&json)
                    .with_context(|| format!("task `{name}` has a malformed record in Redis"))
            })
            .collect::<anyhow::Result<Vec<TaskVersion>>>()?;
        tasks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tasks)
    }

    /// Every version of task `name`, oldest first; empty if there is no such task.
    ///
    /// # Errors
    ///
    /// When Redis fails or holds a malformed record.
    pub async fn versions(&self, name: &str) -> anyhow::Result<Vec<TaskVersion>> {
        check_name("task", name).map_err(Refusal::Invalid)?;
        let all: Vec<String> = self
            .conn
            .clone()
            .lrange(self.tenant_keys.versions(name), 0, -1)
            .await
            .with_context(|| format!("failed to read the versions of task `{name}`"))?;
        all.iter()
            .map(|json| serde_json::from_str(json).context("malformed task version in Redis"))
            .collect()
    }

    /// The newest version of task `name`, if it exists.
    ///
    /// # Errors
    ///
    /// When Redis fails or holds a malformed record.
    pub async fn task(&self, name: &str) -> anyhow::Result<Option<TaskVersion>> {
        check_name("task", name).map_err(Refusal::Invalid)?;
        let json: Option<String> = self
            .conn
            .clone()
            .hget(self.tenant_keys.tasks(), name)
            .await
            .with_context(|| format!("failed to look up task `{name}`"))?;
        json.map(|json| serde_json::from_str(&json).context("malformed task record in Redis"))
            .transpose()
    }

    /// The bytes of the component with `digest`, if stored.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn component(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.conn
            .clone()
            .get(self.tenant_keys.component(digest))
            .await
            .with_context(|| format!("failed to read component {digest}"))
    }

    /// Adds a job to `queue` and returns its id.
    ///
    /// The job is pinned to the task's newest version at this moment. The request's overrides
    /// replace the task's defaults.
    ///
    /// # Errors
    ///
    /// A [`Refusal`] when the task does not exist, the payload is over `max_payload_bytes` or
    /// the tenant's limit, an override is invalid or over the tenant's ceilings, or the tenant's
    /// queued-jobs quota is full; nothing is written in any of those cases. Otherwise when
    /// Redis fails.
    pub async fn enqueue(
        &self,
        queue: &str,
        request: &EnqueueRequest,
        max_payload_bytes: usize,
    ) -> anyhow::Result<Enqueued> {
        let mut enqueued = self
            .enqueue_batch(queue, std::slice::from_ref(request), max_payload_bytes)
            .await?;
        Ok(enqueued.remove(0))
    }

    /// Adds many jobs to `queue` in as few round trips as possible, and returns their ids in
    /// the order of `requests`.
    ///
    /// Every request is checked before anything is written: one bad request refuses the whole
    /// batch. Each job is still added by its own script call, so a Redis failure half-way
    /// leaves the earlier jobs of the batch enqueued; enqueue them again with idempotency keys
    /// to make a retried batch safe.
    ///
    /// # Errors
    ///
    /// As [`Queue::enqueue`], for any request of the batch.
    pub async fn enqueue_batch(
        &self,
        queue: &str,
        requests: &[EnqueueRequest],
        max_payload_bytes: usize,
    ) -> anyhow::Result<Vec<Enqueued>> {
        let keys = self.queue_keys(queue)?;
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let max_payload_bytes = max_payload_bytes
            .min(usize::try_from(self.quotas.payload_limit()).unwrap_or(usize::MAX));
        let mut tasks: HashMap<&str, TaskVersion> = HashMap::new();
        let mut jobs = Vec::with_capacity(requests.len());
        for request in requests {
            if !tasks.contains_key(request.task.as_str()) {
                let Some(task) = self.task(&request.task).await? else {
                    bail!(Refusal::NotFound(format!(
                        "there is no task `{}` for tenant `{}`; upload it first with \
                         `wasm-runner upload FILE --name {}`",
                        request.task, self.tenant, request.task
                    )));
                };
                tasks.insert(&request.task, task);
            }
            let task = &tasks[request.task.as_str()];
            jobs.push(PreparedJob::new(
                &keys,
                request,
                task,
                max_payload_bytes,
                &self.quotas,
            )?);
        }
        self.check_room(jobs.len()).await?;

        let mut conn = self.conn.clone();
        let mut enqueued = Vec::with_capacity(jobs.len());
        if jobs.len() <= ENQUEUE_SCRIPT_BATCH {
            // The queue is noted in the same round trip as its jobs: both commands go out on
            // the shared connection together, the note first. One enqueue at a time is the
            // latency-bound case (an API call per job), where a round trip is most of the cost.
            let invocation = enqueue_invocation(&self.scripts.enqueue, &keys, &jobs);
            let (noted, replies) = tokio::join!(
                self.note_queue(queue),
                invocation.invoke_async::<Vec<(i64, String)>>(&mut conn)
            );
            let replies = replies.map_err(|err| redis_failure(err, enqueue_failure(&jobs)))?;
            if noted.is_err() {
                // The jobs are in; workers find a queue through the note, so try it again.
                self.note_queue(queue).await.context(
                    "the jobs were enqueued, but workers may not find their queue until the \
                     next enqueue to it succeeds",
                )?;
            }
            enqueued.extend(replies.into_iter().map(Enqueued::from_reply));
            return Ok(enqueued);
        }
        self.note_queue(queue).await?;
        // A pipeline does not reload a script Redis has lost, so load it first.
        self.scripts
            .enqueue
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .context("failed to load the enqueue script")?;
        for round in jobs.chunks(ENQUEUE_SCRIPT_BATCH * ENQUEUE_PIPELINE) {
            let invocations: Vec<_> = round
                .chunks(ENQUEUE_SCRIPT_BATCH)
                .map(|chunk| enqueue_invocation(&self.scripts.enqueue, &keys, chunk))
                .collect();
            let mut pipe = redis::pipe();
            for invocation in &invocations {
                pipe.invoke_script(invocation);
            }
            let replies: Vec<Vec<(i64, String)>> =
                pipe.query_async(&mut conn).await.map_err(|err| {
                    redis_failure(err, "failed to enqueue a batch of jobs".to_owned())
                })?;
            enqueued.extend(replies.into_iter().flatten().map(Enqueued::from_reply));
        }
        Ok(enqueued)
    }

    /// Leases up to `max` jobs from `queue` to `worker` for `lease`, after recovering expired
    /// leases and promoting due jobs. With `housekeeping`, the same call also records the
    /// worker's heartbeat and drops jobs past the queue's retention; a worker asks for it
    /// about once a second (and again at once while [`Fetched::more_expired`] says so).
    ///
    /// # Errors
    ///
    /// When Redis fails or returns something malformed.
    pub async fn fetch(
        &self,
        queue: &str,
        worker: &str,
        lease: Duration,
        max: usize,
        housekeeping: bool,
    ) -> anyhow::Result<Fetched> {
        let keys = self.queue_keys(queue)?;
        let (jobs, next_due, now, more_expired): (Vec<Vec<Value>>, i64, u64, i64) = self
            .scripts
            .fetch
            .key(keys.ready())
            .key(keys.scheduled())
            .key(keys.running())
            .key(keys.failed())
            .key(keys.succeeded())
            .key(keys.workers())
            .arg(keys.prefix())
            .arg(worker)
            .arg(lease.as_millis() as u64)
            .arg(max)
            .arg(self.max_worker_losses)
            .arg(SUCCEEDED_RETENTION.as_millis() as u64)
            .arg(FAILED_RETENTION.as_millis() as u64)
            .arg(if housekeeping { "1" } else { "0" })
            .invoke_async(&mut self.conn.clone())
            .await
            .with_context(|| format!("failed to fetch jobs from queue `{queue}`"))?;
        let jobs = jobs
            .into_iter()
            .map(|values| parse_leased(values, now))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Fetched {
            jobs,
            next_due: u64::try_from(next_due).ok().map(Duration::from_millis),
            more_expired: more_expired == 1,
        })
    }

    /// Renews the leases `worker` holds on `jobs` (id, token) and returns the ids it has lost.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn renew(
        &self,
        queue: &str,
        worker: &str,
        lease: Duration,
        jobs: &[(String, u64)],
    ) -> anyhow::Result<Vec<String>> {
        let keys = self.queue_keys(queue)?;
        let mut invocation = self.scripts.renew.key(keys.running());
        invocation
            .key(keys.workers())
            .arg(keys.prefix())
            .arg(worker)
            .arg(lease.as_millis() as u64);
        for (id, token) in jobs {
            invocation.arg(id).arg(token);
        }
        invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .with_context(|| format!("failed to renew leases on queue `{queue}`"))
    }

    /// Records how an attempt of `job` ended. Returns false when the lease was no longer the
    /// caller's: then nothing was written, and another worker owns the job.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn finish(
        &self,
        queue: &str,
        job: &LeasedJob,
        completion: &Completion,
        outcome: &serde_json::Value,
        record: &AttemptRecord,
    ) -> anyhow::Result<bool> {
        let finished = Finished {
            id: job.id.clone(),
            token: job.token,
            completion: completion.clone(),
            outcome: outcome.to_string(),
            record: serde_json::to_string(record)?,
            started_at_ms: job.leased_at_ms,
            task: job.task.clone(),
        };
        let written = self
            .finish_many(queue, std::slice::from_ref(&finished))
            .await?;
        Ok(written.first().copied().unwrap_or(false))
    }

    /// Records how many attempts on `queue` ended, in one script call, and returns for each
    /// whether it was written (false: the lease was no longer the caller's, and nothing was
    /// written for that job). A worker batches the attempts that end while its previous call
    /// is in flight, so under load it pays far less than one round trip per job.
    ///
    /// # Errors
    ///
    /// When Redis fails; then nothing of the batch was written.
    pub async fn finish_many(&self, queue: &str, batch: &[Finished]) -> anyhow::Result<Vec<bool>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let keys = self.queue_keys(queue)?;
        let mut invocation = self.scripts.finish.prepare_invoke();
        invocation
            .key(keys.running())
            .key(keys.ready())
            .key(keys.scheduled())
            .key(keys.failed())
            .key(keys.succeeded())
            .key(keys.wake())
            .arg(keys.prefix());
        for finished in batch {
            let (decision, delay, charged, result): (&str, Duration, bool, &[u8]) =
                match &finished.completion {
                    Completion::Succeed { result } => ("succeed", Duration::ZERO, true, result),
                    Completion::Retry { delay, charged } => ("retry", *delay, *charged, &[]),
                    Completion::Fail => ("fail", Duration::ZERO, true, &[]),
                    Completion::Release => ("release", Duration::ZERO, false, &[]),
                };
            if !finished.record.ends_with('}') {
                bail!(
                    "the attempt record of job {} is not a JSON object",
                    finished.id
                );
            }
            invocation
                .arg(&finished.id)
                .arg(finished.token)
                .arg(decision)
                .arg(delay.as_millis() as u64)
                .arg(if charged { "1" } else { "0" })
                .arg(result)
                .arg(&finished.outcome)
                .arg(&finished.record)
                .arg(finished.started_at_ms)
                .arg(&finished.task);
        }
        let written: Vec<i64> = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .with_context(|| {
                format!(
                    "failed to record the outcome of {} job(s) on queue `{queue}`",
                    batch.len()
                )
            })?;
        if written.len() != batch.len() {
            bail!(
                "the finish script answered for {} of {} jobs",
                written.len(),
                batch.len()
            );
        }
        Ok(written.into_iter().map(|w| w == 1).collect())
    }

    /// Sets how long `queue` keeps succeeded and failed jobs; `None` leaves a setting as it
    /// is. The setting is stored with the queue, so every worker applies the same periods.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn set_retention(
        &self,
        queue: &str,
        succeeded: Option<Duration>,
        failed: Option<Duration>,
    ) -> anyhow::Result<()> {
        let keys = self.queue_keys(queue)?;
        let mut fields: Vec<(&str, u64)> = Vec::new();
        if let Some(period) = succeeded {
            fields.push(("succeeded_retention_ms", period.as_millis() as u64));
        }
        if let Some(period) = failed {
            fields.push(("failed_retention_ms", period.as_millis() as u64));
        }
        if fields.is_empty() {
            return Ok(());
        }
        let () = self
            .conn
            .clone()
            .hset_multiple(keys.config(), &fields)
            .await
            .with_context(|| format!("failed to set the retention of queue `{queue}`"))?;
        Ok(())
    }

    /// Waits up to `timeout` for an element on any of `keys` (wake-up tokens, cancel
    /// requests) and returns the key and the element. Uses `conn`, which must be a connection
    /// of its own: the wait blocks it. On a cluster all `keys` must share one hash tag.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn wait_any(
        conn: &mut Conn,
        keys: &[String],
        timeout: Duration,
    ) -> anyhow::Result<Option<(String, String)>> {
        conn.blpop(keys, timeout.as_secs_f64())
            .await
            .context("failed to wait for wake-ups")
    }

    /// Puts failed job `id` back in the ready list with fresh attempts, optionally moving it to
    /// the task's newest version. Returns false when there is no failed job with that id.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn requeue(&self, queue: &str, id: &str, latest: bool) -> anyhow::Result<bool> {
        let keys = self.queue_keys(queue)?;
        let digest = if latest {
            let task: Option<String> = self
                .conn
                .clone()
                .hget(keys.job(id), "task")
                .await
                .with_context(|| format!("failed to read job {id}"))?;
            let Some(task) = task else { return Ok(false) };
            let Some(version) = self.task(&task).await? else {
                bail!("task `{task}` of job {id} no longer exists; upload it again");
            };
            version.digest
        } else {
            String::new()
        };
        let done: i64 = self
            .scripts
            .requeue
            .key(keys.job(id))
            .key(keys.failed())
            .key(keys.ready())
            .key(keys.wake())
            .arg(id)
            .arg(digest)
            .invoke_async(&mut self.conn.clone())
            .await
            .with_context(|| format!("failed to requeue job {id}"))?;
        Ok(done == 1)
    }

    /// Job `id` of `queue` with its attempts, if it exists.
    ///
    /// # Errors
    ///
    /// When Redis fails or holds a malformed record.
    pub async fn job(&self, queue: &str, id: &str) -> anyhow::Result<Option<JobView>> {
        let keys = self.queue_keys(queue)?;
        let mut conn = self.conn.clone();
        let fields: Vec<(String, Vec<u8>)> = conn
            .hgetall(keys.job(id))
            .await
            .with_context(|| format!("failed to read job {id}"))?;
        if fields.is_empty() {
            return Ok(None);
        }
        let fields: std::collections::HashMap<String, Vec<u8>> = fields.into_iter().collect();
        let text = |name: &str| {
            fields
                .get(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
        let policy: Option<RetryPolicy> =
            text("policy").and_then(|json| serde_json::from_str(&json).ok());
        let state = JobState::parse(&text("state").unwrap_or_default())
            .map_err(|msg| anyhow!("job {id} is malformed: {msg}"))?;
        let result = fields.get("result");
        Ok(Some(JobView {
            id: id.to_owned(),
            queue: queue.to_owned(),
            task: text("task").unwrap_or_default(),
            digest: text("digest").unwrap_or_default(),
            state,
            attempt: number("attempt").unwrap_or(0) as u32,
            max_attempts: policy.map_or(0, |p| p.max_attempts),
            losses: number("losses").unwrap_or(0) as u32,
            enqueued_at_ms: number("enqueued_at"),
            started_at_ms: number("started_at"),
            finished_at_ms: number("finished_at"),
            due_at_ms: number("due_at").filter(|_| state == JobState::Scheduled),
            outcome: text("outcome").and_then(|json| serde_json::from_str(&json).ok()),
            result: result.map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
            result_bytes: result.map(Vec::len),
            payload_bytes: fields.get("payload").map_or(0, Vec::len),
            attempts: attempt_records(&fields),
        }))
    }

    /// Up to `limit` jobs of `queue` in `state`, optionally only of `task`.
    ///
    /// Queued jobs are listed in the order they will run; the other states newest first.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn jobs(
        &self,
        queue: &str,
        state: JobState,
        task: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<JobSummary>> {
        let keys = self.queue_keys(queue)?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        // Scan more ids than asked when filtering by task, within a fixed bound.
        let scan = if task.is_some() {
            limit.saturating_mul(20).min(10_000)
        } else {
            limit
        };
        let end = scan as isize - 1;
        let ids: Vec<String> = match state {
            JobState::Queued => conn.lrange(keys.ready(), 0, end).await,
            JobState::Scheduled => conn.zrange(keys.scheduled(), 0, end).await,
            JobState::Running => {
                conn.zrange(keys.running(), 0, end)
                    .await
                    .map(|leases: Vec<String>| {
                        leases.iter().map(|m| lease_job_id(m).to_owned()).collect()
                    })
            }
            JobState::Succeeded => conn.zrevrange(keys.succeeded(), 0, end).await,
            JobState::Failed => conn.zrevrange(keys.failed(), 0, end).await,
        }
        .with_context(|| format!("failed to list {} jobs", state.as_str()))?;
        // redis-rs refuses to send an empty pipeline.
        if ids.is_empty() {
            return Ok(Vec::new());
        }

        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(keys.job(id))
                .arg("task")
                .arg("attempt")
                .arg("outcome");
        }
        let rows: Vec<(Option<String>, Option<u32>, Option<String>)> = pipe
            .query_async(&mut conn)
            .await
            .context("failed to read jobs")?;
        Ok(ids
            .into_iter()
            .zip(rows)
            .filter_map(|(id, (job_task, attempt, outcome))| {
                let job_task = job_task?;
                if task.is_some_and(|wanted| wanted != job_task) {
                    return None;
                }
                let last_outcome = outcome
                    .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
                    .map(|value| model::describe_outcome(&value))
                    .unwrap_or_default();
                Some(JobSummary {
                    id,
                    task: job_task,
                    state,
                    attempt: attempt.unwrap_or(0),
                    last_outcome,
                })
            })
            .take(limit)
            .collect())
    }

    /// Counts per state and the workers seen on `queue` in the last `alive_within`.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn stats(&self, queue: &str, alive_within: Duration) -> anyhow::Result<QueueStats> {
        let keys = self.queue_keys(queue)?;
        let mut conn = self.conn.clone();
        type Counts = (
            u64,
            u64,
            u64,
            u64,
            u64,
            Vec<(String, u64)>,
            Vec<(String, i64)>,
            (Option<u64>, Option<u64>),
            (u64, u64),
        );
        let counts: Counts = redis::pipe()
            .llen(keys.ready())
            .zcard(keys.scheduled())
            .zcard(keys.running())
            .zcard(keys.succeeded())
            .zcard(keys.failed())
            .zrange_withscores(keys.workers(), 0, -1)
            .hgetall(keys.counts())
            .cmd("HMGET")
            .arg(keys.config())
            .arg("succeeded_retention_ms")
            .arg("failed_retention_ms")
            .cmd("TIME")
            .query_async(&mut conn)
            .await
            .with_context(|| format!("failed to read stats of queue `{queue}`"))?;
        let (queued, scheduled, running, succeeded, failed, workers, per_task, retention, time) =
            counts;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        let alive_ms = alive_within.as_millis() as u64;
        Ok(QueueStats {
            queue: queue.to_owned(),
            counts: vec![
                (JobState::Queued, queued),
                (JobState::Scheduled, scheduled),
                (JobState::Running, running),
                (JobState::Succeeded, succeeded),
                (JobState::Failed, failed),
            ],
            workers: workers
                .into_iter()
                .map(|(worker, seen)| (worker, now_ms.saturating_sub(seen)))
                .filter(|(_, ago)| *ago <= alive_ms)
                .collect(),
            tasks: task_counts(per_task),
            succeeded_retention_ms: retention
                .0
                .unwrap_or(SUCCEEDED_RETENTION.as_millis() as u64),
            failed_retention_ms: retention.1.unwrap_or(FAILED_RETENTION.as_millis() as u64),
        })
    }
}

/// Groups the `<task>|<state>` counters by task, skipping zeros and unknown states.
/// The attempt records kept in a job's hash, oldest first. Each lease writes its record
/// under `run:<lease token>`, and tokens only grow.
fn attempt_records(fields: &HashMap<String, Vec<u8>>) -> Vec<AttemptRecord> {
    let mut runs: Vec<(u64, AttemptRecord)> = fields
        .iter()
        .filter_map(|(name, json)| {
            let token = name.strip_prefix("run:")?.parse().ok()?;
            Some((token, serde_json::from_slice(json).ok()?))
        })
        .collect();
    runs.sort_by_key(|(token, _)| *token);
    runs.into_iter().map(|(_, record)| record).collect()
}

/// The job id of a lease, the running set's member `<id>|<token>`.
pub(crate) fn lease_job_id(member: &str) -> &str {
    member.rsplit_once('|').map_or(member, |(id, _)| id)
}

fn task_counts(fields: Vec<(String, i64)>) -> Vec<TaskCounts> {
    let mut by_task: std::collections::BTreeMap<String, Vec<(JobState, u64)>> = Default::default();
    for (field, count) in fields {
        let Some((task, state)) = field.rsplit_once('|') else {
            continue;
        };
        let (Ok(state), Ok(count)) = (JobState::parse(state), u64::try_from(count)) else {
            continue;
        };
        if count > 0 {
            by_task
                .entry(task.to_owned())
                .or_default()
                .push((state, count));
        }
    }
    by_task
        .into_iter()
        .map(|(task, mut counts)| {
            counts.sort_by_key(|(state, _)| JobState::ALL.iter().position(|s| s == state));
            TaskCounts { task, counts }
        })
        .collect()
}

/// How many jobs one enqueue script call adds. Big enough that the call's own cost is shared
/// by many jobs, small enough that one call holds Redis for well under a millisecond.
const ENQUEUE_SCRIPT_BATCH: usize = 100;
/// How many enqueue script calls go into one pipeline.
const ENQUEUE_PIPELINE: usize = 10;

/// The enqueue script call for `jobs` (see `lua/enqueue.lua` for the protocol).
fn enqueue_invocation<'s>(
    script: &'s Script,
    keys: &QueueKeys,
    jobs: &[PreparedJob<'_>],
) -> redis::ScriptInvocation<'s> {
    let mut invocation = script.prepare_invoke();
    invocation
        .key(keys.ready())
        .key(keys.scheduled())
        .key(keys.wake())
        .arg(keys.prefix());
    for job in jobs {
        job.add_args(&mut invocation);
    }
    invocation
}

fn enqueue_failure(jobs: &[PreparedJob<'_>]) -> String {
    match jobs {
        [job] => format!("failed to enqueue a `{}` job", job.task),
        _ => format!("failed to enqueue a batch of {} jobs", jobs.len()),
    }
}

/// One checked enqueue request, ready to send.
struct PreparedJob<'a> {
    id: String,
    task: &'a str,
    digest: String,
    payload: &'a [u8],
    policy_json: String,
    timeout_ms: u64,
    memory_bytes: u64,
    delay_ms: u64,
    at_ms: u64,
    idempotency: Option<(String, u64)>,
}

impl<'a> PreparedJob<'a> {
    /// Checks `request` against `task`'s defaults and the size limit.
    fn new(
        keys: &QueueKeys,
        request: &'a EnqueueRequest,
        task: &TaskVersion,
        max_payload_bytes: usize,
        quotas: &Quotas,
    ) -> anyhow::Result<Self> {
        if request.payload.len() > max_payload_bytes {
            bail!(Refusal::TooLarge(format!(
                "the payload is {} bytes, over the limit of {max_payload_bytes} bytes; store \
                 large inputs elsewhere and pass a reference, or raise the tenant's limit with \
                 `wasm-runner tenant update NAME --max-payload SIZE`",
                request.payload.len()
            )));
        }
        let policy = request.policy.as_ref().unwrap_or(&task.defaults.policy);
        policy.validate().map_err(Refusal::Invalid)?;
        let timeout_ms = request
            .timeout
            .map_or(task.defaults.timeout_ms, |t| t.as_millis() as u64);
        let memory_bytes = request.memory_bytes.unwrap_or(task.defaults.memory_bytes);
        crate::config::Limits {
            memory_bytes,
            timeout: Duration::from_millis(timeout_ms),
            fuel: None,
        }
        .validate()
        .map_err(Refusal::Invalid)?;
        quotas.check_limits(memory_bytes, timeout_ms)?;
        let idempotency = match &request.idempotency_key {
            Some(key) => {
                check_name("idempotency key", key).map_err(Refusal::Invalid)?;
                Some((keys.idempotency(key), IDEMPOTENCY_TTL.as_millis() as u64))
            }
            None => None,
        };
        Ok(PreparedJob {
            id: uuid::Uuid::now_v7().to_string(),
            task: &request.task,
            digest: task.digest.clone(),
            payload: &request.payload,
            policy_json: serde_json::to_string(policy)?,
            timeout_ms,
            memory_bytes,
            delay_ms: request.delay.map_or(0, |d| d.as_millis() as u64),
            at_ms: request.at_ms.unwrap_or(0),
            idempotency,
        })
    }

    /// Appends this job's arguments to an enqueue script call (see `lua/enqueue.lua`).
    fn add_args(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        let (idem_key, idem_ttl) = match &self.idempotency {
            Some((key, ttl)) => (key.as_str(), *ttl),
            None => ("", 0),
        };
        invocation
            .arg(&self.id)
            .arg(self.delay_ms)
            .arg(self.at_ms)
            .arg(idem_key)
            .arg(idem_ttl)
            .arg(self.task)
            .arg(&self.digest)
            .arg(self.payload)
            .arg(&self.policy_json)
            .arg(self.timeout_ms)
            .arg(self.memory_bytes);
    }
}

fn parse_leased(values: Vec<Value>, leased_at_ms: u64) -> anyhow::Result<LeasedJob> {
    let mut values = values.into_iter();
    let mut next = |what: &str| {
        values
            .next()
            .ok_or_else(|| anyhow!("fetched job is missing its {what}"))
    };
    fn parse<T: FromRedisValue>(value: Value, what: &str) -> anyhow::Result<T> {
        T::from_redis_value(value).map_err(|err| anyhow!("fetched job has a bad {what}: {err}"))
    }
    let id: String = parse(next("id")?, "id")?;
    let token: u64 = parse(next("token")?, "token")?;
    let attempt: u32 = parse(next("attempt")?, "attempt")?;
    let losses: u32 = parse(next("losses")?, "losses")?;
    let task: String = parse(next("task")?, "task")?;
    let digest: String = parse(next("digest")?, "digest")?;
    let payload: Vec<u8> = parse(next("payload")?, "payload")?;
    let policy: String = parse(next("policy")?, "policy")?;
    let timeout_ms: u64 = parse(next("timeout")?, "timeout")?;
    let memory_bytes: u64 = parse(next("memory limit")?, "memory limit")?;
    let policy = serde_json::from_str(&policy)
        .with_context(|| format!("job {id} has a malformed retry policy"))?;
    Ok(LeasedJob {
        id,
        token,
        attempt,
        losses,
        task,
        digest,
        payload,
        policy,
        timeout: Duration::from_millis(timeout_ms),
        memory_bytes,
        leased_at_ms,
    })
}
