//! The data each attempt's store holds: its sandboxed WASI context, its resource table, its
//! memory limiter, and what it logged.

use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::runtime::capture::CaptureStream;
use crate::runtime::imports::host_log::LogBuffer;
use crate::runtime::limiter::MemoryLimiter;

/// How many bytes of stdout and of stderr are kept from the start and from the end.
const STREAM_HEAD_BYTES: usize = 16 << 10;
const STREAM_TAIL_BYTES: usize = 48 << 10;
/// The most resources (streams, pollables) a task may hold open at once. Without a cap a guest
/// could make the host allocate table entries without bound.
const MAX_RESOURCES: usize = 1_000;

/// The per-attempt store data.
pub(crate) struct JobState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) log: LogBuffer,
    pub(crate) stdout: CaptureStream,
    pub(crate) stderr: CaptureStream,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobState")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl JobState {
    /// A sandbox with no ambient capabilities.
    ///
    /// The WASI context has no preopened directories, no environment variables, no arguments,
    /// a closed stdin, and no network (wasmtime-wasi denies sockets and name lookups unless they
    /// are allowed explicitly). Clocks and randomness work. Stdout and stderr go to bounded
    /// captures instead of the host's own streams.
    pub(crate) fn new(memory_limit_bytes: u64, started: Instant) -> Self {
        let stdout = CaptureStream::new("stdout", STREAM_HEAD_BYTES, STREAM_TAIL_BYTES);
        let stderr = CaptureStream::new("stderr", STREAM_HEAD_BYTES, STREAM_TAIL_BYTES);
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            // The defaults already deny every address and name lookup; saying so here keeps
            // the sandbox closed even if a future wasmtime-wasi loosens a default.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        JobState {
            wasi,
            table,
            limiter: MemoryLimiter::new(memory_limit_bytes),
            log: LogBuffer::new(started),
            stdout,
            stderr,
        }
    }
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
