//! The sandbox: loads task components and runs one attempt of a job in a fresh instance under
//! memory, time and (optionally) fuel limits. The main type is [`Executor`].
//!
//! Nothing here knows about Redis or retries; an attempt goes in, a [`RunReport`] comes out.

mod abort;
mod bindings;
mod capture;
mod classify;
mod engine;
mod imports;
mod limiter;
mod load;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::Linker;
use wasmtime::{Engine, Store, UpdateDeadline};

use crate::config::Limits;
use crate::job::{JobContext, JobLog};
use crate::outcome::Outcome;

pub use abort::AbortHandle;
pub use engine::EngineOptions;
pub use load::{LoadError, TASK_WORLD, TaskComponent};

use classify::Phase;
use engine::EpochTicker;
use state::JobState;

/// Everything one attempt produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// How the attempt ended.
    pub outcome: Outcome,
    /// The task's output; present only when the outcome is [`Outcome::Ok`].
    pub output: Option<Vec<u8>>,
    /// What the task logged and printed.
    pub log: JobLog,
    /// Wall-clock time from the start of instantiation to the end of the call.
    pub elapsed: Duration,
    /// The most linear memory the task had at any point, in bytes.
    pub peak_memory_bytes: u64,
    /// Fuel used, when the attempt had a fuel budget.
    pub fuel_consumed: Option<u64>,
}

/// Compiles tasks and runs attempts. One per process; cheap to share behind an `Arc`.
///
/// At most [`EngineOptions::max_concurrent`] attempts run at once; further calls to
/// [`Executor::run`] wait for a slot, and that wait does not count against their timeout.
pub struct Executor {
    engine: Engine,
    linker: Linker<JobState>,
    options: EngineOptions,
    pooling: bool,
    slots: Arc<Semaphore>,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("options", &self.options)
            .field("pooling", &self.pooling)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// Creates the engine, its linker and its epoch ticker.
    ///
    /// # Errors
    ///
    /// Fails if wasmtime cannot create an engine on this host or the ticker thread cannot start.
    pub fn new(options: EngineOptions) -> anyhow::Result<Self> {
        let (engine, pooling) = engine::build_engine(&options)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bindings::wasm_runner::task::host_log::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |state| state,
        )?;

        let ticker = EpochTicker::start(&engine)?;
        let slots = Arc::new(Semaphore::new(options.max_concurrent.max(1) as usize));
        tracing::debug!(
            max_concurrent = options.max_concurrent,
            pooling,
            fuel = options.fuel,
            "executor ready"
        );
        Ok(Executor {
            engine,
            linker,
            options,
            pooling,
            slots,
            _ticker: ticker,
        })
    }

    /// The wasmtime engine, for callers that precompile or benchmark against it.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The settings this executor was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Whether instances come from the pooling allocator (see [`EngineOptions`]).
    pub fn is_pooling(&self) -> bool {
        self.pooling
    }

    /// Checks that `wasm` is a component implementing the task world, compiles it, and links
    /// it, so that each attempt only has to instantiate.
    ///
    /// # Errors
    ///
    /// Returns the [`LoadError`] that says what is wrong with the file.
    pub fn load(&self, wasm: &[u8]) -> Result<TaskComponent, LoadError> {
        load::load(&self.engine, &self.linker, wasm)
    }

    /// [`Executor::load`], keeping the compiled code in `cache_dir` so that the next process
    /// with the same engine settings skips compilation.
    ///
    /// Artifacts are named by the component's `digest` and a hash of the engine's settings and
    /// wasmtime version. A cache file that cannot be read or used is replaced; a cache that
    /// cannot be written is skipped with a warning.
    ///
    /// # Errors
    ///
    /// As [`Executor::load`].
    pub fn load_cached(
        &self,
        wasm: &[u8],
        digest: &str,
        cache_dir: Option<&std::path::Path>,
    ) -> Result<TaskComponent, LoadError> {
        match cache_dir {
            Some(dir) => load::load_cached(&self.engine, &self.linker, wasm, digest, dir),
            None => self.load(wasm),
        }
    }

    /// Checks `limits` against this executor's settings.
    ///
    /// # Errors
    ///
    /// Returns a message when a limit is out of range, above the engine's memory ceiling, or
    /// asks for fuel from an executor built without fuel metering.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), String> {
        limits.validate()?;
        if limits.memory_bytes > self.options.memory_ceiling_bytes {
            return Err(format!(
                "memory limit {} is above this worker's ceiling of {}",
                bytesize::ByteSize(limits.memory_bytes),
                bytesize::ByteSize(self.options.memory_ceiling_bytes)
            ));
        }
        if limits.fuel.is_some() && !self.options.fuel {
            return Err("a fuel budget needs an executor built with fuel metering on".to_owned());
        }
        Ok(())
    }

    /// Runs one attempt of a job in a fresh instance and reports how it ended.
    ///
    /// Never fails and never panics on guest behaviour: every way the attempt can end,
    /// including limits that are out of range for this executor, is an [`Outcome`].
    pub async fn run(
        &self,
        task: &TaskComponent,
        ctx: &JobContext,
        payload: &[u8],
        limits: &Limits,
    ) -> RunReport {
        self.run_abortable(task, ctx, payload, limits, &AbortHandle::new())
            .await
    }

    /// [`Executor::run`], stopped early with [`Outcome::Aborted`] if `abort` is triggered.
    #[tracing::instrument(
        name = "attempt",
        skip_all,
        fields(job_id = %ctx.job_id, task = %ctx.task_name, attempt = ctx.attempt),
    )]
    pub async fn run_abortable(
        &self,
        task: &TaskComponent,
        ctx: &JobContext,
        payload: &[u8],
        limits: &Limits,
        abort: &AbortHandle,
    ) -> RunReport {
        if let Err(message) = self.check_limits(limits) {
            return RunReport::host_error(format!("refusing to run: {message}"));
        }
        // The semaphore lives as long as the executor and is never closed.
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("executor slots are never closed");

        let started = Instant::now();
        let deadline = started + limits.timeout;
        let mut store = self.new_store(limits, started, deadline, abort.clone());

        let wit_ctx = bindings::JobContext {
            job_id: ctx.job_id.clone(),
            attempt: ctx.attempt,
            max_attempts: ctx.max_attempts,
            task_name: ctx.task_name.clone(),
            tenant: ctx.tenant.clone(),
        };
        let call = async {
            let instance = task
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|err| (Phase::Instantiate, err))?;
            instance
                .call_run(&mut store, &wit_ctx, payload)
                .await
                .map_err(|err| (Phase::Call, err))
        };
        // The epoch deadline stops guest code; this outer timeout also stops a guest that is
        // blocked inside a host call (a long sleep), where epochs are not checked. An abort
        // likewise stops both.
        let result = tokio::select! {
            result = tokio::time::timeout_at(deadline.into(), call) => Some(result),
            () = abort.aborted() => None,
        };
        let elapsed = started.elapsed();

        let fuel_consumed = limits.fuel.map(|budget| {
            // Reading fuel fails only when fuel is off, which check_limits ruled out.
            budget.saturating_sub(store.get_fuel().unwrap_or(0))
        });
        let state = store.into_data();
        let memory_limit_hit = state.limiter.hit();
        let peak_memory_bytes = state.limiter.peak_bytes();
        let log = finish_log(state);

        let (outcome, output) = match result {
            // An abort can also surface as an epoch interrupt from inside the guest.
            None | Some(_) if abort.is_aborted() => (
                Outcome::Aborted {
                    reason: abort.reason().unwrap_or_default(),
                },
                None,
            ),
            None => (
                Outcome::HostError {
                    message: "the attempt stopped without a result or an abort".to_owned(),
                },
                None,
            ),
            Some(Err(_elapsed)) => (
                Outcome::TimedOut {
                    timeout_ms: limits.timeout.as_millis() as u64,
                },
                None,
            ),
            Some(Ok(Ok(Ok(output)))) => (Outcome::Ok, Some(output)),
            Some(Ok(Ok(Err(error)))) => (classify::task_error(error), None),
            Some(Ok(Err((phase, err)))) => {
                let outcome =
                    classify::wasm_error(phase, &err, limits, memory_limit_hit, &log.stderr);
                (outcome, None)
            }
        };
        tracing::info!(
            outcome = outcome.name(),
            elapsed_ms = elapsed.as_millis() as u64,
            peak_memory_bytes,
            "attempt finished"
        );
        RunReport {
            outcome,
            output,
            log,
            elapsed,
            peak_memory_bytes,
            fuel_consumed,
        }
    }

    fn new_store(
        &self,
        limits: &Limits,
        started: Instant,
        deadline: Instant,
        abort: AbortHandle,
    ) -> Store<JobState> {
        let mut store = Store::new(&self.engine, JobState::new(limits.memory_bytes, started));
        store.limiter(|state| &mut state.limiter);
        if self.options.fuel {
            // With metering on, a store without fuel traps at once; no budget means unlimited.
            // Setting fuel fails only when metering is off, which was just checked.
            let _ = store.set_fuel(limits.fuel.unwrap_or(u64::MAX));
        }
        // Check the clock at every tick: yield to the async runtime while time is left, so one
        // busy guest cannot hog a runtime thread, and stop the guest once the deadline passes.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if abort.is_aborted() || Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

fn finish_log(state: JobState) -> JobLog {
    let (stdout, stdout_dropped_bytes) = state.stdout.render();
    let (stderr, stderr_dropped_bytes) = state.stderr.render();
    let (records, records_dropped) = state.log.finish();
    JobLog {
        records,
        records_dropped,
        stdout,
        stdout_dropped_bytes,
        stderr,
        stderr_dropped_bytes,
    }
}

impl RunReport {
    /// A report for an attempt the host could not run.
    pub fn host_error(message: String) -> Self {
        RunReport {
            outcome: Outcome::HostError { message },
            output: None,
            log: JobLog::default(),
            elapsed: Duration::ZERO,
            peak_memory_bytes: 0,
            fuel_consumed: None,
        }
    }
}
