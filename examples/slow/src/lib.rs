//! Takes as long as its payload asks, `{"ms": 250}` or just `250`, then reports how long it
//! actually took. Useful for trying the runner's wall-clock limit on a well-behaved task.
//!
//! It waits with `std::thread::sleep`, which on `wasm32-wasip2` asks the host for a
//! `wasi:clocks` timer instead of burning CPU, so it uses no fuel while it waits.

use std::thread;
use std::time::{Duration, Instant};

use wasm_runner_guest::serde::{Deserialize, Serialize};
use wasm_runner_guest::{Context, TaskError, export_json_task, log};

#[derive(Debug, Deserialize)]
#[serde(crate = "wasm_runner_guest::serde", untagged)]
enum Input {
    Bare(u64),
    Object { ms: u64 },
}

impl Input {
    fn millis(&self) -> u64 {
        match self {
            Input::Bare(ms) | Input::Object { ms } => *ms,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Output {
    requested_ms: u64,
    elapsed_ms: u64,
}

fn run(_ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let requested_ms = input.millis();
    log::debug_with("sleeping", &[("requested_ms", &requested_ms)]);

    let started = Instant::now();
    thread::sleep(Duration::from_millis(requested_ms));
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

    Ok(Output {
        requested_ms,
        elapsed_ms,
    })
}

export_json_task!(run);
