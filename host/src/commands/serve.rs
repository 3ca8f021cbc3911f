//! `wasm-runner serve`: runs a worker until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;

use super::CommandError;
use super::common::block_on;
use crate::api::{ApiState, serve_http};
use crate::config::parse_duration;
use crate::queue::check_name;
use crate::runtime::{EngineOptions, Executor};
use crate::worker::{WorkerConfig, serve};

/// Run a worker: fetch jobs, run them in the sandbox, record outcomes, retry.
///
/// Stops on SIGTERM or Ctrl-C: no new jobs are fetched, running jobs get the grace period to
/// finish, and the rest go back to their queue without spending an attempt. Exits 0.
#[derive(Debug, Args)]
pub struct ServeCommand {
    /// How many jobs run at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    concurrency: usize,

    /// The Redis server, or `cluster:URL,URL,...` for any nodes of a Redis Cluster.
    #[arg(
        long,
        env = "WASM_RUNNER_REDIS",
        default_value = "redis://127.0.0.1:6379",
        value_name = "URL"
    )]
    redis: String,

    /// A tenant whose jobs to run; repeat for several. Default: every tenant, including ones
    /// created while the worker runs. Tenants share the worker's slots round-robin.
    #[arg(long = "tenant", value_name = "NAME")]
    tenants: Vec<String>,

    /// A queue to serve of each tenant; repeat for several. Default: every queue the tenants
    /// have enqueued to, including new ones. Queues of a tenant are served round-robin.
    #[arg(long = "queue", value_name = "NAME")]
    queues: Vec<String>,

    /// How long a job's lease lasts without renewal; a worker that dies loses its jobs to other
    /// workers after this long. Renewed every third of it.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    lease: Duration,

    /// How long running jobs may go on after SIGTERM before they are released.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    grace: Duration,

    /// Where compiled tasks are cached across restarts. Default: `$XDG_CACHE_HOME/wasm-runner`
    /// or `~/.cache/wasm-runner`.
    #[arg(long, value_name = "DIR", conflicts_with = "no_cache")]
    cache_dir: Option<PathBuf>,

    /// Do not cache compiled tasks on disk.
    #[arg(long)]
    no_cache: bool,

    /// How long the served queues keep succeeded jobs and their results (default 1 day).
    /// Stored with each queue, so it holds for every worker of the queue.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    succeeded_retention: Option<Duration>,

    /// How long the served queues keep failed jobs (default 7 days). Stored with each queue.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    failed_retention: Option<Duration>,

    /// This worker's id in attempt records and stats. Default: hostname and process id.
    #[arg(long, value_name = "ID")]
    worker_id: Option<String>,

    /// Also serve the HTTP API on this address, e.g. `127.0.0.1:8080` (see `wasm-runner api`).
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,

    /// Meter fuel, so that tenants' fuel quotas are enforced. Metering slows call-heavy
    /// guests by up to ~60%, so it is off unless asked for.
    #[arg(long)]
    fuel_metering: bool,

    /// The most job outcomes written to Redis in one call. Outcomes that end while the
    /// previous call is in flight share the next one, so a busy worker spends far less than
    /// one round trip per job; nothing ever waits to fill a batch.
    #[arg(long, default_value_t = crate::worker::DEFAULT_FINISH_BATCH, value_name = "N")]
    finish_batch: usize,

    /// After how many lost workers a job fails as `worker_lost` instead of running again: a
    /// job whose lease ran out this many times (its worker was killed, stalled or cut off each
    /// time) is taken for one that kills its worker. Workers sharing a queue should agree.
    #[arg(long, default_value_t = crate::queue::MAX_WORKER_LOSSES, value_name = "N")]
    max_worker_losses: u32,
}

impl ServeCommand {
    /// Runs the worker until a signal.
    ///
    /// # Errors
    ///
    /// A usage error for bad flags. A Redis that is unreachable at start is waited for.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        let usage = |msg: String| CommandError::Usage(anyhow!(msg));
        if !(1..=1024).contains(&self.concurrency) {
            return Err(usage(format!(
                "concurrency {} is out of range; use 1 to 1024",
                self.concurrency
            )));
        }
        if !(1..=1000).contains(&self.finish_batch) {
            return Err(usage(format!(
                "finish batch {} is out of range; use 1 to 1000",
                self.finish_batch
            )));
        }
        if !(1..=1000).contains(&self.max_worker_losses) {
            return Err(usage(format!(
                "max worker losses {} is out of range; use 1 to 1000",
                self.max_worker_losses
            )));
        }
        if self.lease < Duration::from_millis(300) {
            return Err(usage("the lease must be at least 300ms".to_owned()));
        }
        for queue in &self.queues {
            check_name("queue", queue).map_err(usage)?;
        }
        for tenant in &self.tenants {
            check_name("tenant", tenant).map_err(usage)?;
        }
        crate::queue::Target::parse(&self.redis).map_err(CommandError::Usage)?;

        let executor = Executor::new(EngineOptions {
            max_concurrent: self.concurrency as u32,
            fuel: self.fuel_metering,
            ..EngineOptions::default()
        })
        .map_err(CommandError::Host)?;
        let defaults = WorkerConfig::new(self.redis.clone());
        let non_empty = |names: &Vec<String>| (!names.is_empty()).then(|| names.clone());
        let config = WorkerConfig {
            tenants: non_empty(&self.tenants),
            queues: non_empty(&self.queues),
            concurrency: self.concurrency,
            lease: self.lease,
            grace: self.grace,
            cache_dir: if self.no_cache {
                None
            } else {
                self.cache_dir.clone().or_else(default_cache_dir)
            },
            worker_id: self.worker_id.clone().unwrap_or(defaults.worker_id.clone()),
            succeeded_retention: self.succeeded_retention,
            failed_retention: self.failed_retention,
            finish_batch: self.finish_batch,
            max_worker_losses: self.max_worker_losses,
            ..defaults
        };
        let executor = Arc::new(executor);
        let http = self.http;
        block_on(async move {
            // One signal stops both the worker and the API.
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = stop.send(true);
            });
            let wait_for_stop = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            let api = match http {
                Some(address) => {
                    let listener = tokio::net::TcpListener::bind(address)
                        .await
                        .map_err(|err| super::api::bind_error(address, &err))?;
                    let conn = crate::queue::connect(&config.redis_url)
                        .await
                        .map_err(CommandError::Host)?;
                    tracing::info!(address = %address, "api listening");
                    let state = ApiState::new(conn, executor.clone());
                    Some(tokio::spawn(serve_http(
                        listener,
                        state,
                        wait_for_stop(stopped.clone()),
                    )))
                }
                None => None,
            };
            serve(config, executor, wait_for_stop(stopped))
                .await
                .map_err(CommandError::Host)?;
            if let Some(api) = api {
                api.await
                    .map_err(|err| CommandError::Host(anyhow!("the API task failed: {err}")))?
                    .map_err(CommandError::Host)?;
            }
            Ok(())
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

pub(super) async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            // Without a SIGTERM handler, Ctrl-C still works.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
    Some(base.join("wasm-runner"))
}
