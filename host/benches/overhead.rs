//! Per-job overhead of the executor, against bare wasmtime, for the `noop` or `hello` example.
//!
//! Run with `cargo bench -p wasm-runner --bench overhead`. Flags (after `--`):
//!
//! - `--jobs N`: jobs per path, default 5,000;
//! - `--concurrency N`: the executor's slot count, as `wasm-runner serve --concurrency` sets it,
//!   default 8 (serve's default); the jobs still run one at a time. The pool batches the return
//!   of memory to the kernel over this many slots, so 1 shows the unbatched worst case;
//! - `--task noop|hello`: the example to run, default `noop` (it does nothing, so a job costs
//!   exactly the sandbox); `hello` adds JSON decoding, a log record and a JSON result;
//! - `--json PATH`: also write the figures to `PATH` as JSON (shape below).
//!
//! Three ways of running one job are measured side by side on one thread, interleaved in rounds
//! so machine drift hits all of them alike:
//!
//! - `executor`: `Executor::run`, everything a real attempt does (limits, deadline, log and
//!   stdout/stderr capture, classification);
//! - `bare, same engine`: a fresh store, instantiate from an `InstancePre`, call `run`, drop,
//!   on the executor's own engine: the floor for this engine configuration;
//! - `bare, stock engine`: the same on wasmtime's default pooling configuration.
//!
//! Each job is timed from store creation to drop. Output is a Markdown table, and with
//! `--json` a file shaped like
//! `{"jobs": N, "task": "noop", "paths": {"executor": {"p50_us": f, "p99_us": f, "mean_us": f},
//! "bare_same_engine": {..}, "bare_stock_engine": {..}}}`, which the harness in `bench/` reads.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use wasm_runner::config::Limits;
use wasm_runner::job::JobContext;
use wasm_runner::runtime::{EngineOptions, Executor};

mod bare {
    wasmtime::component::bindgen!({
        world: "task",
        path: "../wit",
        exports: { default: async },
    });
}

/// Jobs per path in a round; the paths take turns so drift on a shared machine hits each alike.
const ROUND: usize = 250;
const WARM_UP_JOBS: usize = 500;

/// The example a bench run measures.
#[derive(Debug, Clone, Copy)]
enum Task {
    Noop,
    Hello,
}

impl Task {
    fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "noop" => Ok(Task::Noop),
            "hello" => Ok(Task::Hello),
            other => anyhow::bail!("unknown task `{other}`; expected `noop` or `hello`"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Task::Noop => "noop",
            Task::Hello => "hello",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Task::Noop => "example-noop",
            Task::Hello => "example-hello",
        }
    }

    fn payload(self) -> &'static [u8] {
        match self {
            Task::Noop => b"{}",
            Task::Hello => br#"{"name": "Bench"}"#,
        }
    }
}

#[derive(Debug)]
struct Args {
    jobs: usize,
    concurrency: u32,
    task: Task,
    json: Option<PathBuf>,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut args = Args {
            jobs: 5_000,
            concurrency: 8,
            task: Task::Noop,
            json: None,
        };
        let mut raw = std::env::args().skip(1);
        while let Some(flag) = raw.next() {
            // `cargo bench` passes `--bench` to every bench binary; it carries no value.
            if flag == "--bench" {
                continue;
            }
            let Some(value) = raw.next() else {
                anyhow::bail!("flag `{flag}` needs a value");
            };
            match flag.as_str() {
                "--jobs" => args.jobs = number(&flag, &value)?,
                "--concurrency" => args.concurrency = number(&flag, &value)?,
                "--task" => args.task = Task::parse(&value)?,
                "--json" => args.json = Some(PathBuf::from(value)),
                other => anyhow::bail!(
                    "unknown flag `{other}`; expected --jobs, --concurrency, --task or --json"
                ),
            }
        }
        anyhow::ensure!(args.jobs > 0, "--jobs must be at least 1");
        anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
        Ok(args)
    }
}

fn number<N: std::str::FromStr>(flag: &str, value: &str) -> anyhow::Result<N> {
    value
        .parse()
        .map_err(|_| anyhow::anyhow!("{flag} takes a whole number, not `{value}`"))
}

struct BareState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for BareState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bare::wasm_runner::task::host_log::Host for BareState {
    fn log(
        &mut self,
        _: bare::wasm_runner::task::host_log::Level,
        _: String,
        _: Vec<(String, String)>,
    ) {
    }
}

struct Bare {
    engine: Engine,
    pre: bare::TaskPre<BareState>,
}

impl Bare {
    fn new(engine: Engine, wasm: &[u8]) -> anyhow::Result<Self> {
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bare::wasm_runner::task::host_log::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        let component = wasmtime::component::Component::new(&engine, wasm)?;
        let pre = bare::TaskPre::new(linker.instantiate_pre(&component)?)?;
        Ok(Bare { engine, pre })
    }

    async fn run_one(&self, ctx: &bare::JobContext, payload: &[u8]) -> anyhow::Result<()> {
        let state = BareState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        // Epoch interruption is on in both engines, and a store without a deadline traps at once.
        store.set_epoch_deadline(u64::MAX / 2);
        let task = self.pre.instantiate_async(&mut store).await?;
        let result = task.call_run(&mut store, ctx, payload).await?;
        anyhow::ensure!(result.is_ok(), "the task failed: {result:?}");
        Ok(())
    }
}

fn stock_engine() -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(
        PoolingAllocationConfig::default(),
    ));
    Ok(Engine::new(&config)?)
}

/// One path's figures, in microseconds.
#[derive(Debug)]
struct Summary {
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
}

impl Summary {
    fn of(times: &mut [Duration]) -> Self {
        times.sort_unstable();
        let percentile = |p: f64| {
            let index = ((times.len() - 1) as f64 * p).round() as usize;
            micros(times[index])
        };
        Summary {
            p50_us: percentile(0.50),
            p99_us: percentile(0.99),
            mean_us: micros(times.iter().sum::<Duration>()) / times.len() as f64,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "mean_us": self.mean_us,
        })
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let task_kind = args.task;
    let payload = task_kind.payload();

    let wasm = wasm_runner_tests::guest_bytes(task_kind.package());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let executor = Executor::new(EngineOptions {
        max_concurrent: args.concurrency,
        ..EngineOptions::default()
    })?;
    let task = executor.load(&wasm)?;
    let same = Bare::new(executor.engine().clone(), &wasm)?;
    let stock = Bare::new(stock_engine()?, &wasm)?;

    let ctx = JobContext {
        job_id: "bench".into(),
        attempt: 1,
        max_attempts: 3,
        task_name: task_kind.name().into(),
        tenant: "default".into(),
    };
    let bare_ctx = bare::JobContext {
        job_id: ctx.job_id.clone(),
        attempt: 1,
        max_attempts: 3,
        task_name: ctx.task_name.clone(),
        tenant: ctx.tenant.clone(),
    };
    let limits = Limits::default();

    let mut samples: [Vec<Duration>; 3] = Default::default();
    runtime.block_on(async {
        // Warm-up: fill the pool's warm slots and the caches.
        for _ in 0..WARM_UP_JOBS {
            executor.run(&task, &ctx, payload, &limits).await;
            same.run_one(&bare_ctx, payload).await?;
            stock.run_one(&bare_ctx, payload).await?;
        }
        while samples[0].len() < args.jobs {
            let round = ROUND.min(args.jobs - samples[0].len());
            for _ in 0..round {
                let started = Instant::now();
                let report = executor.run(&task, &ctx, payload, &limits).await;
                samples[0].push(started.elapsed());
                anyhow::ensure!(
                    report.output.is_some(),
                    "the task failed: {:?}",
                    report.outcome
                );
            }
            for _ in 0..round {
                let started = Instant::now();
                same.run_one(&bare_ctx, payload).await?;
                samples[1].push(started.elapsed());
            }
            for _ in 0..round {
                let started = Instant::now();
                stock.run_one(&bare_ctx, payload).await?;
                samples[2].push(started.elapsed());
            }
        }
        anyhow::Ok(())
    })?;

    let paths = ["executor", "bare_same_engine", "bare_stock_engine"];
    let labels = ["executor", "bare, same engine", "bare, stock engine"];
    let summaries: Vec<Summary> = samples.iter_mut().map(|times| Summary::of(times)).collect();
    println!(
        "{}: {} jobs each, one thread, {} slots, pooling={}",
        task_kind.name(),
        args.jobs,
        args.concurrency,
        executor.is_pooling()
    );
    println!();
    println!("| path | p50 µs | p99 µs | jobs/s (1/mean) |");
    println!("|---|---|---|---|");
    for (label, summary) in labels.iter().zip(&summaries) {
        println!(
            "| {label} | {:.1} | {:.1} | {:.0} |",
            summary.p50_us,
            summary.p99_us,
            1e6 / summary.mean_us
        );
    }
    println!();
    println!(
        "executor p50 / bare same-engine p50 = {:.2}x; / bare stock-engine p50 = {:.2}x",
        summaries[0].p50_us / summaries[1].p50_us,
        summaries[0].p50_us / summaries[2].p50_us,
    );

    if let Some(path) = &args.json {
        let paths: serde_json::Map<String, serde_json::Value> = paths
            .iter()
            .zip(&summaries)
            .map(|(name, summary)| ((*name).to_owned(), summary.to_json()))
            .collect();
        let report = serde_json::json!({
            "jobs": args.jobs,
            "task": task_kind.name(),
            "paths": paths,
        });
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("failed to write `{}`", path.display()))?;
    }
    Ok(())
}
