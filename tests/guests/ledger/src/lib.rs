//! Logs `ledger start <job_id> <attempt>`, sleeps for the `ms` of its payload `{"ms": N}`,
//! logs `ledger end <job_id> <attempt>` and returns `{}`.
//!
//! The chaos tests read these two records from each worker's log (`wasm_runner_tests::ledger`)
//! to learn every execution of every job, including the ones the queue never hears about: an
//! execution cut short by a kill has a start and no end. The values are in the message rather
//! than in fields so each record is one plain, easily parsed line of the worker's log.
//!
//! It waits with `std::thread::sleep`, a host `wasi:clocks` timer, so a worker can hold many of
//! these at once without burning CPU.

use std::thread;
use std::time::Duration;

use wasm_runner_guest::serde::{Deserialize, Serialize};
use wasm_runner_guest::{Context, TaskError, export_json_task, log};

#[derive(Debug, Deserialize)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Input {
    ms: u64,
}

/// Serialises to `{}`: the result carries nothing, the log records are the point.
#[derive(Debug, Serialize)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Output {}

fn run(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    log::info(&format!("ledger start {} {}", ctx.job_id, ctx.attempt));
    thread::sleep(Duration::from_millis(input.ms));
    log::info(&format!("ledger end {} {}", ctx.job_id, ctx.attempt));
    Ok(Output {})
}

export_json_task!(run);
