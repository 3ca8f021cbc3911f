//! Recurses until the call stack is exhausted, so wasmtime stops the attempt with a
//! stack-overflow trap.
//!
//! The payload may set a depth, `{"depth": 1000}`, which is how a test shows the recursion is
//! real: a small depth returns normally. Without a depth it recurses without bound.

use std::hint::black_box;

use wasm_runner_guest::serde::{Deserialize, Serialize};
use wasm_runner_guest::{Context, TaskError, export_task, json};

#[derive(Debug, Default, Deserialize)]
#[serde(crate = "wasm_runner_guest::serde", default)]
struct Input {
    depth: Option<u64>,
}

#[derive(Debug, Serialize)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Output {
    depth: u64,
    checksum: u64,
}

fn run(_ctx: &Context, payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    let input: Input = if payload.is_empty() {
        Input::default()
    } else {
        json::parse(&payload)?
    };
    let depth = input.depth.unwrap_or(u64::MAX);
    // Hiding the depth keeps the optimiser from specialising the recursion for a known bound.
    let checksum = descend(black_box(depth));
    json::to_vec(&Output { depth, checksum })
}

/// Recurses `depth` times.
///
/// The result of each call is rotated and mixed with the caller's own argument after the call
/// returns. That work keeps the call out of tail position, and because it is not a single
/// associative operation LLVM cannot turn the recursion into a loop with an accumulator.
/// Nothing is kept in linear memory, so every frame lives on wasmtime's native stack, which is
/// the stack whose limit must produce the trap.
#[inline(never)]
fn descend(depth: u64) -> u64 {
    if depth == 0 {
        return 1;
    }
    descend(depth - 1).rotate_left(7) ^ depth
}

export_task!(run);
