//! Grows its memory exponentially: each allocation is twice the last, every page written, none
//! freed. Where `hog` creeps up to the limit, this jumps past it in one large request, which
//! must be refused just the same without touching the worker's own memory.

use std::hint::black_box;

use wasm_runner_guest::{Context, TaskError, export_task};

/// Write one byte per page, so the memory is really in use.
const TOUCH_STRIDE: usize = 4096;

fn run(_ctx: &Context, _payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    let mut size = 64 << 10;
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0_u8; size];
        for byte in block.iter_mut().step_by(TOUCH_STRIDE) {
            *byte = 0x5A;
        }
        kept.push(black_box(block));
        black_box(&kept);
        size = size.saturating_mul(2);
    }
}

export_task!(run);
