//! A worker running inside the test process: the real `serve` loop on a tokio task, for tests
//! that need the worker's behaviour but not a separate process (those start the `wasm-runner`
//! binary instead, see `host/tests/support`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wasm_runner::runtime::{EngineOptions, Executor};
use wasm_runner::worker::{WorkerConfig, serve};

use crate::TestRedis;

/// How long [`InProcessWorker::stop`] waits for the worker to finish its grace period.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// A worker serving every tenant and queue of a [`TestRedis`] until stopped; dropping it aborts
/// the task, so a failing test leaves nothing running.
#[derive(Debug)]
pub struct InProcessWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl InProcessWorker {
    /// A worker named `worker_id` with `concurrency` slots and leases of `lease`, a 5 s grace,
    /// and everything else as `serve` has it by default.
    ///
    /// # Errors
    ///
    /// When the executor cannot be built.
    pub fn start(
        redis: &TestRedis,
        worker_id: &str,
        concurrency: usize,
        lease: Duration,
    ) -> anyhow::Result<InProcessWorker> {
        let config = WorkerConfig {
            concurrency,
            lease,
            grace: Duration::from_secs(5),
            worker_id: worker_id.into(),
            ..WorkerConfig::new(redis.url())
        };
        InProcessWorker::start_with(config, false)
    }

    /// A worker with `config`, on an executor of one slot per unit of concurrency that meters
    /// fuel when `fuel` is set (as `serve --fuel-metering`).
    ///
    /// # Errors
    ///
    /// When the executor cannot be built.
    pub fn start_with(config: WorkerConfig, fuel: bool) -> anyhow::Result<InProcessWorker> {
        let executor = Executor::new(EngineOptions {
            max_concurrent: u32::try_from(config.concurrency).context("concurrency too large")?,
            fuel,
            ..EngineOptions::default()
        })
        .context("the test worker's executor")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(config, Arc::new(executor), async {
            let _ = stopped.await;
        }));
        Ok(InProcessWorker {
            stop: Some(stop),
            handle,
        })
    }

    /// Whether the worker is still serving (it has not returned or panicked).
    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// Asks the worker to stop as on SIGTERM and waits for it, at most 15 s.
    ///
    /// # Errors
    ///
    /// What the worker returned, or that it panicked or did not stop in time.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(STOP_LIMIT, &mut self.handle)
            .await
            .with_context(|| format!("the worker did not stop within {STOP_LIMIT:?}"))?
            .context("the worker task panicked")?
    }
}

impl Drop for InProcessWorker {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
