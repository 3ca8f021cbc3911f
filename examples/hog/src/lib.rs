//! Allocates memory in 1 MiB chunks, writing to each, and never frees any, so only the
//! runner's memory limit can stop it. Shows that a task cannot take a worker's memory.

use std::hint::black_box;

use wasm_runner_guest::{Context, TaskError, export_task, log};

const CHUNK_BYTES: usize = 1024 * 1024;

/// Write one byte per this many, so every page of the chunk is really in use even if the host
/// backs linear memory lazily.
const TOUCH_STRIDE: usize = 4096;

fn run(_ctx: &Context, _payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    log::info("allocating until the runner's memory limit stops this attempt");
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut chunk = vec![0_u8; CHUNK_BYTES];
        for byte in chunk.iter_mut().step_by(TOUCH_STRIDE) {
            *byte = 0xA5;
        }
        // Keeping every chunk, behind `black_box`, stops the optimiser from proving the memory
        // is never read and removing the allocations.
        chunks.push(black_box(chunk));
        black_box(&chunks);
        if chunks.len().is_multiple_of(16) {
            log::debug_with("still allocating", &[("allocated_mib", &chunks.len())]);
        }
    }
}

export_task!(run);
