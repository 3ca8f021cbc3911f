//! Calls the host's log import 100,000 times with small records, then returns `done`. Tests that
//! the runner bounds a job's log (dropping and counting the excess) without failing the task.

use wasm_runner_guest::{Context, TaskError, export_task, log};

const RECORDS: u32 = 100_000;

fn run(_ctx: &Context, _payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    for seq in 0..RECORDS {
        log::info_with("flood", &[("seq", &seq)]);
    }
    Ok(b"done".to_vec())
}

export_task!(run);
