//! Helpers shared by the process-level tests (`serve.rs`, `tenants.rs`, `chaos.rs`): a [`Cli`]
//! that runs `wasm-runner` commands against a private Redis, as any tenant; a [`Worker`] that is
//! a real `wasm-runner serve` process; and a bounded [`wait_for`].

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use wasm_runner::queue::{
    DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_QUEUE, DEFAULT_TENANT, EnqueueRequest, JobView,
};
use wasm_runner_tests::{TestRedis, guest};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_wasm-runner");
/// How often a wait loop looks again.
pub(crate) const POLL: Duration = Duration::from_millis(50);

/// Runs `wasm-runner` commands against one Redis, as one tenant (the default one unless made
/// with [`Cli::as_tenant`]) and on the default queue.
#[derive(Debug, Clone)]
pub(crate) struct Cli {
    pub(crate) url: String,
    /// The tenant the commands act as, passed in `WASM_RUNNER_TENANT`; `None` leaves it unset,
    /// so the commands fall back to the default tenant on their own.
    tenant: Option<String>,
}

impl Cli {
    pub(crate) fn new(redis: &TestRedis) -> Self {
        Cli::for_url(redis.url())
    }

    /// Commands against the Redis at `url`, e.g. a `cluster:` URL of a `TestRedisCluster`.
    pub(crate) fn for_url(url: String) -> Self {
        Cli { url, tenant: None }
    }

    /// The same commands, run as tenant `name` (through `WASM_RUNNER_TENANT`).
    #[allow(dead_code, reason = "`serve.rs` runs everything as the default tenant")]
    pub(crate) fn as_tenant(&self, name: &str) -> Cli {
        Cli {
            url: self.url.clone(),
            tenant: Some(name.to_owned()),
        }
    }

    /// The tenant the commands act as.
    pub(crate) fn tenant(&self) -> &str {
        self.tenant.as_deref().unwrap_or(DEFAULT_TENANT)
    }

    /// Fails when this tenant's default queue is inconsistent (see `Queue::check_invariants`).
    pub(crate) fn assert_consistent(&self) -> anyhow::Result<()> {
        self.assert_consistent_on(DEFAULT_QUEUE)
    }

    /// Fails when this tenant's queue `name` is inconsistent (see `Queue::check_invariants`).
    pub(crate) fn assert_consistent_on(&self, name: &str) -> anyhow::Result<()> {
        let problems = self.with_queue(async |queue| queue.check_invariants(name).await)?;
        ensure!(
            problems.is_empty(),
            "queue `{name}` of tenant `{}` inconsistent: {problems:#?}",
            self.tenant()
        );
        Ok(())
    }

    /// Runs `work` on this tenant's queue handle, in process, on a runtime of its own: for the
    /// bulk reads and writes that would take a process per job through the CLI.
    fn with_queue<T>(
        &self,
        work: impl AsyncFnOnce(wasm_runner::queue::Queue) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let queue = wasm_runner::queue::Queue::open(&self.url, self.tenant()).await?;
            work(queue).await
        })
    }

    /// Enqueues one job of `task` per payload on the default queue, in process and in batches
    /// (thousands of `enqueue` processes would take minutes), and returns their ids in order.
    #[allow(dead_code, reason = "only `chaos.rs` enqueues in bulk")]
    pub(crate) fn enqueue_many(
        &self,
        task: &str,
        payloads: &[String],
    ) -> anyhow::Result<Vec<String>> {
        self.enqueue_many_on(DEFAULT_QUEUE, task, payloads)
    }

    /// As [`Cli::enqueue_many`], on queue `name`.
    #[allow(dead_code, reason = "only `chaos.rs` enqueues in bulk")]
    pub(crate) fn enqueue_many_on(
        &self,
        name: &str,
        task: &str,
        payloads: &[String],
    ) -> anyhow::Result<Vec<String>> {
        let requests: Vec<EnqueueRequest> = payloads
            .iter()
            .map(|payload| EnqueueRequest::new(task, payload.as_bytes()))
            .collect();
        let enqueued = self.with_queue(async |queue| {
            queue
                .enqueue_batch(name, &requests, DEFAULT_MAX_PAYLOAD_BYTES)
                .await
        })?;
        ensure!(
            enqueued.iter().all(|job| job.created),
            "an enqueue returned an existing job"
        );
        Ok(enqueued.into_iter().map(|job| job.id).collect())
    }

    /// Jobs `ids` of the default queue with their attempt records, read in process; a job that
    /// does not exist is an error.
    #[allow(dead_code, reason = "only `chaos.rs` reads jobs in bulk")]
    pub(crate) fn job_views(&self, ids: &[String]) -> anyhow::Result<Vec<JobView>> {
        self.job_views_on(DEFAULT_QUEUE, ids)
    }

    /// As [`Cli::job_views`], on queue `name`.
    #[allow(dead_code, reason = "only `chaos.rs` reads jobs in bulk")]
    pub(crate) fn job_views_on(&self, name: &str, ids: &[String]) -> anyhow::Result<Vec<JobView>> {
        self.with_queue(async |queue| {
            let mut views = Vec::with_capacity(ids.len());
            for id in ids {
                let view = queue.job(name, id).await?;
                let view = view.with_context(|| format!("job {id} does not exist in `{name}`"))?;
                views.push(view);
            }
            Ok(views)
        })
    }

    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("WASM_RUNNER_REDIS", &self.url)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        match &self.tenant {
            Some(tenant) => command.env("WASM_RUNNER_TENANT", tenant),
            // Not inherited from the environment the tests run in either.
            None => command.env_remove("WASM_RUNNER_TENANT"),
        };
        command
    }

    pub(crate) fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("failed to start `wasm-runner {}`", args.join(" ")))
    }

    /// Runs a command that must succeed and returns its stdout.
    pub(crate) fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self.output(args)?;
        ensure!(
            output.status.success(),
            "`wasm-runner {}` as tenant `{}` failed ({}): {}",
            args.join(" "),
            self.tenant(),
            output.status,
            stderr(&output)
        );
        Ok(String::from_utf8(output.stdout)?)
    }

    pub(crate) fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let stdout = self.run(args)?;
        serde_json::from_str(&stdout).with_context(|| format!("not JSON: {stdout}"))
    }

    pub(crate) fn upload(&self, name: &str, package: &str) -> anyhow::Result<()> {
        self.upload_with(name, package, &[])
    }

    /// Uploads as [`Cli::upload`] does, with `flags` (e.g. a retry policy) added.
    pub(crate) fn upload_with(
        &self,
        name: &str,
        package: &str,
        flags: &[&str],
    ) -> anyhow::Result<()> {
        let path = guest(package);
        let path = path.to_str().context("guest path is not UTF-8")?;
        let mut args = vec!["upload", path, "--name", name];
        args.extend_from_slice(flags);
        self.run(&args)?;
        Ok(())
    }

    /// Enqueues a job and returns its id.
    pub(crate) fn enqueue(&self, task: &str, payload: &str) -> anyhow::Result<String> {
        let id = self.run(&["enqueue", task, "--payload", payload])?;
        Ok(id.trim().to_owned())
    }

    pub(crate) fn job(&self, id: &str) -> anyhow::Result<Value> {
        self.json(&["job", id, "--json"])
    }

    /// The ids of the jobs in `state`.
    pub(crate) fn ids(&self, state: &str) -> anyhow::Result<BTreeSet<String>> {
        let jobs = self.json(&["jobs", "--state", state, "--limit", "1000", "--json"])?;
        let jobs = jobs.as_array().context("`jobs --json` is not an array")?;
        jobs.iter()
            .map(|job| {
                let id = job["id"].as_str().context("a listed job has no id")?;
                Ok(id.to_owned())
            })
            .collect()
    }

    /// How many jobs the default queue holds in each state.
    pub(crate) fn counts(&self) -> anyhow::Result<HashMap<String, u64>> {
        self.counts_in(&[DEFAULT_QUEUE])
    }

    /// How many jobs queues `names` hold in each state, summed over the queues: one `stats`
    /// process for all of them, so a polling loop stays cheap.
    pub(crate) fn counts_in(&self, names: &[&str]) -> anyhow::Result<HashMap<String, u64>> {
        let mut args = vec!["stats", "--json"];
        for name in names {
            args.extend(["--queue", name]);
        }
        let stats = self.json(&args)?;
        let stats = stats.as_array().context("`stats --json` is not an array")?;
        ensure!(
            stats.len() == names.len(),
            "`stats --json` shows {} queues, not {}",
            stats.len(),
            names.len()
        );
        let mut sums: HashMap<String, u64> = HashMap::new();
        for queue in stats {
            let counts = queue["counts"]
                .as_array()
                .context("`stats --json` has no counts")?;
            for pair in counts {
                let state = pair[0].as_str().context("a count has no state")?;
                let n = pair[1].as_u64().context("a count has no number")?;
                *sums.entry(state.to_owned()).or_default() += n;
            }
        }
        Ok(sums)
    }

    pub(crate) fn count(&self, state: &str) -> anyhow::Result<u64> {
        Ok(self.counts()?.get(state).copied().unwrap_or(0))
    }
}

/// A `wasm-runner serve` process. Dropping it kills the process and prints the tail of its log,
/// which the test harness shows only when the test failed (it captures a test's output).
#[derive(Debug)]
pub(crate) struct Worker {
    pub(crate) id: String,
    child: Child,
    log: tempfile::NamedTempFile,
    /// Whether dropping the worker prints the tail of its log; off once a test took the log.
    print_tail: bool,
}

impl Worker {
    /// Starts a worker with id `id`, no disk cache, and `flags`.
    pub(crate) fn start(cli: &Cli, id: &str, flags: &[&str]) -> anyhow::Result<Self> {
        Worker::start_with_env(cli, id, flags, &[])
    }

    /// Starts a worker as [`Worker::start`] does, with environment variables `env` set on top
    /// (they win over the defaults, e.g. `RUST_LOG`, which is `info` otherwise).
    pub(crate) fn start_with_env(
        cli: &Cli,
        id: &str,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log = tempfile::NamedTempFile::new()?;
        let mut args = vec!["serve", "--worker-id", id, "--no-cache"];
        args.extend_from_slice(flags);
        let mut command = cli.command(&args);
        command.env("RUST_LOG", "info");
        command.envs(env.iter().copied());
        let child = command
            .stdout(Stdio::null())
            .stderr(log.reopen()?)
            .spawn()
            .context("failed to start `wasm-runner serve`")?;
        Ok(Worker {
            id: id.to_owned(),
            child,
            log,
            print_tail: true,
        })
    }

    /// Kills the worker with SIGKILL, as a crash would, and returns its whole log. The caller
    /// keeps the log, so dropping the worker does not print it.
    #[allow(dead_code, reason = "only `chaos.rs` keeps the logs of killed workers")]
    pub(crate) fn kill_for_log(mut self) -> anyhow::Result<String> {
        self.kill()?;
        self.print_tail = false;
        Ok(self.log())
    }

    pub(crate) fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .context("failed to run `kill`")?;
        ensure!(status.success(), "`kill {signal}` failed: {status}");
        Ok(())
    }

    /// Kills the worker with SIGKILL, as a crash would, and reaps it.
    #[allow(dead_code, reason = "`tenants.rs` crashes no worker")]
    pub(crate) fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    pub(crate) fn is_alive(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    pub(crate) fn wait_exit(&mut self, within: Duration) -> anyhow::Result<ExitStatus> {
        let what = format!("worker {} to exit", self.id);
        wait_for(&what, within, || Ok(self.child.try_wait()?))
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.print_tail {
            return;
        }
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        eprintln!("--- worker {} log (tail) ---\n{}", self.id, tail.join("\n"));
    }
}

/// Calls `check` until it returns `Some`, and fails after `within` naming what it waited for.
pub(crate) fn wait_for<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A job's finished attempt records.
pub(crate) fn attempts(job: &Value) -> &[Value] {
    job["attempts"].as_array().map_or(&[], Vec::as_slice)
}

/// How many of a job's attempt records ended with outcome class `class`.
pub(crate) fn count_class(job: &Value, class: &str) -> usize {
    attempts(job)
        .iter()
        .filter(|record| record["outcome"]["class"] == class)
        .count()
}

/// Runs `args` and checks that it fails with `code` and a message containing `expected`.
pub(crate) fn assert_refused(
    cli: &Cli,
    args: &[&str],
    code: u8,
    expected: &str,
) -> anyhow::Result<()> {
    let output = cli.output(args)?;
    let message = stderr(&output);
    assert_eq!(
        output.status.code(),
        Some(i32::from(code)),
        "`wasm-runner {}` as tenant `{}`: {message}",
        args.join(" "),
        cli.tenant()
    );
    assert!(
        message.contains(expected),
        "`wasm-runner {}` as tenant `{}`: expected {expected:?} in {message:?}",
        args.join(" "),
        cli.tenant()
    );
    Ok(())
}
