//! The wasmtime engine: compiler and allocator settings, and the epoch ticker that lets a
//! running guest be stopped.
//!
//! One engine serves the whole process. Instances come from a pooling allocator sized for the
//! number of attempts that may run at once, so instantiation is a few microseconds of slot
//! reuse instead of fresh `mmap` calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, WasmBacktraceDetails,
};

/// How often the epoch advances. A runaway guest is stopped within one tick of its deadline,
/// and a busy guest yields to the async runtime once per tick.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Settings that hold for every attempt an [`Executor`](super::Executor) runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// The most attempts that may run at once. The instance pool is sized for this many, and
    /// further attempts wait for a free slot. Default 16.
    pub max_concurrent: u32,
    /// The most memory any one attempt may be given, in bytes; per-attempt limits must not
    /// exceed it. Default 4 GiB, the most a 32-bit WebAssembly memory can address.
    pub memory_ceiling_bytes: u64,
    /// Whether attempts may have a fuel budget. Fuel metering slows call-heavy guests by up to
    /// ~60% whether or not a budget is set, so it is off unless asked for. Default off.
    pub fuel: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_concurrent: 16,
            memory_ceiling_bytes: crate::config::MAX_MEMORY_BYTES,
            fuel: false,
        }
    }
}

/// Builds the engine; returns it and whether the pooling allocator is in use.
///
/// If the pool's address space cannot be reserved (a low `ulimit -v`, a 32-bit host), this
/// falls back to allocating each instance on demand, which works but costs more per job.
pub(crate) fn build_engine(options: &EngineOptions) -> anyhow::Result<(Engine, bool)> {
    let mut config = base_config(options);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(options)));
    match Engine::new(&config) {
        Ok(engine) => return Ok((engine, true)),
        Err(err) => tracing::warn!(
            error = %format!("{err:#}"),
            "instance pool unavailable; allocating instances on demand"
        ),
    }
    let engine = Engine::new(&base_config(options))
        .map_err(anyhow::Error::from)
        .context("failed to create the wasm engine")?;
    Ok((engine, false))
}

fn base_config(options: &EngineOptions) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    config.consume_fuel(options.fuel);
    // Tasks use WASI 0.2 and synchronous exports; the component-model concurrency machinery
    // costs a few microseconds per instance and buys them nothing.
    config.concurrency_support(false);
    // DWARF-based backtraces cost milliseconds per trap and guests are built stripped anyway.
    config.wasm_backtrace_details(WasmBacktraceDetails::Disable);
    config
}

fn pooling_config(options: &EngineOptions) -> PoolingAllocationConfig {
    let slots = options.max_concurrent.max(1);
    let mut pool = PoolingAllocationConfig::default();
    // Counts per component, from measured guests: a Rust task has 3 core instances, 1 memory
    // and 2 tables; a Python task has 14 core instances. The totals leave room for that.
    pool.total_component_instances(slots)
        .total_core_instances(slots * 16)
        .total_memories(slots * 2)
        .total_tables(slots * 4)
        .total_stacks(slots)
        .max_core_instances_per_component(32)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .table_elements(super::limiter::MAX_TABLE_ELEMENTS)
        .max_component_instance_size(1 << 20)
        .max_core_instance_size(1 << 20)
        .max_memory_size(usize::try_from(options.memory_ceiling_bytes).unwrap_or(usize::MAX))
        .max_unused_warm_slots(slots)
        // Returning memory to the OS one instance at a time takes the process-wide mmap lock
        // on every drop; with several threads that contention made throughput *fall*.
        // Batching the decommits removes most of it.
        .decommit_batch_size(slots.min(32) as usize)
        // Resetting a slot rewrites the lowest `*_keep_resident` bytes in place and hands the
        // rest back to the kernel. Rust tasks put their stack first and grow it down from
        // 1 MiB, so their lowest 64 KiB of linear memory is almost never written: rewriting it
        // cost a no-op job about 2 µs and saved no page faults. Tables are reset only up to
        // their current size, so keeping theirs resident costs little.
        .linear_memory_keep_resident(0)
        .table_keep_resident(64 << 10);
    // TODO(slot-reset-pagemap): every reset decommits the pages a task wrote and the next task
    // faults them back in: four faults, about half the cost of a no-op job (a bare no-op
    // instance measured 15 µs per job, and 8 µs with `pagemap_scan`). That option rewrites
    // only the dirty pages instead, but in wasmtime 48 it skips dirty pages that are not
    // present during the reset (swapped out, or being migrated by the kernel), so the next
    // task, maybe another tenant's, could read them. Turn it on, with a
    // `linear_memory_keep_resident` of about 64 KiB, once wasmtime resets those pages too.
    // (`memory_is_fresh_for_every_attempt` in tests/tests/executor.rs checks the ordinary
    // reset; it cannot provoke that race.)
    pool
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a background thread until dropped.
#[derive(Debug)]
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".to_owned())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        let Some(engine) = weak.upgrade() else { break };
                        engine.increment_epoch();
                    }
                }
            })
            .context("failed to start the epoch ticker thread")?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // The thread wakes within one tick; a panic in it cannot be acted on here.
            let _ = thread.join();
        }
    }
}
