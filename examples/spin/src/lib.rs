//! Loops forever without returning, so only the runner's wall-clock limit (or fuel budget)
//! can end the attempt. Shows that a runaway task costs one attempt, not a worker.

use std::hint::black_box;

use wasm_runner_guest::{Context, TaskError, export_task, log};

fn run(_ctx: &Context, _payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    log::info("spinning until the runner stops this attempt");
    let mut iterations: u64 = 0;
    loop {
        // `black_box` hides the counter from the optimiser; a loop with no observable effect
        // could otherwise be compiled into a single unreachable instruction.
        iterations = black_box(iterations.wrapping_add(1));
    }
}

export_task!(run);
