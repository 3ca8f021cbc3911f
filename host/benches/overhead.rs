//! Per-job overhead of the executor, against bare wasmtime, for the `hello` example.
//!
//! Run with `cargo bench -p wasm-runner --bench overhead` (add `-- --jobs 20000` for more
//! samples). Three ways of running one job are measured side by side on one thread, interleaved
//! in rounds so machine drift hits all of them alike:
//!
//! - `executor`: `Executor::run`, everything a real attempt does (limits, deadline, log and
//!   stdout/stderr capture, classification);
//! - `bare, same engine`: a fresh store, instantiate from an `InstancePre`, call `run`, drop,
//!   on the executor's own engine: the floor for this engine configuration;
//! - `bare, stock engine`: the same on wasmtime's default pooling configuration.
//!
//! Each job is timed from store creation to drop. Output is a Markdown table.

use std::time::{Duration, Instant};

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

const PAYLOAD: &[u8] = br#"{"name": "Bench"}"#;
const ROUND: usize = 250;

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

    async fn run_one(&self, ctx: &bare::JobContext) -> anyhow::Result<()> {
        let state = BareState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        };
        let mut store = Store::new(&self.engine, state);
        // Epoch interruption is on in both engines, and a store without a deadline traps at once.
        store.set_epoch_deadline(u64::MAX / 2);
        let task = self.pre.instantiate_async(&mut store).await?;
        let result = task.call_run(&mut store, ctx, PAYLOAD).await?;
        anyhow::ensure!(result.is_ok(), "hello failed");
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let jobs: usize = args
        .iter()
        .position(|arg| arg == "--jobs")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(5_000);

    let wasm = wasm_runner_tests::guest_bytes("example-hello");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let executor = Executor::new(EngineOptions {
        max_concurrent: 1,
        ..EngineOptions::default()
    })?;
    let task = executor.load(&wasm)?;
    let same = Bare::new(executor.engine().clone(), &wasm)?;
    let stock = Bare::new(stock_engine()?, &wasm)?;

    let ctx = JobContext {
        job_id: "bench".into(),
        attempt: 1,
        max_attempts: 3,
        task_name: "hello".into(),
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
        for _ in 0..500 {
            executor.run(&task, &ctx, PAYLOAD, &limits).await;
            same.run_one(&bare_ctx).await?;
            stock.run_one(&bare_ctx).await?;
        }
        while samples[0].len() < jobs {
            for _ in 0..ROUND {
                let started = Instant::now();
                let report = executor.run(&task, &ctx, PAYLOAD, &limits).await;
                samples[0].push(started.elapsed());
                anyhow::ensure!(
                    report.output.is_some(),
                    "hello failed: {:?}",
                    report.outcome
                );
            }
            for _ in 0..ROUND {
                let started = Instant::now();
                same.run_one(&bare_ctx).await?;
                samples[1].push(started.elapsed());
            }
            for _ in 0..ROUND {
                let started = Instant::now();
                stock.run_one(&bare_ctx).await?;
                samples[2].push(started.elapsed());
            }
        }
        anyhow::Ok(())
    })?;

    let names = ["executor", "bare, same engine", "bare, stock engine"];
    let mut p50s = Vec::new();
    println!(
        "hello: {jobs} jobs each, one thread, pooling={}",
        executor.is_pooling()
    );
    println!();
    println!("| path | p50 µs | p99 µs | jobs/s (1/mean) |");
    println!("|---|---|---|---|");
    for (name, times) in names.iter().zip(samples.iter_mut()) {
        times.sort();
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        let p50 = percentile(times, 0.50);
        p50s.push(p50);
        println!(
            "| {name} | {:.1} | {:.1} | {:.0} |",
            micros(p50),
            micros(percentile(times, 0.99)),
            1.0 / mean.as_secs_f64()
        );
    }
    println!();
    println!(
        "executor p50 / bare same-engine p50 = {:.2}x; / bare stock-engine p50 = {:.2}x",
        micros(p50s[0]) / micros(p50s[1]),
        micros(p50s[0]) / micros(p50s[2]),
    );
    Ok(())
}
